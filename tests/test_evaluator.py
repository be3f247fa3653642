"""The evaluator's concurrency (optimizers/evaluate.py): predictions in the examples' order whatever order the calls
finish in, progress reported on the caller's thread, and a failure stopping the other workers rather than letting
them spend the rest of the examples."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

from optimizers.data import Example
from optimizers.evaluate import Evaluator
from optimizers.lm import Completion
from optimizers.task import Task

TASK = Task(template="{prompt}\n\nText: {text}\nAnswer:", input_cols=["text"], labels=["yes", "no"])


class FakeLM:
    """Answers the label hidden in the input after a random short wait; fails on the input `fail_on`."""

    model, accepts_extras = "fake", False

    def __init__(self, concurrency: int = 8, fail_on: str | None = None):
        self.max_concurrency = concurrency
        self.fail_on = fail_on
        self.calls = 0
        self.lock = threading.Lock()
        self.rng = random.Random(0)

    def complete(self, messages: list[dict[str, str]], **params: Any) -> Completion:
        with self.lock:
            self.calls += 1
            wait = self.rng.random() * 0.01
        text = messages[-1]["content"]
        if self.fail_on and self.fail_on in text:
            raise RuntimeError("the endpoint refused")
        time.sleep(wait)
        return Completion(text="yes" if "(yes)" in text else "no", finish_reason="stop")

    def embed(self, texts, *, model=None, patient=False):  # noqa: ANN001 - unused here
        raise NotImplementedError


def _examples(n: int) -> list[Example]:
    return [Example(str(i), {"text": f"item {i} ({'yes' if i % 3 else 'no'})"}, "yes" if i % 3 else "no")
            for i in range(n)]


def test_predictions_follow_the_examples_order_and_progress_runs_on_the_callers_thread():
    lm = FakeLM(concurrency=8)
    exs = _examples(200)
    seen: list[str] = []
    res = Evaluator(lm, TASK).evaluate("Answer.", exs, progress=lambda k: seen.append(threading.current_thread().name))
    assert [p.example_id for p in res.predictions] == [e.id for e in exs]
    assert res.score == 1.0 and lm.calls == 200
    assert len(seen) == 200 and set(seen) == {threading.current_thread().name}


def test_a_failure_stops_the_other_workers():
    lm = FakeLM(concurrency=4, fail_on="item 10 ")
    with pytest.raises(RuntimeError, match="refused"):
        Evaluator(lm, TASK).evaluate("Answer.", _examples(1000))
    assert lm.calls < 40  # the three other workers finish the call they are in, then stop


def test_a_failing_progress_callback_stops_the_evaluation():
    lm = FakeLM(concurrency=4)

    def progress(_: int) -> None:
        raise KeyboardInterrupt  # a Streamlit rerun or a Ctrl-C on the caller's thread

    with pytest.raises(KeyboardInterrupt):
        Evaluator(lm, TASK).evaluate("Answer.", _examples(1000), progress=progress)
    assert lm.calls < 40
