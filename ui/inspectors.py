"""Per-step inspectors of a stored run: what each optimizer showed the model, what it got back, what it kept.

The `*_view` functions are pure projections of stored events (plain dicts and lists, testable without Streamlit);
the `render_*` functions draw them. Everything that came from a model or from uploaded data is untrusted: it is drawn
with st.code / st.text / st.dataframe, never as markdown or HTML. Dispatch is by the run's optimizer name, with a
generic view (every section whose events exist, plus the raw exchanges) so a run of any optimizer opens.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from optimizers.config import stored_roles
from optimizers.methods.text import word_distance
from optimizers.prompt import Demo, instruction_of, shown_parts

Ev = Any  # an optimizers.events event (pydantic model with .kind and .step)
SeqEv = tuple[int, Ev]

ENGINE_KINDS = {"run_started", "usage", "run_finished"}


# --- pure projections ----------------------------------------------------------------------------------------------

def roles_view(started: Ev | None, config: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Which model, at which endpoint, served each role: as the run's last (re)start resolved them (its RunStarted
    event); for runs stored before that was recorded, as the config states them."""
    if started is not None and getattr(started, "roles", None):
        return {role: {"model": r.model, "endpoint": r.endpoint} for role, r in started.roles.items()}
    roles = stored_roles(config)
    task = {"model": roles["task"].model or "the default model",
            "endpoint": roles["task"].base_url or "the default backend (OPENAI_BASE_URL or embedded)"}
    return {"task": task, "optimizer": {"model": roles["optimizer"].model or task["model"],
                                        "endpoint": roles["optimizer"].base_url or task["endpoint"]}}


def last_started(events: Sequence[SeqEv]) -> Ev | None:
    return next((ev for _, ev in reversed(events) if ev.kind == "run_started"), None)


def steps_of(events: Sequence[SeqEv]) -> list[int]:
    """Steps that hold optimizer work (engine bookkeeping alone does not make a step)."""
    return sorted({ev.step for _, ev in events if ev.kind not in ENGINE_KINDS})


def events_at(events: Sequence[SeqEv], step: int) -> list[SeqEv]:
    return [(s, ev) for s, ev in events if ev.step == step]


def of_kind(evs: Sequence[SeqEv], kind: str) -> list[Ev]:
    return [ev for _, ev in evs if ev.kind == kind]


def candidate_texts(events: Sequence[SeqEv]) -> dict[str, str]:
    return {ev.candidate_id: ev.text for _, ev in events if ev.kind == "candidate_proposed"}


def _short(text: str, n: int = 120) -> str:
    t = " ".join((text or "").split())
    return t if len(t) <= n else t[: n - 1] + "…"


def proposed_rows(evs: Sequence[SeqEv], origins: Sequence[str] | None = None) -> list[dict[str, Any]]:
    out = []
    for _, ev in evs:
        if ev.kind == "candidate_proposed" and (origins is None or ev.origin in origins):
            out.append({"candidate_id": ev.candidate_id, "origin": ev.origin, "parents": " ".join(ev.parents),
                        "words": len(instruction_of(ev.text).split()), "text": ev.text, **{f"info.{k}": v for k, v in ev.info.items()
                                                                           if isinstance(v, str | int | float | None)}})
    return out


def rejected_rows(evs: Sequence[SeqEv]) -> list[dict[str, Any]]:
    return [{"reason": ev.reason, "origin": ev.origin, "parents": " ".join(ev.parents), "text": ev.text}
            for ev in of_kind(evs, "candidate_rejected")]


def scored_rows(evs: Sequence[SeqEv]) -> list[dict[str, Any]]:
    return [{"candidate_id": ev.candidate_id, "split": ev.split, "purpose": ev.purpose, "n": ev.n,
             "score": round(ev.score, 4), "ci_low": None if ev.ci_low is None else round(ev.ci_low, 4),
             "ci_high": None if ev.ci_high is None else round(ev.ci_high, 4),
             "macro_f1": None if ev.macro_f1 is None else round(ev.macro_f1, 4)}
            for ev in of_kind(evs, "candidate_scored")]


def selection_rows(sel: Ev) -> list[dict[str, Any]]:
    """One row per estimate of a Selection event, survivors (the beam) marked and listed first."""
    surv = list(sel.survivors)
    rows = []
    for e in sel.estimates:
        cid = e.get("candidate_id")
        row = {"candidate_id": cid, "survivor": cid in surv, "mean": e.get("mean"), "n": e.get("n")}
        for k in ("ucb", "rank", "origin"):
            if k in e:
                row[k] = e[k]
        rows.append(row)
    rows.sort(key=lambda r: (not r["survivor"], surv.index(r["candidate_id"]) if r["survivor"] else 0,
                             -(r["mean"] or 0)))
    return rows


def meta_rows(evs: Sequence[SeqEv], purpose: str | None = None) -> list[dict[str, Any]]:
    """Every optimizer-model exchange of the step: purpose, messages, reply, finish_reason, cached."""
    out = []
    for seq, ev in evs:
        if ev.kind == "meta_prompt" and (purpose is None or ev.purpose == purpose or ev.purpose.startswith(purpose)):
            out.append({"seq": seq, "purpose": ev.purpose, "model": ev.model, "messages": list(ev.messages),
                        "reply": ev.reply, "finish_reason": ev.finish_reason, "cached": ev.cached, "ref": ev.ref,
                        "params": dict(ev.params)})
    return out


def protegi_view(evs: Sequence[SeqEv]) -> dict[str, Any]:
    """Errors shown -> textual gradients -> edited prompts (by gradient) -> paraphrases -> selection (the beam)."""
    edits: dict[str, list[dict[str, Any]]] = defaultdict(list)
    paraphrases = []
    for _, ev in evs:
        if ev.kind != "candidate_proposed":
            continue
        if ev.origin == "gradient_edit":
            edits[str(ev.info.get("gradient_id"))].append({"candidate_id": ev.candidate_id, "text": ev.text,
                                                          "parsed": ev.info.get("parsed")})
        elif ev.origin == "paraphrase":
            paraphrases.append({"candidate_id": ev.candidate_id, "gradient_id": ev.info.get("gradient_id"),
                                "source": ev.info.get("source"), "text": ev.text})
    gradients = [{"gradient_id": g.gradient_id, "parent_id": g.parent_id, "errors": list(g.errors),
                  "critique": g.critique, "edits": edits.get(g.gradient_id, [])} for g in of_kind(evs, "gradient")]
    known = {g["gradient_id"] for g in gradients}
    orphan_edits = [e for gid, es in edits.items() if gid not in known for e in es]
    return {"gradients": gradients, "orphan_edits": orphan_edits, "paraphrases": paraphrases,
            "selections": [{"method": s.method, "survivors": list(s.survivors), "rows": selection_rows(s)}
                           for s in of_kind(evs, "selection")],
            "rejected": rejected_rows(evs),
            "minibatch": [r for r in scored_rows(evs) if r["purpose"] == "minibatch"]}


def gpo_view(evs: Sequence[SeqEv], texts: dict[str, str]) -> dict[str, Any]:
    """Retrieved trajectory, the edit budget at this step, and each generated candidate's measured distance."""
    retrievals = [{"current_id": r.current_id, "rule": r.rule, "similarity": r.similarity,
                   "retrieved": [{"candidate_id": x.get("candidate_id"), "score": x.get("score"),
                                  "relevance": x.get("relevance"), "text": x.get("text", "")} for x in r.retrieved]}
                  for r in of_kind(evs, "retrieval")]
    current_id = retrievals[-1]["current_id"] if retrievals else None
    budgets = of_kind(evs, "edit_budget")
    measured: dict[str, dict[str, Any]] = {}
    for b in budgets:
        for m in b.measured:
            key = m.get("candidate_id") or m.get("text")
            if key:
                measured[key] = m
    sel = of_kind(evs, "selection")
    survivors = set(sel[-1].survivors) if sel else set()
    done = of_kind(evs, "step_done")
    best = done[-1].best_id if done else None
    cur_text = texts.get(current_id or "", "")
    cands = []
    for _, ev in evs:
        if ev.kind != "candidate_proposed" or ev.origin == "initial":
            continue
        m = measured.get(ev.candidate_id) or measured.get(ev.text) or {}
        dist = m.get("distance_words")
        if dist is None and cur_text:
            dist = word_distance(cur_text, ev.text)
        cands.append({"candidate_id": ev.candidate_id, "origin": ev.origin, "distance_words": dist,
                      "within_budget": m.get("within_budget"), "accepted": m.get("accepted", True),
                      "selected": ev.candidate_id in survivors or ev.candidate_id == best, "text": ev.text})
    over = [{"distance_words": m.get("distance_words"), "within_budget": m.get("within_budget"),
             "accepted": m.get("accepted"), "text": m.get("text") or texts.get(m.get("candidate_id") or "", "")}
            for b in budgets for m in b.measured if not m.get("accepted", True)]
    return {"retrievals": retrievals, "current_id": current_id, "current_text": cur_text,
            "budgets": [{"budget_words": b.budget_words, "schedule": b.schedule, "measured": list(b.measured)}
                        for b in budgets],
            "candidates": cands, "not_accepted": over, "rejected": rejected_rows(evs)}


def budget_series(events: Sequence[SeqEv]) -> list[dict[str, Any]]:
    """The edit budget (words) over steps, from every EditBudget event of the run (last one per step wins)."""
    by_step: dict[int, dict[str, Any]] = {}
    for _, ev in events:
        if ev.kind == "edit_budget":
            by_step[ev.step] = {"step": ev.step, "budget_words": ev.budget_words, "schedule": ev.schedule}
    return [by_step[k] for k in sorted(by_step)]


def opro_view(evs: Sequence[SeqEv]) -> dict[str, Any]:
    return {"meta": meta_rows(evs, "opro.generate"), "proposed": proposed_rows(evs),
            "selections": [{"method": s.method, "survivors": list(s.survivors), "rows": selection_rows(s)}
                           for s in of_kind(evs, "selection")],
            "rejected": rejected_rows(evs), "scored": scored_rows(evs)}


def pe2_view(evs: Sequence[SeqEv]) -> dict[str, Any]:
    return {"reasoning": [{"parent_id": r.parent_id, "examples": list(r.examples), "reasoning": r.reasoning,
                           "proposal_ref": r.proposal_ref} for r in of_kind(evs, "reasoning")],
            "edits": proposed_rows(evs, ["pe2_edit"]),
            "budgets": [{"budget_words": b.budget_words, "schedule": b.schedule, "measured": list(b.measured)}
                        for b in of_kind(evs, "edit_budget")],
            "rejected": rejected_rows(evs), "scored": scored_rows(evs)}


def ape_view(evs: Sequence[SeqEv]) -> dict[str, Any]:
    stages: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in scored_rows(evs):
        if r["purpose"].startswith("stage"):
            stages[r["purpose"]].append(r)
    return {"pool": proposed_rows(evs, ["induced", "resample"]),
            "selections": [{"method": s.method, "survivors": list(s.survivors), "rows": selection_rows(s)}
                           for s in of_kind(evs, "selection")],
            "stages": dict(sorted(stages.items())), "rejected": rejected_rows(evs)}


# --- rendering -----------------------------------------------------------------------------------------------------

def _st():
    import streamlit as st

    return st


def _table(rows: list[dict[str, Any]], empty: str = "None.") -> None:
    st = _st()
    if rows:
        import pandas as pd

        st.dataframe(pd.DataFrame(rows), hide_index=True)
    else:
        st.caption(empty)


def render_prompt(text: str) -> None:
    """A prompt as its instruction, and its demonstrations (if it carries any) as a table."""
    st = _st()
    instruction, demos = shown_parts(text)
    st.code(instruction, language=None, wrap_lines=True)
    if demos:
        st.caption(f"with {len(demos)} demonstrations (from train):")
        _table(demo_rows(demos))


def demo_rows(demos: Sequence[Demo]) -> list[dict[str, Any]]:
    return [{"train example": d.id, **{k: _short(v, 200) for k, v in d.fields.items()}, "label": d.label}
            for d in demos]


def demos_view(evs: Sequence[SeqEv]) -> dict[str, Any]:
    """A demo-search step: the set tried (its train examples), its dev score and macro-F1 (what breaks a tie on the
    score), and whether the search keeps it."""
    dev = {r["candidate_id"]: r for r in scored_rows(evs) if r["split"] == "dev"}
    kept = {ev.best_id for ev in of_kind(evs, "step_done")}
    sets = []
    for ev in of_kind(evs, "candidate_proposed"):
        if ev.origin == "demos":
            row = dev.get(ev.candidate_id, {})
            sets.append({"candidate_id": ev.candidate_id, "dev score": row.get("score"),
                         "dev macro-F1": row.get("macro_f1"), "kept": ev.candidate_id in kept,
                         "demos": demo_rows(shown_parts(ev.text)[1])})
    return {"sets": sets, "rejected": rejected_rows(evs)}


def render_demos(evs: Sequence[SeqEv], events: Sequence[SeqEv], texts: dict[str, str]) -> None:
    st = _st()
    v = demos_view(evs)
    st.subheader("Demonstration sets tried")
    if not v["sets"]:
        st.caption("No new set at this step (the instruction the search keeps is scored on dev first).")
        _table(scored_rows(evs), "No scores at this step.")
    for s in v["sets"]:
        score = "not scored" if s["dev score"] is None else f"{s['dev score']:.3f} on dev"
        if s["dev macro-F1"] is not None:
            score += f", macro-F1 {s['dev macro-F1']:.3f}"
        st.write(f"Set `{s['candidate_id']}`: {score}" + (": the best so far, kept" if s["kept"] else ""))
        _table(s["demos"])
    if v["rejected"]:
        st.subheader("Rejected")
        _table(v["rejected"])


def _selections(sels: list[dict[str, Any]]) -> None:
    st = _st()
    if not sels:
        st.caption("No selection at this step.")
    for i, s in enumerate(sels):
        st.write(f"Selection {i + 1}: method `{s['method']}`, {len(s['survivors'])} survivor(s) (the beam)")
        _table(s["rows"])


def render_roles(roles: dict[str, dict[str, str]]) -> None:
    """Who wrote what: the optimizer model wrote the prompts (each exchange below names its model), the task model
    answered the examples behind every score."""
    st = _st()
    o, t = roles.get("optimizer"), roles.get("task")
    if o:
        st.text(f"Prompts written by the optimizer model {o['model']} at {o['endpoint']}")
    if t:
        st.text(f"Scores from the answers of the task model {t['model']} at {t['endpoint']}")


def render_raw_exchanges(evs: Sequence[SeqEv], *, expanded: bool = False) -> None:
    """Every MetaPrompt of the step, exactly as sent and received (untrusted: st.code / st.text only)."""
    st = _st()
    rows = meta_rows(evs)
    with st.expander(f"Raw exchanges with the optimizer model ({len(rows)})", expanded=expanded):
        if not rows:
            st.caption("No optimizer-model requests at this step.")
        for r in rows:
            st.markdown(f"**#{r['seq']} `{r['purpose']}`**")
            st.text(f"model: {r['model']}   finish_reason: {r['finish_reason']}   cached: {r['cached']}"
                    + (f"   ref: {r['ref']}" if r["ref"] else ""))
            for m in r["messages"]:
                st.caption(str(m.get("role", "?")))
                st.code(str(m.get("content", "")), language=None, wrap_lines=True)
            st.caption("reply")
            st.code(r["reply"], language=None, wrap_lines=True)


def render_protegi(evs: Sequence[SeqEv], events: Sequence[SeqEv], texts: dict[str, str]) -> None:
    st = _st()
    v = protegi_view(evs)
    if v["minibatch"]:
        st.subheader("Minibatch")
        _table(v["minibatch"])
    st.subheader(f"Textual gradients ({len(v['gradients'])})")
    if not v["gradients"]:
        st.caption("No gradients at this step.")
    for g in v["gradients"]:
        with st.container(border=True):
            st.markdown(f"**Gradient `{g['gradient_id']}`** on parent `{g['parent_id']}`")
            st.caption(f"Errors shown to the model ({len(g['errors'])})")
            _table([{k: e.get(k) for k in ("id", "input", "gold", "prediction")} for e in g["errors"]])
            st.caption("Critique (the gradient)")
            st.code(g["critique"], language=None, wrap_lines=True)
            st.caption(f"Edited prompts from this gradient ({len(g['edits'])})")
            for e in g["edits"]:
                st.text(f"{e['candidate_id']}  (parsed: {e['parsed']})")
                render_prompt(e["text"])
    if v["orphan_edits"]:
        st.caption("Edits whose gradient is not stored at this step")
        _table(v["orphan_edits"])
    st.subheader(f"Paraphrases ({len(v['paraphrases'])})")
    _table(v["paraphrases"], "No paraphrases at this step.")
    st.subheader("Selection")
    _selections(v["selections"])
    st.subheader(f"Rejected proposals ({len(v['rejected'])})")
    _table(v["rejected"])


def render_gpo(evs: Sequence[SeqEv], events: Sequence[SeqEv], texts: dict[str, str]) -> None:
    st = _st()
    v = gpo_view(evs, texts)
    st.subheader("Retrieved trajectory")
    if not v["retrievals"]:
        st.caption("No retrieval at this step.")
    for r in v["retrievals"]:
        st.write(f"Current prompt `{r['current_id']}`, rule `{r['rule']}`, similarity `{r['similarity']}`")
        _table(r["retrieved"], "Nothing retrieved.")
    if v["current_text"]:
        st.caption("Current prompt")
        render_prompt(v["current_text"])
    st.subheader("Edit budget")
    for b in v["budgets"]:
        bw = "none" if b["budget_words"] is None else f"{b['budget_words']} words"
        st.write(f"Budget at this step: **{bw}** (schedule `{b['schedule']}`)")
        _table(b["measured"], "Nothing measured.")
    if not v["budgets"]:
        st.caption("No edit budget at this step.")
    series = budget_series(events)
    if series:
        import plotly.graph_objects as go

        fig = go.Figure(go.Scatter(x=[s["step"] for s in series], y=[s["budget_words"] for s in series],
                                   mode="lines+markers", name="budget (words)"))
        step = evs[0][1].step if evs else None
        if step is not None:
            fig.add_vline(x=step, line_dash="dot")
        fig.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10), title="Edit budget over steps",
                          xaxis_title="step", yaxis_title="words")
        st.plotly_chart(fig, key="gpo_budget")
    st.subheader("Generated candidates")
    _table([{k: c[k] for k in ("candidate_id", "origin", "distance_words", "within_budget", "accepted", "selected",
                              "text")} for c in v["candidates"]], "No candidates at this step.")
    if v["not_accepted"]:
        st.caption("Measured but not accepted")
        _table(v["not_accepted"])
    if v["rejected"]:
        st.caption("Rejected proposals")
        _table(v["rejected"])


def render_opro(evs: Sequence[SeqEv], events: Sequence[SeqEv], texts: dict[str, str]) -> None:
    st = _st()
    v = opro_view(evs)
    st.subheader("Meta-prompt as sent")
    if not v["meta"]:
        st.caption("No opro.generate request at this step.")
    for i, m in enumerate(v["meta"]):
        with st.expander(f"Request {i + 1} (#{m['seq']}, cached: {m['cached']})", expanded=i == 0):
            for msg in m["messages"]:
                st.caption(str(msg.get("role", "?")))
                st.code(str(msg.get("content", "")), language=None, wrap_lines=True)
            st.caption(f"raw reply (finish_reason: {m['finish_reason']})")
            st.code(m["reply"], language=None, wrap_lines=True)
    st.subheader("Proposed")
    _table(v["proposed"], "No candidates at this step.")
    st.subheader("Scores")
    _table(v["scored"])
    st.subheader("Selection")
    _selections(v["selections"])
    if v["rejected"]:
        st.subheader("Rejected")
        _table(v["rejected"])


def render_pe2(evs: Sequence[SeqEv], events: Sequence[SeqEv], texts: dict[str, str]) -> None:
    st = _st()
    v = pe2_view(evs)
    st.subheader(f"Reasoning ({len(v['reasoning'])})")
    if not v["reasoning"]:
        st.caption("No reasoning at this step.")
    for r in v["reasoning"]:
        with st.container(border=True):
            st.markdown(f"On parent `{r['parent_id']}` (proposal `{r['proposal_ref']}`)")
            _table(r["examples"], "No examples.")
            st.code(r["reasoning"], language=None, wrap_lines=True)
    st.subheader("Proposed edits")
    _table(v["edits"], "No edits at this step.")
    if v["budgets"]:
        st.subheader("Edit budget")
        for b in v["budgets"]:
            st.write(f"Budget: {b['budget_words']} words (schedule `{b['schedule']}`)")
            _table(b["measured"])
    st.subheader("Scores")
    _table(v["scored"])
    if v["rejected"]:
        st.subheader("Rejected")
        _table(v["rejected"])


def render_ape(evs: Sequence[SeqEv], events: Sequence[SeqEv], texts: dict[str, str]) -> None:
    st = _st()
    v = ape_view(evs)
    st.subheader(f"Generated pool ({len(v['pool'])})")
    _table(v["pool"], "No generated candidates at this step.")
    st.subheader("Evaluation rounds")
    if not v["stages"]:
        st.caption("No staged scores at this step.")
    for stage, rows in v["stages"].items():
        st.caption(stage)
        _table(rows)
    _selections(v["selections"])
    if v["rejected"]:
        st.subheader("Rejected")
        _table(v["rejected"])


def render_generic(evs: Sequence[SeqEv], events: Sequence[SeqEv], texts: dict[str, str]) -> None:
    """Any optimizer: a section for each kind of event present at this step."""
    st = _st()
    kinds = {ev.kind for _, ev in evs}
    if "gradient" in kinds:
        render_protegi(evs, events, texts)
        return
    if "retrieval" in kinds or "edit_budget" in kinds:
        render_gpo(evs, events, texts)
    if "reasoning" in kinds:
        render_pe2(evs, events, texts)
    st.subheader("Candidates proposed")
    _table(proposed_rows(evs), "None at this step.")
    st.subheader("Scores")
    _table(scored_rows(evs), "None at this step.")
    if "selection" in kinds:
        st.subheader("Selection")
        _selections([{"method": s.method, "survivors": list(s.survivors), "rows": selection_rows(s)}
                     for s in of_kind(evs, "selection")])
    rej = rejected_rows(evs)
    if rej:
        st.subheader("Rejected proposals")
        _table(rej)


RENDERERS: dict[str, Callable[[Sequence[SeqEv], Sequence[SeqEv], dict[str, str]], None]] = {
    "protegi": render_protegi, "gpo": render_gpo, "opro": render_opro, "pe2": render_pe2, "ape": render_ape,
    "demos": render_demos,
}


def renderer_for(optimizer: str) -> Callable[[Sequence[SeqEv], Sequence[SeqEv], dict[str, str]], None]:
    return RENDERERS.get((optimizer or "").lower(), render_generic)


def _after_optimizer(events: Sequence[SeqEv], step: int) -> bool:
    """Is `step` in the demo search that followed the optimizer (at or after its first demonstration set)?"""
    first = min((ev.step for _, ev in events if ev.kind == "candidate_proposed" and ev.origin == "demos"),
                default=None)
    return first is not None and step >= first - 1 and not any(
        ev.kind == "meta_prompt" for _, ev in events_at(events, step))


def plan_rows(evs: Sequence[SeqEv]) -> list[dict[str, Any]]:
    """How a method sized its search to the call allowance: each size, the paper's and the chosen."""
    return [{"size": k, "paper's": plan.defaults.get(k), "chosen": v}
            for plan in of_kind(evs, "plan") for k, v in plan.settings.items()]


def render_step(optimizer: str, events: Sequence[SeqEv], step: int) -> None:
    """Draw one step of a run: the optimizer's own view, then the step's outcome, errors and raw exchanges."""
    st = _st()
    evs = events_at(events, step)
    texts = candidate_texts(events)
    if any(ev.kind == "candidate_proposed" and ev.origin == "demos" for _, ev in evs) or (
            evs and optimizer != "demos" and _after_optimizer(events, step)):
        optimizer = "demos"  # a demo search after the optimizer: its steps are the search's
    for plan in of_kind(evs, "plan"):
        st.info(f"Search sized to the call budget ({plan.allowance} calls for the optimization, about "
                f"{plan.estimated_calls} planned): {plan.note}")
    if of_kind(evs, "plan"):
        _table(plan_rows(evs))
    try:
        renderer_for(optimizer)(evs, events, texts)
    except Exception as e:  # a malformed event must not hide the rest of the step
        st.error(f"Could not draw the {optimizer} view of step {step} ({type(e).__name__}); the generic view follows.")
        render_generic(evs, events, texts)
    done = of_kind(evs, "step_done")
    if done:
        d = done[-1]
        st.write(f"Step {step} done: best `{d.best_id}` = {d.best_score:.3f} on {d.best_split}; "
                 f"beam {len(d.beam)}")
    for err in of_kind(evs, "error"):
        st.error(f"Error at {err.where or 'run'} ({'recoverable' if err.recoverable else 'fatal'}):")
        st.text(err.message)
    render_raw_exchanges(evs)
