"""Data: upload a table or pick a bundled set, map columns into the prompt template, check the labels, split with a
seed. Every problem is a message naming the row and column, never a traceback. Saves st.session_state["po_data"] (a
PreparedTask from optimizers.prepare)."""

from __future__ import annotations

import hashlib

import pandas as pd
import streamlit as st

from optimizers.data import BUNDLED, DataError, load_bundled, read_table, render_template
from optimizers.metrics import resolution
from optimizers.prepare import PreparedTask, default_template, guess_label_col, prepare_task
from ui import charts
from ui.session import connection_sidebar, page_link

st.set_page_config(page_title="PromptOpt: Data", layout="wide")
connection_sidebar()
st.title("Data")

PAGE_ROWS = 50
UPLOAD_TYPES = ["csv", "tsv", "txt", "jsonl", "json", "xlsx", "parquet"]


@st.cache_data(show_spinner="Reading the file...", max_entries=8)
def _read(digest: str, name: str, _data: bytes) -> pd.DataFrame:
    return read_table(_data, name)


@st.cache_data(show_spinner=False, max_entries=16)
def _bundled(name: str) -> pd.DataFrame:
    return load_bundled(name)[0]


@st.cache_data(show_spinner="Checking the examples and splitting...", max_entries=16)
def _prepare(data_key: str, _df: pd.DataFrame, **kw) -> PreparedTask:
    """prepare_task, recomputed only when the table or a setting changes (10,000 rows take seconds to validate)."""
    return prepare_task(_df, **kw)


def _show_problems(e: DataError, what: str) -> None:
    st.error(f"{what}: {len(e.problems)} problem(s)")
    for p in e.problems:
        st.error(p)


current = st.session_state.get("po_data")
if current:
    sz = current.splits.sizes()
    st.success(f"In use: **{current.name}** (train {sz['train']}, dev {sz['dev']}, test {sz['test']}).")
    page_link("pages/2_Optimize.py", label="Go to Optimize")

# --- source -------------------------------------------------------------------------------------------------------
source = st.radio("Source", ["Bundled set", "Upload a file"], horizontal=True, key="data_source")
df: pd.DataFrame | None = None
defaults: dict = {}
if source == "Bundled set":
    bname = st.selectbox("Bundled set", list(BUNDLED), format_func=lambda n: f"{n}: {BUNDLED[n].title}",
                         key="data_bundled")
    b = BUNDLED[bname]
    st.caption(f"Source: {b.source}. Licence: {b.licence}. {b.description}")
    df = _bundled(bname)
    name, src = b.name, f"bundled:{b.name}"
    data_key = src
    defaults = {"input_cols": b.input_cols, "label_col": b.label_col, "template": b.template,
                "initial_prompt": b.initial_prompt}
else:
    up = st.file_uploader("Labelled examples (CSV, TSV, JSONL, JSON, XLSX, Parquet)", type=UPLOAD_TYPES,
                          key="data_upload")
    if up is None:
        st.info("Upload a table with one example per row: input column(s) and a label column.")
        st.stop()
    data = up.getvalue()
    name = up.name.rsplit(".", 1)[0] or "upload"
    src = f"upload:{up.name}"
    data_key = hashlib.sha256(data).hexdigest()
    try:
        df = _read(data_key, up.name, data)
    except DataError as e:
        _show_problems(e, f"Could not read {up.name}")
        st.stop()
    except Exception as e:  # any other reader failure is still a message, not a traceback
        st.error(f"Could not read {up.name}: {type(e).__name__}: {e}")
        st.stop()

assert df is not None
cols = list(df.columns)
key_base = f"{source}:{name}:{len(df)}:{','.join(cols)}"  # widgets reset when another table is chosen
kh = hashlib.sha1(key_base.encode()).hexdigest()[:8]

# --- preview ------------------------------------------------------------------------------------------------------
st.subheader(f"Preview: {len(df):,} rows, {len(cols)} columns")
pages = max(1, -(-len(df) // PAGE_ROWS))
page = 1
if pages > 1:
    page = int(st.number_input(f"Page (of {pages}, {PAGE_ROWS} rows each)", min_value=1, max_value=pages, value=1,
                               key=f"data_page_{kh}"))
start = (page - 1) * PAGE_ROWS
view = df.iloc[start:start + PAGE_ROWS].copy()
view.index = range(start + 1, start + 1 + len(view))  # row numbers as in the problem messages
st.dataframe(view, width="stretch", height=300)

# --- mapping ------------------------------------------------------------------------------------------------------
st.subheader("Columns and template")
c1, c2 = st.columns(2)
label_default = defaults.get("label_col") or guess_label_col(cols)
label_col = c2.selectbox("Label column", cols, index=cols.index(label_default) if label_default in cols else 0,
                         key=f"data_label_{kh}")
input_default = [c for c in defaults.get("input_cols", [c for c in cols if c != label_col]) if c in cols]
input_cols = c1.multiselect("Input column(s)", cols, default=input_default, key=f"data_inputs_{kh}",
                            help="Each becomes a {column} placeholder in the template.")
extraction = c2.selectbox("Answer extraction", ["label", "number", "exact"], key=f"data_extraction_{kh}",
                          help="label: the reply is mapped onto the label set (forgiving); number: the first number; "
                               "exact: the whole reply must equal the label.")
template = st.text_area("Template: {prompt} is where the instruction goes, {column} each input field",
                        value=defaults.get("template") or default_template(input_cols or cols[:1]), height=120,
                        key=f"data_template_{kh}")
initial_prompt = st.text_area("Initial prompt (the instruction the optimizers start from)",
                              value=defaults.get("initial_prompt", "Classify the input. Answer with the label only."),
                              key=f"data_prompt_{kh}",
                              help="Empty: only an optimizer that can start from nothing (OPRO) runs from it.")
missing = [c for c in input_cols if "{" + c + "}" not in template]
if "{prompt}" not in template:
    st.warning("The template has no {prompt} placeholder: the instruction would not appear.")
if missing:
    st.warning(f"The template does not use the input column(s) {', '.join(missing)}: add "
               + ", ".join("{" + c + "}" for c in missing) + ".")
if len(df):
    first = df.iloc[0]
    st.caption(f"Rendered example (row 1, label: {str(first[label_col])[:80]!r}), as the task model will see it:")
    st.code(render_template(template, {c: str(first[c]) for c in input_cols}, initial_prompt), language=None)

# --- labels -------------------------------------------------------------------------------------------------------
labels = df[label_col].astype(str).str.strip()
n_labels = labels.nunique()
st.subheader(f"Labels: {n_labels} distinct in {label_col!r}")
if n_labels <= 50:
    st.plotly_chart(charts.label_distribution_figure(labels, title=f"Label distribution ({label_col})"),
                    width="stretch")
else:
    st.info(f"{n_labels} distinct values: too many for a label set; use number or exact extraction, or pick another "
            "column.")

# --- split --------------------------------------------------------------------------------------------------------
st.subheader("Split")
s1, s2, s3, s4, s5 = st.columns(5)
train = s1.number_input("train fraction", 0.0, 1.0, 0.5, 0.05, key=f"split_train_{kh}")
dev = s2.number_input("dev fraction", 0.0, 1.0, 0.25, 0.05, key=f"split_dev_{kh}")
test = round(1.0 - train - dev, 6)
s3.metric("test fraction", f"{test:.2f}")
seed = int(s4.number_input("seed", 0, 2**31 - 1, 0, 1, key=f"split_seed_{kh}"))
stratify = s5.checkbox("stratified by label", value=True, key=f"split_strat_{kh}")
m1, m2, m3 = st.columns(3)
caps = {}
for col, part, default in ((m1, "train", 0), (m2, "dev", 0), (m3, "test", 0)):
    v = int(col.number_input(f"max {part} examples (0 = all)", 0, 1_000_000, default, 10, key=f"cap_{part}_{kh}"))
    caps[f"max_{part}"] = v or None

# --- message layout and demonstrations -----------------------------------------------------------------------------
st.subheader("Message layout and demonstrations")
st.caption("Small models answer differently to the same words placed differently, and respond to labelled "
           "demonstrations more than to rewording (BENCHMARKS.md, headroom).")
l1, l2, l3 = st.columns(3)
layout = l1.radio("Instruction", ["user", "system"], horizontal=True, key=f"layout_{kh}",
                  format_func=lambda v: {"user": "in the user turn", "system": "as the system message"}[v])
demos_k = int(l2.number_input("Fixed demonstrations (drawn from train; 0 = none)", 0, 32, 0, 1, key=f"demos_{kh}",
                              help="Shown before every input, for every prompt that carries none of its own. A demo "
                                   "search (Optimize page) picks them instead."))
demo_style = l3.radio("Demonstrations as", ["turns", "inline"], horizontal=True, key=f"demo_style_{kh}",
                      format_func=lambda v: {"turns": "chat turns", "inline": "inline above the input"}[v])
reasoning = int(st.number_input(
    "Room to reason (tokens; 0 = off)", 0, 4096, 0, 64, key=f"reasoning_{kh}",
    help="A reply cut at 32 tokens before any answer is asked again with this many, and the label it names last is "
         "read: for prompts that make the model reason first (each such example then costs two calls)."))

problems_shown = False
if test < -1e-9:
    st.error(f"train + dev fractions are {train + dev:.2f}: they must not exceed 1")
    st.stop()
try:
    po = _prepare(data_key, df, name=name, input_cols=input_cols, label_col=label_col, template=template,
                  initial_prompt=initial_prompt, extraction=extraction, source=src,
                  split=dict(train=train, dev=dev, test=max(test, 0.0), seed=seed, stratify=stratify, **caps),
                  layout=layout, demos=demos_k, demo_style=demo_style, reasoning_max_tokens=reasoning)
except DataError as e:
    _show_problems(e, "The data cannot be used yet")
    st.stop()
except Exception as e:
    st.error(f"The data cannot be used yet: {type(e).__name__}: {e}")
    st.stop()

for w in po.warnings:
    st.warning(w)
sz = po.splits.sizes()
k1, k2, k3 = st.columns(3)
k1.metric("train", sz["train"])
k2.metric("dev", sz["dev"])
k3.metric("test", sz["test"])
if extraction == "label":
    st.plotly_chart(charts.split_distribution_figure(po.splits), width="stretch")
if not sz["dev"]:
    st.warning("The dev split is empty: optimizers will select on train, and the train/dev gap cannot be shown.")
elif sz["dev"] < 100:
    st.info(f"On {sz['dev']} dev examples a prompt's accuracy is known to about ±{resolution(sz['dev']):.0%} (95%): "
            "the optimizers pick the best of many candidates there, partly by luck. On 40 the better candidate on "
            "test was often not the one dev picked (BENCHMARKS.md, 'Does the dev winner win on test?'). A larger dev "
            "split sharpens the choice; each candidate then costs more calls.")
if po.splits.train:
    with st.expander("The messages the task model gets for one example", expanded=False):
        st.json(po.task.messages(po.initial_prompt, (po.splits.dev or po.splits.train)[0]))
if st.button("Use this data", type="primary", key="data_use"):
    st.session_state["po_data"] = po
    st.success(f"Saved: {name} (train {sz['train']}, dev {sz['dev']}, test {sz['test']}). Next: Optimize.")
    page_link("pages/2_Optimize.py", label="Go to Optimize")
