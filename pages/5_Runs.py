"""Runs: the history of stored runs; open, resume, delete, export, share a link, and replay a finished run."""

from __future__ import annotations

import os
import re
import time
from datetime import datetime
from typing import Any

import pandas as pd
import streamlit as st

from optimizers.export import candidate_rows, run_json, to_csv, to_json
from ui.common import cached_events, connection_sidebar, runs_or_stop
from ui.common import store as _store
from ui.replay import render_replay

st.set_page_config(page_title="PromptOpt: Runs", layout="wide")


connection_sidebar()


_RUN_ID = re.compile(r"^[0-9a-f]{4,32}$")
RESUMABLE = ("stopped", "paused", "failed", "budget")
STALE_S = 90  # a "running" run whose worker has not beaten for this long has crashed


PAGES = {"Optimize": "pages/2_Optimize.py", "Inspect": "pages/3_Inspect.py", "Runs": "pages/5_Runs.py"}


def _link(run_id: str, page: str, label: str) -> None:
    """A query-param link (?run=<id>) to another page; a plain caption when the page is not registered (tests)."""
    try:
        from ui.common import run_link
    except ImportError:
        run_link = None
    if run_link is not None:
        run_link(run_id, PAGES[page], label)
        return
    try:
        st.page_link(PAGES[page], label=label, query_params={"run": run_id})
    except Exception:
        st.caption(f"{label}: {page}?run={run_id}")


def _resume(run_id: str) -> int | None:
    """Start a worker for a stored run: ui.common.launch when present (session key, embedded server URL), else
    spawn_worker directly. Returns the worker pid when known."""
    try:
        from ui.common import launch
    except ImportError:
        launch = None
    if launch is not None:
        launch(run_id)
        return None
    from optimizers.runner import spawn_worker

    proc = spawn_worker(str(_store().path), run_id, api_key=st.session_state.get("api_key"))
    return proc.pid


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def crashed(run: dict[str, Any], now: float | None = None) -> bool:
    now = now or time.time()
    if run["status"] != "running":
        return False
    stale = (run.get("heartbeat") or run["updated"]) < now - STALE_S
    return stale or (bool(run.get("worker_pid")) and not _pid_alive(run["worker_pid"]))


def _best_test(run: dict[str, Any]) -> float | None:
    s = (((run.get("result") or {}).get("scores") or {}).get("best") or {}).get("test")
    return None if not s else round(s["score"], 4)


def run_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in runs:
        cfg, res = r.get("config") or {}, r.get("result") or {}
        status = "crashed" if crashed(r) else r["status"]
        rows.append({"run": r["id"], "optimizer": r["optimizer"], "data": r.get("data_name"),
                     "task model": cfg.get("task_model") or "(default)",
                     "optimizer model": cfg.get("optimizer_model") or cfg.get("task_model") or "(default)",
                     "best test": _best_test(r), "cost": res.get("cost"), "calls": res.get("calls"),
                     "status": status, "created": datetime.fromtimestamp(r["created"]).strftime("%Y-%m-%d %H:%M")})
    return rows


@st.cache_data(max_entries=8, show_spinner=False)
def _exports(db: str, run_id: str, count: int) -> tuple[str, str]:
    s = _store()
    return to_json(run_json(s, run_id)), to_csv(candidate_rows(s, run_id))


_events = cached_events


st.title("Runs")
S, runs = runs_or_stop()
flash = st.session_state.pop("runs_flash", None)
if flash:
    st.success(flash)
if not runs:
    st.info("No runs yet. Start one on the Optimize page (or `python -m optimizers run ...` in a terminal).")
    st.stop()

st.dataframe(pd.DataFrame(run_rows(runs)), hide_index=True, key="runs_table")

ids = [r["id"] for r in runs]
by_id = {r["id"]: r for r in runs}
wanted = st.query_params.get("run")
if wanted and wanted not in by_id:
    found = S.find_run(wanted) if _RUN_ID.match(wanted) else None
    if found:
        wanted = found["id"]
    else:
        st.error("The link names a run that is not in this store.")
        wanted = None
rid = st.selectbox("Run", ids, index=ids.index(wanted) if wanted else 0, key="runs_pick",
                   format_func=lambda i: f"{i} · {by_id[i]['optimizer']} · {by_id[i].get('data_name') or '?'} · "
                                         f"{by_id[i]['status']}")
if st.query_params.get("run") != rid:
    st.query_params["run"] = rid
run = S.get_run(rid) or by_id[rid]
status = "crashed" if crashed(run) else run["status"]

st.subheader(f"Run {rid}")
c = st.columns(4)
c[0].metric("Status", status)
c[1].metric("Optimizer", run["optimizer"])
bt = _best_test(run)
c[2].metric("Best test score", "—" if bt is None else f"{bt:.3f}")
cost = (run.get("result") or {}).get("cost")
c[3].metric("Cost", "—" if cost is None else f"${cost:.4f}")
if run.get("reason"):
    st.caption("Status reason:")
    st.text(run["reason"])
res = run.get("result") or {}
if res.get("best_prompt"):
    st.caption("Best prompt")
    st.code(res["best_prompt"], language=None, wrap_lines=True)

st.markdown("**Open**")
lc = st.columns(3)
with lc[0]:
    _link(rid, "Optimize", "Live view (Optimize)")
with lc[1]:
    _link(rid, "Inspect", "Inspect step by step")
with lc[2]:
    _link(rid, "Runs", "This run (Runs)")
st.caption("Shareable link: add this to the page address (the key is never part of a link).")
st.code(f"?run={rid}", language=None)

# --- resume ----------------------------------------------------------------------------------------------------------
if status in RESUMABLE or status == "crashed":
    st.markdown("**Resume**")
    st.caption("Replays the stored part from the response cache (free) and continues where the run stopped.")
    if st.button("Resume this run", key="runs_resume"):
        try:
            if status == "crashed":
                S.set_status(rid, "stopped", "worker lost; resumed from the Runs page")
            pid = _resume(rid)
        except Exception as e:
            st.error(f"Could not start a worker for run {rid}: {type(e).__name__}: {e}")
        else:
            st.success(f"Resumed run {rid}" + (f" in worker process {pid}." if pid else ".")
                       + " Follow it on the Optimize page.")

# --- export ----------------------------------------------------------------------------------------------------------
st.markdown("**Export**")
try:
    js, csv = _exports(str(S.path), rid, S.event_count(rid))
except Exception as e:
    st.error(f"Could not export run {rid}: {e}")
else:
    ec = st.columns(2)
    ec[0].download_button("Run JSON (config + full trajectory)", js, file_name=f"run-{rid}.json",
                          mime="application/json", key="runs_json")
    ec[1].download_button("Candidates CSV", csv, file_name=f"run-{rid}-candidates.csv", mime="text/csv",
                          key="runs_csv")

# --- replay ----------------------------------------------------------------------------------------------------------
st.markdown("**Replay**")
if status == "running":
    st.caption("The run is still going: follow it live on the Optimize page; replay opens once it has finished.")
else:
    with st.expander("Replay this run as if live (no model calls)", expanded=False):
        render_replay(_events(str(S.path), rid, S.event_count(rid)), key=f"replay_{rid}")

# --- delete ----------------------------------------------------------------------------------------------------------
st.markdown("**Delete**")
sure = st.checkbox(f"Yes, delete run {rid} with all its events, candidates and predictions", key=f"runs_sure_{rid}")
if st.button("Delete run", disabled=not sure or status == "running", key="runs_delete"):
    try:
        S.delete_run(rid)
    except Exception as e:
        st.error(f"Could not delete run {rid}: {e}")
    else:
        st.session_state["runs_flash"] = f"Deleted run {rid}."
        if "run" in st.query_params:
            del st.query_params["run"]
        st.session_state.pop("runs_pick", None)
        st.rerun()
