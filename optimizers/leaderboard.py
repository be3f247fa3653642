"""A sweep read back: per configuration (a cell without its seed), the test score of each seed's best prompt, their
mean with a 95% interval across seeds, a paired test against the initial prompt on the same test examples, calls and
cost; and per swept knob, the mean test score by value (the other knobs averaged). Read from the store only."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from .base import candidate_id
from .metrics import wilson
from .sweep import iter_cells


@dataclass
class Row:
    config: str  # "gpo decay=linear momentum_selection=recency" (+ data and models when they vary)
    cell: dict[str, Any]  # the configuration's cell without its seed
    seeds: int  # runs with a test report
    runs: int  # runs in the grid for this configuration
    test_mean: float | None
    test_low: float | None
    test_high: float | None
    initial_mean: float | None
    gain: float | None  # mean of (best - initial) over seeds
    p_value: float | None  # Wilcoxon signed-rank over test examples of the seed-averaged correctness difference
    calls: float | None  # mean calls per run (optimization and report)
    cost: float  # total USD over the configuration's runs
    statuses: dict[str, int]
    run_ids: list[str]


def _interval(scores: list[float], n_test: int) -> tuple[float, float]:
    """95% interval of the mean across seeds (Student t); with one seed, that run's Wilson interval on test."""
    if len(scores) == 1:
        return wilson(round(scores[0] * n_test), n_test) if n_test else (scores[0], scores[0])
    from scipy import stats

    m = sum(scores) / len(scores)
    sd = math.sqrt(sum((x - m) ** 2 for x in scores) / (len(scores) - 1))
    h = stats.t.ppf(0.975, len(scores) - 1) * sd / math.sqrt(len(scores))
    return max(0.0, m - h), min(1.0, m + h)


def _paired_p(best_by_seed: list[dict[str, bool]], initial: dict[str, bool]) -> float | None:
    """Wilcoxon signed-rank over the test examples every seed scored: each example's mean correctness over the seeds'
    best prompts minus the initial prompt's (the examples, not the seeds, are the independent units)."""
    ids = sorted(set(initial).intersection(*best_by_seed)) if best_by_seed else []
    if not ids:
        return None
    diffs = [sum(b[i] for b in best_by_seed) / len(best_by_seed) - initial[i] for i in ids]
    if not any(diffs):
        return 1.0
    from scipy import stats

    return float(stats.wilcoxon(diffs, zero_method="wilcox").pvalue)


def _label(cell: dict[str, Any], varying: set[str]) -> str:
    parts = [cell["optimizer"]] + [f"{k}={v}" for k, v in sorted(cell["params"].items())]
    for k in ("data", "task_model", "optimizer_model"):
        if k in varying:
            v = cell[k] if not isinstance(cell[k], dict) else cell[k].get("file")
            parts.append(f"{k}={v}")
    return " ".join(map(str, parts))


def _test_correct(store, run_id: str, cand: str) -> dict[str, bool]:
    return {p["example_id"]: bool(p["correct"]) for p in store.predictions(run_id, cand, "test")}


def leaderboard(store, sweep_id: str) -> list[Row]:
    cells = list(iter_cells(store, sweep_id))
    varying = {k for k in ("data", "task_model", "optimizer_model")
               if len({json.dumps(c[k], sort_keys=True) for c, _ in cells}) > 1}
    groups: dict[str, list[tuple[dict, dict | None]]] = defaultdict(list)
    for cell, run in cells:
        conf = {k: v for k, v in cell.items() if k != "seed"}
        groups[json.dumps(conf, sort_keys=True)].append((cell, run))
    rows = []
    for key, members in groups.items():
        conf = json.loads(key)
        best_scores, init_scores, best_sets, init_set, calls, cost = [], [], [], None, [], 0.0
        statuses: dict[str, int] = defaultdict(int)
        n_test = 0
        for _, run in members:
            if run is None:
                statuses["not started"] += 1
                continue
            statuses[run["status"]] += 1
            res = run.get("result") or {}
            cost += float(res.get("cost") or 0.0)
            if res.get("calls") is not None:
                calls.append(res["calls"])
            b = ((res.get("scores") or {}).get("best") or {}).get("test")
            i = ((res.get("scores") or {}).get("initial") or {}).get("test")
            if not b or not i:
                continue
            best_scores.append(b["score"])
            init_scores.append(i["score"])
            n_test = b["n"]
            init_id = candidate_id(res["initial_prompt"])
            best_sets.append(_test_correct(store, run["id"], res["best_id"]))
            init_set = init_set or _test_correct(store, run["id"], init_id)
        lo = hi = mean = gain = p = None
        if best_scores:
            mean = sum(best_scores) / len(best_scores)
            lo, hi = _interval(best_scores, n_test)
            gain = mean - sum(init_scores) / len(init_scores)
            p = _paired_p(best_sets, init_set or {})
        rows.append(Row(_label(conf, varying), conf, len(best_scores), len(members), mean, lo, hi,
                        (sum(init_scores) / len(init_scores)) if init_scores else None, gain, p,
                        (sum(calls) / len(calls)) if calls else None, cost, dict(statuses),
                        [r["id"] for _, r in members if r is not None]))
    rows.sort(key=lambda r: (r.test_mean is None, -(r.test_mean or 0.0)))
    return rows


def knob_effects(store, sweep_id: str) -> list[dict[str, Any]]:
    """Per swept knob (one with two or more values) and value: the mean test score of the best prompts of every run
    with that value, the other knobs averaged over; 'optimizer', data and models count as knobs when they vary."""
    scored: list[tuple[dict, float]] = []
    values: dict[str, set[str]] = defaultdict(set)
    for cell, run in iter_cells(store, sweep_id):
        flat = {"optimizer": cell["optimizer"], **{f"{cell['optimizer']}.{k}": v for k, v in cell["params"].items()},
                **{k: json.dumps(cell[k]) if isinstance(cell[k], dict) else cell[k]
                   for k in ("data", "task_model", "optimizer_model")}}
        for k, v in flat.items():
            values[k].add(json.dumps(v, sort_keys=True, default=str))
        b = (((run or {}).get("result") or {}).get("scores") or {}).get("best", {}).get("test")
        if b:
            scored.append((flat, b["score"]))
    out = []
    for knob, vals in sorted(values.items()):
        if len(vals) < 2:
            continue
        for v in sorted(vals):
            got = [s for flat, s in scored if json.dumps(flat.get(knob), sort_keys=True, default=str) == v]
            out.append({"knob": knob, "value": json.loads(v), "runs": len(got),
                        "test_mean": (sum(got) / len(got)) if got else None})
    return out


def as_records(rows: list[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def as_csv(rows: list[Row]) -> str:
    """The leaderboard as CSV (`sweep-report --format csv`, the dashboard's download): lists and dicts as JSON."""
    import csv
    import io

    recs = as_records(rows)
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=[k for k in recs[0] if k != "cell"] if recs else ["config"],
                       extrasaction="ignore")
    w.writeheader()
    for r in recs:
        w.writerow({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.items()})
    return out.getvalue()


def as_json(store, sweep_id: str, rows: list[Row] | None = None) -> str:
    """The leaderboard and the per-knob effects as JSON (`sweep-report --format json`, the dashboard's download)."""
    rows = leaderboard(store, sweep_id) if rows is None else rows
    return json.dumps({"sweep_id": sweep_id, "leaderboard": as_records(rows), "knobs": knob_effects(store, sweep_id)},
                      default=str)


def markdown(rows: list[Row]) -> str:
    def f(x: float | None, spec: str = ".3f") -> str:
        return "-" if x is None else format(x, spec)

    out = ["| configuration | seeds | test (best prompt) mean [95% CI] | initial | gain | paired p | calls / run | "
           "cost $ |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ci = f"[{f(r.test_low, '.2f')}, {f(r.test_high, '.2f')}]" if r.test_mean is not None else ""
        out.append(f"| {r.config} | {r.seeds}/{r.runs} | {f(r.test_mean)} {ci} | {f(r.initial_mean)} | "
                   f"{'-' if r.gain is None else f'{r.gain:+.3f}'} | {f(r.p_value, '.2g')} | {f(r.calls, '.0f')} | "
                   f"{r.cost:.4f} |")
    return "\n".join(out)
