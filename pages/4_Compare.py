"""Compare: 2-4 prompts scored side by side on the same test split, with 95% CIs, paired McNemar tests, the
per-example output matrix (filterable to disagreements), confusion matrices, and CSV/JSON export."""

from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from ui import compare as C
from ui.inspectors import render_prompt
from ui.session import backend, connection_sidebar
from ui.session import store as _store

st.set_page_config(page_title="PromptOpt: Compare", layout="wide")


connection_sidebar()


st.title("Compare prompts")
st.caption("Score 2-4 prompts on the same test examples. The paired test asks whether each prompt differs from P1 "
           "on the same examples beyond chance.")
try:
    S = _store()
    choices = C.prompt_choices(S)
    runs = S.list_runs()
except Exception as e:
    st.error(f"Could not open the run store: {e}")
    st.stop()

# --- prompts ---------------------------------------------------------------------------------------------------------
st.subheader("1. Prompts")
picked = st.multiselect("From stored runs (best / initial prompt of each run)", list(range(len(choices))),
                        format_func=lambda i: choices[i].label, max_selections=C.MAX_PROMPTS, key="cmp_picked")
typed = st.text_area("Or type prompts (separate several with a line containing only ---)", key="cmp_typed",
                     height=120)
prompts = [choices[i].text for i in picked]
prompts += [p.strip() for p in typed.split("\n---\n") if p.strip()] if typed.strip() else []
for lab, p in zip(C.labels_for(len(prompts)), prompts):
    st.caption(lab)
    render_prompt(p)

# --- data ------------------------------------------------------------------------------------------------------------
st.subheader("2. Data")
sources = []
if st.session_state.get("po_data"):
    sources.append("session")
if runs:
    sources.append("run")
if not sources:
    st.info("No data: load a data set on the Data page, or make a run first (its test split can be reused here).")
    st.stop()
src = st.radio("Test examples from", sources, horizontal=True, key="cmp_source",
               format_func=lambda s: {"session": "the data loaded on the Data page",
                                      "run": "a stored run's test split"}[s])
run_id = None
if src == "run":
    ids = [r["id"] for r in runs]
    by_id = {r["id"]: r for r in runs}
    q = st.query_params.get("run")
    run_id = st.selectbox("Run", ids, index=ids.index(q) if q in by_id else 0, key="cmp_run",
                          format_func=lambda i: f"{i} · {by_id[i]['optimizer']} · {by_id[i].get('data_name') or '?'}")
    try:
        task, test = C.run_test_data(S, run_id)
    except ValueError as e:
        st.error(str(e))
        st.stop()
    data_name = by_id[run_id].get("data_name") or "?"
    default_model = C.run_task_model(S, run_id)
else:
    po = st.session_state["po_data"]
    task, test, data_name = po.task, list(po.splits.test), po.name
    default_model = None
    if not test:
        st.error("The session data has an empty test split: change the split on the Data page.")
        st.stop()
n_max = st.number_input("Test examples to use", min_value=1, max_value=len(test), value=min(len(test), 200),
                        key="cmp_n", help="The first N of the test split (the same N for every prompt).")
model = st.text_input("Task model (empty: the backend's default)",
                      value=default_model or os.environ.get("PROMPTOPT_TASK_MODEL", ""), key="cmp_model")
st.caption(f"{data_name}: {len(test)} test examples; metric {task.metric}.")

problems = C.validate_prompts(prompts)
if problems:
    st.info("To compare: " + "; ".join(problems) + ".")
go = st.button("Score side by side", type="primary", disabled=bool(problems), key="cmp_go")

if go:
    from optimizers.evaluate import Evaluator
    from optimizers.llm import LLM, Meter, ResponseCache

    examples = list(test[: int(n_max)])
    try:
        be = backend(model.strip() or None)
        meter = Meter()
        llm = LLM(be.endpoint, be.model, role="task", meter=meter, cache=ResponseCache())
        ev = Evaluator(llm, task)
        total = len(examples) * len(prompts)
        bar = st.progress(0.0, text="scoring...")
        done = [0]

        def tick(k: int) -> None:
            done[0] += k
            bar.progress(min(1.0, done[0] / total), text=f"scored {done[0]}/{total}")

        results = C.score_prompts(ev, prompts, examples, progress=tick)
    except Exception as e:  # shown as a message, never a traceback
        st.error(f"Could not score the prompts: {type(e).__name__}: {e}")
    else:
        c = meter.snapshot()
        st.session_state["cmp_result"] = {
            "prompts": list(prompts), "results": results, "examples": examples, "labels": task.labels,
            "source": {"data": data_name, "run_id": run_id, "n": len(examples), "model": model or be.model},
            "usage": f"calls {c.calls}, cache hits {c.cache_hits}, tokens {c.prompt_tokens}+{c.completion_tokens}"}
        st.session_state["cmp_page_in"] = 1

# --- results ---------------------------------------------------------------------------------------------------------
res = st.session_state.get("cmp_result")
if res:
    st.subheader("3. Scores")
    st.caption(f"{res['source']['data']}, {res['source']['n']} examples, model {res['source']['model']}; "
               f"{res['usage']}")
    summary = C.summary_rows(res["prompts"], res["results"])
    st.plotly_chart(C.ci_figure(summary), key="cmp_ci")
    table = pd.DataFrame([{k: r[k] for k in ("prompt", "score", "ci_low", "ci_high", "n", "correct", "vs",
                                             "only_first_right", "only_this_right", "p_value", "significant")}
                          for r in summary])
    st.dataframe(table, hide_index=True, key="cmp_summary")
    for r in summary[1:]:
        verdict = "differs significantly" if r["significant"] else "does not differ significantly"
        st.write(f"{r['prompt']} {verdict} from P1 (exact McNemar p = {r['p_value']:.3g}; "
                 f"P1 alone right on {r['only_first_right']}, {r['prompt']} alone right on {r['only_this_right']}).")

    st.subheader("4. Per-example outputs")
    rows = C.matrix_rows(res["examples"], res["results"])
    mode = st.radio("Show", C.FILTERS, horizontal=True, key="cmp_filter")
    shown = C.filter_rows(rows, mode)
    size = 50
    _, n_pages = C.page_rows(shown, 1, size)
    if not 1 <= st.session_state.get("cmp_page_in", 1) <= n_pages:
        st.session_state["cmp_page_in"] = 1
    page = int(st.number_input("Page", min_value=1, max_value=n_pages, key="cmp_page_in"))
    page_items, _ = C.page_rows(shown, page, size)
    st.caption(f"{len(shown)} of {len(rows)} examples match; page {page} of {n_pages}")
    st.dataframe(pd.DataFrame(page_items), hide_index=True, key="cmp_matrix")

    st.subheader("5. Confusion matrices")
    cols = st.columns(len(res["results"]))
    for col, lab, r in zip(cols, C.labels_for(len(res["results"])), res["results"]):
        with col:
            st.plotly_chart(C.confusion_figure(C.confusion_table(r, res["labels"]), lab), key=f"cmp_conf_{lab}")

    st.subheader("6. Export")
    c1, c2 = st.columns(2)
    c1.download_button("Per-example matrix (CSV)", C.export_csv(rows), file_name="compare.csv", mime="text/csv",
                       key="cmp_csv")
    c2.download_button("Everything (JSON)", C.export_json(res["prompts"], summary, rows, res["source"]),
                       file_name="compare.json", mime="application/json", key="cmp_json")
