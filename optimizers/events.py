"""Typed events: the one record of what an optimization run did.

Optimizers yield them, the run engine stores every one in SQLite before anything shows it, and the live charts,
inspectors, export, replay and resume are all projections of the stored sequence.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter

from .metrics import macro_f1

if TYPE_CHECKING:
    from .evaluate import EvalResult


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    step: int = 0
    ts: float = Field(default_factory=time.time)


class RoleServed(BaseModel):
    """Which model, at which endpoint, answered a role's requests (never a key)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    endpoint: str  # a base URL, or "embedded llama.cpp"


class RunStarted(_Event):
    kind: Literal["run_started"] = "run_started"
    optimizer: str
    params: dict[str, Any]
    seed: int
    resumed: bool = False
    roles: dict[str, RoleServed] = {}  # "task" / "optimizer", as resolved when this (re)start opened them
    # billed calls the optimization may spend (the call cap less the report's and a demo search's shares), fixed at
    # the first start and carried by every resume so a replay plans the same run; None without a call cap
    call_allowance: int | None = None
    demo_search: dict[str, Any] | None = None  # a following demo search's parameters as sized at the first start


class MetaPrompt(_Event):
    """One request to the optimizer model and its raw reply, so an inspector can show exactly what was exchanged."""

    kind: Literal["meta_prompt"] = "meta_prompt"
    purpose: str  # e.g. "ape.induce", "protegi.gradient", "opro.generate", "pe2.reasoning", "gpo.generate"
    model: str
    messages: list[dict[str, str]]
    params: dict[str, Any] = {}
    reply: str = ""
    finish_reason: str | None = None
    cached: bool = False
    ref: str | None = None  # ties requests of one proposal together (e.g. a gradient id)


class CandidateProposed(_Event):
    kind: Literal["candidate_proposed"] = "candidate_proposed"
    candidate_id: str
    text: str
    parents: list[str] = []
    origin: str  # initial | induced | gradient_edit | paraphrase | generated | resample | pe2_edit | manual
    info: dict[str, Any] = {}


class CandidateRejected(_Event):
    """A proposal that never became a candidate, and why (small models produce many)."""

    kind: Literal["candidate_rejected"] = "candidate_rejected"
    text: str
    reason: str  # empty | truncated | duplicate | unchanged | too_long | no_tags | over_budget | echoes_example | ...
    parents: list[str] = []
    origin: str = ""


class CandidateScored(_Event):
    kind: Literal["candidate_scored"] = "candidate_scored"
    candidate_id: str
    split: str  # train | dev | test | minibatch
    n: int
    score: float
    ci_low: float | None = None
    ci_high: float | None = None
    metric: str = "accuracy"
    example_ids: list[str] = []
    correct: list[bool] = []  # per example, aligned with example_ids (bandits and the inspectors need it)
    purpose: str = ""  # e.g. "selection", "minibatch", "report", "bandit"
    # on a task with a label set: macro-F1 on the same examples, what a tie on `score` is broken by (tie_break)
    macro_f1: float | None = None
    _predictions: list[dict[str, Any]] = PrivateAttr(default_factory=list)  # stored in their own table

    @classmethod
    def from_eval(cls, res: EvalResult, *, step: int, candidate_id: str, split: str, purpose: str,
                  labels: Sequence[str] | None = None) -> CandidateScored:
        """The one way a score becomes an event, its per-example predictions attached for the store."""
        f1 = macro_f1([p.pred for p in res.predictions], [p.gold for p in res.predictions], labels) if (
            labels and res.predictions) else None
        ev = cls(step=step, candidate_id=candidate_id, split=split, n=res.n, score=res.score, ci_low=res.ci_low,
                 ci_high=res.ci_high, metric=res.metric, example_ids=[p.example_id for p in res.predictions],
                 correct=res.correct, purpose=purpose, macro_f1=f1)
        ev._predictions = [p.as_dict() for p in res.predictions]
        return ev


class Gradient(_Event):
    """ProTeGi's textual gradient: the errors shown and the critique the optimizer model gave."""

    kind: Literal["gradient"] = "gradient"
    gradient_id: str
    parent_id: str
    errors: list[dict[str, Any]]  # {id, input, gold, prediction}
    critique: str


class Retrieval(_Event):
    """GPO's update direction: which trajectory prompts were retrieved, how relevant, by which rule."""

    kind: Literal["retrieval"] = "retrieval"
    current_id: str
    rule: str  # relevance | recency | importance
    similarity: str  # "embeddings:<model>", "lexical", or "none" (recency / importance rules)
    retrieved: list[dict[str, Any]]  # {candidate_id, text, score, relevance}


class EditBudget(_Event):
    kind: Literal["edit_budget"] = "edit_budget"
    budget_words: int | None
    schedule: str
    measured: list[dict[str, Any]] = []  # {candidate_id or text, distance_words, within_budget, accepted}


class Plan(_Event):
    """How an optimizer sized its search to the run's call allowance (which paper defaults it scaled down, and why),
    so a small budget buys a smaller complete search instead of one stage of a large one."""

    kind: Literal["plan"] = "plan"
    allowance: int
    settings: dict[str, Any]  # the sizes chosen, e.g. {"induction_samples": 15, "final_candidates": 2}
    defaults: dict[str, Any]  # the same sizes at the optimizer's parameters
    estimated_calls: int  # worst case of the chosen plan (rejected proposals make it cheaper)
    note: str = ""


class Selection(_Event):
    kind: Literal["selection"] = "selection"
    method: str
    estimates: list[dict[str, Any]]  # {candidate_id, mean, n, ucb?}
    survivors: list[str]


class Reasoning(_Event):
    """PE2's step-by-step analysis of a batch of failures before it writes the new prompt."""

    kind: Literal["reasoning"] = "reasoning"
    parent_id: str
    examples: list[dict[str, Any]]
    reasoning: str
    proposal_ref: str
    info: dict[str, Any] = {}  # e.g. batch_source: errors | train_no_errors


class StepDone(_Event):
    kind: Literal["step_done"] = "step_done"
    best_id: str
    best_score: float
    best_split: str
    beam: list[str] = []


class Usage(_Event):
    """The run's cumulative spend (every execution: resumes and continues add to it), by role and by phase."""

    kind: Literal["usage"] = "usage"
    calls: int
    cache_hits: int
    prompt_tokens: int
    completion_tokens: int
    errors: int
    cost: float
    saved_tokens: int = 0
    saved_cost: float = 0.0
    unmetered_calls: int = 0
    by_role: dict[str, dict[str, Any]] = {}
    by_phase: dict[str, dict[str, Any]] = {}
    at: float = 0.0  # the time these totals hold for (calls billed later are rebilled on resume: budget.Meter)


class Error(_Event):
    kind: Literal["error"] = "error"
    message: str
    recoverable: bool = True
    where: str = ""


class RunFinished(_Event):
    kind: Literal["run_finished"] = "run_finished"
    status: str  # done | budget | stopped | failed
    best_id: str | None
    reason: str = ""


Event = Annotated[
    Union[
        RunStarted, MetaPrompt, CandidateProposed, CandidateRejected, CandidateScored, Gradient, Retrieval,
        EditBudget, Plan, Selection, Reasoning, StepDone, Usage, Error, RunFinished,
    ],
    Field(discriminator="kind"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(data: dict[str, Any] | str) -> Event:
    if isinstance(data, str):
        return EVENT_ADAPTER.validate_json(data)
    return EVENT_ADAPTER.validate_python(data)
