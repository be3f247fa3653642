"""Pre-run cost estimate by dry run: the optimizer runs for real against an instant, scripted in-process model (no
HTTP, no cache), so its own loop counts the calls it would make: exact for the structure of the run (steps,
samples, scoring splits, bandit rounds, the budget stop), approximate where the real model's replies change the
path (rejected or duplicate proposals make fewer calls; a task model that is never wrong starves ProTeGi and PE2 of
errors). Hand-written formulas per optimizer drift from the code; this cannot.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .base import REGISTRY, Context
from .budget import Budget, BudgetExceeded, Meter, Prices
from .data import Splits
from .evaluate import Evaluator
from .events import StepDone
from .llm import LLMError
from .lm import Completion
from .methods.demos import Steps, then_demo_search
from .methods.demos import fitted as fitted_demo_search
from .methods.demos import share as demo_search_share
from .report import ReportReserve, score_splits
from .task import Task

MAX_DRY_CALLS = 20_000  # beyond this the estimate says "at least" (a dry call costs ~0.1 ms of our own code)


@dataclass
class RoleEstimate:
    calls: int = 0
    prompt_tokens: int = 0  # characters / 4 of every request
    max_completion_tokens: int = 0  # an upper bound: each request's max_tokens

    def cost(self, prices: Prices, model: str | None) -> float | None:
        """Upper bound in money at the model's (input, output) price per 1M tokens; None when the price is unknown.
        model None: an embedded model (free)."""
        if model is None:
            return 0.0
        p = prices.of(model)
        return None if p is None else (self.prompt_tokens * p[0] + self.max_completion_tokens * p[1]) / 1e6


@dataclass
class Estimate:
    """The whole run: the optimization (per role) and the report (task role), inside the budget when one is set."""

    roles: dict[str, RoleEstimate]  # "task", "optimizer", "report"
    stopped_by_budget: bool
    capped: bool  # the dry run hit MAX_DRY_CALLS: the real run makes at least this many
    report_skipped: list[str]  # splits the budget cannot pay to report on
    # the dry run's best differs from the initial prompt, so its report scores two prompts: the dry model's answers
    # decide this, a real run's may not agree (the report is then one prompt's scoring off)
    best_changed: bool = False

    @property
    def calls(self) -> int:
        return sum(r.calls for r in self.roles.values())

    @property
    def task_calls(self) -> int:
        return self.roles["task"].calls

    @property
    def optimizer_calls(self) -> int:
        return self.roles["optimizer"].calls

    @property
    def report_calls(self) -> int:
        return self.roles["report"].calls

    @property
    def prompt_tokens(self) -> int:
        return sum(r.prompt_tokens for r in self.roles.values())

    @property
    def max_completion_tokens(self) -> int:
        return sum(r.max_completion_tokens for r in self.roles.values())

    def cost(self, prices: Prices, task_model: str | None, optimizer_model: str | None) -> float | None:
        """Upper bound for the whole run; None when a role's price is unknown (a model None is embedded: free)."""
        parts = [self.roles["task"].cost(prices, task_model), self.roles["report"].cost(prices, task_model),
                 self.roles["optimizer"].cost(prices, optimizer_model)]
        return None if any(c is None for c in parts) else sum(parts)  # type: ignore[arg-type]


class _Capped(Exception):
    pass


class _DryModel:
    """A `LanguageModel` that answers at once: task requests with a label (right about half the time,
    deterministically), optimizer requests with a new instruction each time in the tag style the request asks for.
    It spends the run's meter like a real model, so the budget stops the dry run where it would stop the real one."""

    max_concurrency = 1
    accepts_extras = False

    def __init__(self, model: str, role: str, meter: Meter, labels: list[str] | None, tally: dict[str, RoleEstimate],
                 max_tokens: int = 256):
        self.model, self.role, self.meter = model, role, meter
        self.labels, self.tally, self.max_tokens = labels or ["yes", "no"], tally, max_tokens
        self.asked: set[str] = set()  # the dry model's "cache": a request asked once is not paid again
        self.calls = 0
        self.labels_only = role == "task"

    # what the report's planning needs (report.ReportModel)
    def params(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, **{k: v for k, v in params.items() if v is not None}}

    def cache_key(self, messages: list[dict[str, str]], **params: Any) -> str | None:
        return hashlib.sha256(json.dumps([messages, self.params(params)], sort_keys=True).encode()).hexdigest()

    def is_cached(self, key: str | None) -> bool:
        return key in self.asked

    def complete(self, messages: list[dict[str, str]], **params: Any) -> Completion:
        max_tokens = int(params.get("max_tokens") or self.max_tokens)
        key = self.cache_key(messages, **params)
        if key in self.asked:
            return self._answer(messages, max_tokens, bill=False)
        claim = self.meter.claim(self.role, self.model, messages, max_tokens, key=key)
        self.asked.add(key)
        try:
            comp = self._answer(messages, max_tokens)
        except BaseException:
            self.meter.cancel(claim)
            raise
        self.meter.settle(claim, comp.prompt_tokens, comp.completion_tokens)
        return comp

    def embed(self, texts: Sequence[str], *, model: str | None = None, patient: bool = False) -> list[list[float]]:
        raise LLMError("the dry run has no embeddings")  # GPO falls back to lexical similarity

    def _answer(self, messages: list[dict[str, str]], max_tokens: int, bill: bool = True) -> Completion:
        text_in = "\n".join(m.get("content") or "" for m in messages)
        if bill:
            self.calls += 1
            if sum(r.calls for r in self.tally.values()) >= MAX_DRY_CALLS:
                raise _Capped()
            r = self.tally[self.role]
            r.calls += 1
            r.prompt_tokens += len(text_in) // 4
            r.max_completion_tokens += max_tokens
        if self.labels_only:
            h = int(hashlib.md5(text_in.encode()).hexdigest()[:8], 16)
            return Completion(self.labels[h % len(self.labels)], "stop", len(text_in) // 4, 1)
        k = self.calls
        body = f"Follow this instruction, variant {k}, carefully."
        last = (messages[-1].get("content") or "") if messages else ""
        rule = re.search(r'(Answer "[^"]+" only when)\s*$', last)  # a rule request (methods.rules): a rule
        reply = (f"{rule.group(1)} variant {k} holds." if rule else
                 f"<INS>{body}</INS>" if "<INS>" in last else f"<START>{body}<END>")
        return Completion(reply, "stop", len(text_in) // 4, 12)


def dry_run(optimizer: str, params: dict[str, Any], task: Task, splits: Splits, initial_prompt: str, *,
            seed: int = 0, budget: Budget | None = None, report_splits: Sequence[str] = ("train", "dev", "test"),
            prices: Prices | None = None, demo_search: dict[str, Any] | None = None) -> Estimate:
    """Run the optimizer on the real splits against the dry model, with the run's report reserve and budget stop,
    then its report; returns what each role asked for."""
    tally = {r: RoleEstimate() for r in ("task", "optimizer", "report")}
    meter = Meter(budget or Budget(), prices)
    labels = list(task.labels) if task.labels else sorted({e.label for e in splits.train + splits.dev})[:20]
    p = REGISTRY[optimizer].Params(**params)
    task_llm = _DryModel("dry-task", "task", meter, labels, tally, max_tokens=task.max_tokens)
    opt_llm = _DryModel("dry-optimizer", "optimizer", meter, None, tally, max_tokens=p.optimizer_max_tokens)
    evaluator = Evaluator(task_llm, task, max_workers=1)
    ctx = Context(task=task, train=splits.train, dev=splits.dev, initial_prompt=initial_prompt,
                  evaluator=evaluator, optimizer_llm=opt_llm, seed=seed)
    opt = REGISTRY[optimizer](ctx, p)
    if demo_search is not None and demo_search.get("fit_budget"):  # as the runner sizes it
        ReportReserve(task_llm, meter, task, splits, report_splits, initial_prompt)
        demo_search = fitted_demo_search(demo_search, meter.call_allowance(), len(splits.dev))
    share = None if demo_search is None else demo_search_share(ctx, demo_search, meter, task_llm.model,
                                                                task.max_tokens)
    reserve = ReportReserve(task_llm, meter, task, splits, report_splits, initial_prompt, share)
    ctx.call_allowance = meter.call_allowance()  # as the runner plans it
    ctx.go_on = lambda calls: (left := meter.call_allowance()) is None or left >= calls  # as the runner answers
    best = initial_prompt
    stopped = capped = False
    last: list[StepDone] = []
    events = Steps(opt.run() if demo_search is None else then_demo_search(
        opt, ctx, demo_search, lambda: last[-1] if last else None, reserve.release_extra))
    try:
        for ev in events:
            if isinstance(ev, StepDone):
                last.append(ev)
                best = ctx.candidates[ev.best_id].text if ev.best_id in ctx.candidates else initial_prompt
                try:
                    reserve.after_step(best)
                except BudgetExceeded as e:
                    if not reserve.extra:
                        raise
                    events.stop(e)  # as the runner does: the demo search starts
    except BudgetExceeded:
        stopped = True
    except _Capped:
        capped = True
    skipped: list[str] = []
    if not capped:
        task_llm.role = "report"
        try:
            skipped = score_splits(evaluator, meter, task_llm, task, splits, report_splits,
                                   {"initial": initial_prompt, "best": best}, lambda *a: None)
        except (BudgetExceeded, _Capped):
            pass
    return Estimate(roles=tally, stopped_by_budget=stopped, capped=capped, report_skipped=skipped,
                    best_changed=best != initial_prompt)
