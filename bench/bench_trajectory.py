"""Calls to 90% of the final *test* gain: every prompt that was ever best-so-far in a benchmarked run, scored on the
held-out test split after the run (outside its budget), placed at the call count where it became best.

bench_optimizers.py reports "calls to 90%" on the selection split (the only score an optimizer sees while it runs);
selection gains often do not carry over to test, so this asks the question on the split the final score comes from.
Each run is scored through its own response cache, so the initial and final prompts (already scored on test by the
run's report) cost nothing; only intermediate best prompts are new calls.

    python bench/bench_trajectory.py OUT [--base-url URL --model M]     # OUT: a bench_optimizers.py --out folder
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_optimizers import first_reaching_90  # noqa: E402  (same definition on both splits)

from optimizers.backend import open_backend  # noqa: E402
from optimizers.evaluate import Evaluator  # noqa: E402
from optimizers.llm import LLM, Meter, ResponseCache  # noqa: E402
from optimizers.store import Store  # noqa: E402
from ui.compare import run_task_model, run_test_data  # noqa: E402


def best_prompts(store: Store, run_id: str) -> list[tuple[int, str, str]]:
    """(optimization calls when it became best, candidate id, prompt) for each best-so-far change, in order."""
    prompts = {c["candidate_id"]: c["text"] for c in store.candidates(run_id)}
    out: list[tuple[int, str, str]] = []
    pending, calls = None, 0
    for _, ev in store.events(run_id, kinds=["step_done", "usage"]):
        if ev.kind == "usage":
            calls = ev.calls
            if pending:
                out.append((calls, pending, prompts[pending]))
                pending = None
        elif (not out or ev.best_id != out[-1][1]) and ev.best_id in prompts and ev.best_id != pending:
            pending = ev.best_id
    if pending:
        out.append((calls, pending, prompts[pending]))
    return out


def run_id_of(store: Store, rec: dict) -> str:
    """A summary row's run; for summaries written before run_id was recorded, the task's last run of that optimizer
    in the store."""
    return rec.get("run_id") or next(r["id"] for r in sorted(store.list_runs(), key=lambda r: r["created"], reverse=True)
                                     if r["optimizer"] == rec["optimizer"] and r["data_name"] == rec["task"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--base-url")
    ap.add_argument("--model")
    a = ap.parse_args()
    summary = json.loads((a.out / "summary.json").read_text())
    store = Store(a.out / "runs.sqlite")
    backend = open_backend(a.base_url)
    rows, records = [], []
    for rec in summary:
        if rec.get("status") == "error":
            continue
        rid = rec["run_id"] = run_id_of(store, rec)
        task, test = run_test_data(store, rid)
        meter = Meter()
        cache = ResponseCache(a.out / "cache" / f"{rec['task']}-{rec['optimizer']}")
        model = a.model or run_task_model(store, rid) or backend.model
        ev = Evaluator(LLM(backend.endpoint, model, role="task", meter=meter, cache=cache), task)
        traj = best_prompts(store, rid)
        points = [(c, ev.evaluate(p, test).score) for c, _, p in traj]
        c90 = first_reaching_90(points) if points else None
        spent = meter.snapshot()
        records.append({"task": rec["task"], "optimizer": rec["optimizer"], "points": points, "calls_to_90_test": c90,
                        "scoring_calls": spent.calls, "scoring_cache_hits": spent.cache_hits})
        curve = " -> ".join(f"{s:.3f}@{c}" for c, s in points)
        rows.append(f"| {rec['task']} | {rec['optimizer']} | {len(test)} | {curve} | "
                    f"{c90 if c90 is not None else '-'} | {spent.calls} ({spent.cache_hits} cached) |")
        print(rows[-1], file=sys.stderr, flush=True)
    print("| task | optimizer | n test | test score of the best-so-far prompt @ optimization calls | calls to 90% of "
          "test gain | scoring calls (cache hits) |")
    print("|---|---|---:|---|---:|---|")
    print("\n".join(rows))
    (a.out / "trajectory.json").write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
