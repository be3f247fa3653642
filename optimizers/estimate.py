"""Pre-run cost estimate by dry run: the optimizer runs for real against an instant, scripted in-process model (no
HTTP, no cache), so its own loop counts the calls it would make: exact for the structure of the run (steps,
samples, scoring splits, bandit rounds, the budget stop), approximate where the real model's replies change the
path (rejected or duplicate proposals make fewer calls; a task model that is never wrong starves ProTeGi and PE2 of
errors). Hand-written formulas per optimizer drift from the code; this cannot.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from .base import REGISTRY, Context
from .data import Splits
from .evaluate import Evaluator
from .llm import LLM, Budget, BudgetExceeded, Completion, Meter
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


class _DryEndpoint:
    base_url = cache_id = "dry-run"
    max_concurrency = 1
    llamacpp = False
    client = None  # GPO's embeddings fall back to lexical similarity

    def call(self, fn):
        return fn()

    @staticmethod
    def redact(text: str) -> str:
        return text


class _DryLLM(LLM):
    """Answers at once: task requests with a label (right about half the time, deterministically), optimizer requests
    with a new instruction each time in the tag style the request asks for."""

    def __init__(self, model: str, role: str, meter: Meter, labels: list[str] | None, tally: dict[str, Any]):
        super().__init__(_DryEndpoint(), model, role=role, meter=meter, cache=None)  # type: ignore[arg-type]
        self.labels, self.tally = labels or ["yes", "no"], tally

    def _request(self, messages: list[dict[str, str]], p: dict[str, Any]) -> Completion:
        t = self.tally
        t["calls"] += 1
        if t["calls"] > MAX_DRY_CALLS:
            raise _Capped()
        text_in = "\n".join(m.get("content") or "" for m in messages)
        t["prompt_tokens"] += len(text_in) // 4
        t["max_completion_tokens"] += int(p.get("max_tokens") or 256)
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
    task_llm = _DryLLM("dry-task", "task", meter, labels, tally)
    opt_llm = _DryLLM("dry-optimizer", "optimizer", meter, None, tally)
    ctx = Context(task=task, train=splits.train, dev=splits.dev, initial_prompt=initial_prompt,
                  evaluator=Evaluator(task_llm, task, max_workers=1), optimizer_llm=opt_llm, seed=seed)
    opt = REGISTRY[optimizer](ctx, params)
    opt_llm.defaults["max_tokens"] = opt.p.optimizer_max_tokens
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
