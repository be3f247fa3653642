"""APE: "Large Language Models Are Human-Level Prompt Engineers" (Zhou et al., ICLR 2023).

The instruction is a program to search for. Forward-mode induction shows the optimizer model a few train
input/output pairs "a friend" produced from an unknown instruction and lets it complete "The instruction was to ...";
the candidates are then filtered in stages on growing random train subsets (score all on a small subset, keep the
top fraction, grow the subset, repeat until few remain; the official code's UCB bandit is an option), the finalists
are scored on the full dev split (train when there is no dev split), and optional Monte-Carlo rounds ask for
variations of the best instruction "keeping the semantic meaning" and keep the best.

Steps (events): step 0 scores the initial prompt on the selection split (the reference line; it also joins the
pool); induction is recorded under step 1, the work leading to the first stage; steps 1..S are the filtering stages
(CandidateScored purpose "stage<s>", one Selection with method "multistage" or "ucb" and one StepDone each);
step S+1 scores the finalists on the full selection split (purpose and Selection method "final"); each Monte-Carlo
round is one more step (purpose "resample<r>", Selection method "resample"; the incumbent keeps its ties).

Defaults follow the official code (keirp/automatic_prompt_engineer, configs/default.yaml and bandits.yaml): 5 demo
subsets x 5 demos x 50 samples = up to 250 induction requests, which is a lot for a small local model: the run's
budget caps it. The stage schedule of the multistage filter is ours (the paper gives no numbers).

With a call cap (ours, `fit_budget`): when those sizes cost more than the run's call allowance, the pool and the
number of finalists shrink until induction, every filtering stage and the final evaluation fit (a Plan event), so a
300-call run scores and selects among fewer induced instructions instead of spending its budget on induction alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Generator, Iterator, Sequence
from typing import Any, Literal

from pydantic import Field

from .. import likelihood
from ..base import Candidate, Optimizer, Params, register
from ..data import Example
from ..events import CandidateRejected, CandidateScored, Event, Plan, Selection, StepDone
from . import parsing
from .induction import DEMO, INDUCE_PROMPT, clean_induced, demo_block  # noqa: F401  (shared with PE2; tests use them)
from .strategies import rank_arms, top_arms, ucb1_values
from .text import Signature, input_text

# --- meta-prompts (our wording, the official structure and placeholders), each with the parser of its reply -----


def clean_variation(reply: str) -> str:
    """The tagged variation, else the first paragraph without 'Output:' or 'Here is a variation:' chatter."""
    found = parsing.tagged(reply)
    if found:
        return found[0]
    t = (reply or "").strip()
    m = re.search(r"\n\s*\n", t)
    if m and t[:m.start()].strip():
        t = t[:m.start()]
    t = parsing.clean(parsing.strip_variation(t))
    return t[0].upper() + t[1:] if t else t


RESAMPLE_PROMPT = Signature("""Write a variation of the following instruction that keeps its semantic meaning.

Input: {instruction}

Output:""", clean_variation)


def _squash(text: str) -> str:
    return re.sub(r"[\W_]+", " ", (text or "").lower()).strip()


def is_echo(text: str, demos: Sequence[Example]) -> bool:
    """The candidate only repeats a demo's input or output (small models often do)."""
    s = _squash(text)
    if not s:
        return False
    return any(s == _squash(input_text(ex)) or s == _squash(ex.label) for ex in demos)


# --- the optimizer ------------------------------------------------------------------------------------------------

@register
class APE(Optimizer):
    presets = {"paper": {"score_method": "likelihood"}}  # log-probability scoring, the official default
    name = "ape"
    title = "APE (instruction induction + multistage selection)"
    paper = "Zhou et al., Large Language Models Are Human-Level Prompt Engineers, ICLR 2023"

    class Params(Params):
        num_subsamples: int = Field(5, ge=1, description="Random demo subsets drawn from train, one induction "
                                                         "prompt each")
        num_demos: int = Field(5, ge=1, description="Input/output pairs shown in each induction prompt")
        num_prompts_per_subsample: int = Field(50, ge=1, description="Instructions sampled per subset (one "
                                                                     "request each; 5 x 50 = 250 is a lot for a "
                                                                     "small model: the budget caps it)")
        temperature: float = Field(0.9, ge=0.0, le=2.0, description="Optimizer-model temperature for induction "
                                                                   "and resampling")
        top_p: float = Field(0.9, gt=0.0, le=1.0, description="Optimizer-model nucleus sampling for induction and "
                                                              "resampling")
        induce_max_tokens: int = Field(50, ge=1, description="Max tokens of each induced (or resampled) instruction")
        score_method: Literal["accuracy", "likelihood"] = Field(
            "accuracy", description="Execution accuracy of the task model, or the log-probability of the gold "
                                    "label's first token (needs an endpoint with logprobs; the official default)")
        evaluator: Literal["multistage", "ucb"] = Field(
            "multistage", description="Filtering before the final evaluation: the paper's multistage filter on "
                                      "growing train subsets, or the official code's UCB bandit")
        stage_samples: int = Field(5, ge=1, description="Multistage: train examples of the first stage's subset "
                                                        "(ours)")
        stage_growth: float = Field(2.0, gt=1.0, description="Multistage: the subset grows by this factor each "
                                                             "stage (ours)")
        keep_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="Multistage: fraction of the candidates "
                                                                      "kept after each stage (ours)")
        final_candidates: int = Field(5, ge=1, description="Candidates that reach the full dev (or train) "
                                                           "evaluation (ours)")
        ucb_rounds: int = Field(5, ge=1, description="UCB: bandit rounds (official bandits.yaml)")
        ucb_prompts_per_round: float = Field(50, gt=0, description="UCB: arms pulled per round; below 1 it is a "
                                                                   "fraction of the pool (official)")
        ucb_samples: int = Field(50, ge=1, description="UCB: new train examples per pulled arm per round (official)")
        c: float = Field(1.0, ge=0.0, description="UCB exploration constant (official)")
        mc_rounds: int = Field(0, ge=0, description="Iterative Monte-Carlo rounds after selection (paper; 0 in the "
                                                    "official code)")
        mc_samples: int = Field(10, ge=1, description="Variations of the best instruction asked per Monte-Carlo "
                                                      "round (ours)")
        fit_budget: bool = Field(True, description="With a call cap, scale the search down to what it pays for "
                                                   "(a Plan event says how); off: the paper's sizes until the cap "
                                                   "stops the run (ours)")
        likelihood_floor: float = Field(likelihood.FLOOR, le=0.0, description="Likelihood: log-probability given "
                                                                             "when the gold token is not in the "
                                                                             "top 20")

    p: APE.Params

    # --- the loop -------------------------------------------------------------------------------------------------
    def run(self) -> Iterator[Event]:
        ctx, p = self.ctx, self.p
        if not ctx.train:
            raise ValueError("APE needs a train split: the demonstrations and the filtering stages come from it")
        self._known: dict[tuple[str, str], dict[str, float]] = {}  # (candidate, split) -> example id -> value
        sel_split = "dev" if ctx.dev else "train"
        sel_exs = ctx.dev if ctx.dev else ctx.train
        self._tie: dict[str, float] = {}

        init = yield from ctx.propose(ctx.initial_prompt, step=0, origin="initial")
        if init is None:
            raise ValueError("the initial prompt is empty")
        yield from self.score(init, sel_exs, sel_split, step=0, purpose="baseline")
        yield self.step_done(0, init, sel_split, [init], self.estimate(init, sel_split, sel_exs))

        plan = self.plan(len(sel_exs))
        if plan is not None:
            yield plan
            self._samples, self._finalists = plan.settings["induction_samples"], plan.settings["final_candidates"]
        pool = [init] + (yield from self.induce())
        if p.evaluator == "ucb":
            finalists, step = yield from self.ucb_filter(pool)
        else:
            finalists, step = yield from self.multistage_filter(pool)

        step += 1
        # ours: the initial prompt (already scored on the selection split, so free) joins the final and keeps its
        # ties, so a run never returns a prompt that is merely as good as where it started
        finalists = list(finalists) + ([init] if init not in finalists else [])
        best = yield from self.final(finalists, sel_exs, sel_split, step, purpose="final", method="final",
                                     incumbent=init)
        for r in range(1, p.mc_rounds + 1):
            step += 1
            best = yield from self.resample(best, r, sel_exs, sel_split, step)

    # --- the search's size: the paper's defaults, or what the call allowance pays for ----------------------------
    _samples: int | None = None  # induction requests in all (None: num_subsamples x num_prompts_per_subsample)
    _finalists: int | None = None

    def plan(self, n_sel: int) -> Plan | None:
        """With a call cap the paper's 250 induction samples can spend it all before one is scored (measured: 250 of
        300 calls on induction, nothing selected). Keep the whole pipeline and shrink the pool instead: the most
        finalists (from final_candidates down to 2) that still leave a pool of four per finalist, then the largest
        pool the allowance pays for with its filtering stages and final evaluation."""
        p, allowance = self.p, self.ctx.call_allowance
        full = p.num_subsamples * p.num_prompts_per_subsample
        if allowance is None or not p.fit_budget or p.evaluator != "multistage":
            return None
        allowance = max(0, allowance - n_sel)  # the initial prompt's baseline was paid from it (at worst in full)
        n_train = len(self.ctx.train)
        defaults = {"induction_samples": full, "final_candidates": p.final_candidates}
        cost = self.cost(full, p.final_candidates, n_train, n_sel)
        if cost <= allowance:
            return None
        choice = None
        for f in range(p.final_candidates, 0, -1):
            fits = [n for n in range(1, full + 1) if self.cost(n, f, n_train, n_sel) <= allowance]
            if fits and (fits[-1] >= 4 * f or f == 1):
                choice = (fits[-1], f)
                break
        samples, f = choice or (1, 1)
        return Plan(step=1, allowance=allowance, defaults=defaults,
                    settings={"induction_samples": samples, "final_candidates": f},
                    estimated_calls=self.cost(samples, f, n_train, n_sel),
                    note=f"the paper's sizes need about {cost} calls, the allowance is {allowance}: "
                         f"{samples} induced instructions, {f} finalist(s)")

    def cost(self, samples: int, finalists: int, n_train: int, n_sel: int) -> int:
        """Worst-case calls from induction on: every sample admitted, every stage and the final paid in full."""
        p = self.p
        calls, alive, n, prev = samples, samples + 1, min(p.stage_samples, n_train), 0
        while alive > finalists and n > 0:
            calls += alive * (n - prev)
            last = n >= n_train
            alive = finalists if last else max(finalists, math.ceil(alive * p.keep_fraction))
            if last:
                break
            prev, n = n, min(n_train, max(n + 1, math.ceil(n * p.stage_growth)))
        calls += min(alive, finalists) * n_sel  # finalists on the selection split (the initial is known there)
        return calls + p.mc_rounds * (p.mc_samples + p.mc_samples * n_sel)

    # --- proposal: forward-mode induction -------------------------------------------------------------------------
    def induce(self) -> Generator[Event, None, list[Candidate]]:
        """num_subsamples demo subsets from TRAIN, num_prompts_per_subsample samples each (one request per sample,
        so each gets its own seed), or the planned number spread over the subsets; cleaned, echo/empty/truncated/
        duplicate proposals rejected."""
        ctx, p = self.ctx, self.p
        out: list[Candidate] = []
        total = self._samples or p.num_subsamples * p.num_prompts_per_subsample
        subsets = min(p.num_subsamples, total)
        for i in range(subsets):
            demos = ctx.sample(ctx.train, p.num_demos)
            msg = INDUCE_PROMPT.render(demos=demo_block(demos))
            for j in range(total // subsets + (1 if i < total % subsets else 0)):
                comp = yield from ctx.ask("ape.induce", [{"role": "user", "content": msg}], step=1, ref=f"s{i}",
                                          temperature=p.temperature, top_p=p.top_p, max_tokens=p.induce_max_tokens)
                text, how = INDUCE_PROMPT.parse(comp.text)
                info = {"subset": i, "sample": j, "demo_ids": [d.id for d in demos], "parsed": how}
                if how == "echo" or is_echo(text, demos):
                    yield CandidateRejected(step=1, text=(text or comp.text)[:2000], reason="echo", origin="induced")
                    continue
                # a reply cut at max_tokens is kept only when the part we keep ended before the cut
                truncated = comp.truncated and how != "cut"
                cand = yield from ctx.propose(text, step=1, origin="induced", truncated=truncated,
                                              max_words=p.max_prompt_words, info=info)
                if cand is not None:
                    out.append(cand)
        return out

    # --- scoring (accuracy through ctx.score, or likelihood), never the same example twice per candidate --------
    def score(self, cand: Candidate, examples: Sequence[Example], split: str, *, step: int,
              purpose: str) -> Generator[Event, None, None]:
        known = self._known.setdefault((cand.id, split), {})
        todo, seen = [], set()
        for ex in examples:
            if ex.id not in known and ex.id not in seen:
                todo.append(ex)
                seen.add(ex.id)
        if not todo:
            return
        if self.p.score_method == "accuracy":
            res = yield from self.ctx.score(cand, todo, split, step=step, purpose=purpose)
            for pr in res.predictions:
                known[pr.example_id] = 1.0 if pr.correct else 0.0
            return
        ev_llm = self.ctx.evaluator.llm
        res = likelihood.score(ev_llm, self.ctx.task, cand.text, todo, floor=self.p.likelihood_floor,
                               max_workers=self.ctx.evaluator.max_workers)
        bucket = cand.results.setdefault(split, {})
        for pr, lp in zip(res.predictions, res.logprobs, strict=True):
            known[pr.example_id] = lp
            bucket[pr.example_id] = pr.correct
        yield CandidateScored.from_eval(res, step=step, candidate_id=cand.id, split=split, purpose=purpose)

    def estimate(self, cand: Candidate, split: str, examples: Sequence[Example] | None = None) -> float | None:
        """Mean score on `examples` (all known examples of the split when None); None when nothing is known."""
        known = self._known.get((cand.id, split), {})
        vals = list(known.values()) if examples is None else [known[ex.id] for ex in examples if ex.id in known]
        return sum(vals) / len(vals) if vals else None

    def tie(self, cand: Candidate) -> float:
        """A seeded random tie-breaker per candidate (ties are common on small subsets)."""
        if cand.id not in self._tie:
            self._tie[cand.id] = self.ctx.rng.random()
        return self._tie[cand.id]

    def ranked(self, cands: Sequence[Candidate], split: str, examples: Sequence[Example] | None = None, *,
               incumbent: Candidate | None = None) -> tuple[list[Candidate], list[float | None]]:
        """Best first by mean; ties broken at random (seeded), except that an incumbent wins its ties."""
        means = [self.estimate(c, split, examples) for c in cands]
        ties = [-1.0 if incumbent is not None and c.id == incumbent.id else self.tie(c) for c in cands]
        order = rank_arms(means, ties)
        return [cands[i] for i in order], [means[i] for i in order]

    def step_done(self, step: int, best: Candidate, split: str, beam: Sequence[Candidate],
                  score: float | None) -> StepDone:
        ev = self.ctx.step_done(step, best, split, beam)
        if score is not None:
            ev.best_score = score  # the estimate the selection used (subset mean, or the log-likelihood)
        return ev

    # --- multistage filtering (paper) -----------------------------------------------------------------------------
    def multistage_filter(self, pool: list[Candidate]) -> Generator[Event, None, tuple[list[Candidate], int]]:
        """Score every candidate on a small random train subset, keep the top keep_fraction, grow the subset by
        stage_growth (new examples are added to the same nested subset, so estimates are running means), repeat
        until at most final_candidates remain or the subset is the whole train split."""
        ctx, p = self.ctx, self.p
        perm = ctx.sample(ctx.train, len(ctx.train))
        alive = list(pool)
        n = min(p.stage_samples, len(perm))
        stage = 0
        final = self._finalists or p.final_candidates
        while len(alive) > final and n > 0:
            stage += 1
            subset = perm[:n]
            for cand in alive:
                yield from self.score(cand, subset, "train", step=stage, purpose=f"stage{stage}")
            ranked, means = self.ranked(alive, "train", subset)
            last = n >= len(perm)
            keep = final if last else max(final, math.ceil(len(alive) * p.keep_fraction))
            survivors = ranked[:keep]
            kept = {c.id for c in survivors}
            yield Selection(step=stage, method="multistage",
                            estimates=[{"candidate_id": c.id, "mean": m, "n": len(subset), "origin": c.origin,
                                        "kept": c.id in kept} for c, m in zip(ranked, means, strict=True)],
                            survivors=[c.id for c in survivors])
            yield self.step_done(stage, survivors[0], "train", survivors, means[0])
            alive = survivors
            if last:
                break
            n = min(len(perm), max(n + 1, math.ceil(n * p.stage_growth)))
        return alive, stage

    # --- UCB bandit (official code) -------------------------------------------------------------------------------
    def ucb_filter(self, pool: list[Candidate]) -> Generator[Event, None, tuple[list[Candidate], int]]:
        """Each round pulls the arms with the highest upper bound; each pulled arm is scored on its own fresh
        ucb_samples train examples (ours: examples it has not seen yet). Each round is one stage."""
        ctx, p = self.ctx, self.p
        n = len(pool)
        per_round = int(n * p.ucb_prompts_per_round) if p.ucb_prompts_per_round < 1 else int(p.ucb_prompts_per_round)
        per_round = max(1, min(per_round, n))
        done = 0
        for r in range(1, p.ucb_rounds + 1):
            counts = [self._count(c, "train") for c in pool]
            sums = [sum(self._known.get((c.id, "train"), {}).values()) for c in pool]
            open_arms = [i for i in range(n) if counts[i] < len(ctx.train)]
            if not open_arms:
                break
            vals: list[float] | None = None
            if sum(counts) == 0:
                arms = sorted(ctx.sample(open_arms, per_round))
            else:
                vals = ucb1_values(sums, counts, p.c)
                arms = top_arms(vals, open_arms, per_round, lambda i: self.tie(pool[i]))
            for a in arms:
                cand = pool[a]
                known = self._known.get((cand.id, "train"), {})
                unseen = [ex for ex in ctx.train if ex.id not in known]
                exs = ctx.stratified(unseen, p.ucb_samples)
                yield from self.score(cand, exs, "train", step=r, purpose=f"stage{r}")
            ranked, means = self.ranked(pool, "train")
            survivors = [c for c, m in zip(ranked, means, strict=True) if m is not None][:p.final_candidates]
            chosen = {pool[a].id for a in arms}
            idx = {c.id: i for i, c in enumerate(pool)}
            estimates = []
            for c, m in zip(ranked, means, strict=True):
                e: dict[str, Any] = {"candidate_id": c.id, "mean": m, "n": self._count(c, "train"),
                                     "origin": c.origin, "pulled": c.id in chosen}
                if vals is not None:
                    e["ucb"] = vals[idx[c.id]]
                estimates.append(e)
            yield Selection(step=r, method="ucb", estimates=estimates, survivors=[c.id for c in survivors])
            yield self.step_done(r, ranked[0], "train", survivors, means[0])
            done = r
        ranked, means = self.ranked(pool, "train")
        finalists = [c for c, m in zip(ranked, means, strict=True) if m is not None][:p.final_candidates]
        return finalists or [pool[0]], done

    def _count(self, cand: Candidate, split: str) -> int:
        return len(self._known.get((cand.id, split), {}))

    # --- final evaluation -----------------------------------------------------------------------------------------
    def final(self, finalists: Sequence[Candidate], exs: Sequence[Example], split: str, step: int, *, purpose: str,
              method: str, incumbent: Candidate | None = None) -> Generator[Event, None, Candidate]:
        """Score the finalists on the whole selection split and pick the best (an incumbent keeps its ties)."""
        for cand in finalists:
            yield from self.score(cand, exs, split, step=step, purpose=purpose)
        ranked, means = self.ranked(list(finalists), split, exs, incumbent=incumbent)
        yield Selection(step=step, method=method,
                        estimates=[{"candidate_id": c.id, "mean": m, "n": len(exs), "origin": c.origin}
                                   for c, m in zip(ranked, means, strict=True)],
                        survivors=[c.id for c in ranked])
        yield self.step_done(step, ranked[0], split, ranked, means[0])
        return ranked[0]

    # --- iterative Monte-Carlo search (paper; not in the official code) -------------------------------------------
    def resample(self, best: Candidate, r: int, exs: Sequence[Example], split: str,
                 step: int) -> Generator[Event, None, Candidate]:
        ctx, p = self.ctx, self.p
        msg = RESAMPLE_PROMPT.render(instruction=best.text)
        new: list[Candidate] = []
        for j in range(p.mc_samples):
            comp = yield from ctx.ask("ape.resample", [{"role": "user", "content": msg}], step=step, ref=best.id,
                                      temperature=p.temperature, top_p=p.top_p, max_tokens=p.induce_max_tokens)
            cand = yield from ctx.propose(RESAMPLE_PROMPT.parse(comp.text), step=step, parents=[best.id], origin="resample",
                                          truncated=comp.truncated, max_words=p.max_prompt_words,
                                          info={"round": r, "sample": j, "source": best.id})
            if cand is not None:
                new.append(cand)
        return (yield from self.final([best] + new, exs, split, step, purpose=f"resample{r}", method="resample",
                                      incumbent=best))
