"""The multi-process HTTP path (optimizers/http_workers.py) against the scripted stub: the same results as the threaded
path, the LLM tests' semantics (retries, errors, budget, secrets), the cap with faults injected, a killed worker
process giving a retry or EndpointDown (never a hang), and the key never in a worker's command line or environment."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from optimizers.evaluate import Evaluator
from optimizers.llm import LLM, Budget, Endpoint, EndpointDown, Meter, ResponseCache
from tests import test_budget_cap, test_faults, test_llm
from tests.conftest import TOY_TASK, toy_examples, toy_task_answer
from tests.stub_server import StubServer

MSG = [{"role": "user", "content": "Say ok"}]
SECRET = "sk-test-SECRET-1234567890"


@pytest.fixture
def mp(monkeypatch):
    """Every Endpoint made without `processes` sends from two worker processes."""
    monkeypatch.setenv("PROMPTOPT_HTTP_PROCESSES", "2")


def test_the_default_is_unchanged(monkeypatch):
    monkeypatch.delenv("PROMPTOPT_HTTP_PROCESSES", raising=False)
    assert Endpoint("http://127.0.0.1:9/v1", "k")._workers is None
    monkeypatch.setenv("PROMPTOPT_HTTP_PROCESSES", "3")
    assert Endpoint("http://127.0.0.1:9/v1", "k", max_concurrency=2)._workers.processes == 2  # never more than C
    assert Endpoint("http://127.0.0.1:9/v1", "k", processes=0)._workers is None


def _evaluate(stub, tmp_path, processes: int):
    ep = Endpoint(stub.base_url, "k", max_concurrency=8, processes=processes)
    meter = Meter()
    meter.run_id = "r"
    llm = LLM(ep, "stub-task", meter=meter, cache=ResponseCache(tmp_path / f"cache-{processes}"))
    try:
        res = Evaluator(llm, TOY_TASK).evaluate("Classify the sentiment.", toy_examples(60))
    finally:
        ep.close()
    c = meter.snapshot()
    return [p.as_dict() for p in res.predictions], res.score, (c.calls, c.prompt_tokens, c.completion_tokens)


def test_results_are_identical_to_the_threaded_path(tmp_path):
    with StubServer(toy_task_answer) as stub:
        threaded = _evaluate(stub, tmp_path, 0)
        processes = _evaluate(stub, tmp_path, 2)
    assert processes == threaded
    assert threaded[2][0] == 60


LLM_TESTS = [test_llm.test_cache_hit_costs_no_call_and_persists, test_llm.test_rate_limit_with_retry_after_is_retried,
             test_llm.test_server_errors_and_empty_replies_are_retried_until_patience,
             test_llm.test_dead_endpoint_raises_endpoint_down_quickly, test_llm.test_auth_error_is_clear_and_never_shows_the_key,
             test_llm.test_key_is_sent_but_never_cached, test_llm.test_budget_refuses_the_call_that_would_exceed_it,
             test_llm.test_budget_holds_under_concurrency,
             test_llm.test_token_budget_is_never_passed_and_a_call_whose_worst_case_cannot_fit_is_not_sent,
             test_llm.test_concurrency_limit_is_respected, test_llm.test_llamacpp_extras_never_reach_other_endpoints,
             test_llm.test_truncation_is_reported]


@pytest.mark.parametrize("case", LLM_TESTS, ids=lambda f: f.__name__)
def test_the_llm_semantics_hold_through_worker_processes(mp, tmp_path, case):
    if "tmp_path" in case.__code__.co_varnames[:case.__code__.co_argcount]:
        case(tmp_path)
    else:
        case()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["protegi", "gpo"])
def test_the_cap_holds_with_faults_through_worker_processes(mp, tmp_path, name):
    test_budget_cap.test_what_the_server_billed_never_passes_the_cap(tmp_path, name, "calls")


@pytest.mark.slow
def test_thirty_percent_faults_change_nothing_through_worker_processes(mp, tmp_path):
    test_faults.test_thirty_percent_faults_change_nothing(tmp_path)


def _kill_while_in_flight(stub, ep, llm):
    """Starts one request, kills the worker process holding it, and returns the outcome (or raises on a hang)."""
    pids = ep._workers.start()
    out: dict = {}

    def call():
        try:
            out["comp"] = llm.complete(MSG)
        except BaseException as e:  # noqa: BLE001
            out["error"] = e

    t = threading.Thread(target=call, daemon=True)
    t.start()
    deadline = time.time() + 10
    while not stub.requests and time.time() < deadline:
        time.sleep(0.01)
    assert stub.requests, "the request never reached the server"
    os.kill(pids[0], signal.SIGKILL)
    t.join(30)
    assert not t.is_alive(), "a killed worker process hung the request"
    return out, pids


def test_a_killed_worker_process_is_retried_and_replaced(tmp_path):
    with StubServer(lambda r: "fine", latency=1.0) as stub:
        ep = Endpoint(stub.base_url, "k", max_retries=0, patience=30, max_concurrency=2, processes=1)
        llm = LLM(ep, "stub-task", meter=Meter(Budget(max_calls=1)), cache=ResponseCache(tmp_path / "cache"))
        try:
            out, pids = _kill_while_in_flight(stub, ep, llm)
            assert out.get("comp") is not None and out["comp"].text == "fine", out
            assert ep._workers.start() != pids  # a new process took its place
        finally:
            ep.close()
        c = llm.meter.snapshot()
        # the lost try was cancelled like a dropped connection: one call billed, inside a cap of one
        assert c.calls == 1 and c.errors == 0


def test_a_killed_worker_process_without_patience_raises_endpoint_down(tmp_path):
    with StubServer(lambda r: "fine", latency=1.0) as stub:
        ep = Endpoint(stub.base_url, "k", max_retries=0, patience=0, max_concurrency=2, processes=1)
        llm = LLM(ep, "stub-task", meter=Meter(), cache=ResponseCache(tmp_path / "cache"))
        try:
            out, _ = _kill_while_in_flight(stub, ep, llm)
        finally:
            ep.close()
        assert isinstance(out.get("error"), EndpointDown), out
        c = llm.meter.snapshot()
        assert c.calls == 0 and c.errors == 1


def test_the_key_is_in_no_worker_command_line_or_environment(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with StubServer(lambda r: "fine", api_key=SECRET) as stub:
        ep = Endpoint(stub.base_url, SECRET, max_concurrency=2, processes=2)
        llm = LLM(ep, "stub-task", meter=Meter(), cache=ResponseCache(tmp_path / "cache"))
        try:
            assert llm.complete(MSG).text == "fine"  # the workers have the key: the server accepted it
            for pid in ep._workers.start():
                for part in ("cmdline", "environ"):
                    assert SECRET.encode() not in open(f"/proc/{pid}/{part}", "rb").read(), part
        finally:
            ep.close()
        assert SECRET not in repr(ep) and SECRET not in caplog.text
        for f in (tmp_path / "cache").rglob("*"):
            if f.is_file():
                assert SECRET.encode() not in f.read_bytes(), f


def test_a_worker_never_runs_the_parents_main_script(tmp_path, monkeypatch):
    """Spawn re-runs the parent's __main__ file in the child; after Streamlit's AppTest ran a page, that was the
    page, which died on import and took every worker with it. Here __main__ is a script that fails on import."""
    import sys
    import types

    script = tmp_path / "page.py"
    script.write_text("raise SystemExit('a page script must not run in an HTTP worker')\n")
    main = types.ModuleType("__main__")
    main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", main)
    with StubServer(lambda r: "fine") as stub:
        ep = Endpoint(stub.base_url, "k", max_retries=0, patience=0, max_concurrency=1, processes=1)
        llm = LLM(ep, "stub-task", meter=Meter(), cache=ResponseCache(tmp_path / "cache"))
        try:
            assert llm.complete(MSG).text == "fine"
        finally:
            ep.close()
    assert sys.modules["__main__"] is main  # put back
