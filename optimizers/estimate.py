"""Pre-run cost estimate by dry run: the optimizer runs for real against an instant, scripted in-process model (no
HTTP, no cache), so its own loop counts the calls it would make: exact for the structure of the run (steps,
samples, scoring splits, bandit rounds, the budget stop), approximate where the real model's replies change the
path (rejected or duplicate proposals make fewer calls; a task model that is never wrong starves ProTeGi and PE2 of
errors). Hand-written formulas per optimizer drift from the code; this cannot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .base import REGISTRY, Context
from .data import Splits
from .evaluate import Evaluator
from .llm import Budget, BudgetExceeded, LLMError, Meter
from .lm import Completion
from .task import Task

MAX_DRY_CALLS = 20_000  # beyond this the estimate says "at least" (a dry call costs ~0.1 ms of our own code)


@dataclass
class Estimate:
    calls: int
    task_calls: int
    optimizer_calls: int
    prompt_tokens: int  # characters / 4 of every request
    max_completion_tokens: int  # an upper bound: each request's max_tokens
    stopped_by_budget: bool
    capped: bool  # the dry run hit MAX_DRY_CALLS: the real run makes at least this many

    def cost(self, prices: dict[str, tuple[float, float]], model: str) -> float | None:
        """Upper bound in money from a per-model (input, output) price per 1M tokens, when known."""
        if model not in prices:
            return None
        pin, pout = prices[model]
        return (self.prompt_tokens * pin + self.max_completion_tokens * pout) / 1e6


class _Capped(Exception):
    pass


class _DryModel:
    """A `LanguageModel` that answers at once: task requests with a label (right about half the time,
    deterministically), optimizer requests with a new instruction each time in the tag style the request asks for.
    It spends the run's meter like a real model, so the budget stops the dry run where it would stop the real one."""

    max_concurrency = 1
    accepts_extras = False

    def __init__(self, model: str, role: str, meter: Meter, labels: list[str] | None, tally: dict[str, Any],
                 max_tokens: int = 256):
        self.model, self.role, self.meter = model, role, meter
        self.labels, self.tally, self.max_tokens = labels or ["yes", "no"], tally, max_tokens

    def complete(self, messages: list[dict[str, str]], **params: Any) -> Completion:
        max_tokens = int(params.get("max_tokens") or self.max_tokens)
        claim = self.meter.claim(self.role, self.model, messages, max_tokens)
        try:
            comp = self._answer(messages, max_tokens)
        except BaseException:
            self.meter.cancel(claim)
            raise
        self.meter.settle(claim, comp.prompt_tokens, comp.completion_tokens)
        return comp

    def embed(self, texts: Sequence[str], *, model: str | None = None, patient: bool = False) -> list[list[float]]:
        raise LLMError("the dry run has no embeddings")  # GPO falls back to lexical similarity

    def _answer(self, messages: list[dict[str, str]], max_tokens: int) -> Completion:
        t = self.tally
        t["calls"] += 1
        if t["calls"] > MAX_DRY_CALLS:
            raise _Capped()
        text_in = "\n".join(m.get("content") or "" for m in messages)
        t["prompt_tokens"] += len(text_in) // 4
        t["max_completion_tokens"] += max_tokens
        t[self.role] += 1
        if self.role == "task":
            h = int(hashlib.md5(text_in.encode()).hexdigest()[:8], 16)
            return Completion(self.labels[h % len(self.labels)], "stop", len(text_in) // 4, 1)
        t["k"] += 1
        k = t["k"]
        body = f"Follow this instruction, variant {k}, carefully."
        last = (messages[-1].get("content") or "") if messages else ""
        reply = f"<INS>{body}</INS>" if "<INS>" in last else f"<START>{body}<END>"
        return Completion(reply, "stop", len(text_in) // 4, 12)


def dry_run(optimizer: str, params: dict[str, Any], task: Task, splits: Splits, initial_prompt: str, *,
            seed: int = 0, budget: Budget | None = None) -> Estimate:
    """Run the optimizer on the real splits against the dry model; returns what it asked for."""
    tally: dict[str, Any] = {"calls": 0, "prompt_tokens": 0, "max_completion_tokens": 0, "task": 0, "optimizer": 0, "k": 0}
    meter = Meter(budget or Budget())
    labels = list(task.labels) if task.labels else sorted({e.label for e in splits.train + splits.dev})[:20]
    p = REGISTRY[optimizer].Params(**params)
    task_llm = _DryModel("dry-task", "task", meter, labels, tally)
    opt_llm = _DryModel("dry-optimizer", "optimizer", meter, None, tally, max_tokens=p.optimizer_max_tokens)
    ctx = Context(task=task, train=splits.train, dev=splits.dev, initial_prompt=initial_prompt,
                  evaluator=Evaluator(task_llm, task, max_workers=1), optimizer_llm=opt_llm, seed=seed)
    opt = REGISTRY[optimizer](ctx, p)
    stopped = capped = False
    try:
        for _ in opt.run():
            pass
    except BudgetExceeded:
        stopped = True
    except _Capped:
        capped = True
        tally["calls"] -= 1
    return Estimate(calls=tally["calls"], task_calls=tally["task"], optimizer_calls=tally["optimizer"],
                    prompt_tokens=tally["prompt_tokens"], max_completion_tokens=tally["max_completion_tokens"],
                    stopped_by_budget=stopped, capped=capped)
