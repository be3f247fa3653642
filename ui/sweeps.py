"""The Sweeps page's projections: the sweep text a form builds, the grid a text makes, each cell's progress and the
leaderboard as tables. Pure functions of the text and the store (no Streamlit), so they are tested on real sweeps."""

from __future__ import annotations

import time
from typing import Any

import yaml

from optimizers.leaderboard import Row
from optimizers.status import STALE_S, RunStatus, observed_status
from optimizers.sweep import check, iter_cells, parse

# The example and the form's fixed parts: the quick start's set, caps and layout (app.py), with a budget that pays
# for two demo sets on dev and the report on test (both prompts), so every cell reaches the leaderboard.
SPLIT = {"max_train": 48, "max_dev": 20, "max_test": 60}
TASK = {"layout": "system"}
EXAMPLE = {"name": "triage-demos", "data": "support_triage",
           "optimizers": {"demos": {"k": [4, 8], "trials": 2}, "baseline": {}},
           "seeds": 2, "calls": 200, "total": 1200, "parallel": 2}


def sweep_yaml(name: str, data: str, optimizers: dict[str, dict[str, Any]], seeds: int, calls: int, total: int,
               parallel: int, endpoints: dict[str, Any] | None = None) -> str:
    """A sweep file's text: `seeds` seeds from 0, `calls` per run, `total` for the whole sweep (0: no cap);
    `endpoints` adds base_url / task_models / ... (the sidebar's choices), never a key."""
    spec: dict[str, Any] = {"name": name, "data": [data], "optimizers": optimizers,
                            "seeds": list(range(max(1, seeds))), **(endpoints or {}), "split": dict(SPLIT),
                            "task": dict(TASK), "budget": {"max_calls": calls}}
    if total:
        spec["max_total"] = {"max_calls": total}
    spec["parallel"] = parallel
    return yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, width=100)


def endpoint_settings(task_url: str | None, task_model: str | None, opt_url: str | None,
                      opt_model: str | None) -> dict[str, Any]:
    """The sweep settings that send its runs where the sidebar points (only the fields set there)."""
    out: dict[str, Any] = {}
    if task_url:
        out["base_url"] = task_url
    if opt_url:
        out["optimizer_base_url"] = opt_url
    if task_model:
        out["task_models"] = [task_model]
    if opt_model:
        out["optimizer_models"] = [opt_model]
    return out


def grid_summary(text: str) -> str:
    """What the sweep would run, in one line; raises SweepError (naming the line) when it cannot run."""
    spec, lines = parse(text, "the sweep")
    cells = check(spec, lines, "the sweep")
    configs = len({c.config_key for c in cells})
    msg = (f"{len(cells)} runs ({configs} configuration{'s' * (configs != 1)} x {len(spec.seeds)} "
           f"seed{'s' * (len(spec.seeds) != 1)}), each within {spec.budget.describe()}, {spec.parallel} at a time")
    calls = spec.budget.max_calls
    if calls is not None:
        msg += f"; at most {calls * len(cells):,} calls in all"
    if spec.max_total is not None:
        msg += f" (the sweep's cap: {spec.max_total.describe()})"
    msg += "."
    if spec.parallel > 1 and spec.base_url is None:
        msg += (f" Note: the task model is the embedded one, which answers one request at a time, so {spec.parallel} "
                "runs at once only take turns and evict each other's cached prompt prefix (measured: a 2 x 2 sweep "
                "took 633 s at 2, 331 s at 1); `parallel: 1` is faster here.")
    return msg


def runs_at_once(endpoints: dict[str, Any]) -> int:
    """The form's default: one run at a time on the embedded model (see grid_summary), the example's otherwise."""
    return EXAMPLE["parallel"] if endpoints.get("base_url") else 1


def knobs_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(params.items())) or "(defaults)"


def _data_name(data: Any) -> str:
    return data if isinstance(data, str) else str((data or {}).get("file"))


def cell_rows(store, sid: str) -> list[dict[str, Any]]:
    """One row per cell of a stored sweep: what it is, its run and status, calls so far (the worker's live spend, or
    the result's), the best score so far (its last step), the best prompt's test score once finished, and when its run
    was last written (`updated`, not shown)."""
    rows = []
    for cell, run in iter_cells(store, sid):
        status = observed_status(run).value if run else "not started"
        calls = best = test = None
        if run:
            res = run.get("result") or {}
            calls = res.get("calls") if res.get("calls") is not None else (run.get("live") or {}).get("calls", 0)
            step = store.last_event(run["id"], "step_done")
            best = step.best_score if step is not None else None
            test = (((res.get("scores") or {}).get("best") or {}).get("test") or {}).get("score")
        rows.append({"optimizer": cell["optimizer"], "knobs": knobs_text(cell["params"]), "seed": cell["seed"],
                     "data": _data_name(cell["data"]), "run": run["id"] if run else None, "status": status,
                     "calls": calls, "best so far": best, "test": test,
                     "updated": max(run.get("heartbeat") or 0, run.get("updated") or 0) if run else None})
    return rows


def finished(rows: list[dict[str, Any]]) -> int:
    """Cells whose run has ended (any way: done, budget, stopped, failed, crashed)."""
    return sum(1 for r in rows if r["run"] and not RunStatus(r["status"]).live)


def state(rows: list[dict[str, Any]], since: float, now: float | None = None) -> str:
    """'running' while a cell runs, or while cells wait and the sweep's worker started (`since`) or wrote within
    STALE_S (it creates the runs, then starts them `parallel` at a time); 'stalled' when cells wait and nothing has
    been written for longer (the worker is gone); else 'ended'. The page polls while running, offers to continue
    otherwise."""
    if any(r["status"] == RunStatus.RUNNING for r in rows):
        return "running"
    if not any(r["run"] is None or r["status"] == RunStatus.CREATED for r in rows):
        return "ended"
    last = max([since, *(r["updated"] for r in rows if r["updated"])])
    return "running" if (now or time.time()) - last < STALE_S else "stalled"


def unfinished(rows: list[dict[str, Any]]) -> int:
    """Cells a continued sweep would run: not started, waiting, failed, paused or crashed."""
    return sum(1 for r in rows if r["run"] is None or not RunStatus(r["status"]).ok)


def leaderboard_table(rows: list[Row]) -> list[dict[str, Any]]:
    """The leaderboard as the page shows it (the downloads carry every field)."""
    def ci(r: Row) -> str:
        return "" if r.test_mean is None else f"[{r.test_low:.3f}, {r.test_high:.3f}]"

    return [{"configuration": r.config, "seeds": f"{r.seeds}/{r.runs}", "test mean": r.test_mean,
             "95% CI": ci(r), "initial": r.initial_mean, "gain": r.gain, "paired p": r.p_value,
             "calls / run": r.calls, "cost $": r.cost,
             "statuses": ", ".join(f"{k} {v}" for k, v in sorted(r.statuses.items()))} for r in rows]

