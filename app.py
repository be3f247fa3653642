"""PromptOpt home: which backend serves, a first score on a bundled set, and the stored runs.

The full dashboard (data upload, live optimization, inspectors, comparison) lands in pages/; this page already works
on the embedded model with no key and no network.
"""

from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from optimizers.data import BUNDLED, build_examples, load_bundled, split_examples
from optimizers.store import Store

st.set_page_config(page_title="PromptOpt", layout="wide")


@st.cache_resource(show_spinner="Starting the embedded model (first start assembles and checks it)...")
def _backend(base_url: str | None):
    from optimizers.backend import open_backend

    return open_backend(base_url or None)


@st.cache_resource
def _store() -> Store:
    return Store(os.environ.get("PROMPTOPT_DB") or None)


st.title("PromptOpt")
st.caption("Optimize a task prompt with an LLM: APE, ProTeGi, OPRO, PE2, GPO.")

with st.sidebar:
    st.subheader("Connection")
    base_url = st.text_input("OpenAI-compatible base URL", value=os.environ.get("OPENAI_BASE_URL", ""),
                             help="Empty: the embedded local model (offline).")
    key = st.text_input("API key", type="password", help="Kept in this browser session only; never stored.")
    if key:
        st.session_state["api_key"] = key

st.subheader("Backend")
if base_url:
    st.write(f"Endpoint: `{base_url}`")
else:
    from optimizers.backend import embedded_model_alias

    st.write(f"Embedded local model: `{embedded_model_alias()}` (llama.cpp, loopback only). It starts on first use.")

st.subheader("Try a bundled set")
names = list(BUNDLED)
name = st.selectbox("Data set", names, format_func=lambda n: f"{n}: {BUNDLED[n].title}")
b = BUNDLED[name]
st.caption(f"Source: {b.source}. Licence: {b.licence}. {b.description}")
prompt = st.text_area("Instruction", value=b.initial_prompt)
n = st.slider("Test examples to score", 4, 40, 10)
if st.button("Score on the test split", type="primary"):
    from optimizers.evaluate import Evaluator
    from optimizers.llm import LLM, Meter, ResponseCache
    from optimizers.task import Task

    df, b = load_bundled(name)
    exs, _ = build_examples(df, b.input_cols, b.label_col)
    test = split_examples(exs, seed=0).test[:n]
    try:
        backend = _backend(base_url)
        if st.session_state.get("api_key") and base_url:
            from optimizers.backend import open_backend

            backend = open_backend(base_url, st.session_state["api_key"])
        meter = Meter()
        llm = LLM(backend.endpoint, os.environ.get("PROMPTOPT_TASK_MODEL") or backend.model, meter=meter,
                  cache=ResponseCache())
        task = Task(template=b.template, input_cols=b.input_cols, labels=b.labels)
        bar = st.progress(0.0, text="scoring...")
        done = [0]

        def tick(k: int) -> None:
            done[0] += k
            bar.progress(done[0] / len(test), text=f"scored {done[0]}/{len(test)}")

        res = Evaluator(llm, task).evaluate(prompt, test, progress=tick)
    except Exception as e:  # shown as a message, never a traceback
        st.error(f"Could not score: {e}")
    else:
        c = meter.snapshot()
        st.metric("Accuracy", f"{res.score:.2f}", help=f"95% CI {res.ci_low:.2f}-{res.ci_high:.2f}, n={res.n}")
        st.caption(f"calls {c.calls}, cache hits {c.cache_hits}, tokens {c.prompt_tokens}+{c.completion_tokens}")
        st.dataframe(pd.DataFrame([{"input": next(iter(e.fields.values()))[:200], "gold": p.gold,
                                    "output": p.raw, "extracted": p.pred, "correct": p.correct}
                                   for e, p in zip(test, res.predictions)]), use_container_width=True)

st.subheader("Stored runs")
runs = _store().list_runs()
if runs:
    st.dataframe(pd.DataFrame([{"run": r["id"], "status": r["status"], "optimizer": r["optimizer"],
                                "data": r["data_name"], "seed": r["seed"]} for r in runs]), use_container_width=True)
else:
    st.write("No runs yet. Start one from a terminal: `python -m optimizers run --data sentiment --optimizer protegi "
             "--max-calls 300 --out out/`")
