"""The effectiveness benchmark in one command: for every bundled task with measured headroom, the headroom rows
(bench_headroom.py: the initial prompt, the best of three fixed expert instructions, the same with 8 demonstrations)
and each arm's run (bench_gain.py: an optimizer, with or without a demo search, 300 optimization calls, the test report
on top), each tested against the initial prompt on the same test examples. Writes one section per task
(gains-<task>.md with its figure gains-<task>.png) and gains.md, which joins them.

    nice -n 10 python bench/run_gains.py --out bench/results            # runs what is missing, resumes, then writes
    python bench/run_gains.py --out bench/results --table-only          # only the tables, from what was run
    python bench/run_gains.py --tasks bbh_disambiguation_qa --table-only --rewrite   # one task's section

A section is kept when --table-only finds arms without a record (runs whose records were not kept), unless --rewrite.

Every step resumes (bench_gain keeps each arm's run id; bench_headroom caches every reply).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from bench_gain import RECORDS, _prepared, arm_record, constant_answer, vs_constant  # noqa: E402
from run_all import render_png  # noqa: E402

from optimizers.metrics import mcnemar, wilson  # noqa: E402
from optimizers.prompt import split_prompt  # noqa: E402
from optimizers.proposals import prompt_form  # noqa: E402

MODEL = "qwen2.5-coder-1.5b"  # the embedded default for both roles
ALL_ARMS = "baseline,expert1,expert2,expert3,demos,ape,ape+demos,protegi,protegi+demos,opro,opro+demos,pe2,pe2+demos,gpo,gpo+demos"
TASKS = {"support_triage": ALL_ARMS, "bbh_disambiguation_qa": ALL_ARMS, "helpdesk_queues": ALL_ARMS,
         "request_routing": ALL_ARMS}  # request_routing: headroom with demonstrations only (as bbh)
DSPY = ("copro", "miprov2", "miprov2-demos", "gepa")  # bench_dspy.py, at the same 300 optimization calls
# the headroom rows' replies, committed like the arms' records: the tables regenerate from a clean clone, no server
HEADROOM = RECORDS / "headroom.jsonl"
RUNS = ROOT / "bench" / "runs"  # each task's run store and caches (not committed: large)
DSPY_PYTHON = os.environ.get("PROMPTOPT_DSPY_PYTHON", "/work/venv-dspy/bin/python")  # see bench/requirements-dspy.txt


def sh(argv: list[str]) -> str:
    print("#", " ".join(argv), file=sys.stderr, flush=True)
    r = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        sys.stderr.write(r.stderr[-3000:])
    return r.stdout


def correct_of(out: Path, arm: str) -> dict[str, tuple[bool, str | None]]:
    """Test example -> (correct, answer) of an arm's best prompt, from its record ({} if not run)."""
    r = arm_record(out, arm)
    return r["best_test"] if r else {}


def arm_scores(out: Path, arms: list[str]) -> dict[str, dict]:
    """arm -> test accuracy of its best prompt and of the initial one, with Wilson CIs (from the arm's record)."""
    got = {}
    for arm in arms:
        r = arm_record(out, arm)
        if r is None:
            continue
        init, best = r["initial_test"], r["best_test"]
        ids = sorted(set(init) & set(best))
        if ids:
            k, ki = sum(best[i][0] for i in ids), sum(init[i][0] for i in ids)
            got[arm] = {"best": k / len(ids), "best_ci": wilson(k, len(ids)), "initial": ki / len(ids),
                        "initial_ci": wilson(ki, len(ids))}
    return got


def run_dspy(task: str, out: Path) -> None:
    """Each DSPy optimizer once per task (its own JSON file: a killed benchmark reruns only what is missing)."""
    if not Path(DSPY_PYTHON).exists():
        print(f"# DSPy: {DSPY_PYTHON} missing (PROMPTOPT_DSPY_PYTHON; bench/requirements-dspy.txt): skipped",
              file=sys.stderr)
        return
    for name in DSPY:
        f = out / f"dspy-{name}.json"
        if f.exists() or (RECORDS / out.name / f.name).exists():
            continue
        argv = ["bench/bench_dspy.py", "--task", task, "--optimizers", name, "--max-calls", "300", "--split", "gain",
                "--layout", "system", "--json-out", str(f)]
        print("#", DSPY_PYTHON, " ".join(argv), file=sys.stderr, flush=True)
        r = subprocess.run([DSPY_PYTHON, *argv], cwd=ROOT, capture_output=True, text=True)
        (out / f"dspy-{name}.log").write_text(r.stderr[-20000:])
        if r.returncode:
            sys.stderr.write(r.stderr[-3000:])


def dspy_rows(out: Path) -> list[dict]:
    """Each DSPy run's rows, from its JSON (copied to the committed records when present)."""
    rows = []
    for name in DSPY:
        f, rec = out / f"dspy-{name}.json", RECORDS / out.name / f"dspy-{name}.json"
        if f.exists() and (not rec.exists() or rec.stat().st_mtime < f.stat().st_mtime):
            rec.parent.mkdir(parents=True, exist_ok=True)
            rec.write_text(f.read_text())
        if rec.exists():
            rows += json.loads(rec.read_text())
    return rows


def dspy_table(out: Path, gpo_arms: dict[str, dict[str, bool]], prepared=None) -> str:
    """DSPy's rows next to the arms: each best vs the initial prompt, and each PromptOpt GPO arm vs it, paired on the
    same test examples."""
    rows = dspy_rows(out)
    if not rows:
        return "DSPy rows: not run (needs the DSPy venv, see bench/requirements-dspy.txt)."
    label = constant_answer(prepared)[0] if prepared else "?"
    head = ["| DSPy optimizer | best prompt (instruction; demos) | form | test initial | test best [95% CI] | "
            f"gained / lost | McNemar p | best's top answer (share) | vs always {label} | opt. calls | status |",
            "|---|---|---|---:|---|---|---:|---|---|---:|---|"]
    vs = []
    for r in rows:
        init, best = r["initial_correct"], r.get("best_correct") or {}
        ids = sorted(set(init) & set(best))
        if not ids:
            head.append(f"| {r['optimizer']} | {r['status']} {r.get('reason', '')[:60]} | | | | | | | | "
                        f"{r['usage']['calls']} | {r['status']} |")
            continue
        t = mcnemar([best[i] for i in ids], [init[i] for i in ids])
        k = sum(best[i] for i in ids)
        lo, hi = wilson(k, len(ids))
        instr, demos = split_prompt(r["final"] or "")
        shown = " ".join(instr.split()).replace("|", "/")
        shown = (shown[:90] + "...") if len(shown) > 90 else shown
        top, n_top = Counter((r.get("best_preds") or {}).get(i) for i in ids).most_common(1)[0]
        form = prompt_form(instr, prepared.task.labels, prepared.splits.train + prepared.splits.dev) if prepared else "-"
        head.append(f"| {r['optimizer']} | {shown}; {len(demos)} demos | {form} | {sum(init[i] for i in ids) / len(ids):.3f} "
                    f"| {k / len(ids):.3f} [{lo:.2f}, {hi:.2f}] | {t['a_only']} / {t['b_only']} | {t['p_value']:.2g} "
                    f"| {top} ({n_top / len(ids):.2f}) | {vs_constant({i: best[i] for i in ids}, prepared) if prepared else ''} "
                    f"| {r['usage']['calls']} | {r['status']} |")
        for arm, corr in gpo_arms.items():
            both = sorted(set(corr) & set(best))
            if both:
                g = mcnemar([corr[i] for i in both], [best[i] for i in both])
                vs.append(f"| {arm} vs {r['optimizer']} | {sum(corr[i] for i in both) / len(both):.3f} | "
                          f"{sum(best[i] for i in both) / len(both):.3f} | {g['a_only']} / {g['b_only']} | "
                          f"{g['p_value']:.2g} |")
    text = "\n".join(head)
    if vs:
        text += ("\n\nPromptOpt's GPO against each DSPy optimizer, paired on the same test examples (equal "
                 "optimization calls):\n\n| pair | GPO | DSPy | GPO right only / DSPy right only | McNemar p |\n"
                 "|---|---:|---:|---|---:|\n" + "\n".join(vs))
    return text


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


def task_section(task: str, a: argparse.Namespace) -> tuple[str, dict[str, dict]]:
    """One task's part of gains.md (its headroom rows, its arms, DSPy at the same calls) and its bars' scores."""
    out = RUNS / f"gain-{task}"
    head = sh(["bench/bench_headroom.py", "--models", MODEL, "--tasks", task, "--cache", str(HEADROOM.relative_to(ROOT)),
               *(["--cached-only"] if a.table_only else [])]).strip()
    argv = ["bench/bench_gain.py", "--task", task, "--arms", TASKS.get(task, "demos,gpo+demos"), "--model", MODEL,
            "--optimizer-model", MODEL, "--out", str(out.relative_to(ROOT))]
    parts = [f"## {task}\n", f"### {task}: headroom (what was there to find)\n", head, "",
             sh(argv + (["--table-only"] if a.table_only else [])).strip(), ""]
    scores = arm_scores(out, TASKS.get(task, "demos,gpo+demos").split(","))
    if not a.table_only and not a.no_dspy:
        run_dspy(task, out)
    gpo = {arm: {i: c for i, (c, _) in correct_of(out, arm).items()} for arm in ("gpo", "gpo+demos")}
    prepared = _prepared(argparse.Namespace(task=task, max_train=126, max_dev=40, max_test=126))
    parts += [f"### {task}: DSPy at the same calls\n", dspy_table(out, {k: v for k, v in gpo.items() if v}, prepared),
              ""]
    for r in dspy_rows(out):
        if r.get("best_correct"):
            b, i0 = r["best_correct"], r["initial_correct"]
            ids = sorted(set(b) & set(i0))
            k, ki = sum(b[i] for i in ids), sum(i0[i] for i in ids)
            scores[r["optimizer"]] = {"best": k / len(ids), "best_ci": wilson(k, len(ids)), "initial": ki / len(ids),
                                      "initial_ci": wilson(ki, len(ids))}
    return "\n".join(parts), scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--tasks", default=",".join(TASKS),
                    help="the tasks to (re)write; gains.md keeps the other tasks' sections as last written")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--rewrite", action="store_true",
                    help="with --table-only, rewrite a task's section even when some of its arms have no record")
    ap.add_argument("--no-dspy", action="store_true", help="skip running DSPy's optimizers (their tables still show)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    for task in [t for t in a.tasks.split(",") if t]:
        section = a.out / f"gains-{task}.md"
        missing = [arm for arm in TASKS.get(task, "").split(",") if arm and not arm_record(RUNS / f"gain-{task}", arm)]
        if a.table_only and missing and section.exists() and not a.rewrite:
            print(f"# {task}: kept {section.name} (no record of {', '.join(missing)}; --rewrite shows them as not run)",
                  file=sys.stderr)
            continue
        text, scores = task_section(task, a)
        png = figure({task: scores}, a.out / f"gains-{task}.png")
        (a.out / f"gains-{task}.md").write_text(text + (f"\n![gains of {task}]({png})\n" if png else ""))
    parts = ["# Gains on the tasks with headroom\n",
             f"Task and optimizer model: `{MODEL}` (the embedded default), instruction as the system message, "
             "temperature 0 for the task. Regenerate: `python bench/run_gains.py --out bench/results` "
             "(resumes; `--table-only` rewrites the tables from what was run; `--tasks T` rewrites one task's section, "
             "kept in gains-T.md, and leaves the others as they were last written).\n"]
    parts += [(a.out / f"gains-{t}.md").read_text() for t in TASKS if (a.out / f"gains-{t}.md").exists()]
    (a.out / "gains.md").write_text("\n".join(parts))
    print(f"wrote {a.out / 'gains.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
