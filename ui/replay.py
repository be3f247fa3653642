"""Replay of a stored run: step through its events as if it were live, without a single model call.

`state_at` is a pure projection of the stored events up to (and including) a given event seq; the Runs page draws it
with a slider, or a play button that advances inside a fragment with a short delay (demos without spending calls).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SeqEv = tuple[int, Any]


def state_at(events: Sequence[SeqEv], upto: int) -> dict[str, Any]:
    """Everything a live view would have shown after event `upto` (a seq; events with seq <= upto count)."""
    cands: dict[str, dict[str, Any]] = {}
    scores: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    rejected = 0
    last: Any = None
    usage: Any = None
    finished: Any = None
    for seq, ev in events:
        if seq > upto:
            break
        last = (seq, ev)
        if ev.kind == "candidate_proposed":
            cands.setdefault(ev.candidate_id, {"candidate_id": ev.candidate_id, "text": ev.text, "origin": ev.origin,
                                               "step": ev.step, "seq": seq, "parents": list(ev.parents)})
        elif ev.kind == "candidate_scored":
            scores.append({"seq": seq, "step": ev.step, "candidate_id": ev.candidate_id, "split": ev.split,
                           "purpose": ev.purpose, "n": ev.n, "score": ev.score})
        elif ev.kind == "step_done":
            steps.append({"seq": seq, "step": ev.step, "best_id": ev.best_id, "best_score": ev.best_score,
                          "best_split": ev.best_split})
        elif ev.kind == "candidate_rejected":
            rejected += 1
        elif ev.kind == "usage":
            usage = ev
        elif ev.kind == "run_finished":
            finished = ev
    return {"candidates": list(cands.values()), "scores": scores, "steps": steps, "rejected": rejected,
            "last": last, "usage": None if usage is None else usage.model_dump(mode="json"),
            "finished": None if finished is None else finished.model_dump(mode="json")}


def seqs(events: Sequence[SeqEv]) -> list[int]:
    return [s for s, _ in events]


def step_boundaries(events: Sequence[SeqEv]) -> list[int]:
    """Seqs of the StepDone events (and the last event): natural stops for the play button."""
    out = [s for s, ev in events if ev.kind == "step_done"]
    if events and (not out or out[-1] != events[-1][0]):
        out.append(events[-1][0])
    return out


def next_seq(events: Sequence[SeqEv], current: int, by_step: bool = True) -> int | None:
    """The seq the play button moves to next, or None at the end."""
    pool = step_boundaries(events) if by_step else seqs(events)
    for s in pool:
        if s > current:
            return s
    return None


def score_figure(state: dict[str, Any], title: str = "Score by step (replay)"):
    """Plotly figure: every non-report score as a point, the best-so-far per step as a line."""
    import plotly.graph_objects as go

    fig = go.Figure()
    pts = [s for s in state["scores"] if s["purpose"] != "report"]
    by_split: dict[str, list[dict[str, Any]]] = {}
    for s in pts:
        by_split.setdefault(s["split"], []).append(s)
    for split, rows in by_split.items():
        fig.add_trace(go.Scatter(x=[r["step"] for r in rows], y=[r["score"] for r in rows], mode="markers",
                                 name=f"{split} scores", opacity=0.5,
                                 text=[f"{r['candidate_id']} n={r['n']} ({r['purpose']})" for r in rows],
                                 hoverinfo="text+y"))
    if state["steps"]:
        fig.add_trace(go.Scatter(x=[s["step"] for s in state["steps"]], y=[s["best_score"] for s in state["steps"]],
                                 mode="lines+markers", name="best so far"))
    reports = [s for s in state["scores"] if s["purpose"] == "report"]
    for r in reports:
        fig.add_trace(go.Scatter(x=[r["step"]], y=[r["score"]], mode="markers", marker_symbol="star",
                                 marker_size=12, name=f"report {r['split']} {r['candidate_id'][:6]}"))
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10), title=title, xaxis_title="step",
                      yaxis_title="score", yaxis_range=[-0.02, 1.02])
    return fig


def render_replay(events: Sequence[SeqEv], key: str = "replay", delay: float = 0.8) -> None:
    """Slider over the event index plus play/pause; playing advances one step per tick inside a fragment."""
    import pandas as pd
    import streamlit as st

    if not events:
        st.info("This run has no stored events to replay.")
        return
    all_seqs = seqs(events)
    pos_key, play_key = f"{key}_pos", f"{key}_playing"
    if pos_key not in st.session_state or st.session_state[pos_key] not in all_seqs:
        st.session_state[pos_key] = all_seqs[0]
    c1, c2, c3 = st.columns([1, 1, 4])
    if c1.button("Play", key=f"{key}_play", disabled=st.session_state.get(play_key, False)):
        if st.session_state[pos_key] == all_seqs[-1]:
            st.session_state[pos_key] = all_seqs[0]
        st.session_state[play_key] = True
    if c2.button("Pause", key=f"{key}_pause"):
        st.session_state[play_key] = False
    c3.caption(f"{len(all_seqs)} events; replay reads the store only (no model calls).")

    @st.fragment(run_every=delay if st.session_state.get(play_key) else None)
    def _view() -> None:
        if st.session_state.get(play_key):
            nxt = next_seq(events, st.session_state[pos_key])
            if nxt is None:
                st.session_state[play_key] = False
            else:
                st.session_state[pos_key] = nxt
        if len(all_seqs) > 1:
            st.select_slider("Event", options=all_seqs, key=pos_key,
                             format_func=lambda s: f"#{s}")
        upto = st.session_state[pos_key]
        state = state_at(events, upto)
        seq, ev = state["last"]
        st.caption(f"Event #{seq}: {ev.kind} (step {ev.step})")
        st.plotly_chart(score_figure(state), key=f"{key}_chart")
        st.write(f"{len(state['candidates'])} candidate(s), {len(state['scores'])} score(s), "
                 f"{state['rejected']} rejected, {len(state['steps'])} step(s) done")
        if state["candidates"]:
            st.dataframe(pd.DataFrame([{k: c[k] for k in ("candidate_id", "step", "origin", "text")}
                                       for c in state["candidates"]]), hide_index=True)

    _view()
