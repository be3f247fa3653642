"""A small call cap buys a smaller complete search, not one stage of a big one: APE's paper sizes (250 induced
instructions) and OPRO's (8 instructions a step, each on all of train) are scaled to the call allowance, the plan is
an event, the pipeline still reaches its final selection, the cap holds, and a run without a cap is unchanged."""

from __future__ import annotations

import pytest

from optimizers.budget import Budget
from optimizers.data import Splits
from tests.conftest import toy_examples
from tests.e2e.conftest import E2EResponder
from tests.stub_server import StubServer
from tests.test_budget_cap import config, server_bill
from tests.test_runner import make_runner


def bigger_splits() -> Splits:
    return Splits(toy_examples(40, start=1), toy_examples(12, seed=1, start=101), toy_examples(12, seed=2, start=201))


def run(tmp_path, name: str, budget: Budget, params: dict | None = None):
    with StubServer(E2EResponder()) as stub:
        runner, store = make_runner(stub, tmp_path)
        cfg = config(tmp_path, name, budget).model_copy(update={"params": params or {}})
        rid = runner.create(cfg, bigger_splits())
        res = runner.execute(rid)
        return res, server_bill(stub)[0], [ev for _, ev in store.events(rid)]


def of(events, kind):
    return [e for e in events if e.kind == kind]


def test_ape_sizes_induction_to_the_allowance_and_still_selects(tmp_path):
    res, billed, events = run(tmp_path, "ape", Budget(max_calls=150))
    assert billed <= 150
    started = of(events, "run_started")[0]
    plan = of(events, "plan")
    assert len(plan) == 1 and plan[0].allowance == started.call_allowance - 12  # less the baseline on dev
    s = plan[0].settings
    assert s["induction_samples"] < plan[0].defaults["induction_samples"] == 250
    assert plan[0].estimated_calls <= plan[0].allowance
    asks = [e for e in of(events, "meta_prompt") if e.purpose == "ape.induce"]
    assert len(asks) == s["induction_samples"]
    # the pipeline ran to the end: filtering stages scored induced instructions, and the final selection happened
    proposed = {e.candidate_id for e in of(events, "candidate_proposed") if e.origin == "induced"}
    scored = {e.candidate_id for e in of(events, "candidate_scored") if e.purpose.startswith("stage")}
    assert proposed & scored
    assert [e for e in of(events, "selection") if e.method == "final"]
    assert res.status == "done", res.reason


def test_opro_scores_on_a_subset_so_its_steps_fit(tmp_path):
    res, billed, events = run(tmp_path, "opro", Budget(max_calls=150))
    assert billed <= 150
    (plan,) = of(events, "plan")
    s = plan.settings
    assert s["score_examples"] < 40 and s["steps"] >= 1 and plan.estimated_calls <= plan.allowance
    train_sizes = {e.n for e in of(events, "candidate_scored") if e.split == "train" and e.purpose != "report"}
    assert train_sizes == {s["score_examples"]}
    searched = {e.step for e in of(events, "candidate_scored") if e.split == "train" and e.step > 0
                and e.purpose == "selection"}
    assert len(searched) >= s["steps"]
    per_step = [len([e for e in of(events, "meta_prompt") if e.step == k]) for k in sorted(searched)]
    assert set(per_step) == {s["samples_per_step"]}


@pytest.mark.parametrize("name", ["ape", "opro"])
def test_without_a_call_cap_the_paper_sizes_stand(tmp_path, name):
    params = {"num_subsamples": 2, "num_prompts_per_subsample": 3} if name == "ape" else {"num_search_steps": 2}
    _, _, events = run(tmp_path, name, Budget(), params)
    assert not of(events, "plan") and of(events, "run_started")[0].call_allowance is None
    if name == "ape":
        assert len([e for e in of(events, "meta_prompt") if e.purpose == "ape.induce"]) == 6
    else:
        assert {e.n for e in of(events, "candidate_scored") if e.split == "train" and e.purpose != "report"} == {40}


def test_a_cap_the_paper_sizes_fit_in_changes_nothing(tmp_path):
    params = {"num_subsamples": 2, "num_prompts_per_subsample": 3}
    _, _, capped = run(tmp_path / "a", "ape", Budget(max_calls=5000), params)
    _, _, free = run(tmp_path / "b", "ape", Budget(), params)
    assert not of(capped, "plan")
    assert [e.kind for e in capped if e.kind not in ("usage",)] == [e.kind for e in free if e.kind not in ("usage",)]


@pytest.mark.parametrize("name", ["ape", "opro"])
def test_fit_budget_off_keeps_the_paper_sizes_until_the_cap_stops_the_run(tmp_path, name):
    res, billed, events = run(tmp_path, name, Budget(max_calls=150), {"fit_budget": False})
    assert not of(events, "plan") and billed <= 150 and res.status == "budget"
    if name == "opro":
        assert {e.n for e in of(events, "candidate_scored") if e.split == "train" and e.purpose != "report"} == {40}


def test_the_inspect_page_shows_the_plan(monkeypatch, tmp_path):
    from tests.test_pages_inspect import frames, open_page

    with StubServer(E2EResponder()) as stub:
        runner, store = make_runner(stub, tmp_path)
        rid = runner.create(config(tmp_path, "ape", Budget(max_calls=150)), bigger_splits())
        runner.execute(rid)
    at = open_page(monkeypatch, tmp_path / "runs.sqlite", run=rid, step="1")
    assert not at.exception
    info = " ".join(i.value for i in at.info)
    assert "Search sized to the call budget (62 calls for the optimization" in info and "3 induced" in info
    (rows,) = frames(at, "size", "paper's", "chosen")
    assert rows.to_dict("records")[0] == {"size": "induction_samples", "paper's": 250, "chosen": 3}


def test_protegi_fits_whole_rounds_with_their_selection(tmp_path):
    res, billed, events = run(tmp_path, "protegi", Budget(max_calls=400))
    assert billed <= 400
    (plan,) = of(events, "plan")
    assert plan.settings["samples_per_eval"] < 32 and plan.estimated_calls <= plan.allowance
    sels = [e for e in of(events, "selection") if e.method == "ucb"]
    assert len(sels) >= plan.settings.get("rounds", 2)  # whole rounds: each ended in its selection
    assert all(e["n"] > 0 for sel in sels for e in sel.estimates)  # every candidate was scored before it was ranked
    pulled = {e.n for e in of(events, "candidate_scored") if e.purpose == "bandit"}
    assert max(pulled) <= plan.settings["samples_per_eval"]  # fewer when some were scored before


def test_protegi_fit_budget_off_is_stopped_mid_selection(tmp_path):
    res, billed, events = run(tmp_path, "protegi", Budget(max_calls=400), {"fit_budget": False})
    assert not of(events, "plan") and billed <= 400 and res.status == "budget"
    assert not [e for e in of(events, "selection") if e.method == "ucb"]


def test_gpo_plans_its_steps_and_its_schedule_spans_them(tmp_path):
    res, billed, events = run(tmp_path, "gpo", Budget(max_calls=200))
    assert billed <= 200
    (plan,) = of(events, "plan")
    s = plan.settings
    assert s["steps"] >= 3 and s["candidates_per_step"] < 8 and plan.estimated_calls <= plan.allowance
    budgets = of(events, "edit_budget")
    assert len(budgets) == s["steps"]  # every planned step ran
    words = [b.budget_words for b in budgets]
    assert words == sorted(words, reverse=True) and words[-1] == 10  # the cosine schedule reached its end
    assert all(f"over {s['steps']} steps" in b.schedule for b in budgets)
    gens = [e for e in of(events, "meta_prompt") if e.purpose == "gpo.generate"]
    assert len(gens) == s["steps"] * s["candidates_per_step"]
    sizes = {e.n for e in of(events, "candidate_scored") if e.split == "dev" and e.purpose != "report"}
    assert sizes == {s["selection_examples"]}


def test_pe2_plans_a_complete_search_instead_of_spending_the_cap_on_its_first_error_scan(tmp_path):
    res, billed, events = run(tmp_path, "pe2", Budget(max_calls=150))
    assert billed <= 150
    (plan,) = of(events, "plan")
    s = plan.settings
    assert plan.estimated_calls <= plan.allowance == of(events, "run_started")[0].call_allowance
    assert (s["steps"], s["n_parents"], s["proposals_per_parent"]) != (3, 4, 4)  # the paper's sizes did not fit
    scans = {e.n for e in of(events, "candidate_scored") if e.purpose == "errors"}
    assert scans == {s["train_sample"]}
    asked = [e for e in of(events, "meta_prompt") if e.purpose == "pe2.propose"]
    assert 1 <= len(asked) <= s["steps"] * s["n_parents"] * s["proposals_per_parent"]
    assert max(e.step for e in asked) == s["steps"]  # every planned step ran
    assert res.status == "done", res.reason


def test_pe2_fit_budget_off_is_cut_by_the_cap(tmp_path):
    res, billed, events = run(tmp_path, "pe2", Budget(max_calls=150), {"fit_budget": False})
    assert not of(events, "plan") and billed <= 150 and res.status == "budget"
