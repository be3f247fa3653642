"""Shared fixtures: a scripted OpenAI-compatible stub over real HTTP, a toy labelled task, and a Context wired to it."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from optimizers.base import Context
from optimizers.data import Example
from optimizers.evaluate import Evaluator
from optimizers.llm import LLM, Budget, Endpoint, Meter, ResponseCache
from optimizers.task import Task
from tests.stub_server import StubReply, StubServer

TASK_MODEL, OPT_MODEL = "stub-task", "stub-opt"
TOY_TASK = Task(template="{prompt}\n\nText: {text}\nAnswer:", input_cols=["text"], labels=["positive", "negative"])

_POS = ["loved it", "wonderful acting", "a delight", "great fun", "superb", "moving and warm"]
_NEG = ["hated it", "dull plot", "a mess", "boring", "awful", "tedious and cold"]


def toy_examples(n: int, seed: int = 0, start: int = 1) -> list[Example]:
    """Balanced toy reviews; ids are unique across calls when `start` differs."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        pos = i % 2 == 0
        phrase = rng.choice(_POS if pos else _NEG)
        out.append(Example(str(start + i), {"text": f"Review {start + i}: {phrase}."},
                           "positive" if pos else "negative"))
    return out


def last_user(req: dict[str, Any]) -> str:
    msgs = req.get("messages") or []
    for m in reversed(msgs):
        if m.get("role") == "user":
            return m.get("content") or ""
    return req.get("prompt") or ""


def toy_task_answer(req: dict[str, Any], good_words: Iterable[str] = ("sentiment",)) -> str:
    """A scripted task model: answers right when the instruction mentions a good word, else always 'positive'."""
    text = last_user(req)
    instruction = text.split("\n\nText:")[0].lower()
    review = text.split("Text:")[-1].lower()
    if any(w in instruction for w in good_words):
        return "positive" if any(p in review for p in _POS) else "negative"
    return "positive"


def scripted(optimizer_reply: Callable[[dict[str, Any]], str | StubReply],
             task_reply: Callable[[dict[str, Any]], str] = toy_task_answer) -> Callable[[dict[str, Any]], Any]:
    """Routes requests by model name: the task model and the optimizer model get their own scripts."""

    def respond(req: dict[str, Any]):
        if req.get("model") == TASK_MODEL:
            return task_reply(req)
        return optimizer_reply(req)

    return respond


# Role settings a developer's shell may hold: a test sets the ones it means.
ROLE_ENV = ("PROMPTOPT_OPTIMIZER_BASE_URL", "PROMPTOPT_OPTIMIZER_API_KEY", "PROMPTOPT_OPTIMIZER_MODEL",
            "PROMPTOPT_OPTIMIZER_MODEL_EMBEDDED", "PROMPTOPT_EMBEDDED_URL", "PROMPTOPT_EMBEDDED_ALIAS",
            "PROMPTOPT_OPTIMIZER_EMBEDDED_URL", "PROMPTOPT_OPTIMIZER_EMBEDDED_ALIAS")


def pytest_configure(config):
    """A SIGTERM (a timeout's kill) becomes an interrupt, so fixture teardown still stops the servers, Streamlit apps
    and workers the tests started instead of leaving them to take the CPU from whatever runs next."""

    def _interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture(autouse=True)
def _no_role_env(monkeypatch):
    for name in ROLE_ENV:
        monkeypatch.delenv(name, raising=False)
    # Home warms the embedded model in the background; a unit test that renders it must not load a real model
    # (test_app_home tests the warm-up itself; the browser tests run the app as users do)
    monkeypatch.setenv("PROMPTOPT_LAZY_MODEL", "1")


@pytest.fixture
def stub():
    with StubServer() as s:
        yield s


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def make_ctx(stub: StubServer, *, train: list[Example], dev: list[Example], initial_prompt: str = "Classify the text.",
             seed: int = 0, budget: Budget | None = None, cache_dir: Path | None = None, task: Task = TOY_TASK,
             concurrency: int = 4, opt_temperature: float = 0.7) -> Context:
    ep = Endpoint(stub.base_url, "test-key", max_concurrency=concurrency, max_retries=0, patience=2.0)
    meter = Meter(budget)
    cache = ResponseCache(cache_dir) if cache_dir else None
    task_llm = LLM(ep, TASK_MODEL, role="task", meter=meter, cache=cache)
    opt_llm = LLM(ep, OPT_MODEL, role="optimizer", meter=meter, cache=cache,
                  defaults={"temperature": opt_temperature, "max_tokens": 512})
    return Context(task=task, train=train, dev=dev, initial_prompt=initial_prompt,
                   evaluator=Evaluator(task_llm, task), optimizer_llm=opt_llm, seed=seed)


def collect(events: Iterable[Any]) -> list[Any]:
    return list(events)


def kinds(events: Iterable[Any], kind: str) -> list[Any]:
    return [e for e in events if e.kind == kind]


# --- a real PostgreSQL server for the store tests (tests/pg.py) -----------------------------------------------------
@pytest.fixture(scope="session")
def pg_server():
    from tests import pg

    why = pg.available()
    if why:
        if os.environ.get("PROMPTOPT_REQUIRE_PG"):  # CI: a missing server is a failure, not a skip
            pytest.fail(why)
        pytest.skip(why)
    with pg.server() as base:
        yield base


@pytest.fixture
def pg_url(pg_server) -> str:
    from tests import pg

    return pg.new_database(pg_server)


@pytest.fixture(params=["sqlite", "postgres"])
def store_location(request, tmp_path) -> str:
    """The same store tests on both databases."""
    if request.param == "sqlite":
        return str(tmp_path / "runs.sqlite")
    return request.getfixturevalue("pg_url")
