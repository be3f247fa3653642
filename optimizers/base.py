"""The interface every optimizer shares: paper defaults as typed parameters, one entry point that yields events, and a
context that gives it the task model (through the evaluator), the optimizer model, the train and dev splits (never
test), a seeded random generator, and bookkeeping of candidates and their scores.

Helpers are generators: `result = yield from ctx.score(...)` emits the events of the work and returns its result,
so an optimizer's loop reads like the paper's pseudo-code while every request and score is recorded.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from .data import Example
from .evaluate import EvalResult, Evaluator
from .events import CandidateProposed, CandidateRejected, CandidateScored, Event, MetaPrompt, StepDone
from .lm import Completion, LanguageModel
from .metrics import macro_f1
from .prompt import DEMO_MARK, instruction_of
from .proposals import echoes_example, example_inputs, instruction_problem, refers_to_shown_examples
from .task import Task

Gen = Generator[Event, None, Any]


def candidate_id(text: str) -> str:
    return "c" + hashlib.sha256(text.strip().encode()).hexdigest()[:10]


class Params(BaseModel):
    """Base for each optimizer's parameters: defaults from the paper or its official code, one-line help each."""

    model_config = ConfigDict(extra="forbid")
    max_prompt_words: int = Field(300, ge=1, description="Reject proposed prompts longer than this (small models ramble)")
    optimizer_max_tokens: int = Field(512, ge=16, description="Max tokens of each optimizer-model reply")


@dataclass
class Candidate:
    id: str
    text: str
    parents: list[str]
    origin: str
    step: int
    # split -> example_id -> correct (accumulates across batches: bandits and minibatches add to it)
    results: dict[str, dict[str, bool]] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)  # split -> score of the latest full evaluation on it
    preds: dict[str, dict[str, str | None]] = field(default_factory=dict)  # split -> example_id -> answer read

    def mean(self, split: str) -> float | None:
        r = self.results.get(split)
        return sum(r.values()) / len(r) if r else None

    def n(self, split: str) -> int:
        return len(self.results.get(split, {}))

    def macro_f1(self, split: str, examples: Sequence[Example], labels: Sequence[str]) -> float | None:
        """Macro-F1 on these examples from the answers the scoring read (no call); None unless all were read. Two
        prompts with the same accuracy can differ here: one that over-answers a favourite label loses precision on
        it (bench/bench_selection.py)."""
        answers = self.preds.get(split, {})
        if not examples or any(ex.id not in answers for ex in examples):
            return None
        return macro_f1([answers[ex.id] for ex in examples], [ex.label for ex in examples], labels)


class Context:
    def __init__(self, *, task: Task, train: Sequence[Example], dev: Sequence[Example], initial_prompt: str,
                 evaluator: Evaluator, optimizer_llm: LanguageModel, seed: int = 0):
        self.task, self.train, self.dev = task, list(train), list(dev)
        self.initial_prompt = initial_prompt
        self.evaluator, self.llm = evaluator, optimizer_llm
        self.seed = seed
        self.rng = random.Random(seed)
        self.candidates: dict[str, Candidate] = {}
        self._request_no = 0
        # billed calls this optimization may spend (None: no call cap); the runner sets it once per run so that
        # methods whose paper defaults cost more than the cap can size a complete search to it (see events.Plan)
        self.call_allowance: int | None = None
        # whether `calls` more billed calls fit beside what is held for the report, for a search whose stream ends
        # when the answer is no (the runner answers a replayed one from the stored stream); methods.demos uses it
        # to spend what the optimizer before it left unspent
        self.go_on: Callable[[int], bool] = lambda calls: False

    # --- optimizer model ----------------------------------------------------------------------------------------
    def ask(self, purpose: str, messages: list[dict[str, str]], *, step: int, ref: str | None = None,
            **params: Any) -> Generator[Event, None, Completion]:
        """One optimizer-model request; its messages and raw reply become a MetaPrompt event. Each request gets its
        own seed drawn from the run's generator, so sampling differs between requests yet replays exactly."""
        self._request_no += 1
        params.setdefault("seed", self.rng.randrange(2**31))
        comp = self.llm.complete(messages, **params)
        yield MetaPrompt(step=step, purpose=purpose, model=self.llm.model, messages=messages,
                         params={k: v for k, v in params.items() if k != "extra_body"}, reply=comp.text,
                         finish_reason=comp.finish_reason, cached=comp.cached, ref=ref)
        return comp

    # --- candidates ---------------------------------------------------------------------------------------------
    def propose(self, text: str | None, *, step: int, parents: Sequence[str] = (), origin: str,
                max_words: int | None = None, truncated: bool = False, info: dict[str, Any] | None = None,
                allow_existing: bool = False, allow_empty: bool = False) -> Generator[Event, None, Candidate | None]:
        """Validate a proposal and register it. Returns the candidate, or None with a CandidateRejected event."""
        text = (text or "").strip()
        parents = list(parents)
        reason = None
        if not text and not allow_empty:  # OPRO may start from an empty instruction
            reason = "empty"
        elif truncated:
            reason = "truncated"
        elif max_words is not None and len(instruction_of(text).split()) > max_words:
            reason = "too_long"
        elif any(self.candidates[p].text.strip() == text for p in parents if p in self.candidates):
            reason = "unchanged"
        elif candidate_id(text) in self.candidates and not allow_existing:
            reason = "duplicate"
        elif origin != "initial" and self._echoes_example(instruction_of(text)):  # demonstrations copy by design
            reason = "echoes_example"
        elif origin not in ("initial", "manual") and (problem := instruction_problem(instruction_of(text),
                                                                                     self.task.labels)):
            reason = problem
        elif origin not in ("initial", "manual") and DEMO_MARK not in text and refers_to_shown_examples(text):
            reason = "meta_reference"  # "the examples provided": the prompt shows none
        if reason:
            yield CandidateRejected(step=step, text=text[:2000], reason=reason, parents=parents, origin=origin)
            return None
        cid = candidate_id(text)
        if cid in self.candidates:
            return self.candidates[cid]
        cand = Candidate(cid, text, parents, origin, step)
        self.candidates[cid] = cand
        yield CandidateProposed(step=step, candidate_id=cid, text=text, parents=parents, origin=origin,
                                info=info or {})
        return cand

    def _echoes_example(self, text: str) -> bool:
        """See proposals.echoes_example (train and dev inputs)."""
        if not hasattr(self, "_inputs"):
            self._inputs = example_inputs(self.train + self.dev)
        return echoes_example(text, self._inputs)

    # --- scoring ------------------------------------------------------------------------------------------------
    def score(self, cand: Candidate, examples: Sequence[Example], split: str, *, step: int,
              purpose: str = "selection") -> Generator[Event, None, EvalResult]:
        res = self.evaluator.evaluate(cand.text, examples)
        bucket, answers = cand.results.setdefault(split, {}), cand.preds.setdefault(split, {})
        for p in res.predictions:
            bucket[p.example_id] = p.correct
            answers[p.example_id] = p.pred
        if split in ("train", "dev") and len(examples) == len(getattr(self, split)):
            cand.last[split] = res.score
        yield CandidateScored.from_eval(res, step=step, candidate_id=cand.id, split=split, purpose=purpose,
                                        labels=self.task.labels)
        return res

    def sample(self, population: Sequence[Any], k: int) -> list[Any]:
        return self.rng.sample(list(population), min(k, len(population)))

    def stratified(self, population: Sequence[Example], k: int) -> list[Example]:
        """A scoring subset that holds each label at its share of the population (largest remainder, ties drawn at
        random). On a plain random subset a prompt that gives one answer to everything scores that label's share by
        luck (11 of 24 dev tickets on helpdesk_queues: 0.458 on a three-label set) and outscores the candidates that
        answer more than one label; stratified, it scores the label's true share. Falls back to a random sample when
        the labels are nearly all distinct (free-text targets)."""
        pop = list(population)
        groups: dict[str, list[Example]] = {}
        for ex in pop:
            groups.setdefault(ex.label, []).append(ex)
        if k >= len(pop) or len(groups) > k // 2:
            return self.sample(pop, k)
        quota = {lab: k * len(g) / len(pop) for lab, g in groups.items()}
        take = {lab: int(q) for lab, q in quota.items()}
        by_remainder = sorted(groups, key=lambda lab: (take[lab] - quota[lab], self.rng.random()))
        for lab in by_remainder[: k - sum(take.values())]:
            take[lab] += 1
        picked = [ex for lab, g in groups.items() for ex in self.rng.sample(g, take[lab])]
        self.rng.shuffle(picked)
        return picked

    def step_done(self, step: int, best: Candidate, split: str, beam: Sequence[Candidate] = ()) -> StepDone:
        score = best.last.get(split, best.mean(split))
        return StepDone(step=step, best_id=best.id, best_score=score if score is not None else 0.0,
                        best_split=split, beam=[c.id for c in beam])


TieBreak = Literal["first", "macro_f1"]
TIE_BREAK_HELP = ("Between candidates with the same selection score: the first found, or the one with the higher "
                  "macro-F1 on the same examples (no extra call; it keeps the prompt that reads more than one label, "
                  "bench/bench_selection.py)")


def better(cand: Candidate, best: Candidate, cand_score: float, best_score: float, tie_break: TieBreak,
           split: str, examples: Sequence[Example], labels: Sequence[str]) -> bool:
    """Does cand replace best? A higher score does; an equal one only under macro_f1, by a higher macro-F1."""
    if cand_score != best_score or tie_break == "first":
        return cand_score > best_score
    a, b = cand.macro_f1(split, examples, labels), best.macro_f1(split, examples, labels)
    return a is not None and b is not None and a > b + 1e-12  # not by rounding: the same counts summed otherwise


class Optimizer(ABC):
    name: ClassVar[str]
    title: ClassVar[str]
    paper: ClassVar[str]
    Params: ClassVar[type[Params]] = Params
    allows_empty_prompt: ClassVar[bool] = False  # may a run start from an empty initial prompt?
    # named parameter sets one click or flag away (`--preset`): "paper" is the paper's own setting where our defaults
    # differ from it (a default chosen for small local models, or the official code's where the paper is silent)
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, ctx: Context, params: Params | dict[str, Any] | None = None):
        self.ctx = ctx
        self.p = params if isinstance(params, Params) else self.Params(**(params or {}))

    @abstractmethod
    def run(self) -> Iterator[Event]:
        """Yield every event of the optimization; the last StepDone names the best prompt so far."""

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return cls.Params().model_dump()

    @classmethod
    def param_help(cls) -> dict[str, str]:
        return {k: (f.description or "") for k, f in cls.Params.model_fields.items()}


REGISTRY: dict[str, type[Optimizer]] = {}


def register(cls: type[Optimizer]) -> type[Optimizer]:
    REGISTRY[cls.name] = cls
    return cls
