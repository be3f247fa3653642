"""Runs: the history of stored runs; open, resume, delete, export, share a link, and replay a finished run."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import pandas as pd
import streamlit as st

from optimizers.config import stored_roles
from optimizers.export import candidate_rows, run_json, to_csv, to_json
from optimizers.result import SCORE_DIGITS, stored_result
from optimizers.status import RunStatus, observed_status
from ui.inspectors import render_prompt
from ui.launch import resume
from ui.replay import render_replay
from ui.session import cached_events, connection_sidebar, run_link, runs_or_stop
from ui.session import store as _store

st.set_page_config(page_title="PromptOpt: Runs", layout="wide")


connection_sidebar()


_RUN_ID = re.compile(r"^[0-9a-f]{4,32}$")


PAGES = {"Optimize": "pages/2_Optimize.py", "Inspect": "pages/3_Inspect.py", "Runs": "pages/5_Runs.py"}


def run_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in runs:
        roles, res = stored_roles(r.get("config") or {}), stored_result(r)
        task_model = roles["task"].model or "(default)"
        rows.append({"run": r["id"], "optimizer": r["optimizer"], "data": r.get("data_name"),
                     "task model": task_model, "optimizer model": roles["optimizer"].model or task_model,
                     "best test": res.best_test if res else None, "cost": res.cost if res else None,
                     "calls": res.calls if res else None, "status": observed_status(r).value,
                     "created": datetime.fromtimestamp(r["created"]).strftime("%Y-%m-%d %H:%M")})
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
status = observed_status(run)
res = stored_result(run)

st.subheader(f"Run {rid}")
c = st.columns(4)
c[0].metric("Status", status)
c[1].metric("Optimizer", run["optimizer"])
bt = res.best_test if res else None
c[2].metric("Best test score", "—" if bt is None else f"{bt:.{SCORE_DIGITS}f}")
c[3].metric("Cost", "—" if res is None else f"${res.cost:.4f}")
if run.get("reason"):
    st.caption("Status reason:")
    st.text(run["reason"])
if res and res.best_prompt:
    st.caption("Best prompt")
    render_prompt(res.best_prompt)

st.markdown("**Open**")
lc = st.columns(3)
with lc[0]:
    run_link(rid, PAGES["Optimize"], "Live view (Optimize)")
with lc[1]:
    run_link(rid, PAGES["Inspect"], "Inspect step by step")
with lc[2]:
    run_link(rid, PAGES["Runs"], "This run (Runs)")
st.caption("Shareable link: add this to the page address (the key is never part of a link).")
st.code(f"?run={rid}", language=None)

# --- resume ----------------------------------------------------------------------------------------------------------
if status.resumable:
    st.markdown("**Resume**")
    st.caption("Replays the stored part from the response cache (free) and continues where the run stopped.")
    if st.button("Resume this run", key="runs_resume"):
        try:
            resume(rid)
        except Exception as e:
            st.error(f"Could not start a worker for run {rid}: {type(e).__name__}: {e}")
        else:
            st.success(f"Resumed run {rid}. Follow it on the Optimize page.")
elif status is RunStatus.BUDGET:
    st.markdown("**Resume**")
    st.caption("The run reached its budget: continue it with a larger one on the Optimize page.")

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
if status.live:
    st.caption("The run is still going: follow it live on the Optimize page; replay opens once it has finished.")
else:
    with st.expander("Replay this run as if live (no model calls)", expanded=False):
        render_replay(_events(str(S.path), rid, S.event_count(rid)), key=f"replay_{rid}")

# --- delete ----------------------------------------------------------------------------------------------------------
st.markdown("**Delete**")
sure = st.checkbox(f"Yes, delete run {rid} with all its events, candidates and predictions", key=f"runs_sure_{rid}")
if st.button("Delete run", disabled=not sure or status.live, key="runs_delete"):
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
