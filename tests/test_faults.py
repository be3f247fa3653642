"""Endpoint faults: with 30% of requests faulted (429 with Retry-After, 5xx, dropped connections, empty choices,
invalid JSON), a ProTeGi run completes with exactly the fault-free result, and every fault was survived."""

from __future__ import annotations

import pytest

from optimizers.backend import Backend
from optimizers.config import DataConfig, RunConfig
from optimizers.llm import Endpoint
from optimizers.methods import protegi  # noqa: F401  (registers)
from optimizers.runner import Runner
from optimizers.store import Store
from tests.conftest import TOY_TASK, scripted
from tests.stub_server import StubServer
from tests.test_runner import splits

FAULTS = ["429", "500", "502", "503", "drop", "empty_choices", "invalid_json"]
PARAMS = {"rounds": 2, "beam_size": 2, "minibatch_size": 8, "n_gradients": 1, "errors_per_gradient": 2,
          "mc_samples_per_step": 1, "evaluator": "bf"}


def opt_reply(req):
    text = req["messages"][-1]["content"]
    if "reasons" in text.lower() or "reason" in text.lower() and "wrong" in text.lower():
        return "<START>The prompt never mentions sentiment.<END>"
    return "<START>Classify the sentiment of the text.<END>"


def run_once(tmp_path, fault_rate: float):
    with StubServer(scripted(opt_reply)) as stub:
        if fault_rate:
            stub.add_faults("429", 1, retry_after=0)
            stub.set_fault_rate(fault_rate, FAULTS, seed=7)
        store = Store(tmp_path / "runs.sqlite")

        def backend(cfg):
            ep = Endpoint(stub.base_url, "k", max_retries=2, patience=60, max_concurrency=2, timeout=5)
            return Backend(ep, False, "stub-task", "stub")  # same cache id for both endpoints' answers

        runner = Runner(store, backend_factory=backend)
        cfg = RunConfig(optimizer="protegi", params=PARAMS, initial_prompt="Classify the text.", task=TOY_TASK,
                        data=DataConfig(name="toy", input_cols=["text"], label_col="label"), seed=5,
                        optimizer_model="stub-opt", cache_dir=str(tmp_path / "cache"))
        res = runner.execute(runner.create(cfg, splits()))
        texts = [c["text"] for c in store.candidates(res.run_id)]
        assert res.calls == stub.billed  # every reply that came back with tokens is billed, retried or not
        return res, texts, stub.faults_by_kind, len(stub.requests)


@pytest.mark.slow
def test_thirty_percent_faults_change_nothing(tmp_path):
    clean, clean_texts, _, clean_requests = run_once(tmp_path / "clean", 0.0)
    faulty, faulty_texts, by_kind, requests = run_once(tmp_path / "faulty", 0.3)
    served = sum(by_kind.values())
    assert clean.status == faulty.status == "done"
    assert served >= 0.2 * requests and served > 10  # the faults really happened
    assert faulty_texts == clean_texts
    assert faulty.best_prompt == clean.best_prompt
    assert faulty.scores == clean.scores
    # every faulted request was retried: the calls are the same, plus the unusable replies that still came back with
    # tokens (no choices: a real server bills those too); faults that returned nothing are not calls
    assert faulty.calls == clean.calls + by_kind.get("empty_choices", 0)
