"""PromptOpt home: which backend serves, a one-click quick start to a live run, a first score on a bundled set, and the
stored runs.

App start never waits on the embedded model: it starts on first need (a score, or a run), with a spinner.
"""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from optimizers.data import BUNDLED
from optimizers.local_model import model_alias
from optimizers.prepare import prepare_task
from ui import session
from ui.launch import create_and_launch, registered_optimizers
from ui.session import backend, connection_sidebar, page_link, store

st.set_page_config(page_title="PromptOpt", layout="wide")

# The quick start shows a real gain within minutes on 2 cores (BENCHMARKS.md: the same run from the CLI, with its paired test): a set whose
# labels follow a rule the initial prompt leaves unsaid, the instruction as the system message, and a demo search,
# the lever the small local model responds to most (BENCHMARKS.md, headroom and gains).
QUICK_DATA = "support_triage"
QUICK_CAPS = {"max_train": 48, "max_dev": 12, "max_test": 60}
QUICK_LAYOUT = "system"
QUICK_OPTIMIZER = "demos"
QUICK_PARAMS = {"k": 6, "trials": 2}
QUICK_BUDGET = 180  # calls: (trials + 1) x dev 12 + the test report 2 x 60, with room to spare
QUICK_REPORT = ["dev", "test"]  # dev is free (the search scored both prompts there); train would not fit the budget


def quick_start() -> None:
    """Load the bundled triage set with small caps, start a small demo search, open it live on Optimize."""
    opts = registered_optimizers()
    name = QUICK_OPTIMIZER if QUICK_OPTIMIZER in opts else next((n for n in opts if n != "baseline"), None)
    if name is None:
        st.error("No optimizer is registered.")
        return
    from optimizers.llm import Budget

    po = prepare_task(QUICK_DATA, split=QUICK_CAPS, layout=QUICK_LAYOUT)
    st.session_state["po_data"] = po
    fields = opts[name].Params.model_fields
    params = {k: v for k, v in QUICK_PARAMS.items() if k in fields}
    task_endpoint, optimizer_endpoint = session.role_endpoints()
    try:
        cfg = po.run_config(opts[name], params=params, task_endpoint=task_endpoint,
                            optimizer_endpoint=optimizer_endpoint, budget=Budget(max_calls=QUICK_BUDGET),
                            report_splits=QUICK_REPORT)
        rid = create_and_launch(cfg, po.splits)
    except Exception as e:
        st.error(f"Could not start the quick-start run: {type(e).__name__}: {e}")
        return
    st.switch_page("pages/2_Optimize.py", query_params={"run": rid})


connection_sidebar()
st.title("PromptOpt")
st.caption("Optimize a task prompt with an LLM: APE, ProTeGi, OPRO, PE2, GPO.")

# --- backend ------------------------------------------------------------------------------------------------------
st.subheader("Backend")
try:
    plans = session.role_plans()
except Exception as e:
    st.error(f"Cannot resolve the task and optimizer endpoints: {e}")
    plans = {}
warming = session.warm_embedded(plans)  # never waited for here: a click on Quick start finds it loaded
listed: set[str] = set()
for role, plan in plans.items():
    who = "Task model" if role == "task" else "Optimizer model"
    if plan.base_url:
        key = session.api_key() if role == "task" else session.optimizer_api_key()
        st.write(f"{who}: `{plan.model}` at endpoint `{plan.base_url}`"
                 + (" (API key set for this session)" if key else ""))
        if plan.base_url in listed:
            continue
        listed.add(plan.base_url)
        models, err = session.list_models(plan.base_url, role)
        if err:
            st.warning(f"Could not list the models: {err}")
        elif models:
            st.caption(f"Models found via /v1/models ({len(models)}): " + ", ".join(models[:30])
                       + (" ..." if len(models) > 30 else ""))
        else:
            st.caption("The endpoint lists no models.")
    else:
        server = session.embedded_running(plan.model)
        if server is not None:
            load = f", loaded in {server.load_seconds:.1f} s" if server.load_seconds else ""
            st.write(f"{who}: embedded `{model_alias(plan.model)}` (llama.cpp, loopback only): **running**{load}.")
        else:
            st.write(f"{who}: embedded `{plan.model}` (llama.cpp, loopback only): " + (
                "**loading in the background**." if warming or session.warming(plan.model) else
                "**not started**; it starts on first use (a score or a run)."))
speed = st.session_state.get("backend_speed")
if speed:
    st.caption(f"Measured speed on the last score: {speed['calls_per_s']:.2f} calls/s, "
               f"{speed['tokens_per_s']:.0f} tokens/s ({speed['model']}).")

# --- quick start --------------------------------------------------------------------------------------------------
st.subheader("Quick start")
st.write(f"Loads the bundled **{QUICK_DATA}** set (train {QUICK_CAPS['max_train']}, dev {QUICK_CAPS['max_dev']}, "
         f"test {QUICK_CAPS['max_test']}), starts a small demo search ({QUICK_PARAMS['trials']} sets of "
         f"{QUICK_PARAMS['k']} labelled train examples, each scored on dev; at most {QUICK_BUDGET} calls) and opens it "
         "live on the Optimize page, where the report compares the best prompt with the initial one on test.")
if st.button("Quick start", type="primary", key="home_quick"):
    quick_start()

# --- score a bundled set ------------------------------------------------------------------------------------------
st.subheader("Try a bundled set")
names = list(BUNDLED)
name = st.selectbox("Data set", names, format_func=lambda n: f"{n}: {BUNDLED[n].title}")
b = BUNDLED[name]
st.caption(f"Source: {b.source}. Licence: {b.licence}. {b.description}")
prompt = st.text_area("Instruction", value=b.initial_prompt)
n = st.slider("Test examples to score", 4, 40, 10)
if st.button("Score on the test split", key="home_score"):
    from optimizers.evaluate import Evaluator
    from optimizers.llm import LLM, Meter, ResponseCache

    prepared = prepare_task(name)
    test = prepared.splits.test[:n]
    try:
        be = backend()
        meter = Meter()
        model = be.model
        llm = LLM(be.endpoint, model, meter=meter, cache=ResponseCache())
        bar = st.progress(0.0, text="scoring...")
        done = [0]

        def tick(k: int) -> None:
            done[0] += k
            bar.progress(done[0] / len(test), text=f"scored {done[0]}/{len(test)}")

        t0 = time.monotonic()
        res = Evaluator(llm, prepared.task).evaluate(prompt, test, progress=tick)
        wall = max(time.monotonic() - t0, 1e-6)
    except Exception as e:  # shown as a message, never a traceback
        st.error(f"Could not score: {type(e).__name__}: {e}")
    else:
        c = meter.snapshot()
        if c.calls:
            st.session_state["backend_speed"] = {"calls_per_s": c.calls / wall, "model": model,
                                                 "tokens_per_s": (c.prompt_tokens + c.completion_tokens) / wall}
        st.metric("Accuracy", f"{res.score:.2f}", help=f"95% CI {res.ci_low:.2f}-{res.ci_high:.2f}, n={res.n}")
        st.caption(f"calls {c.calls}, cache hits {c.cache_hits}, tokens {c.prompt_tokens}+{c.completion_tokens}")
        st.dataframe(pd.DataFrame([{"input": next(iter(e.fields.values()))[:200], "gold": p.gold,
                                    "output": p.raw, "extracted": p.pred, "correct": p.correct}
                                   for e, p in zip(test, res.predictions)]), width="stretch")

# --- runs ---------------------------------------------------------------------------------------------------------
st.subheader("Stored runs")
runs = store().list_runs()
if runs:
    st.dataframe(pd.DataFrame([{"run": r["id"], "status": r["status"], "optimizer": r["optimizer"],
                                "data": r["data_name"], "seed": r["seed"]} for r in runs]), width="stretch",
                 hide_index=True)
    for r in runs[:5]:
        page_link("pages/2_Optimize.py", f"Open {r['id']} ({r['optimizer']}, {r['status']})",
              {"run": r["id"]})
else:
    st.write("No runs yet. Press Quick start above, or start one from a terminal: `python -m optimizers run "
             "--data sentiment --optimizer protegi --max-calls 300 --out out/`")
