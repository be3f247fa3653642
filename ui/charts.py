"""Projections of a run's stored events into frames and Plotly figures: the live score chart, the candidate table,
spend against the budget. Pure functions of the store (no Streamlit), so they are unit-tested on a real run.

Which scores are plotted: for every candidate and split (train, dev), the mean over all distinct examples it has been
scored on so far, after each step it was scored in. For a full-split evaluation that is the split score; for bandits
and minibatches (ProTeGi's UCB, OPRO's batches) it is the running estimate the optimizer itself uses, and `n` says
how many examples it rests on. The report's scores (initial and best prompt on each split, after the run) are kept
apart: they are shown as reference values, not as optimization points.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from optimizers.prompt import instruction_of, shown_parts
from optimizers.store import Store

CHART_SPLITS = ("train", "dev")
_SPLIT_COLORS = {"train": "#1f77b4", "dev": "#ff7f0e", "test": "#2ca02c"}


def score_points(store: Store, run_id: str) -> pd.DataFrame:
    """One row per (candidate, split, step): the candidate's running mean on that split after that step."""
    seen: dict[tuple[str, str], dict[str, bool]] = defaultdict(dict)
    rows: dict[tuple[str, str, int], dict[str, Any]] = {}
    for seq, ev in store.events(run_id, kinds=["candidate_scored"]):
        if ev.purpose == "report" or ev.split not in CHART_SPLITS:
            continue
        bucket = seen[(ev.candidate_id, ev.split)]
        if ev.example_ids and len(ev.correct) == len(ev.example_ids):
            for eid, ok in zip(ev.example_ids, ev.correct):
                bucket[eid] = bool(ok)
            n = len(bucket)
            score = sum(bucket.values()) / n if n else ev.score
        else:  # a metric other than per-example correctness (e.g. macro F1): the event's own score
            n, score = ev.n, ev.score
        rows[(ev.candidate_id, ev.split, ev.step)] = {"candidate_id": ev.candidate_id, "split": ev.split,
                                                      "step": ev.step, "score": score, "n": n,
                                                      "purpose": ev.purpose, "seq": seq}
    cols = ["candidate_id", "split", "step", "score", "n", "purpose", "seq"]
    return pd.DataFrame(list(rows.values()), columns=cols).sort_values("seq", ignore_index=True)


def best_so_far(store: Store, run_id: str) -> pd.DataFrame:
    """The best prompt after each step, as the optimizer reported it (step_done events)."""
    rows = [{"step": ev.step, "best_id": ev.best_id, "best_score": ev.best_score, "split": ev.best_split,
             "beam": list(ev.beam)} for _, ev in store.events(run_id, kinds=["step_done"])]
    return pd.DataFrame(rows, columns=["step", "best_id", "best_score", "split", "beam"])


def current_beam(store: Store, run_id: str) -> list[str]:
    ev = store.last_event(run_id, "step_done")
    return list(ev.beam) if ev is not None else []


def report_scores(store: Store, run_id: str) -> dict[str, dict[str, dict[str, Any]]]:
    """candidate_id -> split -> {score, ci_low, ci_high, n} from the final report (held-out scores included)."""
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for s in store.scores(run_id):
        if s["purpose"] == "report":
            out[s["candidate_id"]][s["split"]] = {"score": s["score"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
                                                  "n": s["n"]}
    return dict(out)


def initial_candidate(store: Store, run_id: str) -> str | None:
    for c in store.candidates(run_id):
        if c["origin"] == "initial":
            return c["candidate_id"]
    return None


def initial_reference(points: pd.DataFrame, initial_id: str | None, split: str | None) -> float | None:
    """The initial prompt's latest running score on the selection split (the line every candidate has to beat)."""
    if initial_id is None or points.empty:
        return None
    sel = points[(points.candidate_id == initial_id)]
    if split:
        on = sel[sel.split == split]
        sel = on if not on.empty else sel
    return float(sel.iloc[-1].score) if not sel.empty else None


def candidate_table(store: Store, run_id: str, points: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every candidate: prompt, parent, step, origin, latest train/dev running scores (with n), report scores, words."""
    points = score_points(store, run_id) if points is None else points
    latest: dict[tuple[str, str], tuple[float, int]] = {}
    for r in points.itertuples():
        latest[(r.candidate_id, r.split)] = (r.score, r.n)
    report = report_scores(store, run_id)
    beam = set(current_beam(store, run_id))
    rows = []
    for c in store.candidates(run_id):
        cid = c["candidate_id"]
        row: dict[str, Any] = {"candidate": cid, "step": c["step"], "origin": c["origin"],
                               "parent": c["parents"][0] if c["parents"] else "",
                               "in beam": cid in beam, "words": len(instruction_of(c["text"]).split()),
                               "demos": len(shown_parts(c["text"])[1]), "prompt": c["text"]}
        for split in CHART_SPLITS:
            s, n = latest.get((cid, split), (None, 0))
            row[split] = s
            row[f"{split} n"] = n
        rep = report.get(cid, {})
        for split in ("train", "dev", "test"):
            row[f"{split} (report)"] = rep.get(split, {}).get("score")
        rows.append(row)
    cols = ["candidate", "step", "origin", "parent", "in beam", "train", "train n", "dev", "dev n", "train (report)",
            "dev (report)", "test (report)", "words", "demos", "prompt"]
    return pd.DataFrame(rows, columns=cols)


def score_figure(points: pd.DataFrame, best: pd.DataFrame, *, beam: list[str] | None = None,
                 initial_score: float | None = None, texts: dict[str, str] | None = None) -> go.Figure:
    """Every candidate's running score by step (train and dev), the best-so-far line, the beam ringed, and the
    initial prompt's score as a dashed reference line."""
    fig = go.Figure()
    beam_set = set(beam or [])
    texts = texts or {}
    for split in CHART_SPLITS:
        sub = points[points.split == split]
        if sub.empty:
            continue
        # the latest point per candidate carries the beam marker; earlier points are the history
        custom = [[cid, n, _short(texts.get(cid, ""))] for cid, n in zip(sub.candidate_id, sub.n)]
        fig.add_trace(go.Scatter(
            x=sub.step, y=sub.score, mode="markers", name=f"candidates ({split})",
            marker={"color": _SPLIT_COLORS[split], "size": 8, "opacity": 0.6,
                    "symbol": "circle" if split == "train" else "diamond"},
            customdata=custom,
            hovertemplate="%{customdata[0]}<br>step %{x}, " + split
                          + " %{y:.3f} (n=%{customdata[1]})<br>%{customdata[2]}<extra></extra>"))
        last = sub.drop_duplicates("candidate_id", keep="last")
        in_beam = last[last.candidate_id.isin(beam_set)]
        if not in_beam.empty:
            fig.add_trace(go.Scatter(
                x=in_beam.step, y=in_beam.score, mode="markers", name=f"current beam ({split})",
                marker={"size": 15, "color": "rgba(0,0,0,0)", "line": {"width": 2, "color": "black"}},
                hoverinfo="skip"))
    if not best.empty:
        fig.add_trace(go.Scatter(x=best.step, y=best.best_score, mode="lines+markers", name="best so far (optimizer's pick)",
                                 line={"color": "#d62728", "width": 3, "shape": "hv"},
                                 customdata=best[["best_id", "split"]].values,
                                 hovertemplate="step %{x}: best %{customdata[0]} "
                                               "(%{customdata[1]}) %{y:.3f}<extra></extra>"))
    if initial_score is not None:
        fig.add_hline(y=initial_score, line_dash="dash", line_color="gray",
                      annotation_text=f"initial prompt {initial_score:.3f}", annotation_position="bottom right")
    fig.update_layout(xaxis_title="step", yaxis_title="score", yaxis_range=[-0.02, 1.02], height=420,
                      margin={"l": 10, "r": 10, "t": 30, "b": 10}, legend={"orientation": "h", "y": -0.2})
    fig.update_xaxes(dtick=1)
    return fig


def _short(text: str, n: int = 80) -> str:
    t = " ".join(text.split())
    t = t[:n] + ("..." if len(t) > n else "")
    # Plotly hover labels interpret a few HTML tags: keep model text inert
    return t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def spend(store: Store, run_id: str) -> dict[str, Any]:
    """Spend so far (latest usage event) against the run's budget, and the fraction of the tightest limit used."""
    run = store.get_run(run_id) or {}
    budget = (run.get("config") or {}).get("budget") or {}
    u = store.last_event(run_id, "usage")
    used = {"calls": u.calls if u else 0, "cache_hits": u.cache_hits if u else 0,
            "tokens": (u.prompt_tokens + u.completion_tokens) if u else 0,
            "prompt_tokens": u.prompt_tokens if u else 0, "completion_tokens": u.completion_tokens if u else 0,
            "errors": u.errors if u else 0, "cost": u.cost if u else 0.0,
            "saved_tokens": u.saved_tokens if u else 0, "saved_cost": u.saved_cost if u else 0.0,
            "unmetered_calls": u.unmetered_calls if u else 0,
            "by_role": dict(u.by_role) if u else {}, "by_phase": dict(u.by_phase) if u else {}}
    limits = {"calls": budget.get("max_calls"), "tokens": budget.get("max_tokens"), "cost": budget.get("max_cost")}
    fractions = {k: min(used[k] / v, 1.0) for k, v in limits.items() if v}
    return {"used": used, "limits": limits, "fraction": max(fractions.values()) if fractions else None,
            "at_step": u.step if u else None}


def label_distribution_figure(labels: list[str] | pd.Series, title: str = "Labels") -> go.Figure:
    counts = pd.Series(list(labels), dtype=str).value_counts()
    fig = go.Figure(go.Bar(x=[_short(str(x), 40) for x in counts.index], y=counts.values,
                           text=counts.values, textposition="auto"))
    fig.update_layout(title=title, xaxis_title="label", yaxis_title="examples", height=300,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def split_distribution_figure(splits: Any) -> go.Figure:
    """Labels per split (stacked by split), to see that the stratified split kept the proportions."""
    fig = go.Figure()
    for name in ("train", "dev", "test"):
        exs = getattr(splits, name)
        counts = pd.Series([e.label for e in exs], dtype=str).value_counts()
        fig.add_trace(go.Bar(name=f"{name} ({len(exs)})", x=[_short(str(x), 40) for x in counts.index],
                             y=counts.values, marker_color=_SPLIT_COLORS[name]))
    fig.update_layout(barmode="group", height=300, xaxis_title="label", yaxis_title="examples",
                      margin={"l": 10, "r": 10, "t": 30, "b": 10})
    return fig


def leaderboard_figure(rows: list[Any]) -> go.Figure:
    """A sweep's test mean per configuration (leaderboard rows) with its 95% interval across seeds, and the initial
    prompt's mean test score as the line a configuration has to clear."""
    done = [r for r in rows if r.test_mean is not None]
    fig = go.Figure(go.Bar(
        x=[r.config for r in done], y=[r.test_mean for r in done], name="best prompt (test)",
        marker_color=_SPLIT_COLORS["test"], text=[f"{r.test_mean:.3f}" for r in done], textposition="outside",
        error_y={"type": "data", "symmetric": False, "array": [r.test_high - r.test_mean for r in done],
                 "arrayminus": [r.test_mean - r.test_low for r in done]},
        hovertext=[f"{r.config}<br>seeds {r.seeds}/{r.runs}<br>95% CI [{r.test_low:.3f}, {r.test_high:.3f}]"
                   for r in done], hoverinfo="text+y"))
    initial = [r.initial_mean for r in done if r.initial_mean is not None]
    if initial:
        mean = sum(initial) / len(initial)
        fig.add_hline(y=mean, line_dash="dash", line_color="#7f7f7f", annotation_text=f"initial prompt {mean:.3f}",
                      annotation_position="top left")
    fig.update_layout(yaxis_title="test score (mean over seeds)", yaxis_range=[0, 1.08], height=360, showlegend=False,
                      margin={"l": 10, "r": 10, "t": 30, "b": 10})
    return fig


def knob_figure(effects: list[dict[str, Any]]) -> go.Figure:
    """Mean test score by value of every swept knob (leaderboard.knob_effects), the values grouped under their knob."""
    shown = [e for e in effects if e["test_mean"] is not None]
    fig = go.Figure(go.Bar(x=[[e["knob"] for e in shown], [str(e["value"]) for e in shown]],
                           y=[e["test_mean"] for e in shown], text=[f"{e['test_mean']:.3f}" for e in shown],
                           textposition="outside", marker_color=_SPLIT_COLORS["dev"],
                           hovertext=[f"{e['knob']} = {e['value']}: {e['runs']} run(s)" for e in shown],
                           hoverinfo="text+y"))
    fig.update_layout(yaxis_title="mean test score", yaxis_range=[0, 1.08], height=320,
                      margin={"l": 10, "r": 10, "t": 30, "b": 10})
    return fig
