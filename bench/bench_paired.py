"""Was the best prompt's test score different from the initial prompt's beyond chance? An exact McNemar test on the
same test examples (paired), for every PromptOpt and DSPy run of one task.

Two overlapping 95% intervals do not show that two prompts score the same, nor do disjoint ones show a difference on
a shared test set: the paired test counts the examples only one of the two prompts gets right (gained / lost) and asks
whether that split is beyond a fair coin. PromptOpt's runs are re-scored through their own response caches (both
prompts were scored on test by the run's report, so this makes no calls); DSPy's final instructions through the cache
bench_dspy.py scored them with (`--test-cache`), or with new calls for results written before it kept one.

    python bench/bench_paired.py TASK_DIR [--base-url URL --model M]   # TASK_DIR: run_all's <out>/<task> folder
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_optimizers import SPLIT_CAPS  # noqa: E402  (DSPy's runs use the same split)
from bench_trajectory import run_id_of  # noqa: E402
from run_all import NAMES  # noqa: E402  (the same method names as the report)

from optimizers.backend import open_backend  # noqa: E402
from optimizers.evaluate import Evaluator  # noqa: E402
from optimizers.llm import LLM, Meter, ResponseCache  # noqa: E402
from optimizers.metrics import mcnemar  # noqa: E402
from optimizers.prepare import prepare_task  # noqa: E402
from optimizers.result import RunResult  # noqa: E402
from optimizers.store import Store  # noqa: E402
from ui.compare import run_task_model, run_test_data  # noqa: E402


def top_answer(res) -> tuple[str, float]:
    """The answer a prompt gives most often on the test split, and its share: a small model that answers one label
    to everything scores the label's share whatever the instruction, and a "gain" can be no more than a new favourite."""
    c = Counter("(none)" if p.pred is None else p.pred for p in res.predictions)
    label, k = c.most_common(1)[0] if c else ("-", 0)
    return label, k / max(res.n, 1)


def ta(x: tuple[str, float]) -> str:
    return f"{x[0]} ({x[1]:.2f})"


def paired(ev: Evaluator, initial: str, best: str, test) -> dict:
    a, b = ev.evaluate(initial, test), ev.evaluate(best, test)
    t = mcnemar(a.correct, b.correct)
    majority = Counter(ex.label for ex in test).most_common(1)[0]
    return {"n": a.n, "initial": a.score, "best": b.score, "gained": t["b_only"], "lost": t["a_only"],
            "p_value": t["p_value"], "initial_top_answer": top_answer(a), "best_top_answer": top_answer(b),
            "majority_share": majority[1] / max(len(test), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task_dir", type=Path)
    ap.add_argument("--base-url")
    ap.add_argument("--model")
    a = ap.parse_args()
    d = a.task_dir
    backend = open_backend(a.base_url)
    records = []
    po = d / "promptopt"
    if (po / "summary.json").exists():
        store = Store(po / "runs.sqlite")
        for rec in json.loads((po / "summary.json").read_text()):
            if rec.get("status") == "error":
                continue
            rec["run_id"] = run_id_of(store, rec)
            res = RunResult.model_validate_json((po / f"{rec['task']}-{rec['optimizer']}" / "result.json").read_text())
            task, test = run_test_data(store, rec["run_id"])
            meter = Meter()
            llm = LLM(backend.endpoint, a.model or run_task_model(store, rec["run_id"]) or backend.model, role="task",
                      meter=meter, cache=ResponseCache(po / "cache" / f"{rec['task']}-{rec['optimizer']}"))
            p = paired(Evaluator(llm, task), res.initial_prompt, res.best_prompt, test)
            reported = rec["best"]["score"] if rec.get("best") else None
            records.append({"task": rec["task"], "tool": "PromptOpt", "optimizer": NAMES.get(rec["optimizer"],
                                                                                            rec["optimizer"]),
                            **p, "reported_best": reported, "scoring_calls": meter.snapshot().calls})
    ds = d / "dspy.json"
    if ds.exists():
        rows = json.loads(ds.read_text())
        if rows:
            # the split bench_dspy.py built: seed and caps as recorded in dspy.json, else its defaults
            prepared = prepare_task(rows[0]["task"], split={"seed": 0, **SPLIT_CAPS, **(rows[0].get("split") or {})})
            task, test = prepared.task, prepared.splits.test
            meter = Meter()
            llm = LLM(backend.endpoint, a.model or backend.model, role="task", meter=meter,
                      cache=ResponseCache(d / "cache" / "dspy-test"))
            ev = Evaluator(llm, task)
            for r in rows:
                if r.get("final") is None:
                    continue
                before = meter.snapshot().calls
                p = paired(ev, prepared.initial_prompt, r["final"], test)
                records.append({"task": r["task"], "tool": "DSPy", "optimizer": r["optimizer"].removeprefix("DSPy "),
                                **p, "reported_best": (r.get("best") or {}).get("score"),
                                "reported_initial": (r.get("initial") or {}).get("score"),
                                "scoring_calls": meter.snapshot().calls - before})
    print("| task | tool | optimizer | n test | test initial -> best | gained | lost | McNemar p (exact) | "
          "top answer: initial / best (share) | majority label share | re-scoring calls | note |")
    print("|---|---|---|---:|---|---:|---:|---:|---|---:|---:|---|")
    for r in records:
        # temperature-0 answers re-scored with new calls can differ from the first scoring (llama.cpp batches slots)
        note = "" if r["reported_best"] is None or abs(r["reported_best"] - r["best"]) < 1e-9 else \
            f"reported best {r['reported_best']:.3f}"
        if r.get("reported_initial") is not None and abs(r["reported_initial"] - r["initial"]) > 1e-9:
            note += f" reported initial {r['reported_initial']:.3f} (not the same test split?)"
        print(f"| {r['task']} | {r['tool']} | {r['optimizer']} | {r['n']} | {r['initial']:.3f} -> {r['best']:.3f} | "
              f"{r['gained']} | {r['lost']} | {r['p_value']:.3f} | {ta(r['initial_top_answer'])} / "
              f"{ta(r['best_top_answer'])} | {r['majority_share']:.3f} | {r['scoring_calls']} | {note} |")
    (d / "paired.json").write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
