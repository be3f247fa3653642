"""Sweeps: launch a grid of runs (YAML/JSON text, an uploaded file or a small form), follow every cell live, and read
the leaderboard across seeds with per-knob effects. The page only reads the store: a worker process runs the sweep
(ui.launch.launch_sweep), so it outlives the tab, and starting the same sweep again continues it. `?sweep=<id>` opens
a sweep (a link to share or bookmark)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time

import pandas as pd
import streamlit as st
import yaml

from optimizers.data import BUNDLED
from optimizers.leaderboard import as_csv, as_json, knob_effects, leaderboard
from optimizers.ray_executor import RayError
from optimizers.sweep import SweepError
from ui import charts
from ui.launch import launch_sweep, registered_optimizers
from ui.session import _store_at, connection_sidebar, db_path, role_endpoints, run_link, store
from ui.sweeps import (
    EXAMPLE,
    cell_rows,
    endpoint_settings,
    finished,
    grid_summary,
    leaderboard_table,
    runs_at_once,
    state,
    sweep_yaml,
    unfinished,
)

st.set_page_config(page_title="PromptOpt: Sweeps", layout="wide")
connection_sidebar()
st.title("Sweeps")
S = store()
_SWEEP_ID = re.compile(r"^s[0-9a-f]{9}$")
ss = st.session_state


# --- launch -------------------------------------------------------------------------------------------------------

def _endpoints() -> dict:
    """The sidebar's endpoints and models, written into the sweep so its runs go where the sidebar points."""
    task, opt = role_endpoints()
    return endpoint_settings(task.base_url, task.model, opt.base_url, opt.model)


def _from_form() -> None:
    picked = ss.get("sw_form_opts") or []
    ss["sw_text"] = sweep_yaml("-".join([ss["sw_form_data"], *picked]), ss["sw_form_data"], {n: {} for n in picked},
                               int(ss["sw_form_seeds"]), int(ss["sw_form_calls"]), int(ss["sw_form_total"]),
                               int(ss["sw_form_parallel"]), _endpoints())


def _from_upload() -> None:
    f = ss.get("sw_upload")
    if f is not None:
        try:
            ss["sw_text"] = f.getvalue().decode("utf-8")
        except UnicodeDecodeError:
            ss["sw_upload_error"] = f"{f.name} is not UTF-8 text."


def launch_section() -> None:
    if "sw_text" not in ss:
        eps = _endpoints()
        ss["sw_text"] = sweep_yaml(**{**EXAMPLE, "parallel": runs_at_once(eps)}, endpoints=eps)
    text_tab, form_tab = st.tabs(["YAML / JSON", "Form"])
    with form_tab:
        opts = registered_optimizers()
        with st.form("sw_form"):
            c = st.columns(2)
            c[0].selectbox("Data set", list(BUNDLED), index=list(BUNDLED).index(EXAMPLE["data"]), key="sw_form_data")
            c[1].multiselect("Optimizers (each with its defaults)", sorted(opts), key="sw_form_opts",
                             default=[n for n in EXAMPLE["optimizers"] if n in opts])
            c = st.columns(4)
            c[0].number_input("Seeds", 1, 20, EXAMPLE["seeds"], key="sw_form_seeds")
            c[1].number_input("Calls per run", 10, 1_000_000, EXAMPLE["calls"], 10, key="sw_form_calls")
            c[2].number_input("Cap for the sweep (calls, 0 = none)", 0, 100_000_000, EXAMPLE["total"], 100,
                              key="sw_form_total")
            c[3].number_input("Runs at once", 1, 16, runs_at_once(_endpoints()), key="sw_form_parallel")
            st.form_submit_button("Write the sweep", on_click=_from_form)
        st.caption("The form writes the sweep on the YAML / JSON tab: check it, edit it (knob values as lists make "
                   "a grid) and start it there.")
    with text_tab:
        st.file_uploader("Upload a sweep file", type=["yaml", "yml", "json"], key="sw_upload", on_change=_from_upload)
        if ss.get("sw_upload_error"):
            st.error(ss.pop("sw_upload_error"))
        text = st.text_area("Sweep (YAML or JSON: the format is in optimizers/sweep.py)", key="sw_text", height=360)
        st.caption("A run's settings come from the sweep: set base_url / task_models there (the sidebar's are "
                   "written into the example and the form). Keys stay in the session.")
        c = st.columns([2, 3])
        on_ray = c[0].radio("Run the cells", ["on this machine", "on a Ray cluster"], horizontal=True,
                            key="sw_executor") == "on a Ray cluster"
        address = None
        if on_ray:
            address = c[1].text_input("Ray head (host:port)", value=os.environ.get("RAY_ADDRESS", ""),
                                      key="sw_ray_address", placeholder="empty: a local Ray cluster started here",
                                      help="Each cell is a Ray task writing to this dashboard's store: for workers "
                                           "on other machines, a PostgreSQL store (PROMPTOPT_DB=postgresql://...).")
        executor = "ray" if on_ray else "local"
        c = st.columns([1, 1, 5])
        check = c[0].button("Check", key="sw_check")
        start = c[1].button("Start sweep", type="primary", key="sw_start")
        try:
            if check:
                st.success(grid_summary(text))
            if start:
                sid = launch_sweep(text, executor=executor, address=address)
                ss["sw_started"] = sid
                st.query_params["sweep"] = sid
                st.rerun()
        except (SweepError, RayError) as e:
            st.error(str(e))
        except Exception as e:  # a worker that cannot start is a message, not a traceback
            st.error(f"Could not start the sweep: {type(e).__name__}: {e}")


# --- a sweep ------------------------------------------------------------------------------------------------------

@st.cache_data(max_entries=16, show_spinner=False)
def _board(db: str, sid: str, signature: str):
    """Leaderboard, knob effects and the two downloads, recomputed only when a cell's run or status changes."""
    s = _store_at(db)
    rows = leaderboard(s, sid)
    return rows, knob_effects(s, sid), as_csv(rows), as_json(s, sid, rows)


def board_view(sid: str, cells: list[dict]) -> None:
    rows, effects, csv_text, json_text = _board(db_path(), sid, json.dumps([(r["run"], r["status"]) for r in cells]))
    st.subheader("Leaderboard")
    st.caption("Per configuration: the best prompt's test score, mean over the seeds with a 95% interval; gain over "
               "the initial prompt; paired p: Wilcoxon over the test examples against the initial prompt.")
    num = st.column_config.NumberColumn(format="%.3f")
    st.dataframe(pd.DataFrame(leaderboard_table(rows)), hide_index=True, key="sw_board",
                 column_config={"95% CI": st.column_config.TextColumn(width="medium"), "test mean": num,
                                "initial": num, "gain": st.column_config.NumberColumn(format="%+.3f"),
                                "paired p": st.column_config.NumberColumn(format="%.2g"),
                                "calls / run": st.column_config.NumberColumn(format="%.0f"),
                                "cost $": st.column_config.NumberColumn(format="%.4f")})
    if any(r.test_mean is not None for r in rows):
        st.plotly_chart(charts.leaderboard_figure(rows), width="stretch", key="sw_board_chart")
    else:
        st.caption("No run has a test score yet.")
    if effects:
        st.markdown("**Per knob** (mean test score by value, the other knobs averaged over)")
        st.dataframe(pd.DataFrame(effects).astype({"value": str}), hide_index=True, key="sw_knobs",
                     column_config={"test_mean": num})
        if any(e["test_mean"] is not None for e in effects):
            st.plotly_chart(charts.knob_figure(effects), width="stretch", key="sw_knob_chart")
    c = st.columns(2)
    c[0].download_button("Leaderboard CSV", csv_text, file_name=f"sweep-{sid}.csv", mime="text/csv",
                         key="sw_csv", on_click="ignore")
    c[1].download_button("Leaderboard + knobs JSON", json_text, file_name=f"sweep-{sid}.json",
                         mime="application/json", key="sw_json", on_click="ignore")


def open_run(cells: list[dict]) -> None:
    started = [r for r in cells if r["run"]]
    if not started:
        return
    st.markdown("**Open a run of this sweep**")
    labels = {r["run"]: f"{r['run']} · {r['optimizer']} {r['knobs']} · seed {r['seed']}" for r in started}
    rid = st.selectbox("Run", list(labels), format_func=labels.get, key="sw_open_run")
    c = st.columns(3)
    with c[0]:
        run_link(rid, "pages/2_Optimize.py", "Live view (Optimize)")
    with c[1]:
        run_link(rid, "pages/3_Inspect.py", "Inspect step by step")
    with c[2]:
        run_link(rid, "pages/5_Runs.py", "Export, resume (Runs)")


def continue_button(sw: dict, cells: list[dict]) -> None:
    """A sweep whose worker is gone, or whose cells failed: the same spec again continues it."""
    n = unfinished(cells)
    if n and st.button(f"Continue the sweep ({n} unfinished run{'s' * (n != 1)})", key="sw_continue",
                       help="A worker runs the cells not finished; finished ones are skipped, and a run's stored "
                            "steps replay from the response cache (free)."):
        try:
            launch_sweep(yaml.safe_dump(sw["spec"], sort_keys=False))
        except Exception as e:
            st.error(f"Could not continue the sweep: {type(e).__name__}: {e}")
        else:
            ss[f"sw_continued.{sw['id']}"] = time.time()  # poll (no second button) until the new worker writes
            st.rerun(scope="app")


def sweep_view(sid: str) -> None:
    sw = S.get_sweep(sid)
    st.subheader(f"Sweep {sw['name']} ({sid})")
    st.caption(f"created {dt.datetime.fromtimestamp(sw['created']):%Y-%m-%d %H:%M:%S}. Every cell is an ordinary "
               "run; starting the same sweep again continues it (finished cells are skipped).")
    st.code(f"?sweep={sid}", language=None)
    since = max(sw["created"], ss.get(f"sw_continued.{sid}", 0.0))  # when a worker last started on it
    interval = 2 if state(cell_rows(S, sid), since) == "running" else None

    @st.fragment(run_every=interval)
    def live() -> None:
        cells = cell_rows(S, sid)
        now = state(cells, since)
        if interval and now != "running":
            st.rerun(scope="app")  # every cell ended (or its worker is gone): draw the final view, stop polling
        n = finished(cells)
        st.progress(n / len(cells) if cells else 1.0, text=f"{n} of {len(cells)} runs finished")
        if now == "stalled":
            st.warning("Some runs are waiting, but the sweep's worker has written nothing for a while: it was "
                       "stopped or killed.")
        if now != "running":
            continue_button(sw, cells)
        num = st.column_config.NumberColumn(format="%.3f")
        st.dataframe(pd.DataFrame(cells).drop(columns="updated", errors="ignore"), hide_index=True, key="sw_cells",
                     column_config={"best so far": num, "test": num})
        board_view(sid, cells)
        open_run(cells)

    live()


def starting(sid: str) -> None:
    """Just launched: the worker stores the sweep within seconds; poll until it does."""
    @st.fragment(run_every=2)
    def wait() -> None:
        if S.get_sweep(sid) is not None:
            st.rerun(scope="app")
        st.info(f"Starting sweep {sid}: its worker is checking the grid and creating the runs...")

    wait()


# --- page ---------------------------------------------------------------------------------------------------------

sweeps = {s["id"]: s for s in S.list_sweeps()}
wanted = st.query_params.get("sweep")
with st.expander("New sweep", expanded=not wanted):
    launch_section()
if wanted and wanted not in sweeps:
    if wanted == ss.get("sw_started") and _SWEEP_ID.match(wanted):
        starting(wanted)
        st.stop()
    st.error("The link names a sweep that is not in this store.")
    wanted = None
if not sweeps:
    st.info("No sweeps yet: start one above, or `python -m optimizers sweep sweeps/two_by_two.yaml` in a terminal.")
    st.stop()
ids = list(sweeps)
sid = st.selectbox("Sweep", ids, index=ids.index(wanted) if wanted else 0, key=f"sw_pick_{wanted}",
                   format_func=lambda i: f"{sweeps[i]['name']} · {i} · "
                                         f"{dt.datetime.fromtimestamp(sweeps[i]['created']):%Y-%m-%d %H:%M} · "
                                         f"{sweeps[i]['cells']} cells")
if sid != st.query_params.get("sweep"):
    st.query_params["sweep"] = sid
sweep_view(sid)
