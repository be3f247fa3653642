"""Does the optimizer find a better prompt, significantly, on held-out data? Runs each arm (an optimizer, with or
without demonstrations) through the CLI on one task with the same split, models and budget, then tests each run's
best prompt against the initial prompt on the same test examples (exact McNemar, paired), from the predictions its
own report stored (no new calls).

    nice -n 10 python bench/bench_gain.py --task support_triage --model qwen2.5-coder-1.5b \\
        --arms demos,gpo+demos,gpo --out bench/runs/gain-support_triage
    python bench/bench_gain.py --task support_triage --out bench/runs/gain-support_triage --table-only

Resumable: each arm's run id is written as soon as the CLI names it; an arm with a result.json is done, one with only
a run id is resumed (`python -m optimizers resume`, replay through the response cache), so a killed benchmark
continues where it stopped. Each arm has its own response cache, so none is paid for by another. Every arm's optimization gets --opt-calls calls; the report on test (initial and best
prompt, 2 x n_test) is paid on top from the same hard cap, as bench_optimizers.py does.

The arms expert1-3 score the task's three hand-written expert instructions (bench/expert_prompts.json, fixed before
any run) in the arms' own layout and split, on the same test examples, and test each against the initial prompt as
the baseline arm scored it: the headroom the optimizers are read against, measured exactly as they are.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))
from bench_headroom import BBH_SPLIT, DEFAULT_SPLIT, EXPERTS_FILE, SPLITS  # noqa: E402  (the headroom rows' split)

from optimizers.config import SplitConfig  # noqa: E402
from optimizers.metrics import mcnemar, wilson  # noqa: E402
from optimizers.prepare import prepare_task  # noqa: E402
from optimizers.prompt import split_prompt  # noqa: E402
from optimizers.proposals import prompt_form  # noqa: E402
from optimizers.store import Store  # noqa: E402

# arm -> CLI arguments (the optimizer and what follows it). The arms measured before session 25 keep ties at
# selection on the first found (tie_break=first, explicit so their committed records stay what the command gives);
# the -f1 arms break them by macro-F1 on the same examples (bench/bench_selection.py), the default since session 25.
FIRST, F1 = ["--param", "tie_break=first"], ["--param", "tie_break=macro_f1"]
ARMS = {
    "baseline": ["--optimizer", "baseline"],
    "demos": ["--optimizer", "demos", *FIRST],
    "demos-f1": ["--optimizer", "demos", *F1],
    "ape": ["--optimizer", "ape"],
    "protegi": ["--optimizer", "protegi"],
    "opro": ["--optimizer", "opro"],
    "pe2": ["--optimizer", "pe2"],
    "gpo": ["--optimizer", "gpo", *FIRST],
    "gpo-f1": ["--optimizer", "gpo", *F1],
}
# GPO with the textual gradient of its design space (ProTeGi-style critiques of the wrong minibatch examples shown to
# the generating request) and 4 samples a step, so 300 calls pay for more than one step on a 40-example dev set
ARMS["gpo-feedback"] = ["--optimizer", "gpo", *FIRST, "--param", "gradient=feedback", "--param",
                        "update_method=generate", "--param", "num_candidates=4"]
# GPO whose rule start shows minimal pairs (each target example beside the nearest-worded one of each other label)
ARMS["gpo-contrast"] = ["--optimizer", "gpo", *FIRST, "--param", "rule_examples=contrast"]
for _name in ("ape", "protegi", "opro", "pe2", "gpo", "gpo-feedback", "gpo-contrast", "gpo-f1"):
    _tie = "macro_f1" if _name.endswith("-f1") else "first"
    ARMS[f"{_name.removesuffix('-f1')}+demos{'-f1' if _tie == 'macro_f1' else ''}"] = [
        *ARMS[_name], "--then-demos", "--demo-param", f"tie_break={_tie}"]
    ARMS[_name] = [*ARMS[_name], "--no-then-demos"]  # 0-shot: the embedded default would add a demo search
EXPERTS = ("expert1", "expert2", "expert3")  # the task's expert instructions, scored as the baseline arm scores
for _name in EXPERTS:
    ARMS[_name] = ["--optimizer", "baseline"]


def expert_prompt(task: str, arm: str) -> str:
    """The expert instruction an expert arm scores (bench/expert_prompts.json, in its order)."""
    experts = json.loads(EXPERTS_FILE.read_text()).get(task) or []
    i = EXPERTS.index(arm)
    if i >= len(experts):
        sys.exit(f"{EXPERTS_FILE.name} has no expert {i + 1} for {task}")
    return experts[i]


def fractions(task: str) -> tuple[float, float, float]:
    """The split bench_headroom.py measured the task's headroom on (so both read the same test examples)."""
    return SPLITS.get(task) or (BBH_SPLIT if task.startswith("bbh_") else DEFAULT_SPLIT)


def run_arm(a: argparse.Namespace, arm: str, n_test: int, out: Path) -> None:
    d = out / arm
    d.mkdir(parents=True, exist_ok=True)
    if (d / "result.json").exists() or (RECORDS / out.name / f"{arm}.json").exists():
        print(f"# {arm}: done already", file=sys.stderr)
        return
    db = str(out / "runs.sqlite")
    rid_file = d / "run_id"
    # each arm its own response cache: no arm gets another's scores for free (the initial prompt's on dev and test)
    common = ["--db", db, "--out", str(d), "--json", "--cache-dir", str(d / "cache")]
    if rid_file.exists():
        cmd = [sys.executable, "-m", "optimizers", "resume", rid_file.read_text().strip(), *common[:5]]  # its cache
        # is in its stored config
    else:
        demo = ["--demo-param", f"trials={a.demo_trials}", "--demo-param", f"k={a.k}"] if (
            arm == "demos" or "+demos" in arm) else []
        if arm in ("demos", "demos-f1"):  # alone: as many sets as the optimization's calls pay for on dev (one is the initial's)
            demo = ["--param", f"trials={max(1, a.opt_calls // a.max_dev - 1)}", "--param", f"k={a.k}"]
        if arm in EXPERTS:
            demo = ["--initial-prompt", expert_prompt(a.task, arm)]
        cmd = [sys.executable, "-m", "optimizers", "run", "--data", a.task, *ARMS[arm], *demo,
               "--max-calls", str(a.opt_calls + 2 * n_test), "--report-splits", "test", "--seed", str(a.seed),
               "--layout", a.layout, "--max-train", str(a.max_train), "--max-dev", str(a.max_dev),
               *(x for flag, f in zip(("--train", "--dev", "--test"), fractions(a.task)) for x in (flag, str(f))),
               "--max-test", str(a.max_test), *common]
        if a.model:
            cmd += ["--model", a.model]
        if a.optimizer_model:
            cmd += ["--optimizer-model", a.optimizer_model]
    print(f"# {arm}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("run ") and " stored in " in line and not rid_file.exists():
            rid_file.write_text(line.split()[1])
        sys.stderr.write(f"  [{arm}] {line}")
    proc.wait()
    print(f"# {arm}: exit {proc.returncode} after {time.time() - t0:.0f} s", file=sys.stderr, flush=True)


def _correct(store: Store, run_id: str, cand: str) -> dict[str, tuple[bool, str | None]]:
    return {p["example_id"]: (bool(p["correct"]), p["pred"]) for p in store.predictions(run_id, cand, "test")}


RECORDS = ROOT / "bench" / "results" / "records"  # committed: the tables regenerate from a clean clone


def arm_record(out: Path, arm: str) -> dict | None:
    """A finished arm as the tables need it: its result and the test predictions of its initial and best prompts.
    Written beside the results (bench/results/records/<out>/<arm>.json) when the run store has the arm, read from
    there when it does not (bench/runs/ is not committed: its caches are large)."""
    rec = RECORDS / out.name / f"{arm}.json"
    f, db = out / arm / "result.json", out / "runs.sqlite"
    # rewritten when the run is newer, or the record predates the proposal counts
    if f.exists() and db.exists() and (not rec.exists() or rec.stat().st_mtime < f.stat().st_mtime
                                       or '"proposals"' not in rec.read_text()):
        r = json.loads(f.read_text())
        store = Store(db)
        init = _correct(store, r["run_id"], _cid(r["initial_prompt"]))
        best = _correct(store, r["run_id"], r["best_id"]) if r["best_id"] != _cid(r["initial_prompt"]) else init
        keep = ("run_id", "status", "reason", "initial_prompt", "best_prompt", "best_id", "calls", "wall_time_s")
        data = {**{k: r.get(k) for k in keep}, "proposals": proposal_counts(store, r["run_id"]), "initial_test": init,
                "best_test": best}
        rec.parent.mkdir(parents=True, exist_ok=True)
        rec.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    if not rec.exists():
        return None
    data = json.loads(rec.read_text())
    for k in ("initial_test", "best_test"):
        data[k] = {i: (bool(c), p) for i, (c, p) in data[k].items()}
    return data


def proposal_counts(store: Store, run_id: str) -> dict[str, dict[str, int]]:
    """What the optimizer wrote, from the run's own events: instructions proposed (by origin; demo sets apart) and
    proposals rejected (by reason), so a table row says why an arm kept what it kept."""
    proposed: Counter = Counter()
    rejected: Counter = Counter()
    for _, ev in store.events(run_id, kinds=("candidate_proposed", "candidate_rejected")):
        if ev.kind == "candidate_rejected":
            rejected[ev.reason] += 1
        elif ev.origin != "initial":
            proposed[ev.origin] += 1
    return {"proposed": dict(proposed), "rejected": dict(rejected.most_common())}


def proposals_cell(r: dict) -> str:
    """'8 proposed / 5 rejected (3 echoes_example, 2 unchanged)' (instructions only), or '' for a record that
    predates the count."""
    if "proposals" not in r:
        return ""
    if r["proposals"] is None:
        return "hand-written"
    p = r["proposals"]
    n = sum(v for k, v in p["proposed"].items() if k != "demos")
    rej = p["rejected"]
    why = ", ".join(f"{v} {k}" for k, v in list(rej.items())[:3]) + (", ..." if len(rej) > 3 else "")
    sets = p["proposed"].get("demos", 0)
    return (f"{n} / {sum(rej.values())}" + (f" ({why})" if why else "") + (f"; {sets} demo sets" if sets else ""))


def constant_answer(prepared) -> tuple[str, dict[str, bool]]:
    """The train split's most frequent label, and whether answering it to every test example is right: a "gain"
    that this constant matches is a new favourite label, not a better reading of the task."""
    counts = Counter(e.label for e in prepared.splits.train)
    label = max(prepared.task.labels or counts, key=lambda x: counts.get(x, 0))
    return label, {e.id: e.label == label for e in prepared.splits.test}


def vs_constant(best: dict[str, bool], prepared) -> str:
    """'gained / lost, p' of a best prompt against answering the train majority label always (paired on test)."""
    label, const = constant_answer(prepared)
    ids = sorted(set(best) & set(const))
    if not ids:
        return ""
    t = mcnemar([best[i] for i in ids], [const[i] for i in ids])
    return f"{sum(const[i] for i in ids) / len(ids):.3f}: {t['a_only']} / {t['b_only']}, p {t['p_value']:.2g}"


def table(a: argparse.Namespace, arms: list[str], out: Path) -> str:
    prepared = _prepared(a)
    label = constant_answer(prepared)[0]
    rows = ["| arm | best prompt (instruction; demos) | form | test initial | test best [95% CI] | gained / lost | "
            f"McNemar p | best's top answer (share) | vs always {label} | instructions proposed / rejected (why) | calls | "
            "wall |",
            "|---|---|---|---:|---|---|---:|---|---|---|---:|---:|"]
    records = {arm: arm_record(out, arm) for arm in arms}
    ref = reference_answers([r for arm, r in records.items() if r and arm not in EXPERTS])
    base = records.get("baseline") or arm_record(out, "baseline")
    for arm in EXPERTS:  # the expert's answers are its "best"; its "initial" is the initial prompt's, from baseline
        r = records.get(arm)
        if r is not None:
            records[arm] = {**r, "best_test": r["initial_test"], "best_prompt": r["initial_prompt"],
                            "initial_test": base["initial_test"] if base else {}, "proposals": None}
    other = []
    for arm in arms:
        r = records[arm]
        if r is None:
            rows.append(f"| {arm} | not run (or not finished) | | | | | | | | | | |")
            continue
        init, best = r["initial_test"], r["best_test"]
        differ = sum(ref.get(i, v[1]) != v[1] for i, v in init.items())
        if differ > 0.05 * len(init):  # one or two replies can differ between machines on one build (measured)
            other.append(f"{arm} ({differ} of {len(init)})")
            arm = f"{arm} †"
        ids = sorted(set(init) & set(best))
        if not ids:
            why = "needs the baseline arm (the initial prompt's answers)" if arm in EXPERTS else "no test report"
            rows.append(f"| {arm} | {r['status']}: {why} | | | | | | | | | {r.get('calls')} | |")
            continue
        ia, ba = [init[i][0] for i in ids], [best[i][0] for i in ids]
        t = mcnemar(ba, ia)
        k = sum(ba)
        lo, hi = wilson(k, len(ids))
        top, n_top = Counter(best[i][1] for i in ids).most_common(1)[0]
        instr, demos = split_prompt(r["best_prompt"])
        shown = instr.replace("|", "/").replace("\n", " ")
        shown = (shown[:90] + "...") if len(shown) > 90 else shown
        form = prompt_form(instr, prepared.task.labels, prepared.splits.train + prepared.splits.dev)
        rows.append(f"| {arm} | {shown}; {len(demos)} demos | {form} | {sum(ia) / len(ids):.3f} | {k / len(ids):.3f} "
                    f"[{lo:.2f}, {hi:.2f}] | {t['a_only']} / {t['b_only']} | {t['p_value']:.2g} | {top} "
                    f"({n_top / len(ids):.2f}) | {vs_constant({i: best[i][0] for i in ids}, prepared)} | "
                    f"{proposals_cell(r)} | {r['calls']} | {r['wall_time_s'] / 60:.0f} min |")
    if other:
        rows.append(f"\n† The initial prompt's test answers differ from the other arms' on {', '.join(other)}: run on "
                    "another llama.cpp build (at temperature 0 one build answers the same prompt the same way, bar a "
                    "reply or two between machines), so read those rows against their own initial, not the others.")
    return "\n".join(rows)


def reference_answers(records: list[dict]) -> dict[str, str | None]:
    """Test example -> the initial prompt's answer most arms recorded: at temperature 0 it fingerprints the task
    model's build, so an arm run on another build shows as one whose initial answers differ."""
    votes: dict[str, Counter] = {}
    for r in records:
        for i, (_, answer) in r["initial_test"].items():
            votes.setdefault(i, Counter())[answer] += 1
    return {i: c.most_common(1)[0][0] for i, c in votes.items()}


def _prepared(a: argparse.Namespace):
    tr, dv, te = fractions(a.task)
    return prepare_task(a.task, split=SplitConfig(train=tr, dev=dv, test=te, max_train=a.max_train, max_dev=a.max_dev,
                                                  max_test=a.max_test))


def _cid(text: str) -> str:
    from optimizers.base import candidate_id

    return candidate_id(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="support_triage")
    ap.add_argument("--arms", default="demos,gpo+demos,gpo")
    ap.add_argument("--model", help="task model (embedded: a bundled name)")
    ap.add_argument("--optimizer-model")
    ap.add_argument("--opt-calls", type=int, default=300, help="calls for the optimization (the report is on top)")
    ap.add_argument("--layout", default="system", choices=["user", "system"])
    ap.add_argument("--k", type=int, default=8, help="demonstrations per set")
    ap.add_argument("--demo-trials", type=int, default=3)
    ap.add_argument("--max-train", type=int, default=126)
    ap.add_argument("--max-dev", type=int, default=40)
    ap.add_argument("--max-test", type=int, default=126)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--table-only", action="store_true")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    arms = [x.strip() for x in a.arms.split(",") if x.strip()]
    bad = [x for x in arms if x not in ARMS]
    if bad:
        sys.exit(f"unknown arm(s) {bad}; choose from {', '.join(ARMS)}")
    tr, dv, te = fractions(a.task)
    n_test = len(_prepared(a).splits.test)
    if not a.table_only:
        for arm in arms:
            run_arm(a, arm, n_test, out)
    print(f"### {a.task}: task model {a.model or 'embedded default'}, optimizer model "
          f"{a.optimizer_model or a.model or 'embedded default'}, layout {a.layout}, {a.opt_calls} optimization calls "
          f"+ the test report (2 x {n_test}); k = {a.k}, demo trials {a.demo_trials}; split {tr}/{dv}/{te} capped at "
          f"train {a.max_train} / dev {a.max_dev} / test {a.max_test}, seed {a.seed}\n")
    seed = f" --seed {a.seed}" if a.seed else ""
    print(f"Command: `python bench/bench_gain.py --task {a.task} --arms {a.arms} --model {a.model} "
          f"--optimizer-model {a.optimizer_model or a.model} --layout {a.layout}{seed} --out {a.out}`\n")
    print(table(a, arms, out))


if __name__ == "__main__":
    main()
