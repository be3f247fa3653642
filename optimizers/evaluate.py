"""Scores a prompt on examples through the task model: one example per call (small models need it), concurrent up to
the endpoint's limit, cached, with every raw output kept so a score can be explained example by example."""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
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
        """Each of up to max_workers pool threads takes the next example until none is left. A future per example,
        each handed back to this thread to submit the next, cost two thread wake-ups a call, which at 300 calls/s
        was a tenth of the process's CPU (bench/bench_engine.py); a future per example was also most of a
        100,000-example evaluation's memory. `progress` is still called from this thread (Streamlit's needs it)."""
        todo = iter(enumerate(examples))
        lock = threading.Lock()
        failed: list[BaseException] = []  # set, the workers stop; the first failure in time is the one raised
        ticks: queue.SimpleQueue | None = queue.SimpleQueue() if progress else None

        def work() -> None:
            try:
                while not failed:
                    with lock:
                        item = next(todo, None)
                    if item is None:
                        return
                    preds[item[0]] = self.predict(prompt, item[1])
                    if ticks is not None:
                        ticks.put(1)
            except BaseException as e:
                with lock:
                    failed.append(e)
                raise
            finally:
                if ticks is not None:
                    ticks.put(None)

        pool = self._workers()
        futures = [pool.submit(work) for _ in range(min(self.max_workers, len(examples)))]
        try:
            if ticks is not None and progress is not None:
                running = len(futures)
                while running:
                    if ticks.get() is None:
                        running -= 1
                    else:
                        progress(1)
        except BaseException as e:  # progress raised (a Streamlit rerun): the workers stop too
            with lock:
                failed.append(e)
            raise
        finally:
            wait(futures)  # nothing of this evaluation is still in flight once it has returned or failed
        if failed:
            raise failed[0]

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
