"""Side-by-side comparison of 2-4 prompts on one test split: scores with 95% CIs, paired McNemar tests against the
first prompt, a per-example output matrix (filterable to disagreements, paged), confusion matrices, CSV/JSON export.

All logic is pure (no Streamlit) so it is testable on its own; pages/4_Compare.py only gathers inputs and draws.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from optimizers import metrics
from optimizers.config import stored_roles
from optimizers.data import Example
from optimizers.evaluate import EvalResult, Evaluator
from optimizers.export import to_csv, to_json
from optimizers.result import stored_result
from optimizers.store import Store
from optimizers.task import Task

MAX_PROMPTS = 4
FILTERS = ("all", "correctness differs", "predictions differ", "all wrong")


@dataclass
class PromptChoice:
    label: str  # what the picker shows (our own string)
    text: str  # the prompt (untrusted)
    run_id: str | None = None
    which: str = "manual"  # best | initial | candidate | manual


def prompt_choices(store: Store, limit_runs: int = 50) -> list[PromptChoice]:
    """The best and initial prompt of every stored run (newest first), de-duplicated by text."""
    out: list[PromptChoice] = []
    seen: set[str] = set()
    for run in store.list_runs()[:limit_runs]:
        res = stored_result(run)
        pairs = [("best", res.best_prompt if res else None), ("initial", run["config"].get("initial_prompt"))]
        for which, text in pairs:
            if not text or text in seen:
                continue
            seen.add(text)
            words = " ".join(text.split())
            short = words if len(words) <= 60 else words[:59] + "…"
            out.append(PromptChoice(f"{run['id']} {which} ({run['optimizer']}, {run.get('data_name') or '?'}): {short}",
                                    text, run["id"], which))
    return out


def run_test_data(store: Store, run_id: str) -> tuple[Task, list[Example]]:
    """A run's stored test split and its Task (from the run config). ValueError says what is missing."""
    run = store.get_run(run_id)
    if run is None:
        raise ValueError(f"no run {run_id!r} in the store")
    try:
        task = Task(**run["config"]["task"])
    except Exception as e:
        raise ValueError(f"run {run_id} has no usable task in its config: {e}") from e
    test = store.load_splits(run_id).test
    if not test:
        raise ValueError(f"run {run_id} has no stored test split")
    return task, test


def run_task_model(store: Store, run_id: str) -> str | None:
    run = store.get_run(run_id)
    return stored_roles(run.get("config") or {})["task"].model if run else None


def validate_prompts(prompts: Sequence[str]) -> list[str]:
    """Problems with the chosen prompts (empty list: fine)."""
    problems = []
    ps = [p for p in prompts if p and p.strip()]
    if len(ps) < 2:
        problems.append("choose at least 2 prompts")
    if len(ps) > MAX_PROMPTS:
        problems.append(f"choose at most {MAX_PROMPTS} prompts")
    if len({p.strip() for p in ps}) < len(ps):
        problems.append("two of the chosen prompts are the same")
    return problems


def score_prompts(evaluator: Evaluator, prompts: Sequence[str], examples: Sequence[Example],
                  progress: Callable[[int], None] | None = None) -> list[EvalResult]:
    """Each prompt on the same examples, in the same order (the paired test needs it)."""
    return [evaluator.evaluate(p, examples, progress=progress) for p in prompts]


def labels_for(n: int) -> list[str]:
    return [f"P{i + 1}" for i in range(n)]


def summary_rows(prompts: Sequence[str], results: Sequence[EvalResult], alpha: float = 0.05) -> list[dict[str, Any]]:
    """Score with its 95% CI per prompt, and an exact McNemar test of each prompt against the first one."""
    labels = labels_for(len(results))
    base = results[0].correct if results else []
    rows = []
    for lab, p, r in zip(labels, prompts, results):
        row: dict[str, Any] = {"prompt": lab, "score": r.score, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n,
                               "correct": sum(r.correct), "metric": r.metric, "text": p}
        if lab == labels[0]:
            row.update({"vs": "", "only_first_right": None, "only_this_right": None, "p_value": None,
                        "significant": None})
        else:
            m = metrics.mcnemar(base, r.correct)
            row.update({"vs": labels[0], "only_first_right": m["a_only"], "only_this_right": m["b_only"],
                        "p_value": m["p_value"], "significant": m["p_value"] < alpha})
        rows.append(row)
    return rows


def input_text(ex: Example) -> str:
    if len(ex.fields) == 1:
        return str(next(iter(ex.fields.values())))
    return "\n".join(f"{k}: {v}" for k, v in ex.fields.items())


def matrix_rows(examples: Sequence[Example], results: Sequence[EvalResult]) -> list[dict[str, Any]]:
    """One row per example: input, gold, and each prompt's raw output, extracted answer and correctness."""
    labels = labels_for(len(results))
    rows = []
    for i, ex in enumerate(examples):
        row: dict[str, Any] = {"example_id": ex.id, "input": input_text(ex), "gold": ex.label}
        oks, preds = [], []
        for lab, r in zip(labels, results):
            p = r.predictions[i]
            if p.example_id != ex.id:
                raise ValueError("predictions are not aligned with the examples")
            row[f"{lab} output"] = p.raw
            row[f"{lab} answer"] = p.pred
            row[f"{lab} correct"] = bool(p.correct)
            oks.append(bool(p.correct))
            preds.append(p.pred)
        row["correctness_differs"] = len(set(oks)) > 1
        row["predictions_differ"] = len(set(preds)) > 1
        row["all_wrong"] = not any(oks)
        rows.append(row)
    return rows


def filter_rows(rows: Sequence[dict[str, Any]], mode: str = "all") -> list[dict[str, Any]]:
    if mode == "all":
        return list(rows)
    col = {"correctness differs": "correctness_differs", "predictions differ": "predictions_differ",
           "all wrong": "all_wrong"}.get(mode)
    if col is None:
        raise ValueError(f"unknown filter {mode!r}; choose one of {FILTERS}")
    return [r for r in rows if r[col]]


def page_rows(rows: Sequence[dict[str, Any]], page: int, size: int = 50) -> tuple[list[dict[str, Any]], int]:
    """Rows of 1-based `page` and the number of pages (at least 1)."""
    n_pages = max(1, -(-len(rows) // size))
    page = min(max(1, page), n_pages)
    return list(rows[(page - 1) * size: page * size]), n_pages


def confusion_table(result: EvalResult, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """gold (rows) x prediction (columns) counts; unparseable answers are the column '(none)'."""
    conf = metrics.confusion([p.pred for p in result.predictions], [p.gold for p in result.predictions])
    golds = list(labels) if labels else sorted(conf)
    for g in sorted(conf):
        if g not in golds:
            golds.append(g)
    preds = list(golds)
    for c in conf.values():
        for p in sorted(c):
            if p not in preds:
                preds.append(p)
    z = [[conf.get(g, {}).get(p, 0) for p in preds] for g in golds]
    return {"gold": golds, "pred": preds, "z": z}


def ci_figure(summary: Sequence[dict[str, Any]]):
    import plotly.graph_objects as go

    x = [r["prompt"] for r in summary]
    y = [r["score"] for r in summary]
    fig = go.Figure(go.Bar(x=x, y=y, error_y=dict(type="data", symmetric=False,
                                                  array=[r["ci_high"] - r["score"] for r in summary],
                                                  arrayminus=[r["score"] - r["ci_low"] for r in summary]),
                           text=[f"{v:.3f}" for v in y], textposition="outside"))
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=40, b=10), yaxis_range=[0, 1.08],
                      title=f"{summary[0]['metric'] if summary else 'score'} with 95% CI", yaxis_title="score")
    return fig


def confusion_figure(table: dict[str, Any], title: str):
    import plotly.graph_objects as go

    fig = go.Figure(go.Heatmap(z=table["z"], x=table["pred"], y=table["gold"], colorscale="Blues",
                               text=table["z"], texttemplate="%{text}", showscale=False))
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10), title=title, xaxis_title="prediction",
                      yaxis_title="gold", yaxis_autorange="reversed")
    return fig


def export_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV of the per-example matrix, every cell a spreadsheet would run neutralised (optimizers.export.safe_cell)."""
    return to_csv([{k: v for k, v in r.items()} for r in rows])


def export_json(prompts: Sequence[str], summary: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]],
                source: dict[str, Any]) -> str:
    return to_json({"source": source, "prompts": [{"label": lab, "text": p}
                                                   for lab, p in zip(labels_for(len(prompts)), prompts)],
                    "summary": list(summary), "examples": list(rows)})
