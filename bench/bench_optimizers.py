"""Effectiveness: each optimizer on each bundled task with a fixed seed and the same budget of LLM calls, through the
CLI contract (`python -m optimizers run`), against the embedded default or any endpoint (OPENAI_BASE_URL / --base-url).

For every run: initial vs best prompt on the held-out test split with 95% CIs, optimization calls and tokens, wall
time, and the calls needed to reach 90% of the final gain on the selection split (train or dev, from the stored
step_done and usage events: the test split is scored only for the initial and the final prompt).

    python bench/bench_optimizers.py [--tasks sentiment] [--optimizers ape,protegi,opro,pe2,gpo] [--max-calls 300]
                                     [--seed 0] [--base-url URL --model M --optimizer-model M2] [--paper-defaults]

By default each optimizer gets "budget-sized" knobs (below) so a ~300-call budget reaches its selection step on a
small model; --paper-defaults runs the papers' settings, which the budget then cuts short.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from optimizers.config import SplitConfig  # noqa: E402
from optimizers.prepare import prepare_task  # noqa: E402
from optimizers.result import RunResult, Score  # noqa: E402

BUDGET_KNOBS: dict[str, dict[str, object]] = {
    "ape": {"num_subsamples": 3, "num_prompts_per_subsample": 3},
    "protegi": {"minibatch_size": 16, "n_gradients": 2, "mc_samples_per_step": 1, "eval_rounds": 4,
                "eval_prompts_per_round": 4, "samples_per_eval": 8},
    "opro": {"num_generated_instructions": 4},
    "pe2": {"n_parents": 2, "proposals_per_parent": 2},
    "gpo": {"num_candidates": 4},
    "baseline": {},
}


SPLIT_CAPS = {"max_train": 126, "max_dev": 63, "max_test": 126}


def calls_to_90(db: Path, run_id: str) -> tuple[int | None, float | None, float | None]:
    """(calls when the best selection score first reached 90% of its final gain, first score, final score)."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT kind, data FROM events WHERE run_id=? AND kind IN ('step_done','usage') "
                           "ORDER BY seq", (run_id,)).fetchall()
    finally:
        con.close()
    points, best = [], None
    for kind, data in rows:
        d = json.loads(data)
        if kind == "step_done":
            best = d["best_score"] if best is None else max(best, d["best_score"])
        elif best is not None:
            points.append((d["calls"], best))
    if not points:
        return None, None, None
    return first_reaching_90(points), points[0][1], points[-1][1]


def first_reaching_90(points: list[tuple[int, float]]) -> int | None:
    """First call count whose score reached 90% of the gain from the first to the last point (None: no gain)."""
    first, final = points[0][1], points[-1][1]
    if final <= first:
        return None
    target = first + 0.9 * (final - first)
    return next(c for c, s in points if s >= target - 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="sentiment")
    ap.add_argument("--optimizers", default="ape,protegi,opro,pe2,gpo")
    ap.add_argument("--max-calls", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base-url")
    ap.add_argument("--model")
    ap.add_argument("--optimizer-model")
    ap.add_argument("--paper-defaults", action="store_true")
    # Split caps: a no-op on sentiment and the BBH sets (their 0.5/0.25/0.25 splits are smaller); ETHOS (998 rows) and
    # LIAR (600) are subsampled (stratified) to the BBH sizes so a 300-call budget buys the same number of steps.
    ap.add_argument("--max-train", type=int, default=SPLIT_CAPS["max_train"])
    ap.add_argument("--max-dev", type=int, default=SPLIT_CAPS["max_dev"])
    ap.add_argument("--max-test", type=int, default=SPLIT_CAPS["max_test"])
    ap.add_argument("--out", default=None, help="folder for each run's result.json (default: a temp folder)")
    a = ap.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="promptopt-bench-opt-"))
    db = out / "runs.sqlite"
    rows, records = [], []
    for task in a.tasks.split(","):
        for name in a.optimizers.split(","):
            # The run's cap covers its report too: the optimization gets max_calls, the report on test (initial and
            # best prompt: 2 x n_test, held back from the start) comes on top, as DSPy's evaluation does.
            n_test = len(prepare_task(task, split=SplitConfig(max_train=a.max_train, max_dev=a.max_dev,
                                                              max_test=a.max_test)).splits.test)
            args = [sys.executable, "-m", "optimizers", "run", "--data", task, "--optimizer", name,
                    *(["--no-then-demos"] if name != "baseline" else []),  # the optimizer alone
                    "--max-calls", str(a.max_calls + 2 * n_test), "--report-splits", "test",
                    "--seed", str(a.seed), "--db", str(db),
                    "--max-train", str(a.max_train), "--max-dev", str(a.max_dev), "--max-test", str(a.max_test),
                    "--out", str(out / f"{task}-{name}"), "--json",
                    # A fresh response cache per run: every optimizer pays for its own calls (with a shared cache the
                    # second optimizer would get the initial prompt's scoring for free, outside its budget). Repeats
                    # inside one run are still answered by the cache, as in the product.
                    "--cache-dir", str(out / "cache" / f"{task}-{name}")]
            for flag, v in (("--base-url", a.base_url), ("--model", a.model), ("--optimizer-model", a.optimizer_model)):
                if v:
                    args += [flag, v]
            knobs = {} if a.paper_defaults else BUDGET_KNOBS.get(name, {})
            for k, v in knobs.items():
                args += ["--param", f"{k}={json.dumps(v)}"]
            t0 = time.perf_counter()
            r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if r.returncode and not (out / f"{task}-{name}" / "result.json").exists():
                records.append({"task": task, "optimizer": name, "status": "error",
                                "reason": r.stderr.strip().splitlines()[-1][:300] if r.stderr.strip() else ""})
                rows.append(f"| {task} | {name} | error: {r.stderr.strip().splitlines()[-1][:150]} |||||||")
                print(rows[-1], file=sys.stderr, flush=True)
                continue
            res = RunResult.model_validate_json((out / f"{task}-{name}" / "result.json").read_text())
            i, b = res.scores["initial"].get("test"), res.scores["best"].get("test")
            opt = res.optimization_usage
            c90, first, final = calls_to_90(db, res.run_id)

            def fmt(s: Score | None) -> str:
                return f"{s.score:.3f} [{s.ci[0]:.2f}, {s.ci[1]:.2f}]" if s else "-"

            sel = f"{first:.3f} -> {final:.3f}" if first is not None else "-"
            records.append({"task": task, "optimizer": name, "run_id": res.run_id,
                            "initial": i.model_dump() if i else None, "best": b.model_dump() if b else None,
                            "selection": [first, final],
                            "selection_split": res.selection_split, "calls": opt.calls,
                            "tokens": opt.prompt_tokens + opt.completion_tokens,
                            "cache_hits": opt.cache_hits, "calls_to_90": c90,
                            # the optimization's own time (as DSPy's compile() is timed), without the process start
                            # and the report's scoring of the initial and best prompts on every split
                            "wall": res.wall_time_s, "wall_process": wall,
                            "status": res.status.value, "best_prompt": res.best_prompt,
                            "knobs": knobs})
            rows.append(f"| {task} | {name} | {fmt(i)} | {fmt(b)} | {i.n if i else '-'} | {sel} "
                        f"({res.selection_split}) | {opt.calls} | "
                        f"{opt.prompt_tokens + opt.completion_tokens:,} | {c90 if c90 is not None else '-'} "
                        f"| {res.wall_time_s:.0f} ({wall:.0f}) | {res.status} |")
            print(rows[-1], file=sys.stderr, flush=True)
    print(f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
          f"{time.strftime('%Y-%m-%d')}; budget {a.max_calls} calls, seed {a.seed}, "
          f"split caps train {a.max_train} / dev {a.max_dev} / test {a.max_test}, "
          f"{'paper defaults' if a.paper_defaults else 'budget-sized knobs (bench/bench_optimizers.py)'}; "
          f"endpoint: {a.base_url or os.environ.get('OPENAI_BASE_URL') or 'embedded default'}")
    print()
    print("| task | optimizer | test initial [95% CI] | test best [95% CI] | n test | best selection score | "
          "opt. calls | opt. tokens | calls to 90% of gain | optimization wall s (whole process) | status |")
    print("|---|---|---|---|---:|---|---:|---:|---:|---:|---|")
    print("\n".join(rows))
    (out / "summary.json").write_text(json.dumps(records, indent=2, default=str))


if __name__ == "__main__":
    main()
