"""One command for every benchmark table: runs each bench script in turn, keeps every output under one folder, and
writes REPORT.md (the tables of BENCHMARKS.md) plus a plot. A step whose output already exists is not run again, so an
interrupted regeneration resumes where it stopped (--force re-runs everything).

    python bench/run_all.py [--out bench/results/latest] [--tasks sentiment,ethos,...] [--max-calls 300]
                            [--steps models,plain,effectiveness,dspy,engine,ui] [--dspy-python /work/venv-dspy/bin/python]
                            [--report-only] [--force]

Effectiveness and the DSPy peers run task by task (PromptOpt's five optimizers, then COPRO and MIPROv2 on the same
model, split, metric and call cap, then a paired test of every run's best prompt against the initial one on the same
test examples), so each task's rows are measured side by side in one run on one machine. On 2
cores with the embedded model a task takes 20-40 minutes; the whole set several hours. DSPy needs its own venv
(bench/requirements-dspy.txt); without one that step is reported as skipped, not silently dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
TASKS = ["sentiment", "ethos", "liar", "bbh_navigate", "bbh_boolean_expressions", "bbh_snarks"]
NAMES = {"ape": "APE", "protegi": "ProTeGi", "opro": "OPRO", "pe2": "PE2", "gpo": "GPO", "baseline": "baseline"}
STEPS = ["models", "plain", "effectiveness", "dspy", "engine", "ui"]


def run_step(out: Path, name: str, argv: list[str], force: bool) -> Path:
    """Run argv (its stdout is the table) unless out/name.md exists; stderr goes to out/name.log."""
    md = out / f"{name}.md"
    if md.exists() and not force:
        print(f"[run_all] {name}: kept {md}", flush=True)
        return md
    md.parent.mkdir(parents=True, exist_ok=True)
    print(f"[run_all] {name}: {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    with open(md.with_suffix(".tmp"), "w") as so, open(out / f"{name}.log", "w") as se:
        rc = subprocess.run(argv, cwd=ROOT, stdout=so, stderr=se).returncode
    if rc:
        print(f"[run_all] {name}: exit {rc} after {time.perf_counter() - t0:.0f} s (see {name}.log)", flush=True)
        md.with_suffix(".tmp").rename(out / f"{name}.failed.md")
    else:
        md.with_suffix(".tmp").rename(md)
        print(f"[run_all] {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return md


def dspy_python(arg: str | None) -> str | None:
    for cand in [arg, os.environ.get("PROMPTOPT_DSPY_PYTHON"), "/work/venv-dspy/bin/python", str(ROOT / ".venv-dspy/bin/python")]:
        if cand and Path(cand).exists() and subprocess.run([cand, "-c", "import dspy"], capture_output=True).returncode == 0:
            return cand
    return None


# --- report ---------------------------------------------------------------------------------------------------------
def _ci(s: dict | None) -> str:
    return f"{s['score']:.3f} [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}]" if s else "-"


def effectiveness_rows(out: Path, task: str) -> list[dict]:
    """PromptOpt's and DSPy's rows for one task, in one shape."""
    rows = []
    po = out / task / "promptopt" / "summary.json"
    tj = out / task / "promptopt" / "trajectory.json"
    c90_test = {r["optimizer"]: r["calls_to_90_test"] for r in json.loads(tj.read_text())} if tj.exists() else {}
    if po.exists():
        for r in json.loads(po.read_text()):
            if r.get("status") == "error":
                rows.append({"tool": "PromptOpt", "optimizer": NAMES.get(r["optimizer"], r["optimizer"]), "status": "error: " + r.get("reason", "")})
                continue
            first, final = r["selection"]
            rows.append({"tool": "PromptOpt", "optimizer": NAMES.get(r["optimizer"], r["optimizer"]), "initial": r["initial"], "best": r["best"],
                         "n": (r["initial"] or {}).get("n"),
                         "selection": (f"{first:.3f} -> {final:.3f} ({r['selection_split']})"
                                       if first is not None else "-"),
                         "calls": r["calls"], "tokens": r["tokens"], "c90": r["calls_to_90"],
                         "c90_test": c90_test.get(r["optimizer"], "?"), "wall": r["wall"],
                         "status": r["status"], "final": r.get("best_prompt")})
    ds = out / task / "dspy.json"
    pj = out / task / "paired.json"
    pair = {(r["tool"], r["optimizer"]): r for r in json.loads(pj.read_text())} if pj.exists() else {}
    if ds.exists():
        for r in json.loads(ds.read_text()):
            u, sel = r["usage"], r.get("selection")
            rows.append({"tool": "DSPy", "optimizer": r["optimizer"].removeprefix("DSPy "), "initial": r["initial"],
                         "best": r["best"], "n": r.get("n_test"),
                         "selection": f"{sel[0]:.3f} ({sel[1]})" if sel and sel[0] is not None else "-",
                         "calls": u["calls"], "tokens": u["prompt_tokens"] + u["completion_tokens"], "c90": None,
                         "c90_test": None, "wall": r["wall"], "status": r["status"] + (f" ({u['refused']} refused)" if u["refused"] else ""),
                         "final": r.get("final")})
    for r in rows:
        r["paired"] = pair.get((r["tool"], r["optimizer"]))
    return rows


def _paired(p: dict | None) -> str:
    return f"+{p['gained']} / -{p['lost']} (p={p['p_value']:.2f})" if p else "-"


def _label(r: dict) -> str:
    """A method's column / legend name: PromptOpt's optimizers bare, DSPy's prefixed."""
    return ("" if r["tool"] == "PromptOpt" else "DSPy ") + r["optimizer"]


def _short(s: str | None, n: int = 90) -> str:
    if not s:
        return "-"
    s = " ".join(s.split()).replace("|", "\\|")
    return s if len(s) <= n else s[: n - 3] + "..."


def effectiveness_table(out: Path, tasks: list[str]) -> tuple[str, list[tuple[str, dict]]]:
    lines = ["| task | tool | optimizer | test initial [95% CI] | test best [95% CI] | n test | paired vs initial: "
             "gained / lost (McNemar p) | selection score | opt. calls | opt. tokens | calls to 90% of gain: "
             "selection / test | wall s | status | best prompt |",
             "|---|---|---|---|---|---:|---|---|---:|---:|---:|---:|---|---|"]
    flat = []
    for t in tasks:
        for r in effectiveness_rows(out, t):
            flat.append((t, r))
            if "initial" not in r:
                lines.append(f"| {t} | {r['tool']} | {r['optimizer']} | {r['status']} |||||||||||")
                continue
            lines.append(f"| {t} | {r['tool']} | {r['optimizer']} | {_ci(r['initial'])} | {_ci(r['best'])} | "
                         f"{r['n'] or '-'} | {_paired(r['paired'])} | {r['selection']} | {r['calls']} | {r['tokens']:,} | "
                         f"{'-' if r['c90'] is None else r['c90']} / {'-' if r['c90_test'] is None else r['c90_test']} | {r['wall']:.0f} | {r['status']} | "
                         f"{_short(r['final'])} |")
    return "\n".join(lines), flat


def overview_table(flat: list[tuple[str, dict]]) -> str:
    """One line per task, one column per method: the best prompt's test score and its paired change, at a glance."""
    ok = [(t, r) for t, r in flat if r.get("best")]
    if not ok:
        return ""
    cols = list(dict.fromkeys(_label(r) for _, r in ok))
    lines = ["| task (n test) | initial | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for t in dict.fromkeys(t for t, _ in ok):
        cell = {}
        for _, r in [(u, r) for u, r in ok if u == t]:
            p = r.get("paired")
            mark = f" ({'+' if p['gained'] - p['lost'] >= 0 else ''}{p['gained'] - p['lost']}{'*' if p['p_value'] < 0.05 else ''})" if p else ""
            cell[_label(r)] = f"{r['best']['score']:.3f}{mark}"
        first = next(r for u, r in ok if u == t)
        lines.append(f"| {t} ({first['n'] or '-'}) | {first['initial']['score']:.3f} | "
                     + " | ".join(cell.get(c, "-") for c in cols) + " |")
    return "\n".join(lines) + ("\n\nEach cell: the best prompt's test score (net examples gained on the paired test set; "
                               "* where the exact McNemar test gives p < 0.05).")


def plot(flat: list[tuple[str, dict]], png: Path, max_calls: int) -> str | None:
    """Test accuracy, initial vs best, with 95% CIs: a Plotly figure rendered to PNG by the chromium the browser tests
    use (Playwright), so no image-export package is needed."""
    import plotly.graph_objects as go

    ok = [(t, r) for t, r in flat if r.get("best")]
    if not ok:
        return None
    tasks = list(dict.fromkeys(t for t, _ in ok))
    fig = go.Figure()
    labels = list(dict.fromkeys(_label(r) for _, r in ok))
    # one 'initial' marker per task (every run starts from the same prompt and test split)
    init = {t: r["initial"] for t, r in ok}
    fig.add_bar(name="initial prompt", x=tasks, y=[init[t]["score"] for t in tasks], marker_color="#bbbbbb",
                error_y=dict(type="data", symmetric=False, array=[init[t]["ci"][1] - init[t]["score"] for t in tasks],
                             arrayminus=[init[t]["score"] - init[t]["ci"][0] for t in tasks]))
    for lab in labels:
        pts = {t: r["best"] for t, r in ok if _label(r) == lab}
        xs = [t for t in tasks if t in pts]
        fig.add_bar(name=lab, x=xs, y=[pts[t]["score"] for t in xs],
                    error_y=dict(type="data", symmetric=False, array=[pts[t]["ci"][1] - pts[t]["score"] for t in xs],
                                 arrayminus=[pts[t]["score"] - pts[t]["ci"][0] for t in xs]))
    fig.update_layout(barmode="group", width=1200, height=520, yaxis=dict(title="test accuracy", range=[0, 1.05]),
                      title=f"Best prompt's test accuracy after {max_calls} LLM calls (95% Wilson CI); grey: initial prompt",
                      template="plotly_white", legend=dict(orientation="h", y=-0.15))
    return render_png(fig, png, 1220, 540)


def render_png(fig, png: Path, width: int, height: int) -> str:
    """A Plotly figure as PNG through the chromium the browser tests use (no image-export package needed); the HTML
    stays next to it, and is what is returned when no chromium is there."""
    html = png.with_suffix(".html")
    fig.write_html(html, include_plotlyjs=True)
    try:
        from playwright.sync_api import sync_playwright

        exe = shutil.which("chromium") or "/usr/bin/chromium"
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=exe if Path(exe).exists() else None)
            page = b.new_page(viewport={"width": width, "height": height})
            page.goto(html.resolve().as_uri())
            page.wait_for_selector(".main-svg")
            page.locator(".plotly-graph-div").screenshot(path=str(png))
            b.close()
    except Exception as e:  # the HTML is still there
        print(f"[run_all] plot: PNG not rendered ({type(e).__name__}: {e}); open {html}", flush=True)
        return html.name
    return png.name


def report(out: Path, tasks: list[str], a: argparse.Namespace) -> Path:
    eff, flat = effectiveness_table(out, tasks)
    pic = plot(flat, out / "effectiveness.png", a.max_calls)
    parts = [f"# Benchmark report\n\nWritten by `python bench/run_all.py` on {time.strftime('%Y-%m-%d %H:%M')}; "
             f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}. Each section names the "
             f"file it comes from under `{out}`.\n"]
    parts.append(f"## Effectiveness and DSPy peers ({a.max_calls} LLM calls, seed {a.seed})\n\n"
                 + (overview_table(flat) + "\n\n" if flat else "") + eff + "\n\n"
                 "Paired vs initial: on the same test examples, how many only the best prompt gets right (gained) and "
                 "only the initial prompt gets right (lost), with the exact McNemar p-value (`paired.md` per task).\n")
    if pic:
        parts.append(f"![test accuracy]({pic})\n")
    paired = [(out / t / "paired.md").read_text().strip().splitlines() for t in tasks if (out / t / "paired.md").exists()]
    if paired:  # one table: the header once, then every task's rows
        parts.append("## Paired tests and answer bias (`<task>/paired.md`)\n\n" + "\n".join(
            paired[0][:2] + [ln for p in paired for ln in p[2:]]) + "\n")
    for name, title in [("models", "Embedded models"), ("plain", "Plain starting instruction"),
                        ("engine", "Engine overhead and throughput"), ("ui", "UI latency (scripted endpoint)"),
                        ("ui_embedded", "Quick start to first chart point (embedded model)")]:
        f = out / f"{name}.md"
        if f.exists():
            parts.append(f"## {title} (`{f.name}`)\n\n" + f.read_text().strip() + "\n")
        elif (out / f"{name}.failed.md").exists():
            parts.append(f"## {title}\n\nFailed: see `{name}.log`.\n")
    if "dspy" in a.steps and not dspy_python(a.dspy_python):
        parts.append("DSPy step skipped: no Python with `dspy` importable (see bench/requirements-dspy.txt).\n")
    path = out / "REPORT.md"
    path.write_text("\n".join(parts))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--max-calls", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base-url", help="any OpenAI-compatible endpoint instead of the embedded model")
    ap.add_argument("--model")
    ap.add_argument("--optimizer-model")
    ap.add_argument("--dspy-python", help="a Python with dspy installed (default: PROMPTOPT_DSPY_PYTHON, /work/venv-dspy)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    a.steps = [s for s in a.steps.split(",") if s]
    tasks = [t for t in a.tasks.split(",") if t]
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    endpoint = [f for k, v in (("--base-url", a.base_url), ("--model", a.model)) if v for f in (k, v)]

    if not a.report_only:
        if "models" in a.steps and not a.base_url:
            run_step(out, "models", [py, str(BENCH / "bench_local_model.py")], a.force)
        if "plain" in a.steps:
            run_step(out, "plain", [py, str(BENCH / "bench_plain_prompts.py"), "--sets", ",".join(tasks)], a.force)
        dpy = dspy_python(a.dspy_python) if "dspy" in a.steps else None
        for t in tasks:
            if "effectiveness" in a.steps:
                opt_model = ["--optimizer-model", a.optimizer_model] if a.optimizer_model else []
                run_step(out / t, "promptopt", [py, str(BENCH / "bench_optimizers.py"), "--tasks", t, "--max-calls",
                                                 str(a.max_calls), "--seed", str(a.seed), "--out",
                                                 str(out / t / "promptopt"), *endpoint, *opt_model], a.force)
                run_step(out / t, "trajectory", [py, str(BENCH / "bench_trajectory.py"), str(out / t / "promptopt"),
                                                  *endpoint], a.force)
            if dpy:
                run_step(out / t, "dspy", [dpy, str(BENCH / "bench_dspy.py"), "--task", t, "--max-calls",
                                           str(a.max_calls), "--seed", str(a.seed), "--json-out",
                                           str(out / t / "dspy.json"), "--test-cache",
                                           str(out / t / "cache" / "dspy-test"), *endpoint], a.force)
            if "effectiveness" in a.steps or dpy:
                # after both tools: one paired test per run, initial vs best on the same test examples
                # (always re-run: it reads the runs' caches, so it costs calls only for results older than them)
                run_step(out / t, "paired", [py, str(BENCH / "bench_paired.py"), str(out / t), *endpoint], True)
        if "engine" in a.steps:
            run_step(out, "engine", [py, str(BENCH / "bench_engine.py")], a.force)
        if "ui" in a.steps:
            run_step(out, "ui", [py, str(BENCH / "bench_ui.py")], a.force)
            if not a.base_url:
                run_step(out, "ui_embedded", [py, str(BENCH / "bench_ui.py"), "--repeats", "1", "--events", "3",
                                              "--embedded"], a.force)
    print(f"[run_all] report: {report(out, tasks, a)}", flush=True)


if __name__ == "__main__":
    main()
