"""Optimize: configure a run (optimizer and its paper defaults, models, budget), start it in a worker process, and
watch it live from the store: scores by step, best so far, the beam, candidates with word diffs, spend, status.

The page never runs the optimization: Runner.create + spawn_worker start it, store.request_stop stops it, and a
stopped / paused / failed run resumes by spawning a worker again (the replay is free: cached answers).
"""

from __future__ import annotations

import datetime as dt
import time

import pandas as pd
import streamlit as st

from optimizers.data import DataError
from optimizers.methods.demos import follows_by_default
from optimizers.prepare import prepare_task
from optimizers.result import stored_result
from optimizers.status import RunStatus, observed_status
from optimizers.store import Store
from ui import charts
from ui.diff import diff_stats, render_markers
from ui.inspectors import render_prompt, render_roles, roles_view
from ui.launch import create_and_launch, estimate_run, price_inputs, registered_optimizers, resume
from ui.params_form import params_form, validation_messages
from ui.session import (
    _store_at,
    connection_sidebar,
    db_path,
    describe_roles,
    page_link,
    role_endpoints,
    role_plans,
    run_link,
    selected_run,
    store,
)

st.set_page_config(page_title="PromptOpt: Optimize", layout="wide")
connection_sidebar()
st.title("Optimize")

YOUNG_RUN_S = 60.0  # polled every second until then
PREFERRED = ["protegi", "opro", "ape", "pe2", "gpo", "demos", "baseline"]
STATUS_TEXT = {"created": "waiting for the worker", "running": "running", "done": "finished",
               "budget": "budget reached", "stopped": "stopped by the user", "paused": "paused (endpoint down)",
               "failed": "failed", "crashed": "crashed (the worker process is gone)"}

S: Store = store()
optimizers = registered_optimizers()


def _order(names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: (PREFERRED.index(n) if n in PREFERRED else len(PREFERRED), n))


# --- new run ------------------------------------------------------------------------------------------------------


def new_run_form() -> None:
    po = st.session_state.get("po_data")
    if not po:
        st.info("No data chosen yet: pick or upload a set on the Data page, or load the bundled sentiment set.")
        c1, c2 = st.columns(2)
        page_link("pages/1_Data.py", label="Go to Data")
        if c2.button("Load the bundled sentiment set (60 reviews: train 28, dev 16, test 16)", key="opt_load_sample"):
            st.session_state["po_data"] = prepare_task("sentiment", split={"max_train": 40, "max_dev": 20,
                                                                           "max_test": 40})
            st.rerun()
        return
    sz = po.splits.sizes()
    st.write(f"Data: **{po.name}**: train {sz['train']}, dev {sz['dev']}, test {sz['test']} "
             f"(seed {po.split_config.seed}).")
    if not optimizers:
        st.error("No optimizer is registered (optimizers.methods imported none).")
        return
    names = _order(list(optimizers))
    name = st.selectbox("Optimizer", names, key="opt_name",
                        format_func=lambda n: f"{getattr(optimizers[n], 'title', n)}")
    cls = optimizers[name]
    st.caption(f"Paper: {getattr(cls, 'paper', '-')}")
    prefix = f"opt_params.{name}"
    with st.expander("Parameters (defaults from the paper and its official code)", expanded=False):
        b1, b2, b3 = st.columns([1, 1, 1])
        if b1.button("Reset to the defaults", key=f"{prefix}.reset"):
            for k in [k for k in st.session_state if str(k).startswith(prefix + ".")]:
                del st.session_state[k]
            st.session_state.pop(f"preset_values.{name}", None)
            st.rerun()
        presets = getattr(cls, "presets", {}) or {}
        if presets:
            pick = b2.selectbox("Preset", list(presets), key=f"preset_pick.{name}", label_visibility="collapsed")
            if b3.button("Apply the preset", key=f"preset_apply.{name}",
                         help=", ".join(f"{k}={v!r}" for k, v in presets[pick].items()) or "the defaults"):
                for k in [k for k in st.session_state if str(k).startswith(prefix + ".")]:
                    del st.session_state[k]
                st.session_state[f"preset_values.{name}"] = dict(presets[pick])
                st.rerun()
        raw = params_form(cls.Params, prefix, st.session_state.get(f"preset_values.{name}"))
    try:
        params = cls.Params(**raw)
    except Exception as e:
        for m in validation_messages(e):
            st.error(f"Parameter {m}")
        return
    changed = {k: v for k, v in params.model_dump().items() if v != cls.Params().model_dump().get(k)}
    if changed:
        st.caption("Changed from the defaults: " + ", ".join(f"{k}={v!r}" for k, v in changed.items()))

    prompt = st.text_area("Initial prompt", value=po.initial_prompt, key=f"opt_prompt.{po.name}")
    demo_search = None
    if name != "demos":
        d1, d2, d3 = st.columns([2, 1, 1])
        try:
            embedded = role_plans()["task"].embedded
        except Exception:  # said below, where the roles are resolved
            embedded = False
        default = follows_by_default(name, po.task.labels, bool(po.task.demos), embedded) is not None
        if d1.checkbox("Then search demonstrations for the best instruction", value=default, key="opt_then_demos",
                       help="Random sets of labelled train examples, each scored on dev with the instruction the "
                            "optimizer chose; the best set is kept with it. Its share of the budget is held from "
                            "the start: under a call cap, at most half of what the report leaves (fewer sets, then "
                            "a dev subset). On by default on the embedded model, which demonstrations move most "
                            "(BENCHMARKS.md)."):
            demo_search = {"k": int(d2.number_input("demos per set", 1, 32, 8, 1, key="opt_demo_k")),
                           "trials": int(d3.number_input("sets tried", 1, 200, 3, 1, key="opt_demo_trials")),
                           "fit_budget": True}
    task_endpoint, optimizer_endpoint = role_endpoints()
    try:
        st.caption(f"{describe_roles()} (change them in the sidebar).")
        plans = role_plans()
    except Exception as e:
        st.error(f"Cannot resolve the task and optimizer endpoints: {e}")
        return
    paid = {role: (None if p.embedded else p.model) for role, p in plans.items()}
    c1, c2, c3, c4 = st.columns(4)
    max_calls = int(c1.number_input("Budget: max calls (0 = none)", 0, 10_000_000, 300, 50, key="opt_calls"))
    max_tokens = int(c2.number_input("Budget: max tokens (0 = none)", 0, 10**10, 0, 10_000, key="opt_tokens"))
    max_cost = float(c3.number_input("Budget: max cost in $ (0 = none)", 0.0, 1e6, 0.0, 0.5, key="opt_cost",
                                     help="Counted from the prices you set; the embedded model is free."))
    seed = int(c4.number_input("Seed", 0, 2**31 - 1, 0, 1, key="opt_seed"))

    from optimizers.budget import Budget, Prices

    prices = price_inputs([m for m in paid.values() if m])
    budget = Budget(max_calls or None, max_tokens or None, max_cost or None)
    est = estimate_run(name, params.model_dump(), po, prompt.strip(), seed, budget, prices, demo_search)
    if est is None:
        msg = (f"No estimate for {name} with these settings: the run makes **at most {max_calls:,} calls** (the budget)"
               if max_calls else f"No estimate for {name} with these settings and no call budget")
    else:
        lead = "at least " if est.capped else ""
        cost = est.cost(Prices(prices), paid["task"], paid["optimizer"])
        msg = (f"Estimate of the whole run (a dry run of {name} against an instant scripted model, then its report): "
               f"**{lead}{est.calls:,} calls**: optimization {est.task_calls:,} task + {est.optimizer_calls:,} "
               f"optimizer, report {est.report_calls:,}; about {est.prompt_tokens:,} prompt tokens and at most "
               f"{est.max_completion_tokens:,} completion tokens"
               + (f", at most ${cost:,.4f}" if cost is not None else ", cost unknown (set the prices below)")
               + (" (the budget stops the optimization there, leaving the report its share)"
                  if est.stopped_by_budget else "")
               + f". The budget ({budget.describe()}) covers all of it. A real model's rejected or repeated proposals and cache hits make "
               "it fewer.")
        if est.report_skipped:
            st.warning(f"The budget cannot pay for the whole report: it would leave out "
                       f"{', '.join(est.report_skipped)} (test is reported first). Raise the budget to report on "
                       f"every split.")
    st.markdown(msg)
    if not max_calls and not max_tokens and not max_cost:
        st.warning("No budget set: the run stops only when the optimizer finishes or you stop it.")

    if st.button("Start the run", type="primary", key="opt_start"):
        try:
            cfg = po.run_config(cls, initial_prompt=prompt, params=params.model_dump(), seed=seed,
                                task_endpoint=task_endpoint, optimizer_endpoint=optimizer_endpoint,
                                budget=budget, prices=prices, demo_search=demo_search)
            rid = create_and_launch(cfg, po.splits)
        except DataError as e:
            st.error(f"Could not start the run: {e}")
            return
        except Exception as e:
            st.error(f"Could not start the run: {type(e).__name__}: {e}")
            return
        st.query_params["run"] = rid
        st.rerun()


# --- a run, live --------------------------------------------------------------------------------------------------


@st.cache_data(show_spinner=False, max_entries=32)
def _frames(db: str, run_id: str, n_events: int) -> dict:
    """All projections of a run, recomputed only when its event count changes."""
    s = _store_at(db)
    points = charts.score_points(s, run_id)
    best = charts.best_so_far(s, run_id)
    table = charts.candidate_table(s, run_id, points)
    texts = {c["candidate_id"]: c["text"] for c in s.candidates(run_id)}
    init_id = charts.initial_candidate(s, run_id)
    split = best.iloc[-1].split if not best.empty else None
    return {"points": points, "best": best, "table": table, "texts": texts, "init_id": init_id,
            "init_score": charts.initial_reference(points, init_id, split), "beam": charts.current_beam(s, run_id),
            "spend": charts.spend(s, run_id)}


def _controls(run: dict, status: RunStatus) -> None:
    rid = run["id"]
    c1, c2, c3 = st.columns([1, 1, 3])
    if status.live:
        if run["stop_requested"]:
            c1.button("Stopping...", disabled=True, key="opt_stopping")
        elif c1.button("Stop", key="opt_stop", help="The run stops after the current step; resume it later."):
            S.request_stop(rid)
            st.rerun(scope="fragment")
    elif status is RunStatus.BUDGET:
        old = (run["config"].get("budget") or {}).get("max_calls") or 0
        more = c3.number_input("New call budget", min_value=int(old) + 1, value=int(old) * 2 or 100, step=50,
                               key="opt_more_calls", help="Raise the budget and continue from the stored steps.")
        if c1.button("Continue", type="primary", key="opt_continue",
                     help="Replays the stored steps from the cache (free) and continues with the new budget."):
            S.set_budget(rid, {"max_calls": int(more)})
            _resume(rid)
    elif status.resumable:
        if c1.button("Resume", type="primary", key="opt_resume",
                     help="Replays the stored steps from the cache (free) and continues."):
            _resume(rid)


def _resume(rid: str) -> None:
    try:
        resume(rid)
    except Exception as e:
        st.error(f"Could not resume: {type(e).__name__}: {e}")
        return
    st.rerun()


def _spend_view(sp: dict) -> None:
    used, lim = sp["used"], sp["limits"]
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("calls", f"{used['calls']:,}" + (f" / {lim['calls']:,}" if lim["calls"] else ""))
    c2.metric("cache hits (free)", f"{used['cache_hits']:,}",
              help=f"saved {used['saved_tokens']:,} tokens, ${used['saved_cost']:.4f}")
    c3.metric("tokens", f"{used['tokens']:,}" + (f" / {lim['tokens']:,}" if lim["tokens"] else ""))
    c4.metric("cost", f"${used['cost']:.4f}" + (f" / ${lim['cost']:.2f}" if lim["cost"] else ""))
    if sp["fraction"] is not None:
        st.progress(sp["fraction"], text=f"{sp['fraction']:.0%} of the budget (tightest limit; it covers the report "
                                         f"too), as of step {sp['at_step'] if sp['at_step'] is not None else '-'}")
    rows = [{"spent by": f"{kind} {name}", "calls": c.get("calls", 0),
             "tokens": c.get("prompt_tokens", 0) + c.get("completion_tokens", 0), "cost $": c.get("cost", 0.0),
             "cache hits": c.get("cache_hits", 0)}
            for kind, part in (("role", used["by_role"]), ("phase", used["by_phase"])) for name, c in part.items()]
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    if used["unmetered_calls"]:
        st.info(f"{used['unmetered_calls']:,} replies came without token usage from the server: their tokens were "
                "counted with the server's own tokenizer where it has one, else at their upper bound (so the budget "
                "still holds).")


def _report_view(run: dict) -> None:
    res = stored_result(run)
    if res is None:
        return
    rows = []
    for which in ("initial", "best"):
        row = {"prompt": which}
        for split in ("train", "dev", "test"):
            s = res.scores[which].get(split)
            row[split] = (f"{s.score:.3f} [{s.ci[0]:.2f}, {s.ci[1]:.2f}] n={s.n}" if s else "")
        rows.append(row)
    if any(r["test"] or r["train"] for r in rows):
        st.subheader("Report (initial vs best, scored once after the run; test is held out)")
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        for split, pair in res.paired.items():
            st.caption(f"Best against initial on the same {split} examples: {pair.describe()}"
                       + (" (beyond chance at 5%)" if pair.p < 0.05 else " (within chance at 5%)"))
    if res.report_error:
        st.warning(f"The report is incomplete: {res.report_error}")
    if res.best_prompt:
        st.caption("Best prompt:")
        render_prompt(res.best_prompt)


def _candidates_view(f: dict) -> None:
    table: pd.DataFrame = f["table"]
    if table.empty:
        return
    st.subheader(f"Candidates ({len(table)})")
    st.dataframe(table, hide_index=True, width="stretch", height=min(420, 40 + 35 * len(table)),
                 column_config={"prompt": st.column_config.TextColumn(width="large"),
                                "train": st.column_config.NumberColumn(format="%.3f"),
                                "dev": st.column_config.NumberColumn(format="%.3f")})
    order = table.sort_values(["dev", "train"], ascending=False, na_position="last")
    ids = list(order.candidate)
    texts = f["texts"]
    pick = st.selectbox("Diff a candidate against its parent", ids, key="opt_diff_pick",
                        format_func=lambda c: f"{c} (step {int(table.set_index('candidate').at[c, 'step'])}, "
                                              f"{table.set_index('candidate').at[c, 'origin']})")
    if pick:
        row = table.set_index("candidate").loc[pick]
        parent = row["parent"]
        if parent and parent in texts:
            stats = diff_stats(texts[parent], texts[pick])
            st.caption(f"Against parent {parent}: {stats['removed']} word(s) removed [-...-], {stats['added']} "
                       f"added {{+...+}}")
            st.code(render_markers(texts[parent], texts[pick]), language=None, wrap_lines=True)
        else:
            st.caption("No parent (an initial or generated prompt). Full text:")
            st.code(texts.get(pick, ""), language=None, wrap_lines=True)


def _live_progress(live: dict, cfg: dict) -> None:
    """The worker's spend so far, written every few seconds between events: it moves while a step scores."""
    cap = (cfg.get("budget") or {}).get("max_calls")
    calls, hits = int(live.get("calls") or 0), int(live.get("cache_hits") or 0)
    inflight = int(live.get("inflight") or 0)
    text = f"Working: {calls:,} calls so far" + (f" of at most {cap:,}" if cap else "") + (
        f", {hits:,} answered from the cache" if hits else "") + (
        f", {inflight} waiting for the model" if inflight else "") + (
        f" (as of {dt.datetime.fromtimestamp(live['at']):%H:%M:%S})")
    if cap:
        st.progress(min(1.0, calls / cap), text=text)
    else:
        st.caption(text)


def run_view(rid: str) -> None:
    run = S.get_run(rid) or S.find_run(rid)
    if run is None:
        st.error(f"No run {rid!r} in the store ({db_path()}).")
        return
    rid = run["id"]
    cfg = run["config"]
    st.subheader(f"Run {rid}: {run['optimizer']} on {run['data_name']}")
    st.caption(f"created {dt.datetime.fromtimestamp(run['created']):%Y-%m-%d %H:%M:%S}, seed {run['seed']}")
    render_roles(roles_view(S.last_event(rid, "run_started"), cfg))
    run_link(rid, label="Link to this run (share or bookmark)")
    # every second while a run is young (something moves at once), then every 3 s: each redraw costs CPU that a
    # local model on the same cores needs, and one scoring call takes seconds there
    young = time.time() - run["created"] < YOUNG_RUN_S
    interval = (1 if young else 3) if observed_status(run).live else None

    @st.fragment(run_every=interval)
    def live() -> None:
        r = S.get_run(rid)
        if r is None:
            st.error("The run was deleted.")
            return
        status = observed_status(r)
        if interval and not status.live:
            st.rerun(scope="app")  # finished or crashed: draw the final view once, and stop polling
        if young and time.time() - r["created"] >= YOUNG_RUN_S:
            st.rerun(scope="app")  # the slower polling from now on
        text = STATUS_TEXT.get(status, status)
        reason = r.get("reason") or ""
        msg = f"Status: **{text}**" + (f": {reason}" if reason and reason != text else "")
        {"failed": st.error, "crashed": st.error, "paused": st.warning, "budget": st.info, "stopped": st.info,
         "done": st.success}.get(status, st.info)(msg)
        _controls(r, status)
        f = _frames(db_path(), rid, S.event_count(rid))
        _spend_view(f["spend"])
        if status.live and r.get("live"):
            _live_progress(r["live"], cfg)
        if f["points"].empty and f["best"].empty:
            st.caption("No scores yet." + (" The worker is starting..." if status.live else ""))
        else:
            st.plotly_chart(charts.score_figure(f["points"], f["best"], beam=f["beam"],
                                                initial_score=f["init_score"], texts=f["texts"]), width="stretch",
                            key=f"opt_chart_{rid}")
            if f["beam"]:
                st.caption("Current beam: " + ", ".join(f["beam"]))
        if not status.live:
            _report_view(r)
        _candidates_view(f)

    live()


# --- page ---------------------------------------------------------------------------------------------------------

rid = selected_run()
with st.expander("New run", expanded=rid is None):
    new_run_form()

runs = S.list_runs()
if runs:
    ids = [r["id"] for r in runs]
    labels = {r["id"]: f"{r['id']} · {r['optimizer']} · {r['data_name']} · "
                       f"{dt.datetime.fromtimestamp(r['created']):%Y-%m-%d %H:%M}" for r in runs}
    cur = ids.index(rid) if rid in ids else None
    pick = st.selectbox("Open a run", ids, index=cur, format_func=labels.get, placeholder="choose a run",
                        key=f"opt_open_{rid}")
    if pick and pick != rid:
        st.query_params["run"] = pick
        st.rerun()
if rid:
    run_view(rid)
elif not runs:
    st.caption("No runs yet.")
