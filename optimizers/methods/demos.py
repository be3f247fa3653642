"""Demo search: random search over sets of labelled demonstrations drawn from train, each set scored on dev with the
same instruction, the best kept (DSPy's LabeledFewShot inside BootstrapFewShotWithRandomSearch; MIPROv2 searches
demo sets the same way, jointly with instructions). Small task models respond to demonstrations more than to any
rewording (../shared/LOCAL_LLM.md, "Headroom"), so this runs on its own or after any instruction optimizer, on the
instruction that optimizer chose.

Demonstrations come from the train split only; dev decides between sets and test never enters (tests prove both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from pydantic import Field

from ..base import TIE_BREAK_HELP, Candidate, Context, Optimizer, Params, TieBreak, better, register
from ..budget import Amount, BudgetExceeded, Meter
from ..data import Example
from ..events import Event, StepDone
from ..prompt import Demo, draw_demos, instruction_of, join_prompt


class DemoParams(Params):
    k: int = Field(8, ge=1, le=32, description="Demonstrations per set, drawn from train, balanced across labels "
                                               "(DSPy: max_labeled_demos 16; 8 measured best here, see BENCHMARKS.md)")
    trials: int = Field(6, ge=1, le=200, description="Random demonstration sets tried, each scored on all of dev "
                                                     "(DSPy BootstrapFewShotWithRandomSearch: 16)")
    max_dev: int | None = Field(None, ge=1, description="Score the instruction and each set on this many dev "
                                                        "examples (one fixed random subset; empty: all of dev)")
    fit_budget: bool = Field(False, description="After another optimizer, under a call cap: size the search to half "
                                                "of the calls the report leaves (fewer sets, then a dev subset)")
    tie_break: TieBreak = Field("macro_f1", description=TIE_BREAK_HELP)
    extend_to: int | None = Field(None, ge=1, le=200, description="Draw more sets, up to this many in all, while "
                                                                  "the calls the optimizer left unspent pay for a "
                                                                  "whole set (set by fit_budget; DSPy's searches "
                                                                  "stop at their planned size)")


@register
class DemoSearch(Optimizer):
    name = "demos"
    title = "Demo search (random demonstration sets)"
    paper = ("DSPy BootstrapFewShotWithRandomSearch / LabeledFewShot (Khattab et al., 2023, "
             "arXiv:2310.03714)")
    Params = DemoParams

    def __init__(self, ctx: Context, params: Params | dict | None = None, *,
                 after: Callable[[], StepDone | None] | None = None):
        """after: the last step of the optimizer this search follows (its best instruction is the one kept)."""
        super().__init__(ctx, params)
        self._after = after

    def run(self) -> Iterator[Event]:
        ctx, p = self.ctx, self.p
        if not ctx.dev:
            raise ValueError("demo search needs a dev split to choose between demonstration sets (train holds the "
                             "demonstrations themselves)")
        last = self._after() if self._after else None
        step = last.step + 1 if last else 0
        if last and last.best_id in ctx.candidates:
            base = ctx.candidates[last.best_id]
        else:
            base = yield from ctx.propose(ctx.initial_prompt, step=step, origin="initial", allow_existing=True,
                                          allow_empty=True)
        dev = ctx.dev if p.max_dev is None or p.max_dev >= len(ctx.dev) else ctx.stratified(ctx.dev, p.max_dev)
        scores: dict[str, float] = {}

        def score(cand: Candidate):
            if len(dev) == len(ctx.dev) and cand.last.get("dev") is not None:
                scores[cand.id] = cand.last["dev"]
            else:
                res = yield from ctx.score(cand, dev, "dev", step=step, purpose="selection")
                scores[cand.id] = res.score

        yield from score(base)
        best = base
        yield self._done(step, best, scores)
        instruction = instruction_of(base.text)
        tried = 0
        while tried < p.trials or (tried < (p.extend_to or 0) and ctx.go_on(len(dev))):
            tried += 1
            step += 1
            demos = draw_demos(ctx.train, p.k, ctx.rng)
            cand = yield from ctx.propose(join_prompt(instruction, demos), step=step, parents=[base.id],
                                          origin="demos", info={"demo_ids": [d.id for d in demos], "k": len(demos)})
            if cand is not None and cand.id not in scores:
                yield from score(cand)
                if self._better(cand, best, scores, dev):
                    best = cand
            yield self._done(step, best, scores)

    def _better(self, cand: Candidate, best: Candidate, scores: dict[str, float], dev: Sequence[Example]) -> bool:
        return better(cand, best, scores[cand.id], scores[best.id], self.p.tie_break, "dev", dev,
                      self.ctx.task.labels)

    def _done(self, step: int, best: Candidate, scores: dict[str, float]) -> StepDone:
        done = self.ctx.step_done(step, best, "dev", [best])
        return done.model_copy(update={"best_score": scores[best.id]})


def share(ctx: Context, params: dict | None, meter: Meter, model: str, max_tokens: int) -> dict[str, Amount]:
    """The worst case of a demo search after another optimizer: every trial (and the chosen instruction) scored on
    all of dev (or max_dev of it), with the longest instruction allowed and the longest train examples as
    demonstrations; held on the meter from the start so the first optimizer leaves it."""
    p = DemoParams(**(params or {}))
    longest = sorted(ctx.train, key=lambda e: -sum(len(v) for v in e.fields.values()))[:p.k]
    filler = "x" * max(len(ctx.initial_prompt), 8 * p.max_prompt_words)  # an instruction at the word limit
    prompt = join_prompt(filler, [Demo.of(e) for e in longest])
    out: dict[str, Amount] = {}
    for i, ex in enumerate(ctx.dev[:p.max_dev]):
        one = meter.upper(model, ctx.task.messages(prompt, ex), max_tokens)[0]
        for t in range(p.trials + 1):
            out[f"demo-search:{t}:{i}"] = one
    return out


def then_demo_search(opt: Optimizer, ctx: Context, params: dict | None, last_step: Callable[[], StepDone | None],
                     on_start: Callable[[], None]) -> Iterator[Event]:
    """`opt`'s events, then a demo search on the instruction it chose (`on_start` releases the search's share). The
    optimizer stops where only the search's held share is left: the search then runs on that share."""
    try:
        yield from opt.run()
    except BudgetExceeded:
        pass
    on_start()
    yield from DemoSearch(ctx, params, after=last_step).run()


INSTRUCTION_OPTIMIZERS = ("ape", "protegi", "opro", "pe2", "gpo")


def follows_by_default(optimizer: str, labels: list[str] | None, fixed_demos: bool, embedded: bool) -> dict | None:
    """The demo search that follows an instruction optimizer unless the user says otherwise: on the embedded model,
    for a classification task without fixed demonstrations, sized to the call cap. Measured on the embedded 1.5B
    (BENCHMARKS.md): 8 demonstrations lifted support_triage from 0.500 to 0.667 after every optimizer, when no
    instruction any optimizer wrote gained significantly. Off on an endpoint, where demonstrations lengthen every
    paid call and the model may not need them."""
    if embedded and optimizer in INSTRUCTION_OPTIMIZERS and labels and not fixed_demos:
        return {"fit_budget": True}
    return None


def fitted(params: dict | None, allowance: int | None, n_dev: int) -> dict | None:
    """The search's parameters as the run will use them: sized by fit_to_calls when they ask for it (fit_budget)
    and there is a call cap; `allowance` is what the cap leaves after the report."""
    if params is None or not params.get("fit_budget") or allowance is None:
        return params
    return fit_to_calls(params, allowance, n_dev)


def fit_to_calls(params: dict | None, allowance: int, n_dev: int, min_dev: int = 15) -> dict:
    """A demo search that follows an optimizer, sized to take at most half of `allowance` (the calls the cap leaves
    after the report): as many sets as the parameters ask for on all of dev when that fits; else fewer sets (down
    to one), then a dev subset (down to min_dev); the optimizer keeps the other half. A search cut below the sets
    asked for may draw more, up to them, from calls the optimizer leaves unspent (extend_to)."""
    p = DemoParams(**(params or {}))
    half = max(allowance // 2, 0)
    m = min(p.max_dev or n_dev, n_dev)
    trials = p.trials
    while trials > 1 and (trials + 1) * m > half:
        trials -= 1
    while m > min(min_dev, n_dev) and (trials + 1) * m > half:
        m -= 1
    out = {**(params or {}), "trials": trials}
    if trials < p.trials:
        out["extend_to"] = p.trials
    if m < n_dev:
        out["max_dev"] = m
    return out


class Steps:
    """An optimizer's events as the runner drives them: `stop(exc)` makes the next event come from the optimizer
    stopped by `exc` (inside then_demo_search: the demo search starts on its held share)."""

    def __init__(self, events: Iterator[Event]):
        self.events, self.exc = events, None

    def __iter__(self) -> Steps:
        return self

    def __next__(self) -> Event:
        if self.exc is not None:
            exc, self.exc = self.exc, None
            return self.events.throw(exc)  # type: ignore[attr-defined]
        return next(self.events)

    def stop(self, exc: BaseException) -> None:
        self.exc = exc
