"""Does the dev winner win on test? An optimizer keeps the candidate that scored best on its selection split, and GPO
under a 300-call cap scores on a fixed dev subset of 20-24 examples: the best of ~10 candidates there is partly the
luckiest (the winner's curse). This bench measures how much, on finished bench_gain runs, and what a confirmation
rule would have kept instead.

    python bench/bench_selection.py --runs bench/runs/gain-support_triage-s1,bench/runs/gain-helpdesk_queues-s1 \\
        --arms gpo --top 4
    python bench/bench_selection.py --runs ... --arms gpo --table-only

For each run it takes the initial prompt and the top K other candidates by the score the optimizer selected on, and
scores each on the full dev set and on test with the run's own task model, task and response cache. These calls are
outside the run's budget: this measures the selection, it is not a run. Then per run, what each rule keeps and its test
accuracy against the initial prompt (exact paired McNemar):
- `run`: the run's own pick (the best selection score, the earliest of equals);
- `full dev`: the best full-dev score among the initial prompt and the top K (the selection score breaks ties);
- `full dev, net >= M`: the same, kept only if on the full dev set it is right on at least M more examples than the
  initial prompt is (else the initial prompt);
- `dev macro-F1`: the best macro-F1 on all of dev (accuracy breaks ties): a prompt that leans to one favourite label
  loses on it what it wins in accuracy on that label's share;
- `oracle`: the best test score among them (what no rule can know: whether a better candidate was there at all).

Records: bench/results/records/selection/<out>/<arm>.json (each candidate's per-example correctness on dev and test),
so --table-only regenerates the tables from a clean clone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from optimizers.config import RunConfig  # noqa: E402
from optimizers.metrics import macro_f1, mcnemar  # noqa: E402
from optimizers.store import Store  # noqa: E402

RECORDS = ROOT / "bench" / "results" / "records" / "selection"


def selection_scores(store: Store, run_id: str) -> tuple[dict[str, tuple[float, int, int]], int]:
    """candidate -> (selection score, n, first seq) on the dev split, at the n the run's final pick was selected at
    (GPO's fixed subset; a demo search's full dev), and that n."""
    result = store.get_run(run_id)["result"]
    rows = [r for r in store.scores(run_id) if r["split"] == "dev"]
    best_rows = [r for r in rows if r["candidate_id"] == result["best_id"]]
    n_sel = best_rows[-1]["n"] if best_rows else min(r["n"] for r in rows)
    out: dict[str, tuple[float, int, int]] = {}
    for r in rows:
        if r["n"] == n_sel:
            first = out[r["candidate_id"]][2] if r["candidate_id"] in out else r["seq"]
            out[r["candidate_id"]] = (r["score"], r["n"], first)
    return out, n_sel


def measure(out: Path, arm: str, top: int) -> dict:
    """Score the initial prompt and the top candidates of one finished arm on full dev and test; the record."""
    from optimizers.backend import open_backend
    from optimizers.evaluate import Evaluator
    from optimizers.llm import LLM, Meter, open_cache

    run_id = (out / arm / "run_id").read_text().strip()
    store = Store(out / "runs.sqlite")
    run = store.get_run(run_id)
    if not run or not run.get("result"):
        sys.exit(f"{out}/{arm}: run {run_id} has no result yet")
    cfg = RunConfig(**run["config"])
    splits = store.load_splits(run_id)
    texts = {c["candidate_id"]: (c["text"], c["origin"]) for c in store.candidates(run_id)}
    sel, n_sel = selection_scores(store, run_id)
    init_id = next(cid for cid, (_, origin) in texts.items() if origin == "initial")
    ranked = sorted((c for c in sel if c != init_id), key=lambda c: (-sel[c][0], sel[c][2]))[:top]
    backend = open_backend(cfg.task_endpoint.base_url, model=cfg.task_endpoint.model)
    llm = LLM(backend.endpoint, backend.model, role="task", meter=Meter(), cache=open_cache(cfg.cache_dir))
    ev = Evaluator(llm, cfg.task)
    cands = []
    for cid in [init_id, *ranked]:
        row = {"id": cid, "origin": texts[cid][1], "text": texts[cid][0],
               "selection": sel.get(cid, (None,))[0], "selection_n": n_sel}
        for split in ("dev", "test"):
            res = ev.evaluate(texts[cid][0], getattr(splits, split))
            row[split] = {p.example_id: bool(p.correct) for p in res.predictions}
            row[f"{split}_pred"] = {p.example_id: p.pred for p in res.predictions}
        cands.append(row)
        print(f"# {out.name}/{arm} {cid}: dev {sum(row['dev'].values())}/{len(row['dev'])}, "
              f"test {sum(row['test'].values())}/{len(row['test'])}", file=sys.stderr, flush=True)
    c = llm.meter.snapshot()
    golds = {split: {ex.id: ex.label for ex in getattr(splits, split)} for split in ("dev", "test")}
    return {"out": out.name, "arm": arm, "run_id": run_id, "best_id": run["result"]["best_id"], "init_id": init_id,
            "top": top, "calls": c.calls, "cache_hits": c.cache_hits, "labels": cfg.task.labels, "golds": golds,
            "candidates": cands}


def _acc(d: dict[str, bool]) -> float:
    return sum(d.values()) / len(d)


def _net(a: dict[str, bool], b: dict[str, bool]) -> int:
    return sum(a[i] for i in a) - sum(b[i] for i in a)


def dev_f1(rec: dict, c: dict) -> float:
    """Macro-F1 on all of dev: a prompt that answers one favourite label scores that label's share in accuracy, and
    little here (each label's F1 counts the same)."""
    ids = sorted(c["dev_pred"])
    return macro_f1([c["dev_pred"][i] for i in ids], [rec["golds"]["dev"][i] for i in ids], rec.get("labels"))


def picks(rec: dict, margin: int) -> dict[str, dict]:
    """What each rule keeps among the measured candidates."""
    cands = {c["id"]: c for c in rec["candidates"]}
    init = cands[rec["init_id"]]
    order = {c["id"]: i for i, c in enumerate(rec["candidates"])}  # initial first, then by selection score
    by_dev = max(cands.values(), key=lambda c: (_acc(c["dev"]), (c["selection"] or 0), -order[c["id"]]))
    confirmed = by_dev if _net(by_dev["dev"], init["dev"]) >= margin else init
    out = {"run": cands.get(rec["best_id"], init), "full dev": by_dev, f"full dev, net >= {margin}": confirmed}
    if "golds" in rec:  # records that keep the predictions
        out["dev macro-F1"] = max(cands.values(), key=lambda c: (dev_f1(rec, c), _acc(c["dev"]), -order[c["id"]]))
    out["oracle"] = max(cands.values(), key=lambda c: (_acc(c["test"]), -order[c["id"]]))
    return out


def rule_cell(c: dict, init: dict) -> str:
    ids = sorted(c["test"])
    m = mcnemar([c["test"][i] for i in ids], [init["test"][i] for i in ids])
    tag = "initial" if c is init else c["id"][:6]
    return f"{tag} {_acc(c['test']):.3f} ({m['a_only']} / {m['b_only']}, p {m['p_value']:.2g})"


def table(recs: list[dict], margin: int) -> str:
    lines = ["| run | candidate | selection (n) | full dev | test | test vs initial |", "|---|---|---:|---:|---:|---|"]
    for rec in recs:
        init = next(c for c in rec["candidates"] if c["id"] == rec["init_id"])
        for c in rec["candidates"]:
            ids = sorted(c["test"])
            m = mcnemar([c["test"][i] for i in ids], [init["test"][i] for i in ids])
            mark = " (run's pick)" if c["id"] == rec["best_id"] else ""
            sel = "" if c["selection"] is None else f"{c['selection']:.3f} ({c['selection_n']})"
            lines.append(f"| {rec['out']}/{rec['arm']} | {'initial' if c is init else c['id'][:6]}{mark} | {sel} | "
                         f"{_acc(c['dev']):.3f} | {_acc(c['test']):.3f} | {m['a_only']} / {m['b_only']}, "
                         f"p {m['p_value']:.2g} |")
    rules = list(picks(recs[0], margin)) if recs else []
    lines += ["", "| run | " + " | ".join(rules) + " |", "|---|" + "---|" * len(rules)]
    totals = {r: 0.0 for r in rules}
    for rec in recs:
        init = next(c for c in rec["candidates"] if c["id"] == rec["init_id"])
        p = picks(rec, margin)
        lines.append(f"| {rec['out']}/{rec['arm']} | " + " | ".join(rule_cell(p[r], init) for r in rules) + " |")
        for r in rules:
            totals[r] += _acc(p[r]["test"]) - _acc(init["test"])
    if recs:
        lines.append("| mean test gain over the initial (pt) | " + " | ".join(
            f"{100 * totals[r] / len(recs):+.1f}" for r in rules) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, help="comma-separated bench_gain out folders (bench/runs/gain-T[-sN])")
    ap.add_argument("--arms", default="gpo")
    ap.add_argument("--top", type=int, default=4, help="candidates besides the initial prompt, by selection score")
    ap.add_argument("--margin", type=int, default=2, help="net examples over the initial on full dev to keep one")
    ap.add_argument("--table-only", action="store_true", help="only the committed records, no calls")
    a = ap.parse_args()
    recs = []
    for out in [Path(x) for x in a.runs.split(",")]:
        for arm in a.arms.split(","):
            f = RECORDS / out.name / f"{arm}.json"
            old = json.loads(f.read_text()) if f.exists() else None
            if old is None or old["top"] < a.top or "golds" not in old:  # none, or one without the predictions
                if not (out / arm / "run_id").exists():
                    continue  # an arm this out folder did not run
                if a.table_only:
                    print(f"# {out.name}/{arm}: no record", file=sys.stderr)
                    continue
                rec = measure(ROOT / out if not out.is_absolute() else out, arm, a.top)
                if old:  # what the first measurement paid stays on the books (a rerun reads it from the caches)
                    rec["calls"] += old["calls"]
                    rec["cache_hits"] = old["cache_hits"]
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_text(json.dumps(rec, indent=1, ensure_ascii=False) + "\n")
            rec = json.loads(f.read_text())
            rec["candidates"] = rec["candidates"][:1 + a.top]  # a record measured with a larger --top
            recs.append(rec)
    print(f"Command: python bench/bench_selection.py --runs {a.runs} --arms {a.arms} --top {a.top} "
          f"--margin {a.margin}\n")
    print(table(recs, a.margin))


if __name__ == "__main__":
    main()
