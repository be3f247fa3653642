"""How often does a selection end in a tie, and what does breaking it by macro-F1 change? A demo search scores each
set on the same 40 dev examples, so sets right on the same count tie; GPO under a 300-call cap scores its trajectory
on 22-24. The earliest of equals was kept until session 25; tie_break=macro_f1 keeps the one with the higher macro-F1
on the same examples. This reads finished bench_gain runs (their stores, no call) and records, per run and phase:
the candidates tied at the top, their macro-F1, and what each rule keeps.

    python bench/bench_ties.py --runs bench/runs/gain-helpdesk_queues,bench/runs/gain-helpdesk_queues-s1 \\
        --arms demos,gpo+demos
    python bench/bench_ties.py --runs ... --arms ... --table-only   # from bench/results/records/ties/

Phases: `demos` (the demo search: its starting instruction and every set it scored), `gpo` (GPO's trajectory: the
initial prompt, the scored rules of its rule start, then the prompt each step moved to; what its best is chosen
from). Which of the two a run's final pick came from is the run's own tie_break; the table shows both rules.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from optimizers.metrics import macro_f1  # noqa: E402
from optimizers.store import Store  # noqa: E402

RECORDS = ROOT / "bench" / "results" / "records" / "ties"


def phase_members(store: Store, run_id: str) -> dict[str, list[str]]:
    """phase -> candidate ids compared at its final selection, in the order the run met them."""
    cands = store.candidates(run_id)
    out: dict[str, list[str]] = {}
    demos = [c for c in cands if c["origin"] == "demos"]
    if demos:
        base = demos[0]["parents"][0]
        out["demos"] = [base, *(c["candidate_id"] for c in demos if c["candidate_id"] != base)]
    optimizer = store.get_run(run_id)["optimizer"]
    if optimizer == "gpo":
        init = next(c["candidate_id"] for c in cands if c["origin"] == "initial")
        rules = [c["candidate_id"] for c in cands if c["origin"] == "rule" and c["step"] == 0]
        moved = [e.survivors[0] for _, e in store.events(run_id, kinds=["selection"])
                 if e.step >= 1 and e.survivors and not e.method.startswith("demo")]
        out["gpo"] = list(dict.fromkeys([init, *rules, *moved]))
    return out


def census(store: Store, run_id: str, labels: list[str]) -> dict[str, dict]:
    """phase -> its selection n, the top score, and each tied candidate's macro-F1 (answers the run stored)."""
    scores = [r for r in store.scores(run_id) if r["split"] == "dev"]
    out = {}
    for phase, members in phase_members(store, run_id).items():
        by_n: dict[int, dict[str, float]] = {}
        for r in scores:
            if r["candidate_id"] in members:
                by_n.setdefault(r["n"], {})[r["candidate_id"]] = r["score"]
        n = max(by_n, key=lambda k: (len(by_n[k]), k))  # the n most of the phase was scored at
        at_n = {c: by_n[n][c] for c in members if c in by_n[n]}
        if not at_n:
            continue
        top = max(at_n.values())
        answers = {c: {p["example_id"]: (p["pred"], p["gold"]) for p in store.predictions(run_id, c, "dev")}
                   for c in at_n}
        # the examples scored at n: those every compared candidate was scored on (one may have more, e.g. GPO's
        # pick, scored on all of dev again by the demo search that followed)
        ids = sorted(set.intersection(*(set(a) for a in answers.values())))
        tied = []
        for c in (c for c in members if at_n.get(c) == top):
            f1 = (macro_f1([answers[c][i][0] for i in ids], [answers[c][i][1] for i in ids], labels)
                  if len(ids) == n else None)
            tied.append({"id": c, "f1": f1})
        out[phase] = {"n": n, "compared": len(at_n), "top": top, "tied": tied}
    return out


def keeps(tied: list[dict], rule: str) -> str:
    """The candidate a rule keeps among the tied (in the order met): the earliest, or a strictly higher macro-F1."""
    best = tied[0]
    for c in tied[1:]:
        if rule == "macro_f1" and c["f1"] is not None and best["f1"] is not None and c["f1"] > best["f1"] + 1e-12:
            best = c
    return best["id"]


def record(out: Path, arm: str) -> dict | None:
    rec_file = RECORDS / out.name / f"{arm}.json"
    rid_file, db = out / arm / "run_id", out / "runs.sqlite"
    if rid_file.exists() and db.exists():
        store = Store(db)
        run_id = rid_file.read_text().strip()
        run = store.get_run(run_id)
        if run and run.get("result"):
            rec = {"out": out.name, "arm": arm, "run_id": run_id, "best_id": run["result"]["best_id"],
                   "phases": census(store, run_id, run["config"]["task"]["labels"])}
            rec_file.parent.mkdir(parents=True, exist_ok=True)
            rec_file.write_text(json.dumps(rec, indent=1) + "\n")
    return json.loads(rec_file.read_text()) if rec_file.exists() else None


def table(recs: list[dict]) -> str:
    lines = ["| run | phase | compared (dev n) | top | tied: macro-F1 | first keeps | macro-F1 keeps |",
             "|---|---|---:|---:|---|---|---|"]
    changed = ties = total = 0
    for rec in recs:
        for phase, p in rec["phases"].items():
            total += 1
            tied = p["tied"]
            f1s = ", ".join(f"{c['id'][:6]} {c['f1']:.3f}" if c["f1"] is not None else f"{c['id'][:6]} -" for c in tied)
            a, b = keeps(tied, "first"), keeps(tied, "macro_f1")
            ties += len(tied) > 1
            changed += a != b
            lines.append(f"| {rec['out']}/{rec['arm']} | {phase} | {p['compared']} ({p['n']}) | {p['top']:.3f} | "
                         f"{f1s if len(tied) > 1 else 'no tie'} | {a[:6]} | {b[:6]}{' (changed)' if a != b else ''} |")
    lines.append(f"\n{total} selections, {ties} ending in a tie at the top, {changed} where macro-F1 keeps another.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, help="comma-separated bench_gain out folders (bench/runs/gain-T[-sN])")
    ap.add_argument("--arms", default="demos,gpo+demos")
    ap.add_argument("--table-only", action="store_true", help="only the committed records")
    a = ap.parse_args()
    recs = []
    for out in [Path(x) for x in a.runs.split(",")]:
        out = out if out.is_absolute() else ROOT / out
        for arm in a.arms.split(","):
            rec = (json.loads(f.read_text()) if (f := RECORDS / out.name / f"{arm}.json").exists() else None
                   ) if a.table_only else record(out, arm)
            if rec is not None:
                recs.append(rec)
    print(f"Command: python bench/bench_ties.py --runs {a.runs} --arms {a.arms}\n")
    print(table(recs))


if __name__ == "__main__":
    main()
