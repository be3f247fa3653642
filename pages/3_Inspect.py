"""Inspect: one run, one step at a time: what the optimizer showed the model, what came back, what it kept.

Open a run with the selectbox or a shareable link `?run=<id>` (and optionally `&step=<n>`).
"""

from __future__ import annotations

import re

import streamlit as st

from optimizers.result import SCORE_DIGITS, stored_result
from optimizers.status import RunStatus, observed_status
from ui.inspectors import last_started, render_roles, render_step, roles_view, steps_of
from ui.session import cached_events, connection_sidebar, runs_or_stop

st.set_page_config(page_title="PromptOpt: Inspect", layout="wide")


connection_sidebar()


_RUN_ID = re.compile(r"^[0-9a-f]{4,32}$")


_events = cached_events


st.title("Inspect a run")
S, runs = runs_or_stop()
if not runs:
    st.info("No runs yet. Start one on the Optimize page (or `python -m optimizers run ...` in a terminal).")
    st.stop()

ids = [r["id"] for r in runs]
by_id = {r["id"]: r for r in runs}
wanted = st.query_params.get("run")
if wanted and wanted not in by_id:
    if _RUN_ID.match(wanted) and (found := S.find_run(wanted)):
        wanted = found["id"]
    else:
        st.error("The link names a run that is not in this store; showing the newest run instead.")
        wanted = None
rid = st.selectbox("Run", ids, index=ids.index(wanted) if wanted else 0,
                   format_func=lambda i: f"{i} · {by_id[i]['optimizer']} · {by_id[i].get('data_name') or '?'} · "
                                         f"{by_id[i]['status']}")
if st.query_params.get("run") != rid:
    st.query_params["run"] = rid
run = by_id[rid]
optimizer = run["optimizer"]


def _header() -> None:
    r = S.get_run(rid) or run
    cfg = r["config"]
    c = st.columns(4)
    c[0].metric("Optimizer", optimizer)
    c[1].metric("Status", observed_status(r))
    c[2].metric("Data", r.get("data_name") or "?")
    res = stored_result(r)
    best = res.best_test if res else None
    c[3].metric("Best test score", "—" if best is None else f"{best:.{SCORE_DIGITS}f}")
    if r.get("reason"):
        st.caption("Status reason:")
        st.text(r["reason"])
    render_roles(roles_view(last_started(_events(str(S.path), rid, S.event_count(rid))), cfg))
    with st.expander("Initial prompt and parameters"):
        st.code(cfg.get("initial_prompt", ""), language=None, wrap_lines=True)
        st.json(cfg.get("params") or {})


def _view() -> None:
    events = _events(str(S.path), rid, S.event_count(rid))
    steps = steps_of(events)
    if not steps:
        st.info("This run has no optimizer steps stored yet.")
        return
    q_step = st.query_params.get("step")
    default = steps[-1]
    if q_step is not None and q_step.lstrip("-").isdigit() and int(q_step) in steps:
        default = int(q_step)
    key = f"step_{rid}"
    if st.session_state.get(key) not in steps:
        st.session_state[key] = default
    if len(steps) > 1:
        step = st.select_slider("Step", options=steps, key=key)
    else:
        step = steps[0]
        st.caption(f"Step {step} (the only step stored)")
    render_step(optimizer, events, step)


_header()
if observed_status(run) is RunStatus.RUNNING:
    st.caption("The run is live: this view refreshes every 2 s.")
    st.fragment(run_every=2)(_view)()
else:
    _view()
