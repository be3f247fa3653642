"""The effectiveness benchmark in one command: for every bundled task with measured headroom, the headroom rows
(bench_headroom.py: the initial prompt, the best of three fixed expert instructions, the same with 8 demonstrations)
and each arm's run (bench_gain.py: an optimizer, with or without a demo search, 300 optimization calls, the test report
on top), each tested against the initial prompt on the same test examples. Writes gains.md and gains.png.

    nice -n 10 python bench/run_gains.py --out bench/results            # runs what is missing, resumes, then writes
    python bench/run_gains.py --out bench/results --table-only          # only the tables, from what was run

Every step resumes (bench_gain keeps each arm's run id; bench_headroom caches every reply).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from bench_gain import _cid, _correct  # noqa: E402
from run_all import render_png  # noqa: E402

from optimizers.metrics import wilson  # noqa: E402
from optimizers.store import Store  # noqa: E402

MODEL = "qwen2.5-coder-1.5b"  # the embedded default for both roles
TASKS = {"support_triage": "baseline,demos,gpo+demos,gpo,protegi+demos",
         "bbh_disambiguation_qa": "demos,gpo+demos"}


def sh(argv: list[str]) -> str:
    print("#", " ".join(argv), file=sys.stderr, flush=True)
    r = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        sys.stderr.write(r.stderr[-3000:])
    return r.stdout


def arm_scores(out: Path, arms: list[str]) -> dict[str, dict]:
    """arm -> test accuracy of its best prompt and of the initial one, with Wilson CIs (from the stored report)."""
    store = Store(out / "runs.sqlite") if (out / "runs.sqlite").exists() else None
    got = {}
    for arm in arms:
        f = out / arm / "result.json"
        if not f.exists() or store is None:
            continue
        r = json.loads(f.read_text())
        init = _correct(store, r["run_id"], _cid(r["initial_prompt"]))
        best = _correct(store, r["run_id"], r["best_id"]) if r["best_id"] != _cid(r["initial_prompt"]) else init
        ids = sorted(set(init) & set(best))
        if ids:
            k, ki = sum(best[i][0] for i in ids), sum(init[i][0] for i in ids)
            got[arm] = {"best": k / len(ids), "best_ci": wilson(k, len(ids)), "initial": ki / len(ids),
                        "initial_ci": wilson(ki, len(ids))}
    return got


def figure(scores: dict[str, dict[str, dict]], png: Path) -> str | None:
    import plotly.graph_objects as go

    fig = go.Figure()
    for task, arms in scores.items():
        if not arms:
            continue
        first = next(iter(arms.values()))
        xs = ["initial", *arms]
        ys = [first["initial"], *(a["best"] for a in arms.values())]
        cis = [first["initial_ci"], *(a["best_ci"] for a in arms.values())]
        fig.add_bar(name=task, x=[f"{task}<br>{x}" for x in xs], y=ys,
                    error_y=dict(type="data", symmetric=False, array=[hi - y for y, (_, hi) in zip(ys, cis)],
                                 arrayminus=[y - lo for y, (lo, _) in zip(ys, cis)]))
    if not fig.data:
        return None
    fig.update_layout(width=1200, height=520, template="plotly_white", showlegend=True,
                      yaxis=dict(title="test accuracy", range=[0, 1.05]),
                      title=f"Best prompt's test accuracy per arm ({MODEL} in both roles, 300 optimization calls; "
                            "95% Wilson CI)")
    return render_png(fig, png, 1220, 540)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--table-only", action="store_true")
    a = ap.parse_args()
    tasks = [t for t in a.tasks.split(",") if t]
    runs = ROOT / "bench" / "runs"
    parts = ["# Gains on the tasks with headroom\n",
             f"Task and optimizer model: `{MODEL}` (the embedded default), instruction as the system message, "
             "temperature 0 for the task. Regenerate: `python bench/run_gains.py --out bench/results` "
             "(resumes; `--table-only` rewrites this file from what was run).\n",
             "## Headroom (what was there to find)\n",
             sh(["bench/bench_headroom.py", "--models", MODEL, "--tasks", ",".join(tasks),
                 *(["--cached-only"] if a.table_only else [])]).strip(), ""]
    scores = {}
    for task in tasks:
        out = runs / f"gain-{task}"
        argv = ["bench/bench_gain.py", "--task", task, "--arms", TASKS.get(task, "demos,gpo+demos"), "--model", MODEL,
                "--optimizer-model", MODEL, "--out", str(out)]
        parts += [f"## {task}\n", sh(argv + (["--table-only"] if a.table_only else [])).strip(), ""]
        scores[task] = arm_scores(out, TASKS.get(task, "demos,gpo+demos").split(","))
    a.out.mkdir(parents=True, exist_ok=True)
    png = figure(scores, a.out / "gains.png")
    if png:
        parts += [f"![gains]({png})", ""]
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "gains.md").write_text("\n".join(parts) + "\n")
    print(f"wrote {a.out / 'gains.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
