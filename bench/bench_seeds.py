"""Does a gain survive another seed? The same arm, task, split, models and calls, rerun with other optimizer seeds
(the split stays seed 0, so every seed's best prompt is tested on the same test examples), from the committed
records of bench_gain.py: seed 0 is bench/results/records/gain-<task>/, seed N gain-<task>-s<N>/.

    nice -n 10 python bench/bench_gain.py --task helpdesk_queues --arms baseline,demos,gpo,gpo+demos \
        --model qwen2.5-coder-1.5b --optimizer-model qwen2.5-coder-1.5b --seed 1 --out bench/runs/gain-helpdesk_queues-s1
    python bench/bench_seeds.py --tasks helpdesk_queues,support_triage,request_routing --arms demos,gpo,gpo+demos

Prints one row per task and arm: each seed's test accuracy, gained / lost against the initial prompt and the exact
McNemar p, then the mean over seeds and how many seeds were significant; and, per seed, each pair of arms against each
other on the same test examples (does the optimizer add to the demo search?).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_gain  # noqa: E402

from optimizers.metrics import mcnemar  # noqa: E402


def seeds_of(task: str) -> list[int]:
    """The seeds with a records folder for this task: 0 is gain-<task>, N is gain-<task>-s<N>."""
    records = bench_gain.RECORDS
    found = [0] if (records / f"gain-{task}").is_dir() else []
    for d in records.glob(f"gain-{task}-s*"):
        if d.name.rsplit("-s", 1)[1].isdigit():
            found.append(int(d.name.rsplit("-s", 1)[1]))
    return sorted(found)


def record(task: str, arm: str, seed: int) -> dict | None:
    out = Path(f"bench/runs/gain-{task}" + (f"-s{seed}" if seed else ""))
    return bench_gain.arm_record(ROOT / out, arm)


def versus(a: dict[str, tuple[bool, str | None]], b: dict[str, tuple[bool, str | None]]) -> tuple[int, int, float]:
    """(a right where b is wrong, the reverse, exact McNemar p) on the test examples both have."""
    ids = sorted(set(a) & set(b))
    m = mcnemar([a[i][0] for i in ids], [b[i][0] for i in ids])
    return m["a_only"], m["b_only"], m["p_value"]


def cell(r: dict | None) -> tuple[str, float | None, bool]:
    if r is None:
        return "not run", None, False
    best, init = r["best_test"], r["initial_test"]
    ids = sorted(set(best) & set(init))
    if not ids:
        return f"{r['status']}: no test report", None, False
    acc = sum(best[i][0] for i in ids) / len(ids)
    g, lost, p = versus(best, init)
    return f"{acc:.3f} ({g} / {lost}, p {p:.2g})", acc, p < 0.05 and g > lost


def table(tasks: list[str], arms: list[str]) -> str:
    seeds = sorted({s for t in tasks for s in seeds_of(t)})
    head = "| task | arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | significant gains |"
    rows = [head, "|---|---|" + "---|" * len(seeds) + "---:|---|"]
    pairs = []
    for t in tasks:
        inits = set()
        for arm in arms:
            recs = {s: record(t, arm, s) for s in seeds}
            cells = {s: cell(r) for s, r in recs.items()}
            accs = [c[1] for c in cells.values() if c[1] is not None]
            wins = sum(c[2] for c in cells.values())
            mean = f"{sum(accs) / len(accs):.3f}" if accs else ""
            rows.append(f"| {t} | {arm} | " + " | ".join(cells[s][0] for s in seeds) +
                        f" | {mean} | {wins} of {len(accs)} |")
            inits |= {round(sum(v[0] for v in r["initial_test"].values()) / len(r["initial_test"]), 3)
                      for r in recs.values() if r and r["initial_test"]}
        if len(inits) > 1:
            rows.append(f"| {t} | (the initial prompt scored {sorted(inits)} across runs: replies differ) |" +
                        " |" * (len(seeds) + 2))
        for s in seeds:
            for i, x in enumerate(arms):
                for y in arms[i + 1:]:
                    rx, ry = record(t, x, s), record(t, y, s)
                    if rx and ry and rx["best_test"] and ry["best_test"]:
                        g, lost, p = versus(rx["best_test"], ry["best_test"])
                        pairs.append(f"| {t} | {s} | {x} vs {y} | {g} / {lost} | {p:.2g} |")
    out = "\n".join(rows)
    if pairs:
        out += ("\n\n| task | seed | arms | right only in the first / only in the second | McNemar p |\n"
                "|---|---:|---|---|---:|\n" + "\n".join(pairs))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", required=True, help="comma-separated bundled task names")
    ap.add_argument("--arms", default="demos,gpo,gpo+demos")
    a = ap.parse_args()
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    arms = [x.strip() for x in a.arms.split(",") if x.strip()]
    print(f"Command: `python bench/bench_seeds.py --tasks {a.tasks} --arms {a.arms}`\n")
    print(table(tasks, arms))


if __name__ == "__main__":
    main()
