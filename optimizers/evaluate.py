"""Scores a prompt on examples through the task model: one example per call (small models need it), concurrent up to
the endpoint's limit, cached, with every raw output kept so a score can be explained example by example."""

from __future__ import annotations

import queue
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field

from . import metrics
from .data import Example
from .lm import LanguageModel
from .task import Task


@dataclass
class Prediction:
    example_id: str
    raw: str
    pred: str | None
    gold: str
    correct: bool
    cached: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class EvalResult:
    prompt: str
    metric: str
    score: float
    ci_low: float
    ci_high: float
    predictions: list[Prediction] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.predictions)

    @property
    def correct(self) -> list[bool]:
        return [p.correct for p in self.predictions]

    @property
    def errors(self) -> list[Prediction]:
        return [p for p in self.predictions if not p.correct]


class Evaluator:
    def __init__(self, llm: LanguageModel, task: Task, max_workers: int | None = None):
        self.llm, self.task = llm, task
        self.max_workers = max_workers or llm.max_concurrency
        self._pool: ThreadPoolExecutor | None = None  # kept across evaluations (see _workers)
        self._params = task.request_params(llamacpp=llm.accepts_extras)

    def predict(self, prompt: str, ex: Example) -> Prediction:
        msgs = self.task.messages(prompt, ex)
        comp = self.llm.complete(msgs, **self._params)
        pred = self.task.extract(comp.text)
        longer = self.task.extended(self._params) if pred is None and comp.truncated else None
        if longer is not None:  # the prompt made the model reason first: let it finish, read its last answer
            first = comp
            comp = self.llm.complete(msgs, **longer)
            pred = self.task.extract(comp.text, reasoned=True)
            comp.prompt_tokens += first.prompt_tokens
            comp.completion_tokens += first.completion_tokens
        return Prediction(ex.id, comp.text, pred, ex.label, self.task.is_correct(pred, ex.label), comp.cached,
                          comp.finish_reason, comp.prompt_tokens, comp.completion_tokens)

    def evaluate(self, prompt: str, examples: Sequence[Example],
                 progress: Callable[[int], None] | None = None) -> EvalResult:
        """Order of predictions follows `examples`, whatever order the calls finish in, so runs replay identically."""
        preds: list[Prediction | None] = [None] * len(examples)
        if self.max_workers <= 1 or len(examples) <= 1:
            for i, ex in enumerate(examples):
                preds[i] = self.predict(prompt, ex)
                if progress:
                    progress(1)
        else:
            self._concurrently(prompt, examples, preds, progress)
        done = [p for p in preds if p is not None]
        return self.summarize(prompt, done)

    def _concurrently(self, prompt: str, examples: Sequence[Example], preds: list[Prediction | None],
                      progress: Callable[[int], None] | None) -> None:
        """At most two requests per worker submitted at a time, taken as they finish: submitting all at once held a
        future (with its lock and condition) per example, most of a 100,000-example evaluation's memory."""
        done: queue.SimpleQueue = queue.SimpleQueue()
        todo = iter(enumerate(examples))
        outstanding: set[Future] = set()
        pool = self._workers()

        def submit() -> None:
            for i, ex in todo:
                f = pool.submit(self.predict, prompt, ex)
                outstanding.add(f)
                f.add_done_callback(lambda f, i=i: done.put((i, f)))
                return

        try:
            for _ in range(2 * self.max_workers):
                submit()
            while outstanding:
                i, f = done.get()
                outstanding.discard(f)
                preds[i] = f.result()
                if progress:
                    progress(1)
                submit()
        except BaseException:
            for f in outstanding:
                f.cancel()
            wait(outstanding)  # nothing of this evaluation is still in flight once it has failed
            raise

    def _workers(self) -> ThreadPoolExecutor:
        """One pool for all of this evaluator's evaluations: a run scores many small sets, and each new thread paid
        again for its SQLite connections to the cache and its first HTTP connection."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="eval")
            weakref.finalize(self, self._pool.shutdown, wait=False)
        return self._pool

    def summarize(self, prompt: str, preds: list[Prediction]) -> EvalResult:
        s, lo, hi = metrics.score_with_ci(self.task.metric, [p.pred for p in preds], [p.gold for p in preds],
                                          [p.correct for p in preds], self.task.labels)
        return EvalResult(prompt, self.task.metric, s, lo, hi, preds)
