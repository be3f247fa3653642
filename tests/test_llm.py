"""The LLM client wrapper over real HTTP to the scripted stub: cache, retries, budget, concurrency, secrets."""

import threading
from pathlib import Path

import pytest

from optimizers.budget import Prices
from optimizers.llm import LLM, Budget, BudgetExceeded, Endpoint, EndpointDown, LLMError, Meter, ResponseCache
from tests.stub_server import StubServer

MSG = [{"role": "user", "content": "Say ok"}]
SECRET = "sk-test-SECRET-1234567890"


def make(stub, tmp_path=None, **kw):
    ep = Endpoint(stub.base_url, kw.pop("key", "x"), max_retries=kw.pop("max_retries", 2),
                  patience=kw.pop("patience", 2.0), max_concurrency=kw.pop("max_concurrency", 4),
                  timeout=kw.pop("timeout", 10))
    cache = ResponseCache(tmp_path / "cache") if tmp_path else None
    return LLM(ep, "stub-task", meter=Meter(kw.pop("budget", None)), cache=cache, **kw)


def test_cache_hit_costs_no_call_and_persists(tmp_path):
    with StubServer(lambda r: "ok there") as stub:
        llm = make(stub, tmp_path)
        a = llm.complete(MSG, seed=1)
        b = llm.complete(MSG, seed=1)
        assert a.text == b.text == "ok there" and not a.cached and b.cached
        assert len(stub.chat_requests()) == 1
        c = llm.meter.snapshot()
        assert (c.calls, c.cache_hits) == (1, 1)
        assert c.prompt_tokens > 0 and c.completion_tokens == 2
        # a new client on the same cache folder (a new process, in effect) still hits
        llm2 = make(stub, tmp_path)
        assert llm2.complete(MSG, seed=1).cached
        assert len(stub.chat_requests()) == 1


def test_cache_key_covers_every_sampling_parameter(tmp_path):
    with StubServer(lambda r: "x") as stub:
        llm = make(stub, tmp_path)
        llm.complete(MSG, seed=1)
        llm.complete(MSG, seed=2)
        llm.complete(MSG, seed=1, temperature=0.5)
        llm.complete(MSG, seed=1, max_tokens=7)
        llm.complete([{"role": "user", "content": "Say ok!"}], seed=1)
        assert len(stub.chat_requests()) == 5
        key = ResponseCache.key("http://a/v1", "m", MSG, {"seed": 1})
        assert key != ResponseCache.key("http://b/v1", "m", MSG, {"seed": 1})
        assert key != ResponseCache.key("http://a/v1", "m2", MSG, {"seed": 1})


def test_rate_limit_with_retry_after_is_retried():
    with StubServer(lambda r: "fine") as stub:
        stub.add_faults("429", 2, retry_after=0)
        llm = make(stub, max_retries=3)
        assert llm.complete(MSG).text == "fine"
        assert stub.faults_served == 2
        assert llm.meter.snapshot().calls == 1


def test_server_errors_and_empty_replies_are_retried_until_patience():
    with StubServer(lambda r: "fine") as stub:
        stub.add_faults("503", 1)
        stub.add_faults("empty_choices", 1)
        stub.add_faults("invalid_json", 1)
        llm = make(stub, max_retries=0, patience=60)  # well above the backoff of three faults, also on a loaded machine
        assert llm.complete(MSG).text == "fine"
        assert stub.faults_served == 3


def test_dead_endpoint_raises_endpoint_down_quickly():
    with StubServer() as stub:
        stub.set_down(True)
        llm = make(stub, max_retries=0, patience=1.5)
        with pytest.raises(EndpointDown, match="resume"):
            llm.complete(MSG)
        assert llm.meter.snapshot().errors == 1


def test_auth_error_is_clear_and_never_shows_the_key(tmp_path):
    with StubServer(api_key="right-key") as stub:
        llm = make(stub, key=SECRET)
        with pytest.raises(LLMError) as e:
            llm.complete(MSG)
        assert "API key" in str(e.value) and SECRET not in str(e.value) and SECRET not in repr(llm.endpoint)


def test_key_is_sent_but_never_cached(tmp_path):
    with StubServer(api_key=SECRET) as stub:
        llm = make(stub, tmp_path, key=SECRET)
        llm.complete(MSG)
        assert stub.requests[-1]["_headers"]["authorization"] == f"Bearer {SECRET}"
        for f in (tmp_path / "cache").rglob("*"):
            if f.is_file():
                assert SECRET.encode() not in f.read_bytes(), f


def test_budget_refuses_the_call_that_would_exceed_it(tmp_path):
    with StubServer(lambda r: "x") as stub:
        llm = make(stub, tmp_path, budget=Budget(max_calls=3))
        for s in range(3):
            llm.complete(MSG, seed=s)
        with pytest.raises(BudgetExceeded, match="3 calls"):
            llm.complete(MSG, seed=99)
        assert len(stub.chat_requests()) == 3
        assert llm.complete(MSG, seed=0).cached  # cached answers stay free after the budget is spent


def test_budget_holds_under_concurrency():
    with StubServer(lambda r: "x", latency=0.05) as stub:
        llm = make(stub, budget=Budget(max_calls=5), max_concurrency=8)
        errors = []

        def go(i):
            try:
                llm.complete(MSG, seed=i)
            except BudgetExceeded:
                errors.append(i)

        ts = [threading.Thread(target=go, args=(i,)) for i in range(12)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        assert len(stub.chat_requests()) == 5 and len(errors) == 7


def test_token_budget_is_never_passed_and_a_call_whose_worst_case_cannot_fit_is_not_sent():
    with StubServer(lambda r: "one two three") as stub:
        llm = make(stub, budget=Budget(max_tokens=5))
        with pytest.raises(BudgetExceeded, match="token"):
            llm.complete(MSG, seed=1)
        assert stub.chat_requests() == []
        cap = 2_000
        llm = make(stub, budget=Budget(max_tokens=cap))
        n = 0
        with pytest.raises(BudgetExceeded, match="token"):
            while True:
                llm.complete(MSG, seed=n, max_tokens=16)
                n += 1
        assert n >= 3 and llm.meter.snapshot().tokens <= cap


def test_concurrency_limit_is_respected():
    with StubServer(lambda r: "x", latency=0.15) as stub:
        llm = make(stub, max_concurrency=2)
        ts = [threading.Thread(target=llm.complete, args=(MSG,), kwargs={"seed": i}) for i in range(6)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        assert stub.max_seen_concurrency == 2


def test_llamacpp_extras_never_reach_other_endpoints():
    with StubServer(lambda r: "Yes") as stub:
        llm = make(stub)
        llm.complete(MSG, extra_body={"grammar": 'root ::= "Yes"'})
        assert "grammar" not in stub.chat_requests()[-1]
        llm.endpoint.llamacpp = True
        llm.complete(MSG, extra_body={"grammar": 'root ::= "Yes"'}, seed=3)
        assert stub.chat_requests()[-1]["grammar"] == 'root ::= "Yes"'


def test_truncation_is_reported():
    with StubServer(lambda r: "a long answer that goes on") as stub:
        stub.add_faults("length", 1)
        comp = make(stub).complete(MSG)
        assert comp.truncated


def test_costs_from_price_table():
    with StubServer(lambda r: "one two") as stub:
        llm = make(stub)
        llm.meter.prices = Prices({"stub-task": (1.0, 2.0)})  # $ per 1M tokens
        llm.complete(MSG)
        c = llm.meter.snapshot()
        assert c.cost == pytest.approx((c.prompt_tokens * 1.0 + c.completion_tokens * 2.0) / 1e6)


def test_list_models():
    with StubServer() as stub:
        ep = Endpoint(stub.base_url, "x")
        assert ep.list_models() == ["stub-opt", "stub-task"]


def test_cache_dir_default_is_under_home(monkeypatch, tmp_path: Path):
    c = ResponseCache(tmp_path / "c")
    c.set("k", {"text": "v"})
    assert c.get("k") == {"text": "v"}


def test_per_token_embeddings_are_mean_pooled():
    from optimizers.llm import _pooled

    assert _pooled([[1.0, 2.0], [3.0, 6.0]]) == [2.0, 4.0]
    assert _pooled([0.5, 1]) == [0.5, 1.0]
