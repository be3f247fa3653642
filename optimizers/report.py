"""The run's report inside the run's budget: the initial and the best prompt scored on each reported split, paid from
the same cap as the optimization.

Before and during the optimization the report's requests (those the cache cannot answer yet) are held back on the
meter, keyed by their cache keys, so the optimization stops early enough to pay for them; a held request the
optimizer makes itself (scoring the initial prompt on dev, say) is paid from the hold. When not every split fits,
the report keeps the most telling ones, test first, and says which it left out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .budget import ZERO, Amount, BudgetExceeded, Meter
from .data import Example, Splits
from .evaluate import EvalResult, Evaluator
from .task import Task


class ReportModel(Protocol):
    """What planning the report needs of the task model besides `lm.LanguageModel`: its cache, seen from outside
    (`llm.LLM`, and the estimator's dry model whose 'cache' is what it was already asked)."""

    model: str

    @property
    def accepts_extras(self) -> bool: ...

    def params(self, params: dict[str, Any]) -> dict[str, Any]: ...

    def cache_key(self, messages: list[dict[str, str]], **params: Any) -> str | None: ...

    def is_cached(self, key: str | None) -> bool: ...

PRIORITY = ("test", "dev", "train")  # what a user reads first; a report cut short keeps these


def ordered(report_splits: Sequence[str]) -> list[str]:
    return [s for s in PRIORITY if s in report_splits] + [s for s in report_splits if s not in PRIORITY]


@dataclass
class ReportPlan:
    """The report's outstanding requests per split (cache key -> worst case) for a set of prompts."""

    shares: dict[str, dict[str, Amount]] = field(default_factory=dict)  # split -> key -> amount
    skipped: list[str] = field(default_factory=list)  # splits that do not fit

    def held(self) -> dict[str, Amount]:
        out: dict[str, Amount] = {}
        for split, keys in self.shares.items():
            if split not in self.skipped:
                out.update(keys)
        return out

    def cost(self, split: str) -> Amount:
        total = ZERO
        for a in self.shares.get(split, {}).values():
            total = total + a
        return total


def outstanding(llm: ReportModel, meter: Meter, task: Task, prompts: Sequence[str], examples: Sequence[Example]
                ) -> dict[str, Amount]:
    """The requests of scoring `prompts` on `examples` that the cache cannot answer, with their worst cases."""
    params = task.request_params(llamacpp=llm.accepts_extras)
    longer = task.extended(params)
    out: dict[str, Amount] = {}
    for prompt in dict.fromkeys(prompts):
        for ex in examples:
            msgs = task.messages(prompt, ex)
            for p in (params, longer) if longer else (params,):  # a cut reply may be asked again, longer
                key = llm.cache_key(msgs, **p)
                if key is None or key in out or llm.is_cached(key):
                    continue
                out[key] = meter.upper(llm.model, msgs, int(llm.params(p).get("max_tokens") or 0))[0]
    return out


def next_best(llm: ReportModel, meter: Meter, task: Task, prompts: Sequence[str], examples: Sequence[Example]
              ) -> dict[str, Amount]:
    """A share for a best prompt the optimizer has not chosen yet, on the first reported split: a new best chosen in
    the last step must still be scored on test. Sized with the longest prompt so far; keys no request has."""
    longest = max(prompts, key=len)
    params = task.request_params(llamacpp=llm.accepts_extras)
    out = {}
    for n, p in enumerate((params, task.extended(params))):
        if p is None:
            continue
        tokens = int(llm.params(p).get("max_tokens") or 0)
        for i, ex in enumerate(examples):
            out[f"next-best:{n}:{i}"] = meter.upper(llm.model, task.messages(longest, ex), tokens)[0]
    return out


def plan(llm: ReportModel, meter: Meter, task: Task, splits: Splits, report_splits: Sequence[str],
         prompts: Sequence[str], extra: dict[str, Amount] | None = None) -> ReportPlan:
    """Hold as many splits as fit, in priority order (the first with a share for a future best when that fits too),
    on top of `extra` (a later phase's share, e.g. a demo search after the optimizer); the meter holds the result (or
    keeps its old hold)."""
    p = ReportPlan()
    fitting: dict[str, Amount] = dict(extra or {})
    first = True
    for split in ordered(report_splits):
        exs = getattr(splits, split)
        if not exs:
            continue
        p.shares[split] = outstanding(llm, meter, task, prompts, exs)
        options = [p.shares[split]]
        if first:  # the initial's requests and one best's, sized by the longest prompt: the best so far or a later one
            options.insert(0, {**outstanding(llm, meter, task, prompts[:1], exs),
                               **next_best(llm, meter, task, prompts, exs)})
            first = False
        for option in options:
            trial = {**fitting, **option}
            if meter.hold(trial):
                fitting = trial
                break
        else:
            p.skipped.append(split)
    meter.hold(fitting)
    return p


class ReportReserve:
    """The report's share of the cap through a run: held at the start for the initial prompt, moved to each new best
    at each step's end; when the new best's report no longer fits, the optimization must stop there."""

    def __init__(self, llm: ReportModel, meter: Meter, task: Task, splits: Splits, report_splits: Sequence[str],
                 initial_prompt: str, extra: dict[str, Amount] | None = None):
        """extra: a later phase's share held with the report's (dropped, and `extra_dropped` set, when both do not
        fit: the report comes first)."""
        self.llm, self.meter, self.task, self.splits = llm, meter, task, splits
        self.report_splits, self.initial = list(report_splits), initial_prompt
        self.skipped = plan(llm, meter, task, splits, report_splits, [initial_prompt]).skipped
        self.extra, self.extra_dropped = dict(extra or {}), False
        self.best = initial_prompt
        if self.extra:
            with_extra = plan(llm, meter, task, splits, report_splits, [initial_prompt], self.extra)
            if set(with_extra.skipped) - set(self.skipped):
                self.extra, self.extra_dropped = {}, True
                plan(llm, meter, task, splits, report_splits, [initial_prompt])

    def after_step(self, best_prompt: str) -> None:
        self.best = best_prompt
        now = plan(self.llm, self.meter, self.task, self.splits, self.report_splits, [self.initial, best_prompt],
                   self.extra)
        if set(now.skipped) - set(self.skipped):
            raise BudgetExceeded("the rest of the budget pays for the best prompt's report")

    def release_extra(self) -> None:
        """The later phase starts: its share is spent from here on, not held."""
        self.extra = {}
        plan(self.llm, self.meter, self.task, self.splits, self.report_splits, [self.initial, self.best])


def report_leaves_little(meter: Meter, cap: int | None, demo_share: Mapping[str, Any] | None, splits: Splits,
                         report_splits: list[str]) -> str:
    """Say so when the report's hold leaves the search under half the call cap: on a large test split a small cap
    is mostly the report's (2 x 120 test examples of 300 calls), and a run that cannot search should not look like
    an optimizer that found nothing."""
    allowance = meter.call_allowance()
    if cap is None or allowance is None:
        return ""
    search = allowance + sum(a.calls for a in (demo_share or {}).values())
    if search >= cap / 2:
        return ""
    sizes = ", ".join(f"{len(getattr(splits, s))} {s}" for s in report_splits if getattr(splits, s))
    return (f"the report (the initial and the best prompt on {sizes} examples) holds most of the {cap}-call cap: the "
            f"optimization gets {search} calls. For a real search raise the cap or report on fewer examples "
            f"(--max-test, --report-splits test)")


def score_splits(evaluator: Evaluator, meter: Meter, llm: ReportModel, task: Task, splits: Splits,
                 report_splits: Sequence[str], prompts: dict[str, str],
                 on_scored: Callable[[str, str, EvalResult], None]) -> list[str]:
    """Score each prompt (name -> text) on each split whose outstanding requests fit, test first; returns the splits
    left out for the budget. Identical texts are scored once (the caller copies the score)."""
    meter.release_hold()
    meter.phase = "report"
    skipped: list[str] = []
    for split in ordered(report_splits):
        exs = getattr(splits, split)
        if not exs:
            continue
        need = outstanding(llm, meter, task, list(prompts.values()), exs)
        total = ZERO
        for a in need.values():
            total = total + a
        if not meter.fits(total):
            skipped.append(split)
            continue
        done: dict[str, EvalResult] = {}
        for name, text in prompts.items():
            res = done.get(text) or evaluator.evaluate(text, exs)
            done[text] = res
            on_scored(name, split, res)
    return skipped
