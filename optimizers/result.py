"""What a finished (or stopped) run reports: the initial and the best prompt scored on every split, outside the
optimization budget, and what the run spent. The engine returns it, the store keeps its JSON, and the CLI, the pages
and the bench read it back; its JSON keys are the CLI's `--json` contract."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel

from .metrics import mcnemar
from .status import RunStatus

SCORE_DIGITS = 3  # how every reader shows a score (the CLI's tables and JSON, the pages)


class Score(BaseModel):
    score: float
    ci: list[float]  # 95% interval [low, high]
    n: int


class Paired(BaseModel):
    """Best against initial on the same examples of one split: an exact McNemar test. Two 95% intervals that overlap
    do not say the prompts score the same, nor do disjoint ones say they differ on a shared split."""
    gained: int  # examples only the best prompt gets right
    lost: int  # examples only the initial prompt gets right
    p: float  # two-sided exact McNemar p-value

    @classmethod
    def of(cls, best: Sequence[bool], initial: Sequence[bool]) -> Paired:
        m = mcnemar(best, initial)
        return cls(gained=m["a_only"], lost=m["b_only"], p=m["p_value"])

    def describe(self) -> str:
        return f"{self.gained} gained / {self.lost} lost, McNemar p = {self.p:.2g}"


class Spend(BaseModel):
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    cost: float = 0.0
    saved_tokens: int = 0  # what the cache hits would have cost
    saved_cost: float = 0.0
    unmetered_calls: int = 0  # replies without usage: tokens counted locally, or billed at their bound


class RunResult(BaseModel):
    run_id: str
    status: RunStatus
    reason: str = ""
    optimizer: str
    initial_prompt: str
    best_prompt: str
    best_id: str
    best_selection_score: float | None = None
    selection_split: str | None = None
    scores: dict[Literal["initial", "best"], dict[str, Score]]  # which prompt -> split -> score
    paired: dict[str, Paired] = {}  # split -> best against initial, where both were scored and differ
    report_error: str | None = None
    report_skipped: list[str] = []  # splits the budget could not pay to report on (test is kept first)
    # the run's total spend: optimization and report, every execution of the run
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    cost: float = 0.0
    saved_tokens: int = 0
    saved_cost: float = 0.0
    unmetered_calls: int = 0
    optimization_usage: Spend
    report_usage: Spend
    by_role: dict[str, Spend] = {}  # task, optimizer (and embedding)
    seed: int
    wall_time_s: float
    config: dict[str, Any]
    candidates: int
    version: str

    @property
    def best_test(self) -> float | None:
        """The best prompt's held-out test score, rounded as every reader shows it."""
        s = self.scores.get("best", {}).get("test")
        return None if s is None else round(s.score, SCORE_DIGITS)


def stored_result(run: dict[str, Any]) -> RunResult | None:
    """The result of a run dict from the store (None until the run has reported)."""
    return RunResult.model_validate(run["result"]) if run.get("result") else None
