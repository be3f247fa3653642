"""ProTeGi: "Automatic Prompt Optimization with 'Gradient Descent' and Beam Search" (Pryzant et al., EMNLP 2023).

Errors on a minibatch play the loss; the optimizer model's critique of why the prompt failed is a textual gradient;
an edit that addresses the critique is the step; Monte-Carlo paraphrases explore around each step; and a
best-arm-identification bandit over train examples picks which candidates form the next beam.

Only the instruction is edited: the task template keeps its own input and output-format sections around {prompt}.
Defaults follow the official code (microsoft/LMOps `prompt_optimization/main.py`), except the selection evaluator,
which defaults to UCB as in the paper's main results (the code's CLI default is brute force).

With a call cap (ours, `fit_budget`): when min_rounds whole rounds at these sizes cost more than the run's call
allowance, the selection (samples, rounds, prompts per round) and the expansion shrink in turn to floors, then the
rounds, so each round still ends in a selection (a Plan event says how).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from pydantic import Field

from ..base import Candidate, Gen, Optimizer, Params, candidate_id, register
from ..data import Example
from ..evaluate import Prediction
from ..events import CandidateRejected, Event, Gradient, Plan, Selection
from . import parsing
from .strategies import BanditResult, brute_force, successive_halving, successive_rejects, ucb_bandit
from .text import Signature, input_text, pred_text, render

# --- meta-prompts (our wording, the official structure and placeholders), each with the parser of its reply -----

def parse_reasons(reply: str, *, truncated: bool) -> list[str]:
    """The tagged reasons; a complete untagged reply is one reason (small models often give one untagged)."""
    reasons = parsing.tagged(reply)
    if not reasons and reply.strip() and not truncated:
        reasons = [parsing.clean(reply)]
    return reasons


GRADIENT_PROMPT = Signature("""I'm trying to write a zero-shot instruction prompt for a language model.

My current prompt is:
"{prompt}"

But with this prompt the model gets the following examples wrong:
{error_string}

Give {num_feedbacks} reasons why the prompt could have led to these wrong answers.
Wrap each reason with <START> and <END>.""", parse_reasons)

ERROR_BLOCK = """## Example {i}
Text: "{input}"
Label: {gold}
Prediction: {prediction}"""


class Edits(NamedTuple):
    texts: list[str | None]  # None: an untagged reply that is not a prompt (rejected as no_tags)
    how: str  # tagged | untagged


def parse_edits(reply: str, *, n: int, max_words: int) -> Edits:
    """Up to n tagged prompts; without <START>, one short paragraph is accepted as the prompt, else nothing."""
    texts = parsing.tagged(reply)[:n]
    if texts:
        return Edits(list(texts), "tagged")
    t = parsing.clean(reply)
    if t and ("\n\n" in t or len(t.split()) > max_words):
        return Edits([None], "untagged")
    return Edits([t], "untagged")  # "" is rejected as empty


EDIT_PROMPT = Signature("""I'm trying to write a zero-shot instruction prompt for a language model.

My current prompt is:
"{prompt}"

But with this prompt the model gets the following examples wrong:
{error_string}

Looking at these examples, the problem with this prompt is that {gradient}

Using the information above, I wrote {steps_per_gradient} different improved prompts.
Each prompt is wrapped with <START> and <END>.

The {steps_per_gradient} new prompts are:""", parse_edits)


def clean_paraphrase(reply: str) -> str:
    """The tagged paraphrase, else the reply without 'Output:' or 'Here is a variation:' chatter."""
    found = parsing.tagged(reply)
    if found:
        return found[0]
    return parsing.clean(parsing.strip_variation((reply or "").strip()))


PARAPHRASE_PROMPT = Signature("""Write a variation of the following instruction that keeps its meaning.

Input: {prompt}

Output:""", clean_paraphrase)


# --- the optimizer ------------------------------------------------------------------------------------------------

@dataclass
class _Proposal:
    text: str | None  # None: an untagged reply that is not a prompt
    origin: str
    info: dict[str, Any]
    truncated: bool = False


@register
class ProTeGi(Optimizer):
    presets = {"paper": {}}  # the defaults are the paper's
    name = "protegi"
    title = "ProTeGi (textual gradients + beam search)"
    paper = "Pryzant et al., Automatic Prompt Optimization with \"Gradient Descent\" and Beam Search, EMNLP 2023"

    class Params(Params):
        rounds: int = Field(6, ge=0, description="Expansion rounds of the beam search (a step 0 scores the initial "
                                                 "prompt first)")
        beam_size: int = Field(4, ge=1, description="Prompts kept in the beam after each selection")
        minibatch_size: int = Field(64, ge=1, description="Train examples scored per round to find each prompt's "
                                                          "errors")
        n_gradients: int = Field(4, ge=0, description="Gradient prompts per beam prompt, each on its own sample of "
                                                      "errors")
        errors_per_gradient: int = Field(4, ge=1, description="Wrong examples shown in each gradient prompt")
        gradients_per_error: int = Field(1, ge=1, description="Reasons asked for per gradient prompt (num_feedbacks)")
        steps_per_gradient: int = Field(1, ge=1, description="Improved prompts asked for per reason (edit prompt)")
        mc_samples_per_step: int = Field(2, ge=0, description="Monte-Carlo paraphrases per new prompt and per parent")
        max_expansion_factor: int = Field(8, ge=1, description="At most this many new candidates per parent "
                                                               "(random sample when more)")
        reject_on_errors: bool = Field(False, description="When over the cap, keep the candidates that do best on up "
                                                          "to 16 of the parent's errors instead of a random sample")
        evaluator: Literal["ucb", "ucb-e", "sr", "sh", "bf"] = Field(
            "ucb", description="Beam selection: UCB bandit (paper), UCB-E, successive rejects, successive halving "
                               "or brute force (the code's CLI default)")
        eval_rounds: int = Field(8, ge=1, description="UCB rounds per selection")
        eval_prompts_per_round: int = Field(8, ge=1, description="Candidates scored per UCB round (highest bounds)")
        samples_per_eval: int = Field(32, ge=1, description="Train examples per candidate per UCB round; the "
                                                            "selection budget is this x rounds x prompts per round")
        c: float = Field(1.0, ge=0.0, description="UCB exploration constant (higher explores more)")
        temperature: float = Field(0.7, ge=0.0, le=2.0, description="Optimizer-model temperature for the gradient, "
                                                                   "edit and paraphrase calls")
        fit_budget: bool = Field(True, description="With a call cap, shrink the selection and expansion sizes (then "
                                                   "the rounds) until min_rounds whole rounds fit (a Plan event "
                                                   "says how); off: the paper's sizes until the cap stops the run "
                                                   "(ours)")
        min_rounds: int = Field(2, ge=1, description="With a call cap: the whole rounds the plan keeps before it "
                                                     "cuts rounds (ours)")

    p: ProTeGi.Params

    # --- the loop -------------------------------------------------------------------------------------------------
    def run(self) -> Iterator[Event]:
        ctx, p = self.ctx, self.p
        self._preds: dict[str, dict[str, Prediction]] = {}
        self._grad_no = 0
        init = yield from ctx.propose(ctx.initial_prompt, step=0, origin="initial")
        if init is None:
            raise ValueError("the initial prompt is empty")
        yield from self.score(init, ctx.train, step=0, purpose="baseline")
        beam = [init]
        yield ctx.step_done(0, init, "train", beam)
        plan = self.plan()
        if plan is not None:
            yield plan
            self.p = p = p.model_copy(update=plan.settings)
        for step in range(1, p.rounds + 1):
            minibatch = ctx.sample(ctx.train, p.minibatch_size)  # one minibatch per round, shared by the beam
            pool = list(beam)
            for parent in beam:
                children = yield from self.expand(parent, minibatch, step)
                pool.extend(c for c in children if c.id not in {x.id for x in pool})
            beam = yield from self.select(pool, step)
            yield ctx.step_done(step, beam[0], "train", beam)

    # --- the search's size under a call cap (ours) -----------------------------------------------------------------
    SHRINK = (("samples_per_eval", 8), ("eval_rounds", 2), ("max_expansion_factor", 2), ("mc_samples_per_step", 0),
              ("n_gradients", 1), ("minibatch_size", 16), ("beam_size", 2))

    def plan(self) -> Plan | None:
        """At the paper's sizes one selection alone is 8 x 8 x 32 = 2,048 calls, so a 300-call cap ended ProTeGi
        mid-selection with nothing chosen (measured). Halve each size in turn, down to a floor, until min_rounds
        whole rounds (expansion and selection) fit the allowance left after the baseline; then cut rounds. Each
        selection pulls every candidate at least once (measured: a 2 x 2 selection over 6 candidates dropped the
        initial prompt from the beam without scoring it), so prompts per round follow the pool."""
        ctx, p = self.ctx, self.p
        if ctx.call_allowance is None or not p.fit_budget or p.rounds == 0 or p.evaluator not in ("ucb", "ucb-e"):
            return None
        allowance = max(0, ctx.call_allowance - len(ctx.train))  # the baseline on train was paid from it
        rounds = min(p.rounds, p.min_rounds)
        sizes = {name: getattr(p, name) for name, _ in self.SHRINK}
        sizes["eval_prompts_per_round"] = p.eval_prompts_per_round
        full = self.cost(sizes, rounds)
        if full <= allowance:
            return None

        def cost(q: dict[str, int], r: int) -> int:
            return self.cost(self.covering(q, r), r)

        changed = True
        while cost(sizes, rounds) > allowance and changed:
            changed = False
            for name, floor in self.SHRINK:
                if cost(sizes, rounds) <= allowance:
                    break
                if sizes[name] > floor:
                    sizes[name] = max(floor, sizes[name] // 2)
                    changed = True
        while rounds > 1 and cost(sizes, rounds) > allowance:
            rounds -= 1
        sizes = self.covering(sizes, rounds)
        settings = {k: v for k, v in sizes.items() if v != getattr(p, k)}
        defaults = {k: getattr(p, k) for k in settings}
        if rounds < p.min_rounds:
            settings["rounds"], defaults["rounds"] = rounds, p.rounds
        return Plan(step=1, allowance=allowance, settings=settings, defaults=defaults,
                    estimated_calls=self.cost(sizes, rounds),
                    note=f"{min(p.rounds, p.min_rounds)} whole rounds at the paper's sizes need about {full} calls, "
                         f"the allowance after the baseline is {allowance}: smaller selections and expansions, "
                         f"{rounds} round(s) at least")

    @staticmethod
    def covering(q: dict[str, int], rounds: int) -> dict[str, int]:
        """q with enough prompts per bandit round that every candidate of the largest pool is pulled once."""
        pool = (q["beam_size"] if rounds > 1 else 1) * (1 + q["max_expansion_factor"])
        return {**q, "eval_prompts_per_round": min(pool, -(-pool // q["eval_rounds"]))}

    def cost(self, q: dict[str, int], rounds: int) -> int:
        """Worst-case calls of `rounds` rounds with sizes q (the initial prompt knows all of train: free for it)."""
        p, n = self.p, len(self.ctx.train)
        calls, beam = 0, 1
        for r in range(rounds):
            asks = q["n_gradients"] * (1 + p.gradients_per_error)  # a gradient request, then one edit per reason
            asks += q["mc_samples_per_step"] * (q["n_gradients"] * p.gradients_per_error * p.steps_per_gradient + 1)
            calls += beam * ((0 if r == 0 else min(q["minibatch_size"], n)) + asks)
            pool = beam * (1 + q["max_expansion_factor"])
            calls += q["eval_rounds"] * min(q["eval_prompts_per_round"], pool) * min(q["samples_per_eval"], n)
            beam = min(q["beam_size"], pool)
        return calls

    # --- scoring with reuse ---------------------------------------------------------------------------------------
    def score(self, cand: Candidate, examples: Sequence[Example], *, step: int,
              purpose: str) -> Generator[Event, None, list[Prediction]]:
        """Predictions of `cand` on `examples` (train), scoring only the examples not scored for it before."""
        known = self._preds.setdefault(cand.id, {})
        done = cand.results.get("train", {})
        todo, seen = [], set()
        for ex in examples:
            if (ex.id not in known or ex.id not in done) and ex.id not in seen:
                todo.append(ex)
                seen.add(ex.id)
        if todo:
            res = yield from self.ctx.score(cand, todo, "train", step=step, purpose=purpose)
            for pr in res.predictions:
                known[pr.example_id] = pr
        return [known[ex.id] for ex in examples]

    # --- expansion ------------------------------------------------------------------------------------------------
    def expand(self, parent: Candidate, minibatch: Sequence[Example], step: int) -> Gen:
        """Minibatch errors -> gradients -> edits -> paraphrases -> dedupe -> at most max_expansion_factor children."""
        ctx, p = self.ctx, self.p
        preds = yield from self.score(parent, minibatch, step=step, purpose="minibatch")
        by_id = {ex.id: ex for ex in minibatch}
        errors = [(by_id[pr.example_id], pr) for pr in preds if not pr.correct]
        proposals: list[_Proposal] = []
        if errors:  # ours: with no error there is nothing to criticise (the official code still asks)
            for _ in range(p.n_gradients):
                shown = ctx.sample(errors, p.errors_per_gradient)
                for gid, reason, error_string in (yield from self.gradients(parent, shown, step)):
                    edits = yield from self.edit(parent, error_string, reason, gid, step)
                    proposals.extend(edits)
        # Monte-Carlo paraphrases of every usable new prompt and of the parent itself (as the official code does)
        sources: list[tuple[str, dict[str, Any]]] = []
        for pr in proposals:
            if self._usable(pr, parent) and pr.text not in [s for s, _ in sources]:
                sources.append((pr.text, {"gradient_id": pr.info.get("gradient_id")}))
        sources.append((parent.text, {"gradient_id": None}))
        for text, info in sources:
            for _ in range(p.mc_samples_per_step):
                proposals.append((yield from self.paraphrase(parent, text, info, step)))
        return (yield from self.admit(parent, proposals, errors, step))

    def gradients(self, parent: Candidate, shown: list[tuple[Example, Prediction]],
                  step: int) -> Generator[Event, None, list[tuple[str, str, str]]]:
        """One gradient prompt on these errors; returns (gradient_id, reason, error_string) per reason."""
        p = self.p
        error_string = "\n\n".join(
            render(ERROR_BLOCK, i=i, input=input_text(ex), gold=ex.label, prediction=pred_text(pr))
            for i, (ex, pr) in enumerate(shown, start=1))
        msg = GRADIENT_PROMPT.render(prompt=parent.text, error_string=error_string, num_feedbacks=p.gradients_per_error)
        ref = f"g{step}.{self._grad_no}"
        self._grad_no += 1
        comp = yield from self.ctx.ask("protegi.gradient", [{"role": "user", "content": msg}], step=step, ref=ref,
                                       temperature=p.temperature)
        reasons = GRADIENT_PROMPT.parse(comp.text, truncated=comp.truncated)
        errors = [{"id": ex.id, "input": input_text(ex), "gold": ex.label, "prediction": pred_text(pr)}
                  for ex, pr in shown]
        out = []
        for j, reason in enumerate(reasons[:p.gradients_per_error]):  # ours: as many as asked (the code keeps all)
            gid = ref if j == 0 else f"{ref}.{j}"
            yield Gradient(step=step, gradient_id=gid, parent_id=parent.id, errors=errors, critique=reason)
            out.append((gid, reason, error_string))
        return out

    def edit(self, parent: Candidate, error_string: str, reason: str, gid: str,
             step: int) -> Generator[Event, None, list[_Proposal]]:
        """The edit prompt: the errors and the reason in, steps_per_gradient improved prompts out."""
        p = self.p
        msg = EDIT_PROMPT.render(prompt=parent.text, error_string=error_string, gradient=reason,
                                 steps_per_gradient=p.steps_per_gradient)
        comp = yield from self.ctx.ask("protegi.edit", [{"role": "user", "content": msg}], step=step, ref=gid,
                                       temperature=p.temperature)
        texts, how = EDIT_PROMPT.parse(comp.text, n=p.steps_per_gradient, max_words=p.max_prompt_words)
        return [_Proposal(t, "gradient_edit", {"gradient_id": gid, "parsed": how}, comp.truncated) for t in texts]

    def paraphrase(self, parent: Candidate, text: str, info: dict[str, Any],
                   step: int) -> Generator[Event, None, _Proposal]:
        msg = PARAPHRASE_PROMPT.render(prompt=text)
        comp = yield from self.ctx.ask("protegi.paraphrase", [{"role": "user", "content": msg}], step=step,
                                       ref=info.get("gradient_id") or parent.id, temperature=self.p.temperature)
        src = candidate_id(text)
        return _Proposal(PARAPHRASE_PROMPT.parse(comp.text), "paraphrase", {**info, "source": src}, comp.truncated)

    def _usable(self, pr: _Proposal, parent: Candidate) -> bool:
        t = (pr.text or "").strip()
        return bool(t) and not pr.truncated and t != parent.text.strip() and len(t.split()) <= self.p.max_prompt_words

    def admit(self, parent: Candidate, proposals: list[_Proposal], errors: list[tuple[Example, Prediction]],
              step: int) -> Gen:
        """Reject bad proposals (with a reason), dedupe, and cap the rest at max_expansion_factor per parent."""
        ctx, p = self.ctx, self.p
        pending: list[_Proposal] = []
        seen: set[str] = set()
        for pr in proposals:
            text = (pr.text or "").strip()
            if pr.text is None:
                yield CandidateRejected(step=step, text="", reason="no_tags", parents=[parent.id], origin=pr.origin)
            elif text and text in seen:
                yield CandidateRejected(step=step, text=text[:2000], reason="duplicate", parents=[parent.id],
                                        origin=pr.origin)
            elif not self._usable(pr, parent) or candidate_id(text) in ctx.candidates:
                yield from ctx.propose(text, step=step, parents=[parent.id], origin=pr.origin, truncated=pr.truncated,
                                       max_words=p.max_prompt_words, info=pr.info)  # emits the rejection
            else:
                seen.add(text)
                pending.append(pr)
        if len(pending) > p.max_expansion_factor and p.reject_on_errors:
            return (yield from self._keep_best_on_errors(parent, pending, errors, step))
        keep = pending
        if len(pending) > p.max_expansion_factor:
            picked = set(ctx.sample(range(len(pending)), p.max_expansion_factor))
            keep = [pr for i, pr in enumerate(pending) if i in picked]
            for i, pr in enumerate(pending):
                if i not in picked:
                    yield CandidateRejected(step=step, text=pr.text[:2000], reason="expansion_cap",
                                            parents=[parent.id], origin=pr.origin)
        children = []
        for pr in keep:
            cand = yield from ctx.propose(pr.text, step=step, parents=[parent.id], origin=pr.origin,
                                          max_words=p.max_prompt_words, info=pr.info)
            if cand is not None:
                children.append(cand)
        return children

    def _keep_best_on_errors(self, parent: Candidate, pending: list[_Proposal],
                             errors: list[tuple[Example, Prediction]], step: int) -> Gen:
        """reject_on_errors (official option): score up to 2 x cap random proposals on up to 16 of the parent's
        errors and keep the cap best; the others are recorded as rejected."""
        ctx, p = self.ctx, self.p
        cap = p.max_expansion_factor
        picked = set(ctx.sample(range(len(pending)), 2 * cap))
        for i, pr in enumerate(pending):
            if i not in picked:
                yield CandidateRejected(step=step, text=pr.text[:2000], reason="expansion_cap", parents=[parent.id],
                                        origin=pr.origin)
        err_exs = [ex for ex, _ in ctx.sample(errors, 16)]
        scored: list[tuple[float, int, Candidate]] = []
        for i, pr in enumerate(pending):
            if i not in picked:
                continue
            cand = yield from ctx.propose(pr.text, step=step, parents=[parent.id], origin=pr.origin,
                                          max_words=p.max_prompt_words, info=pr.info)
            if cand is None:
                continue
            preds = yield from self.score(cand, err_exs, step=step, purpose="reject_on_errors")
            scored.append((sum(x.correct for x in preds) / max(len(preds), 1), i, cand))
        scored.sort(key=lambda s: (-s[0], s[1]))
        for _, _, cand in scored[cap:]:
            yield CandidateRejected(step=step, text=cand.text[:2000], reason="fails_on_errors", parents=[parent.id],
                                    origin=cand.origin)
        return [cand for _, i, cand in sorted(scored[:cap], key=lambda s: s[1])]

    # --- selection ------------------------------------------------------------------------------------------------
    def select(self, pool: list[Candidate], step: int) -> Generator[Event, None, list[Candidate]]:
        """Best-arm identification over train examples; the top beam_size of the pool form the next beam."""
        ctx, p = self.ctx, self.p
        budget = p.samples_per_eval * p.eval_rounds * p.eval_prompts_per_round
        n = len(pool)

        def pull(arms: list[int], k: int) -> Generator[Event, None, list[list[bool]]]:
            exs = ctx.stratified(ctx.train, k)  # fresh examples, shared by the arms of this round
            out = []
            for a in arms:
                preds = yield from self.score(pool[a], exs, step=step, purpose="bandit")
                out.append([pr.correct for pr in preds])
            return out

        if n == 1:  # nothing to choose (the official code skips the evaluation too)
            res = BanditResult(p.evaluator, [0.0], [0])
        elif p.evaluator in ("ucb", "ucb-e"):
            res = yield from ucb_bandit(n, pull, rounds=p.eval_rounds, per_round=p.eval_prompts_per_round,
                                        samples=min(p.samples_per_eval, len(ctx.train)), c=p.c, mode=p.evaluator,
                                        rng=ctx.rng)
        elif p.evaluator == "sr":
            res = yield from successive_rejects(n, pull, keep=p.beam_size, budget=budget, rng=ctx.rng)
        elif p.evaluator == "sh":
            res = yield from successive_halving(n, pull, keep=p.beam_size, budget=budget, rng=ctx.rng)
        else:
            res = yield from brute_force(n, pull, budget=budget, n_examples=len(ctx.train))
        beam = [pool[i] for i in res.order()[:p.beam_size]]
        means = res.means()
        estimates = []
        for i, cand in enumerate(pool):
            e: dict[str, Any] = {"candidate_id": cand.id, "mean": means[i], "n": res.counts[i],
                                 "origin": cand.origin, "parents": cand.parents}
            if res.ucb is not None:
                e["ucb"] = res.ucb[i]
            if res.ranks is not None:
                e["rank"] = res.ranks[i]
            estimates.append(e)
        yield Selection(step=step, method=p.evaluator, estimates=estimates, survivors=[c.id for c in beam])
        return beam

