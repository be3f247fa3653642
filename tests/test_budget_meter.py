"""The meter's hard cap on its own: claims, settlement, the report's hold, prices (no HTTP here; the end-to-end cap
tests over real HTTP are in test_budget_cap.py)."""

import random
import threading

import pytest

from optimizers.budget import (
    BUILTIN_PRICES,
    Amount,
    Budget,
    BudgetExceeded,
    Counters,
    Meter,
    Prices,
    parse_price,
    prompt_token_bound,
)

MSG = [{"role": "user", "content": "Classify: the film was great."}]


def test_claim_refuses_the_call_past_the_cap_and_cancel_gives_it_back():
    m = Meter(Budget(max_calls=2))
    a = m.claim("task", "m", MSG, 8)
    b = m.claim("task", "m", MSG, 8)
    with pytest.raises(BudgetExceeded, match="call budget"):
        m.claim("task", "m", MSG, 8)
    m.cancel(b)
    m.error("task")
    m.settle(a, 10, 2)
    m.settle(m.claim("task", "m", MSG, 8), 10, 2)
    assert m.snapshot().calls == 2 and m.snapshot().errors == 1
    assert m.exhausted()


def test_token_cap_counts_the_worst_case_of_calls_in_flight():
    bound = prompt_token_bound(MSG)
    m = Meter(Budget(max_tokens=2 * (bound + 8)))
    m.claim("task", "m", MSG, 8)
    m.claim("task", "m", MSG, 8)
    with pytest.raises(BudgetExceeded, match="token budget"):
        m.claim("task", "m", MSG, 8)


def test_prompt_bound_is_at_least_the_bytes():
    text = "naïve café " * 30
    assert prompt_token_bound([{"role": "user", "content": text}]) >= len(text.encode())


def test_money_cap_uses_the_models_price_and_a_free_model_is_never_stopped_by_it():
    prices = Prices({"paid": (1000.0, 1000.0)})  # $0.001 per token
    m = Meter(Budget(max_cost=0.5), prices)
    n = 0
    with pytest.raises(BudgetExceeded, match="money budget"):
        while True:
            m.settle(m.claim("task", "paid", MSG, 8), 30, 2)
            n += 1
    assert 0 < n and m.snapshot().cost <= 0.5
    free = Meter(Budget(max_cost=0.5), prices)
    for _ in range(100):
        free.settle(free.claim("task", "local", MSG, 8), 30, 2)
    assert free.snapshot().cost == 0


def test_hold_keeps_the_report_out_of_reach_until_released():
    m = Meter(Budget(max_calls=10))
    assert m.hold({f"k{i}": Amount(calls=1) for i in range(7)})
    for _ in range(3):
        m.settle(m.claim("optimizer", "m", MSG, 8), 1, 1)
    with pytest.raises(BudgetExceeded):
        m.claim("optimizer", "m", MSG, 8)
    m.release_hold()
    for _ in range(7):
        m.settle(m.claim("task", "m", MSG, 8), 1, 1)
    with pytest.raises(BudgetExceeded):
        m.claim("task", "m", MSG, 8)
    assert m.snapshot().calls == 10
    assert m.roles()["optimizer"]["calls"] == 3 and m.roles()["task"]["calls"] == 7


def test_a_reply_without_usage_is_billed_at_its_bound_and_marked():
    m = Meter(Budget(max_tokens=10_000))
    c = m.claim("task", "m", MSG, 8)
    billed = m.settle(c, None, None)
    assert billed.unmetered_calls == 1 and billed.prompt_tokens == prompt_token_bound(MSG)
    assert billed.completion_tokens == 8


def test_cache_hits_are_free_and_shown_as_savings():
    m = Meter(Budget(max_calls=1), Prices({"paid": (1e6, 1e6)}))
    for _ in range(5):
        m.hit("task", "paid", 3, 1)
    s = m.snapshot()
    assert s.calls == 0 and s.cache_hits == 5 and s.saved_tokens == 20 and s.saved_cost == pytest.approx(20.0)
    assert m.exhausted() is None


def test_concurrent_claims_never_pass_any_cap():
    rnd = random.Random(0)
    for _ in range(20):
        budget = Budget(max_calls=rnd.randint(1, 40), max_tokens=rnd.randint(200, 4000), max_cost=rnd.uniform(0.01, 1))
        m = Meter(budget, Prices({"p": (100.0, 300.0)}))

        def work(seed: int, m: Meter = m) -> None:
            r = random.Random(seed)
            while True:
                msgs = [{"role": "user", "content": "x" * r.randint(1, 200)}]
                try:
                    c = m.claim("task", "p", msgs, 16)
                except BudgetExceeded:
                    return
                real_prompt = r.randint(1, prompt_token_bound(msgs))
                m.settle(c, real_prompt, r.randint(0, 16))

        ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        s = m.snapshot()
        assert s.calls <= budget.max_calls and s.tokens <= budget.max_tokens and s.cost <= budget.max_cost + 1e-9


def test_counters_round_trip_and_ignore_unknown_keys():
    c = Counters(calls=3, prompt_tokens=10, cost=0.1234567)
    d = c.as_dict()
    assert d["cost"] == 0.123457
    assert Counters.from_dict({**d, "from_the_future": 1}).calls == 3
    assert Counters.from_dict(None) == Counters()


def test_prices_user_wins_and_builtin_is_marked_as_a_default():
    p = Prices({"gpt-4o-mini": (1.0, 2.0)})
    assert p.of("gpt-4o-mini") == (1.0, 2.0) and p.source("gpt-4o-mini") == "set by you"
    assert p.of("gpt-4.1") == BUILTIN_PRICES["gpt-4.1"] and "default" in p.source("gpt-4.1")
    assert Prices(builtin=False).of("gpt-4.1") is None
    assert p.of("my-local-model") is None and "unknown" in p.source("my-local-model")


@pytest.mark.parametrize("bad", ["gpt", "gpt=1", "gpt=a,b", "=1,2", "gpt=-1,2", "gpt=1,2,3", "gpt=nan,1"])
def test_parse_price_rejects_malformed_specs_with_the_form_expected(bad):
    with pytest.raises(ValueError, match="MODEL=IN,OUT"):
        parse_price(bad)


def test_parse_price():
    assert parse_price(" m = 0.5,2") == ("m", (0.5, 2.0))


def test_a_held_request_is_paid_from_the_hold_and_a_hold_that_does_not_fit_is_refused():
    m = Meter(Budget(max_calls=3))
    assert not m.hold({f"k{i}": Amount(calls=1) for i in range(4)})
    assert m.hold({"k0": Amount(calls=1), "k1": Amount(calls=1)})
    m.settle(m.claim("task", "m", MSG, 8), 1, 1)  # the one free call
    with pytest.raises(BudgetExceeded):
        m.claim("task", "m", MSG, 8)
    m.settle(m.claim("task", "m", MSG, 8, key="k0"), 1, 1)  # the report's own request: paid from its hold
    m.settle(m.claim("task", "m", MSG, 8, key="k1"), 1, 1)
    assert m.snapshot().calls == 3 and m.exhausted()


def test_spend_by_phase_follows_the_runners_switch():
    m = Meter()
    m.settle(m.claim("optimizer", "m", MSG, 8), 1, 1)
    m.phase = "report"
    m.settle(m.claim("task", "m", MSG, 8), 1, 1)
    assert m.phases()["optimization"]["calls"] == 1 and m.phases()["report"]["calls"] == 1
    resumed = Meter(start=m.snapshot(), start_by_phase={k: Counters.from_dict(v) for k, v in m.phases().items()})
    assert resumed.snapshot().calls == 2 and resumed.phases()["report"]["calls"] == 1


def test_journaled_requests_stay_until_a_usage_snapshot_covers_them(tmp_path):
    """A request a killed process had in flight is billed on resume and stays journaled (marked billed) until a
    stored snapshot covers it: a resume killed before its own first snapshot must not lose it; a reply billed but
    never cached is journaled as billed; what a snapshot covers is dropped, not billed twice."""
    import time as _time

    from optimizers.budget import Budget, Claim, Meter
    from optimizers.llm import ResponseCache

    cache = ResponseCache(tmp_path / "c")
    meter = Meter(Budget())
    claim = meter.claim("task", "m", [{"role": "user", "content": "x" * 40}], 8)
    assert isinstance(claim, Claim)
    cache.sent("run1", claim)  # in flight when the process died
    first = cache.orphans("run1", recorded_until=0.0)
    assert len(first) == 1 and first[0]["billed_at"] > 0
    again = cache.orphans("run1", recorded_until=0.0)  # the resume died before its first snapshot
    assert len(again) == 1
    m2 = Meter(Budget())
    m2.recorded_until = 0.0
    m2.orphaned(again)
    assert m2.snapshot().calls == 1
    covered = cache.orphans("run1", recorded_until=_time.time() + 1)  # a later snapshot holds it
    assert covered == [] and cache.orphans("run1", recorded_until=0.0) == []
    # a billed (unusable, retried) reply: journaled with its bill, skipped once a snapshot covers it
    tok = cache.sent("run2", claim)
    from optimizers.budget import Counters

    cache.billed(tok, "task", "m", Counters(calls=1, prompt_tokens=10, completion_tokens=2), at=100.0)
    m3 = Meter(Budget())
    m3.recorded_until = 200.0
    m3.orphaned([{"role": "task", "tokens": 12, "cost": 0.0, "billed_at": 100.0}])
    assert m3.snapshot().calls == 0  # in the snapshot already
    assert cache.orphans("run2", recorded_until=200.0) == []
    assert cache.orphans("run2", recorded_until=0.0) == []  # dropped for good
