"""PE2: "Prompt Engineering a Prompt Engineer" (Ye, Axmed, Pryzant, Khani; Findings of ACL 2024).

The optimizer model is given what a human prompt engineer would use: (a) a two-step task description (first
analyse, then rewrite), (b) a context specification (the full template, showing where the prompt sits relative to
the input), and (c) a five-question reasoning template to fill in for each failure. The search (Algorithm 1) keeps
every candidate: at each step the `n` best by dev score among ALL candidates so far are expanded (back-tracking), each
`m` times on a fresh batch of the parent's errors on train (hard negatives); the result is the best by dev score.

No official code exists (the authors used the guidance toolkit); the meta-prompt follows the paper's Appendix F.4 in
our own words. Step size, optimization history and a tutorial were tried in the paper and left out of the final
method: they are knobs here, off by default. Ours: proposals over the length cap are rejected (`enforce_length`; the
paper only instructs), ties in dev score go to the older candidate, a parent without errors on train falls back
to a random train batch (recorded on the proposal and on each example shown), and a rejected rewrite is asked for
again, same reasoning, up to `regenerate` times (off in the paper presets): a small optimizer model that returns the
prompt unchanged otherwise leaves a planned step with nothing to score.

With a call cap (ours, `fit_budget`): when the search's worst case costs more than the run's call allowance, the
run plans the largest complete search it pays for (most proposals, then most steps): a smaller train sample to find
each parent's errors, then fewer parents and proposals a step, then fewer steps; the plan is an event. Before, the
first parent's error scan on all of train could take the whole allowance and leave no proposal.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator, Sequence

from pydantic import Field

from ..base import Candidate, Gen, Optimizer, Params, register
from ..data import Example, render_template
from ..evaluate import Prediction
from ..events import EditBudget, Event, Plan, Reasoning, Selection
from . import parsing
from .induction import INDUCE_PROMPT, demo_block
from .text import Signature, input_text, render, word_distance

# --- meta-prompts (our wording; the paper's turns, sections and placeholders), each with the parser of its reply

SYSTEM = "You are a helpful assistant."

TUTORIAL = """Let's first read a short note on prompt engineering.

A good prompt states the task plainly, names the expected output format (for example the exact set of labels), and spells out anything the model tends to get wrong. Worked steps ("think step by step", "first find X, then Y") help on reasoning tasks; concrete definitions help where labels are ambiguous. Prompts should be specific but not longer than needed, and should describe the task as a whole rather than a single example.

"""

TWO_STEP = """{tutorial}You are going to help me engineer a prompt for a large language model. A prompt is a paragraph of text that describes what the model should do and asks it to produce a particular output. The prompt is joined with an input text, and the model then writes the output.

The work has two steps:

Step 1: I will give you the current prompt, how the prompt is joined with the input text (the "full template"), and {batch_size} example(s) on which the prompt was tried. Each example shows the input, the model's reasoning, the model's final answer and the correct label. Using the reasoning template I will provide, analyse for each example whether the prompt describes the task precisely, and suggest changes to the prompt where needed.

Step 2: you will review your reasoning from Step 1 and write a new, improved prompt. Optionally, the history of earlier refinements will be shown too. Some extra instructions (for example how many words you may change) will also be given."""

AGREE = ("Sure, I'd be glad to help with this prompt engineering problem. Please send me the refinement history (if "
         "any), the current prompt and the examples you have.")

EXAMPLE_BLOCK = """### Example {i}
Input: {input}
Output: {answer}
Reasoning: {reasoning}
Label: {label}"""

ANALYSE = Signature("""## Current Prompt
{prompt}

## Full Template
This shows how the prompt is joined with the input text. The prompt may come before the input text or after it, and the full template may also hold other fixed text.
```
{full_template}
```

## Examples
{examples}

## Instructions
For some of these examples, the output does not match the label. This may be because the prompt is misleading or does not describe the task precisely.
The labels are absolutely correct; the prompt (the task description) may be wrong and may need changing.
For each example, fill in the reasoning template below step by step:

### Example <id>
Input: <input>
Output: <output>
Label: <label>
1. Is the output correct compared with the label: <yes or no, and your reasoning>
2. Does the output correctly follow the given prompt: <yes or no, and your reasoning>
3. Does the prompt correctly describe the task shown by the input-label pair: <yes or no, and your reasoning>
4. To get the correct label, is it necessary to edit the prompt: <yes or no, and your reasoning>
5. If yes, give a detailed analysis and actionable suggestions for editing the prompt: <analysis and suggestions>""")

_FENCE = re.compile(r"```[a-zA-Z]*[ \t]*\n(.*?)(?:\n?```|$)", re.S)
_HEADING = re.compile(r"^\s*#+\s*(?:new|improved|updated|revised|refined|optimi[sz]ed)?\s*prompt\s*:?\s*\n", re.I)


def parse_prompt(reply: str) -> parsing.Parsed:
    """The new prompt in a reply that should be the prompt only: <START>/<END> or a code fence win, else the whole
    reply without quotes, labels ("New prompt:") or chatter."""
    text = reply or ""
    found = parsing.tagged(text)
    if found:
        return parsing.Parsed(found[0], "tagged")
    m = _FENCE.search(text)
    if m and parsing.clean(m.group(1)):
        return parsing.Parsed(parsing.clean(m.group(1)), "fenced")
    t = _HEADING.sub("", text.strip())
    return parsing.Parsed(parsing.clean(t), "whole")


REWRITE = Signature("""Now please review your reasoning in Step 1 carefully and help with Step 2: refining the prompt.
{history}
## Current Prompt
{prompt}

## Instructions
{step_size_line}{length_line}* Edit the prompt so that the new prompt does not fail on these examples anymore.
* Reply with the new prompt only. Do not include any other text.""", parse_prompt)

HISTORY = """
## Prompt Refinement History
Higher accuracy is better. If some edits were useful in the past, it may be a good idea to keep editing in the same direction.
{history}
"""

STEP_SIZE_LINE = "* You may change at most {step_size} words of the current prompt.\n"
LENGTH_LINE = "* The whole prompt must be shorter than {limit} words.\n"


def one_line(reply: str) -> str:
    """The history summary as one line of the lineage shown later."""
    return " ".join(reply.split())


SUMMARY = Signature("""Now summarise, in at most 200 words, the limitations of the prompt you found and the changes you made at this step. Use this format:
* At step {step}, the prompt has limitations such as <limitations>. Changes to the prompt include <changes>.""", one_line)


Shown = tuple[Example, Prediction]  # an example shown to the optimizer model, with the parent's prediction on it


def full_template(template: str, input_cols: Sequence[str], prompt: str, system: str | None = None) -> str:
    """The context specification: the task template with the prompt in place and each input shown as <input>."""
    if len(input_cols) == 1:
        fields = {input_cols[0]: "<input>"}
    else:
        fields = {c: f"<{c}>" for c in input_cols}
    out = render_template(template, fields, prompt)
    return f"[system message] {system}\n{out}" if system else out


def _short(text: str, limit: int = 1500) -> str:
    t = (text or "").strip()
    return t if len(t) <= limit else t[:limit] + " ..."


# --- the optimizer ------------------------------------------------------------------------------------------------

@register
class PE2(Optimizer):
    presets = {"paper": {"prompt_length_limit": 50, "enforce_length": False, "induced_start": 0, "regenerate": 0},
               "paper (induction tasks)": {"prompt_length_limit": 50, "enforce_length": False, "induced_start": 5,
                                           "regenerate": 0}}
    name = "pe2"
    title = "PE2 (prompt engineering a prompt engineer)"
    paper = "Ye, Axmed, Pryzant, Khani, Prompt Engineering a Prompt Engineer, Findings of ACL 2024"

    class Params(Params):
        steps: int = Field(3, ge=0, description="Search steps T (a step 0 scores the initial prompt first)")
        n_parents: int = Field(4, ge=1, description="Prompts expanded per step (n): the best by dev score among all "
                                                    "candidates so far (back-tracking)")
        proposals_per_parent: int = Field(4, ge=1, description="New prompts written per parent per step (m), each "
                                                               "from its own batch")
        batch_size: int = Field(2, ge=1, description="Examples shown per proposal: the parent's errors on train")
        hard_negatives: bool = Field(True, description="Draw each batch from the parent's train errors (paper); off: "
                                                       "a random train batch")
        train_sample: int | None = Field(None, ge=1, description="Train examples scored per parent to find its "
                                                                 "errors (one sample per run); empty: all of train")
        prompt_length_limit: int | None = Field(50, ge=2, description="Tell the model the prompt must be shorter "
                                                                      "than this many words (200 for long tasks); "
                                                                      "empty: no such line")
        enforce_length: bool = Field(False, description="Ours: also reject proposals at or over the length limit "
                                                        "(the paper only instructs the optimizer model)")
        induced_start: int = Field(0, ge=0, le=50, description="APE-style starting prompts induced from train "
                                                               "input/output pairs and scored with the initial one "
                                                               "(the paper's Instruction Induction and "
                                                               "Counterfactual runs); 0: the initial prompt only")
        induced_demos: int = Field(5, ge=1, description="Input/output pairs shown per induced starting prompt")
        step_size: int | None = Field(None, ge=1, description="Tell the model it may change at most this many words "
                                                              "(tried in the paper, not in final PE2); empty: off")
        use_history: bool = Field(False, description="Ask for a summary of limitations and changes after each "
                                                     "proposal and show the lineage's history later (not in final "
                                                     "PE2)")
        tutorial: bool = Field(False, description="Start the meta-prompt with a short prompt-engineering note (the "
                                                  "paper tried a long tutorial; not in final PE2)")
        reasoning_temperature: float = Field(0.0, ge=0.0, le=2.0, description="Optimizer-model temperature of the "
                                                                             "Step 1 reasoning")
        temperature: float = Field(0.7, ge=0.0, le=2.0, description="Optimizer-model temperature of the new prompt "
                                                                   "(and of the history summary)")
        proposal_max_tokens: int = Field(300, ge=16, description="Max tokens of the new-prompt reply")
        regenerate: int = Field(2, ge=0, description="Ours: new replies to the rewrite turn (same reasoning) for a "
                                                     "rejected proposal, so a step is not left with nothing to score "
                                                     "(the 1.5B returned the prompt unchanged 3 times in 4); 0: off")
        fit_budget: bool = Field(True, description="With a call cap, plan the largest complete search it pays for "
                                                   "(a smaller error-scan sample, then fewer parents and proposals, "
                                                   "then fewer steps) instead of being cut mid-step")
        min_steps: int = Field(2, ge=1, description="With fit_budget: steps kept before proposals a step are cut")
        min_error_sample: int = Field(20, ge=1, description="With fit_budget: the smallest train sample scanned for "
                                                            "a parent's errors")

    p: PE2.Params

    # --- the loop (Algorithm 1) -----------------------------------------------------------------------------------
    def run(self) -> Iterator[Event]:
        ctx, p = self.ctx, self.p
        self._preds: dict[tuple[str, str], dict[str, Prediction]] = {}
        self._summaries: dict[str, str] = {}
        self._order: list[str] = []  # candidates in creation order (ties go to the older one)
        self._ref_no = 0
        self.split = "dev" if ctx.dev else "train"  # ours: without a dev split, select on train
        plan = self.plan()
        if plan is not None:
            yield plan
            self.p = p = p.model_copy(update=plan.settings)
        pool = ctx.train
        if p.train_sample is not None and p.train_sample < len(ctx.train):
            pool = ctx.sample(ctx.train, p.train_sample)
        self._error_pool = list(pool)

        init = yield from ctx.propose(ctx.initial_prompt, step=0, origin="initial")
        if init is None:
            raise ValueError("the initial prompt is empty")
        self._order.append(init.id)
        yield from self.score_dev(init, step=0, purpose="baseline")
        for i in range(p.induced_start):
            cand = yield from self.induce_one(i)
            if cand is not None:
                self._order.append(cand.id)
                yield from self.score_dev(cand, step=0, purpose="selection")
        parents = yield from self.select(0)
        yield ctx.step_done(0, self.best(), self.split, parents)
        for step in range(1, p.steps + 1):
            for parent in parents:
                for _ in range(p.proposals_per_parent):
                    child = yield from self.propose_one(parent, step)
                    if child is not None:
                        yield from self.score_dev(child, step=step, purpose="selection")
            parents = yield from self.select(step)
            yield ctx.step_done(step, self.best(), self.split, parents)

    # --- the plan under a call cap ---------------------------------------------------------------------------------
    def cost(self, steps: int, n_parents: int, per_parent: int, sample: int) -> tuple[int, int]:
        """(worst-case calls, proposals) of a search: the baseline and induced starts on the selection split, then
        per step each parent's error scan (as if every parent were new) and its proposals (two requests, a third
        with the history summary, a random batch when it has no errors, the child on the selection split)."""
        p, n = self.p, len(self.ctx.dev if self.split == "dev" else self.ctx.train)
        calls, cands, proposals = n + p.induced_start * (1 + n), 1 + p.induced_start, 0
        each = 2 + self.retries() + (1 if p.use_history else 0) + p.batch_size + n
        for _ in range(steps):
            parents = min(n_parents, cands)
            calls += parents * (sample + per_parent * each)
            cands += parents * per_parent
            proposals += parents * per_parent
        return calls, proposals

    def plan(self) -> Plan | None:
        ctx, p = self.ctx, self.p
        full_sample = min(p.train_sample or len(ctx.train), len(ctx.train))
        sizes = (p.steps, p.n_parents, p.proposals_per_parent, full_sample)
        if ctx.call_allowance is None or not p.fit_budget or p.steps == 0 or self.cost(*sizes)[0] <= ctx.call_allowance:
            return None
        allowance, floor = ctx.call_allowance, min(p.min_error_sample, full_sample)
        min_steps = min(p.min_steps, p.steps)
        best, key = None, None
        for steps in range(1, p.steps + 1):
            for par in range(1, p.n_parents + 1):
                for m in range(1, p.proposals_per_parent + 1):
                    for sample in range(full_sample, floor - 1, -1):
                        calls, n_prop = self.cost(steps, par, m, sample)
                        if calls <= allowance:
                            k = (steps >= min_steps, n_prop, steps, sample, -par)  # no idle parents
                            if key is None or k > key:
                                best, key = (steps, par, m, sample), k
                            break  # the largest sample that fits at these sizes
        if best is None:  # not even one proposal fits: the smallest search, which the cap cuts
            best = (1, 1, 1, floor)
        steps, par, m, sample = best
        calls = self.cost(*best)[0]
        return Plan(step=0, allowance=allowance,
                    defaults={"steps": p.steps, "n_parents": p.n_parents, "proposals_per_parent": p.proposals_per_parent,
                              "train_sample": full_sample},
                    settings={"steps": steps, "n_parents": par, "proposals_per_parent": m, "train_sample": sample},
                    estimated_calls=calls,
                    note=f"the paper's sizes need about {self.cost(*sizes)[0]} calls, the allowance is {allowance}: "
                         f"{steps} step(s) of {par} parent(s) x {m} proposal(s), each parent's errors found on "
                         f"{sample} train examples")

    def induce_one(self, i: int) -> Generator[Event, None, Candidate | None]:
        """One induced starting prompt (forward-mode induction on a fresh train sample, as APE does)."""
        ctx, p = self.ctx, self.p
        demos = ctx.sample(ctx.train, p.induced_demos)
        msg = INDUCE_PROMPT.render(demos=demo_block(demos))
        comp = yield from ctx.ask("pe2.induce", [{"role": "user", "content": msg}], step=0, ref=f"i{i}",
                                  temperature=p.temperature, max_tokens=p.proposal_max_tokens)
        text, how = INDUCE_PROMPT.parse(comp.text)
        return (yield from ctx.propose(text if how != "echo" else "", step=0, origin="induced",
                                       truncated=comp.truncated and how != "cut", max_words=self.max_words(),
                                       info={"demo_ids": [d.id for d in demos], "parsed": how}))

    # --- scoring with reuse ---------------------------------------------------------------------------------------
    def predict(self, cand: Candidate, examples: Sequence[Example], split: str, *, step: int,
                purpose: str) -> Generator[Event, None, list[Prediction]]:
        """Predictions of `cand` on `examples`, scoring only those not scored for it before on this split."""
        known = self._preds.setdefault((cand.id, split), {})
        todo, seen = [], set()
        for ex in examples:
            if ex.id not in known and ex.id not in seen:
                todo.append(ex)
                seen.add(ex.id)
        if todo:
            res = yield from self.ctx.score(cand, todo, split, step=step, purpose=purpose)
            for pr in res.predictions:
                known[pr.example_id] = pr
        return [known[ex.id] for ex in examples]

    def score_dev(self, cand: Candidate, *, step: int, purpose: str) -> Gen:
        examples = self.ctx.dev if self.split == "dev" else self.ctx.train
        if cand.last.get(self.split) is None:
            yield from self.predict(cand, examples, self.split, step=step, purpose=purpose)
        return cand.last.get(self.split)

    def dev_score(self, cand: Candidate) -> float:
        s = cand.last.get(self.split)
        return s if s is not None else float("-inf")

    def ranked(self) -> list[Candidate]:
        """All candidates, best dev score first; ties go to the older candidate."""
        cands = [self.ctx.candidates[c] for c in self._order]
        return [c for _, _, c in sorted((-self.dev_score(c), i, c) for i, c in enumerate(cands))]

    def best(self) -> Candidate:
        return self.ranked()[0]

    def select(self, step: int) -> Generator[Event, None, list[Candidate]]:
        """Back-tracking: the next parents are the n best by dev score among every candidate so far."""
        ranked = self.ranked()
        parents = ranked[:self.p.n_parents]
        estimates = [{"candidate_id": c.id, "mean": c.last.get(self.split), "n": c.n(self.split), "rank": r,
                      "step": c.step, "origin": c.origin, "parents": c.parents}
                     for r, c in enumerate(ranked, start=1)]
        yield Selection(step=step, method="backtracking", estimates=estimates, survivors=[c.id for c in parents])
        return parents

    # --- one proposal ---------------------------------------------------------------------------------------------
    def batch(self, parent: Candidate, step: int) -> Generator[Event, None, tuple[list[Shown], str]]:
        """batch_size examples with the parent's outputs: its errors on train (hard negatives), or a random train
        batch when it has none (or when hard negatives are off). Returns (examples, source)."""
        ctx, p = self.ctx, self.p
        if p.hard_negatives:
            preds = yield from self.predict(parent, self._error_pool, "train", step=step, purpose="errors")
            errors = [(ex, pr) for ex, pr in zip(self._error_pool, preds, strict=True) if not pr.correct]
            if errors:
                return ctx.sample(errors, p.batch_size), "errors"
            source = "train_no_errors"
        else:
            source = "train_random"
        exs = ctx.sample(self._error_pool, p.batch_size)
        preds = yield from self.predict(parent, exs, "train", step=step, purpose="batch")
        return list(zip(exs, preds, strict=True)), source

    def history(self, parent: Candidate) -> str:
        """The parent's lineage, oldest first: each prompt, its dev score and the summary of the edit that made it."""
        chain: list[Candidate] = []
        c: Candidate | None = parent
        while c is not None and c.id not in {x.id for x in chain}:
            chain.append(c)
            c = self.ctx.candidates.get(c.parents[0]) if c.parents else None
        lines = []
        for a in reversed(chain):
            if a.id in self._summaries:
                lines.append(self._summaries[a.id])
            s = a.last.get(self.split)
            acc = f"{s:.1%}" if s is not None else "not scored"
            lines.append(f'* Prompt at step {a.step}: "{a.text}" ({self.split} accuracy {acc})')
        return "\n".join(lines)

    def messages(self, parent: Candidate, shown: list[Shown]) -> list[dict[str, str]]:
        """The first four turns: system, two-step description, scripted agreement, prompt + template + examples."""
        p, task = self.p, self.ctx.task
        examples = "\n\n".join(
            render(EXAMPLE_BLOCK, i=i, input=input_text(ex), answer=pr.pred if pr.pred is not None else
                 "(no answer found)", reasoning=_short(pr.raw) or "(empty)", label=ex.label)
            for i, (ex, pr) in enumerate(shown, start=1))
        return [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": render(TWO_STEP, tutorial=TUTORIAL if p.tutorial else "",
                                             batch_size=len(shown))},
            {"role": "assistant", "content": AGREE},
            {"role": "user", "content": ANALYSE.render(prompt=parent.text, examples=examples,
                                                       full_template=full_template(task.template, task.input_cols,
                                                                                   parent.text, task.system))},
        ]

    def rewrite_turn(self, parent: Candidate) -> str:
        p = self.p
        return REWRITE.render(
            history=render(HISTORY, history=self.history(parent)) if p.use_history else "",
            prompt=parent.text,
            step_size_line=render(STEP_SIZE_LINE, step_size=p.step_size) if p.step_size else "",
            length_line=render(LENGTH_LINE, limit=p.prompt_length_limit) if p.prompt_length_limit else "")

    def retries(self) -> int:
        """Extra rewrite replies a rejected proposal may get: none at temperature 0, where a new one is the same."""
        return self.p.regenerate if self.p.temperature > 0 else 0

    def max_words(self) -> int:
        p = self.p
        if p.enforce_length and p.prompt_length_limit:
            return min(p.prompt_length_limit - 1, p.max_prompt_words)  # "shorter than L words"
        return p.max_prompt_words

    def propose_one(self, parent: Candidate, step: int) -> Generator[Event, None, Candidate | None]:
        ctx, p = self.ctx, self.p
        ref = f"pe2.{step}.{self._ref_no}"
        self._ref_no += 1
        shown, source = yield from self.batch(parent, step)
        msgs = self.messages(parent, shown)
        reasoning = yield from ctx.ask("pe2.reasoning", msgs, step=step, ref=ref,
                                       temperature=p.reasoning_temperature, max_tokens=p.optimizer_max_tokens)
        analysis = ANALYSE.parse(reasoning.text)
        yield Reasoning(step=step, parent_id=parent.id, proposal_ref=ref, reasoning=analysis,
                        examples=[{"id": ex.id, "input": input_text(ex), "output": pr.raw, "answer": pr.pred,
                                   "label": ex.label, "correct": pr.correct, "source": source}
                                  for ex, pr in shown], info={"batch_source": source})
        msgs = msgs + [{"role": "assistant", "content": analysis},
                       {"role": "user", "content": self.rewrite_turn(parent)}]
        for attempt in range(1 + self.retries()):  # (ours) a rejected rewrite is asked for again, same reasoning
            comp = yield from ctx.ask("pe2.propose", msgs, step=step, ref=ref if not attempt else f"{ref}.r{attempt}",
                                      temperature=p.temperature, max_tokens=p.proposal_max_tokens)
            text, how = REWRITE.parse(comp.text)
            info = {"parent": parent.id, "step": step, "batch": [ex.id for ex, _ in shown], "batch_source": source,
                    "ref": ref, "parsed": how, "reasoning_truncated": reasoning.truncated, "attempt": attempt}
            child = yield from ctx.propose(text, step=step, parents=[parent.id], origin="pe2_edit",
                                           max_words=self.max_words(), truncated=comp.truncated, info=info)
            if child is not None:
                break
        if p.step_size is not None:
            d = word_distance(parent.text, text)
            yield EditBudget(step=step, budget_words=p.step_size, schedule="fixed",
                             measured=[{"candidate_id": child.id if child else None, "text": text[:2000],
                                        "parent": parent.id, "distance_words": d,
                                        "within_budget": d <= p.step_size, "accepted": child is not None}])
        if child is not None and p.use_history:
            hmsgs = msgs + [{"role": "assistant", "content": comp.text},
                            {"role": "user", "content": SUMMARY.render(step=step)}]
            summ = yield from ctx.ask("pe2.history", hmsgs, step=step, ref=ref, temperature=p.temperature,
                                      max_tokens=200)
            self._summaries[child.id] = SUMMARY.parse(summ.text) or f"* At step {step}: (no summary)"
        if child is not None:
            self._order.append(child.id)
        return child
