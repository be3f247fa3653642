"""The cap must not leak: for every optimizer and a cap on calls, tokens or money, what the scripted stub billed (replies
that came back with tokens, counted by the server side) never passes the cap, faults injected, the report included;
the books agree with the server; a killed run resumed stays inside the cap; the estimate is close to the bill; a cap
too small for the whole report reports on test first and says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from optimizers import methods  # noqa: F401  (registers)
from optimizers.backend import Backend
from optimizers.budget import Budget
from optimizers.config import DataConfig, RunConfig
from optimizers.estimate import dry_run
from optimizers.llm import Endpoint
from optimizers.runner import Runner
from optimizers.store import Store
from tests.conftest import TOY_TASK
from tests.e2e.conftest import E2EResponder
from tests.stub_server import StubServer
from tests.test_runner import splits

OPTIMIZERS = ["ape", "protegi", "opro", "pe2", "gpo"]
PRICES = {"stub-task": (10.0, 20.0), "stub-opt": (30.0, 60.0)}  # USD per 1M tokens
CAPS = {"calls": Budget(max_calls=45), "tokens": Budget(max_tokens=12000), "money": Budget(max_cost=0.25)}
FAULTS = ["429", "500", "drop", "empty_choices", "invalid_json"]


def config(tmp_path, name: str, budget: Budget, base_url: str | None = None) -> RunConfig:
    return RunConfig(optimizer=name, params={}, initial_prompt="Classify the text.", task=TOY_TASK,
                     data=DataConfig(name="toy", input_cols=["text"], label_col="label"), seed=3,
                     base_url=base_url, task_model="stub-task", optimizer_model="stub-opt", budget=budget,
                     prices=PRICES, max_concurrency=2, cache_dir=str(tmp_path / "cache"))


def server_bill(stub: StubServer) -> tuple[int, int, float]:
    """Calls, tokens and money as the server's own usage fields add up."""
    calls = tokens = 0
    cost = 0.0
    for model, (pt, ct, n) in stub.billed_by_model.items():
        calls += n
        tokens += pt + ct
        pin, pout = PRICES.get(model, (0.0, 0.0))
        cost += (pt * pin + ct * pout) / 1e6
    return calls, tokens, cost


def run(tmp_path, name: str, budget: Budget, fault_rate: float = 0.0):
    with StubServer(E2EResponder()) as stub:
        if fault_rate:
            stub.set_fault_rate(fault_rate, FAULTS, seed=11)

        def backend(cfg):
            ep = Endpoint(stub.base_url, "k", max_retries=3, patience=30, max_concurrency=2, timeout=5)
            return Backend(ep, False, "stub-task", "stub")

        store = Store(tmp_path / "runs.sqlite")
        runner = Runner(store, backend_factory=backend)
        rid = runner.create(config(tmp_path, name, budget), splits())
        res = runner.execute(rid)
        return res, server_bill(stub), store, rid


@pytest.mark.slow
@pytest.mark.parametrize("cap", sorted(CAPS))
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_what_the_server_billed_never_passes_the_cap(tmp_path, name, cap):
    budget = CAPS[cap]
    res, (calls, tokens, cost), _, _ = run(tmp_path, name, budget, fault_rate=0.1 if cap == "calls" else 0.0)
    limit = {"calls": calls <= (budget.max_calls or 0), "tokens": tokens <= (budget.max_tokens or 0),
             "money": cost <= (budget.max_cost or 0) + 1e-12}[cap]
    assert limit, (cap, calls, tokens, cost)
    # the books agree with the server, and the cap stopped the run (these caps are far below a full run)
    assert res.calls == calls and res.prompt_tokens + res.completion_tokens == tokens
    assert res.cost == pytest.approx(cost, abs=1e-6)
    assert res.status == "budget" or res.report_skipped
    assert "test" in res.scores["best"]  # the report kept its share: test first
    assert res.optimization_usage.calls + res.report_usage.calls == res.calls
    assert set(res.by_role) >= {"task", "optimizer"}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_estimate_is_within_ten_percent_of_the_bill(tmp_path, name):
    budget = Budget(max_calls=60)
    res, (calls, _, _), _, _ = run(tmp_path, name, budget)
    est = dry_run(name, {}, TOY_TASK, splits(), "Classify the text.", seed=3, budget=budget)
    # the report scores the best too when it changed; the dry model's random answers decide that for the estimate,
    # so where the two disagree they may be one prompt's report apart
    one_report = sum(len(x) for x in (splits().train, splits().dev, splits().test))
    slack = 0.1 * calls + (one_report if est.best_changed != (res.best_prompt != res.initial_prompt) else 0)
    assert abs(est.calls - calls) <= slack, (est.calls, calls, est.best_changed)


def test_a_cap_too_small_for_the_report_says_so_and_does_not_overspend(tmp_path):
    res, (calls, _, _), store, rid = run(tmp_path, "protegi", Budget(max_calls=12))
    assert calls <= 12 and res.calls == calls
    assert res.report_skipped and "test" not in res.report_skipped and "did not cover the report" in res.report_error
    warnings = [e for _, e in store.events(rid, kinds=["error"]) if e.where == "budget"]
    assert warnings and "fewer splits" in warnings[0].message


def test_a_cap_mostly_held_for_the_report_says_how_little_the_search_gets(tmp_path):
    """A small cap on a large test split is mostly the report's (on helpdesk_queues 2 x 120 test examples of 300
    calls left GPO 30): the run says so before it spends anything, with the calls the search gets, which is the
    allowance the optimizer was told; a cap with room for the search says nothing."""
    res, _, store, rid = run(tmp_path, "gpo", Budget(max_calls=60))
    said = [e.message for _, e in store.events(rid, kinds=["error"]) if e.where == "budget" and "holds most" in e.message]
    started = next(e for _, e in store.events(rid, kinds=["run_started"]))
    assert len(said) == 1 and f"the optimization gets {started.call_allowance} calls" in said[0], said
    assert "--max-test" in said[0] and "8 train, 8 dev, 10 test" in said[0]
    assert res.calls <= 60
    _, _, store, rid = run(tmp_path / "roomy", "gpo", Budget(max_calls=400))
    assert not [e for _, e in store.events(rid, kinds=["error"]) if "holds most" in e.message]


@pytest.mark.slow
def test_a_killed_run_resumed_stays_inside_the_cap(tmp_path):
    cap = 70
    with StubServer(E2EResponder(), latency=0.01) as stub:
        db = tmp_path / "runs.sqlite"
        store = Store(db)
        rid = Runner(store).create(config(tmp_path, "protegi", Budget(max_calls=cap), stub.base_url), splits())
        env = {**os.environ, "OPENAI_API_KEY": "k", "PROMPTOPT_AUTO_RESUME_S": "0"}

        def worker() -> subprocess.Popen:
            return subprocess.Popen([sys.executable, "-m", "optimizers", "worker", rid, "--db", str(db)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        for target in (12, 30):  # kill twice, mid-step, while requests are in flight
            p = worker()
            while stub.billed < target and p.poll() is None:
                time.sleep(0.002)
            p.send_signal(signal.SIGKILL)
            p.wait(30)
        p = worker()
        assert p.wait(300) == 0
        run = store.get_run(rid)
        calls, _, _ = server_bill(stub)
    assert calls <= cap, f"the server billed {calls} calls against a cap of {cap}"
    # the books recovered what the killed processes paid for: answers they cached (rebilled from their stamps) and
    # requests they had in flight (billed at their worst case, as the server may have answered them)
    assert calls <= run["result"]["calls"] <= cap


def test_a_server_that_reports_no_usage_is_billed_at_the_bound_and_the_token_cap_still_holds(tmp_path):
    budget = Budget(max_tokens=15000)
    with StubServer(E2EResponder()) as stub:
        stub.send_usage = False

        def backend(cfg):
            return Backend(Endpoint(stub.base_url, "k", max_retries=0, patience=5, max_concurrency=2), False,
                           "stub-task", "stub")

        runner = Runner(Store(tmp_path / "runs.sqlite"), backend_factory=backend)
        res = runner.execute(runner.create(config(tmp_path, "protegi", budget), splits()))
        _, real_tokens, _ = server_bill(stub)
    assert res.calls == stub.billed and res.unmetered_calls == res.calls > 0
    # no tokenizer at this endpoint: every call is billed at its bound, which is above what the server counted
    assert real_tokens <= res.prompt_tokens + res.completion_tokens <= budget.max_tokens
