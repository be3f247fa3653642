"""Headroom: how far a hand-written expert instruction (and k demonstrations) moves the task model above a set's
initial prompt on its held-out test split. An optimizer's gain reads against this: a task where no expert prompt
beats the initial one significantly has no headroom for that model, and is reported as such.

For each task and embedded model: the initial prompt and three expert instructions fixed in bench/expert_prompts.json
(written before any measurement), the best expert (by test accuracy, system layout: a mild selection among three,
see the report) with k demonstrations drawn from train only (seeded, balanced by label), under two message layouts:

- system: the instruction as the system message, the input as the user turn, demonstrations as prior user/assistant
  turns;
- inline: the bundled set's template in one user turn (what `python -m optimizers eval` sends today), demonstrations
  inline above the input in the template's own "Field: value / Answer: label" form.

Each row: accuracy [Wilson 95% CI], the exact McNemar test against the initial prompt in the same layout (paired, on
the same test examples: gained / lost and p), and the most frequent answer with its share (a "gain" that is only a
new favourite label shows as a share near 1). Labels are read out of the reply by optimizers.task.Task.extract.

    nice -n 10 python bench/bench_headroom.py --models qwen2.5-coder-1.5b --tasks support_triage,bbh_hyperbaton
    python bench/bench_headroom.py --cached-only            # print every table from the cache, no server

Resumable: every reply is appended to a JSONL cache (request hash -> reply) before the next call, so a killed run
continues where it stopped and a re-run costs nothing. The server is llama.cpp's (optimizers.local_model.LocalServer,
2 threads), started only when a request misses the cache; temperature 0 and the library's 32 reply tokens.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_optimizers import SPLIT_CAPS  # noqa: E402  (the optimizer benchmark's split: same test examples)

from optimizers.data import (  # noqa: E402
    BUNDLED,
    BundledSet,
    Example,
    build_examples,
    read_table,
    render_template,
    split_examples,
)
from optimizers.local_model import MODELS, LocalServer  # noqa: E402
from optimizers.metrics import mcnemar, wilson  # noqa: E402
from optimizers.task import Task  # noqa: E402

EXPERTS_FILE = ROOT / "bench" / "expert_prompts.json"
DEFAULT_CACHE = Path(os.environ.get("PROMPTOPT_CACHE_DIR") or Path.home() / ".cache" / "promptopt") / "headroom.jsonl"
MAX_TOKENS = Task.model_fields["max_tokens"].default  # the library's reply length for a task (32)
K_DEMOS = 8
LAYOUTS = ("system", "inline")
# (train, dev, test) fractions: the CLI's 0.5 / 0.25 / 0.25 unless a set is too small for >= 100 test examples
SPLITS: dict[str, tuple[float, float, float]] = {
    "sentiment": (0.2, 0.0, 0.8),  # 60 rows: 48 test examples at most, below the 100 the headroom criterion asks
    "bbh_navigate": (0.4, 0.2, 0.4),
    "bbh_boolean_expressions": (0.4, 0.2, 0.4),
    "bbh_snarks": (0.2, 0.2, 0.6),  # 178 rows
    "bbh_causal_judgement": (0.3, 0.15, 0.55),  # 187 rows
}
BBH_SPLIT = (0.4, 0.2, 0.4)  # every other BIG-Bench Hard set (250 rows -> 100 test)
DEFAULT_SPLIT = (0.5, 0.25, 0.25)
# BIG-Bench Hard candidates read straight from a folder of BBH files (--bbh-dir), screened before one is bundled
CANDIDATE_INITIAL = {
    "hyperbaton": "Which sentence has the correct adjective order? Answer (A) or (B).",
    "disambiguation_qa": "Which option is the antecedent of the pronoun? Answer (A), (B) or (C).",
    "temporal_sequences": "When could the person have gone there? Answer (A), (B), (C) or (D).",
    "formal_fallacies": "Is the argument valid or invalid? Answer valid or invalid.",
    "logical_deduction_three_objects": "Which option is true? Answer (A), (B) or (C).",
    "causal_judgement": "How would a typical person answer this question about causation? Answer Yes or No.",
    "ruin_names": "Which option is a humorous edit of the name? Answer (A), (B), (C) or (D).",
    "tracking_shuffled_objects_three_objects": "Which option is true at the end? Answer (A), (B) or (C).",
    "date_understanding": "Which option is the correct date? Answer with the option letter.",
}
QA_TEMPLATE = "{prompt}\n\nQ: {input}\nA:"


# --- tasks --------------------------------------------------------------------------------------------------------
@dataclass
class Setup:
    name: str
    bundled: BundledSet
    task: Task
    train: list[Example]
    test: list[Example]
    split: tuple[float, float, float]
    experts: list[str]


def candidate_set(name: str, bbh_dir: Path) -> BundledSet:
    short = name.removeprefix("bbh_")
    path = bbh_dir / f"{short}.json"
    labels = sorted({e["target"] for e in json.loads(path.read_text())["examples"]})
    letters = [lab for lab in labels if len(lab) == 3 and lab[0] == "(" and lab[2] == ")"]
    if letters:  # multiple choice: a stray free-text target (ruin_names has two) is dropped below
        labels = letters
    return BundledSet(name, f"BIG-Bench Hard: {short} (candidate)", path, ["input"], "target", labels, QA_TEMPLATE,
                      CANDIDATE_INITIAL[short], "BIG-Bench Hard (suzgunmirac/BIG-Bench-Hard)", "MIT", "candidate")


def load_setup(name: str, experts: dict, bbh_dir: Path, max_test: int | None) -> Setup:
    if name in BUNDLED:
        b = BUNDLED[name]
    elif name.removeprefix("bbh_") in CANDIDATE_INITIAL:
        b = candidate_set(name, bbh_dir)
    else:
        raise SystemExit(f"unknown task {name!r}: a bundled set ({', '.join(BUNDLED)}) or a candidate "
                         f"({', '.join('bbh_' + c for c in CANDIDATE_INITIAL)})")
    if name not in experts:
        raise SystemExit(f"{EXPERTS_FILE.name} has no expert prompts for {name}")
    examples, _ = build_examples(read_table(b.path), b.input_cols, b.label_col)
    examples = [e for e in examples if e.label in b.labels]
    split = SPLITS.get(name) or (BBH_SPLIT if name.startswith("bbh_") else DEFAULT_SPLIT)
    s = split_examples(examples, train=split[0], dev=split[1], test=split[2], seed=0,
                       max_train=SPLIT_CAPS["max_train"], max_dev=SPLIT_CAPS["max_dev"],
                       max_test=max_test or SPLIT_CAPS["max_test"])
    task = Task(template=b.template, input_cols=b.input_cols, labels=b.labels)
    return Setup(name, b, task, s.train, s.test, split, experts[name])


def pick_demos(train: list[Example], k: int, seed: int = 0) -> list[Example]:
    """k demonstrations from train only: a seeded shuffle, then round-robin over the labels (balanced), then shuffled
    again so the last demonstration's label is not always the same."""
    if k <= 0:
        return []
    rng = random.Random(seed)
    pool = list(train)
    rng.shuffle(pool)
    by: dict[str, list[Example]] = {}
    for e in pool:
        by.setdefault(e.label, []).append(e)
    out: list[Example] = []
    while len(out) < min(k, len(pool)):
        for lab in sorted(by):
            if by[lab] and len(out) < k:
                out.append(by[lab].pop(0))
    rng.shuffle(out)
    return out


# --- rendering ----------------------------------------------------------------------------------------------------
def _input_text(example: Example, cols: list[str]) -> str:
    if len(cols) == 1:
        return example.fields[cols[0]]
    return "\n".join(f"{c}: {example.fields[c]}" for c in cols)


def messages(layout: str, b: BundledSet, instruction: str, example: Example,
             demos: list[Example] = ()) -> list[dict[str, str]]:
    """The chat messages for one example. system: instruction as system message, demos as prior user/assistant turns,
    the input as the last user turn. inline: the set's template in one user turn, each demo rendered with the
    template's example block (from its first line holding an input column) plus its label, above the input."""
    if layout == "system":
        msgs = [{"role": "system", "content": instruction}]
        for d in demos:
            msgs += [{"role": "user", "content": _input_text(d, b.input_cols)},
                     {"role": "assistant", "content": d.label}]
        return msgs + [{"role": "user", "content": _input_text(example, b.input_cols)}]
    if layout == "inline":
        lines = b.template.split("\n")
        i = next(n for n, ln in enumerate(lines) if any("{" + c + "}" in ln for c in b.input_cols))
        head, block = "\n".join(lines[:i]) + "\n", "\n".join(lines[i:])
        shots = "".join(render_template(block, d.fields, "") + " " + d.label + "\n\n" for d in demos)
        content = render_template(head, {}, instruction) + shots + render_template(block, example.fields, "")
        return [{"role": "user", "content": content}]
    raise ValueError(f"unknown layout {layout!r}")


# --- calls ----------------------------------------------------------------------------------------------------------
class Cache:
    """Append-only JSONL: one line per reply, written (and flushed) before the next call."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, dict] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut off by a kill
                self.data[rec["key"]] = rec
        path.parent.mkdir(parents=True, exist_ok=True)

    def put(self, rec: dict) -> None:
        self.data[rec["key"]] = rec
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


class Caller:
    def __init__(self, model: str, cache: Cache, cached_only: bool, threads: int):
        self.model, self.cache, self.cached_only, self.threads = model, cache, cached_only, threads
        self.identity = MODELS[model].sha256 if model in MODELS else model
        self.server: LocalServer | None = None
        self.client = None
        self.seconds: list[float] = []
        self.used: set[str] = set()  # the cache entries this run's tables rest on

    def key(self, msgs: list[dict]) -> str:
        req = {"model": self.identity, "messages": msgs, "temperature": 0, "max_tokens": MAX_TOKENS, "seed": 0}
        return hashlib.sha256(json.dumps(req, sort_keys=True).encode()).hexdigest()

    def __call__(self, msgs: list[dict]) -> str | None:
        k = self.key(msgs)
        self.used.add(k)
        hit = self.cache.data.get(k)
        if hit is not None:
            return hit["reply"]
        if self.cached_only:
            return None
        if self.server is None or not self.server.alive():
            self._start()
        t0 = time.perf_counter()
        r = self.client.chat.completions.create(model=self.server.model_alias, messages=msgs, temperature=0,
                                                max_tokens=MAX_TOKENS, seed=0)
        dt = time.perf_counter() - t0
        self.seconds.append(dt)
        reply = r.choices[0].message.content or ""
        self.cache.put({"key": k, "model": self.model, "reply": reply, "seconds": round(dt, 3),
                        "prompt_tokens": r.usage.prompt_tokens if r.usage else None,
                        "completion_tokens": r.usage.completion_tokens if r.usage else None,
                        "finish_reason": r.choices[0].finish_reason})
        return reply

    def _start(self) -> None:
        from openai import OpenAI

        self.server = LocalServer(self.model, n_threads=self.threads, n_ctx=4096)
        self.server.start()
        print(f"[{self.model}] server ready in {self.server.load_seconds:.1f} s", file=sys.stderr)
        self.client = OpenAI(base_url=self.server.base_url, api_key="local", timeout=600, max_retries=2)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


# --- scoring ---------------------------------------------------------------------------------------------------------
@dataclass
class Row:
    prompt: str  # "initial", "expert 1", ...
    layout: str
    k: int
    instruction: str
    preds: list[str | None] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    complete: bool = True

    @property
    def n(self) -> int:
        return len(self.correct)

    @property
    def acc(self) -> float:
        return sum(self.correct) / self.n if self.n else float("nan")

    @property
    def no_label(self) -> float:
        """Share of replies with no label in them (a format failure, scored wrong)."""
        return round(sum(p is None for p in self.preds) / max(self.n, 1), 3)

    def top(self) -> tuple[str, float]:
        c = Counter("(none)" if p is None else p for p in self.preds)
        lab, m = c.most_common(1)[0] if c else ("-", 0)
        return lab, m / max(self.n, 1)


def score(call: Caller, s: Setup, name: str, layout: str, instruction: str, k: int, label: str) -> Row:
    demos = pick_demos(s.train, k)
    row = Row(name, layout, k, instruction)
    for i, ex in enumerate(s.test):
        reply = call(messages(layout, s.bundled, instruction, ex, demos))
        if reply is None:
            row.complete = False
            return row
        pred = s.task.extract(reply)
        row.preds.append(pred)
        row.correct.append(s.task.is_correct(pred, ex.label))
        if not call.cached_only and (i + 1) % 25 == 0:
            print(f"  {label} {name} {layout} k={k}: {i + 1}/{len(s.test)} acc {row.acc:.3f}", file=sys.stderr)
    return row


def run_task(call: Caller, s: Setup, phases: set[str], k: int, inline_all: bool) -> list[Row]:
    label = f"[{call.model} {s.name}]"
    rows: list[Row] = []

    def add(name: str, layout: str, instruction: str, kk: int = 0) -> Row:
        r = score(call, s, name, layout, instruction, kk, label)
        rows.append(r)
        if r.complete and not call.cached_only:
            print(f"{label} {name:9s} {layout:6s} k={kk}: {r.acc:.3f} (n={r.n})", file=sys.stderr)
        return r

    init = s.bundled.initial_prompt
    base = [add("initial", "system", init)]
    if "base" in phases:
        base += [add(f"expert {i + 1}", "system", e) for i, e in enumerate(s.experts)]
    done = [r for r in base[1:] if r.complete]
    best = max(done, key=lambda r: r.acc) if len(done) == len(s.experts) else None  # first of ties wins
    if "demos" in phases and best is not None:
        add(best.prompt, "system", best.instruction, k)
        add("initial", "system", init, k)
    if "inline" in phases:
        add("initial", "inline", init)
        if inline_all:
            for i, e in enumerate(s.experts):
                add(f"expert {i + 1}", "inline", e)
        elif best is not None:
            add(best.prompt, "inline", best.instruction)
        if best is not None and "demos" in phases:
            add(best.prompt, "inline", best.instruction, k)
            add("initial", "inline", init, k)
    return rows


# --- reporting -------------------------------------------------------------------------------------------------------
def fmt_p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def table(s: Setup, model: str, rows: list[Row]) -> tuple[str, dict]:
    ref = {r.layout: r for r in rows if r.prompt == "initial" and r.k == 0 and r.complete}
    majority = Counter(e.label for e in s.test).most_common(1)[0]
    out = [f"#### {s.name} on {model} (test n = {len(s.test)}, split {s.split[0]}/{s.split[1]}/{s.split[2]} seed 0;"
           f" majority label {majority[0]} {majority[1] / len(s.test):.2f})", "",
           "| prompt | layout | k | accuracy [95% CI] | vs initial (same layout) | gained / lost | McNemar p "
           "| top answer (share) | no label |", "|---|---|---:|---|---:|---|---:|---|---:|"]
    summary: dict = {"task": s.name, "model": model, "n": len(s.test), "rows": []}
    for r in rows:
        if not r.complete:
            out.append(f"| {r.prompt} | {r.layout} | {r.k} | not run | | | | | |")
            continue
        lo, hi = wilson(sum(r.correct), r.n)
        base = ref.get(r.layout)
        rec = {"prompt": r.prompt, "layout": r.layout, "k": r.k, "accuracy": round(r.acc, 4), "n": r.n,
               "top_answer": r.top()[0], "top_share": round(r.top()[1], 3), "no_label": r.no_label,
               "instruction": r.instruction}
        if base is not None and base is not r:
            t = mcnemar(base.correct, r.correct)
            rec.update(delta=round(r.acc - base.acc, 4), gained=t["b_only"], lost=t["a_only"], p=t["p_value"])
            cmp = f"{100 * (r.acc - base.acc):+.1f} pt | {t['b_only']} / {t['a_only']} | {fmt_p(t['p_value'])}"
        else:
            cmp = "(reference) | | "
        top = r.top()
        out.append(f"| {r.prompt} | {r.layout} | {r.k} | {r.acc:.3f} [{lo:.2f}, {hi:.2f}] | {cmp} "
                   f"| {top[0]} ({top[1]:.2f}) | {r.no_label:.2f} |")
        summary["rows"].append(rec)
    return "\n".join(out), summary


def _find(rows: list[dict], prompt: str, layout: str, k: int) -> dict | None:
    return next((r for r in rows if r["prompt"] == prompt and r["layout"] == layout and r["k"] == k), None)


def headline(summaries: list[dict]) -> str:
    out = ["| task | model | n | initial (system) | best expert, 0-shot (system) | headroom | p | "
           f"best expert + {K_DEMOS} demos (system) | initial (inline) | best expert (inline) | "
           f"best expert + {K_DEMOS} demos (inline) | headroom >= 10 pt, p < 0.05? |",
           "|---|---|---:|---:|---|---:|---:|---|---:|---|---|---|"]
    for sm in summaries:
        rows = sm["rows"]
        init_s = _find(rows, "initial", "system", 0)
        experts = [r for r in rows if r["prompt"].startswith("expert") and r["layout"] == "system" and r["k"] == 0]
        if init_s is None or not experts:
            continue
        best = max(experts, key=lambda r: r["accuracy"])
        bk = _find(rows, best["prompt"], "system", K_DEMOS)
        init_i = _find(rows, "initial", "inline", 0)
        bi = _find(rows, best["prompt"], "inline", 0)
        bik = _find(rows, best["prompt"], "inline", K_DEMOS)

        def cell(r):
            if r is None:
                return "-"
            p = f", p {fmt_p(r['p'])}" if "p" in r else ""
            return f"{r['accuracy']:.3f}{p}"

        candidates = [r for r in (best, bk, bi, bik) if r is not None and "p" in r]
        ok = any(r["delta"] >= 0.10 and r["p"] < 0.05 for r in candidates)
        how = "; ".join(f"{r['prompt']} {r['layout']} k={r['k']}" for r in candidates
                        if r["delta"] >= 0.10 and r["p"] < 0.05)
        out.append(f"| {sm['task']} | {sm['model']} | {sm['n']} | {init_s['accuracy']:.3f} | "
                   f"{best['accuracy']:.3f} ({best['prompt']}) | {100 * best['delta']:+.1f} pt | {fmt_p(best['p'])} | "
                   f"{cell(bk)} | {cell(init_i)} | {cell(bi)} | {cell(bik)} | "
                   f"{'yes (' + how + ')' if ok else 'no'} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="support_triage,ethos",
                    help="bundled sets and/or BBH candidates (bbh_<task>), comma-separated")
    ap.add_argument("--models", default="qwen2.5-coder-1.5b", help="embedded model names, comma-separated")
    ap.add_argument("--phases", default="base,demos,inline",
                    help="base: initial + 3 experts (system); demos: best expert and initial with k demos; "
                         "inline: the same in the template layout")
    ap.add_argument("--inline-all", action="store_true", help="score all three experts in the inline layout too")
    ap.add_argument("--k", type=int, default=K_DEMOS)
    ap.add_argument("--limit", type=int, default=None, help="first N test examples only (screening)")
    ap.add_argument("--max-test", type=int, default=None, help=f"test cap (default {SPLIT_CAPS['max_test']})")
    ap.add_argument("--bbh-dir", type=Path, default=ROOT.parent / "shared" / "data" / "bbh")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--cached-only", action="store_true", help="make no calls: print what the cache holds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json-out", type=Path, default=None, help="also write the rows as JSON here")
    a = ap.parse_args()
    experts = json.loads(EXPERTS_FILE.read_text())
    cache = Cache(a.cache)
    phases = set(a.phases.split(","))
    summaries, tables, speed = [], [], []
    for model in a.models.split(","):
        call = Caller(model, cache, a.cached_only, a.threads)
        try:
            for name in a.tasks.split(","):
                s = load_setup(name, experts, a.bbh_dir, a.max_test)
                if a.limit:
                    s.test = s.test[: a.limit]
                rows = run_task(call, s, phases, a.k, a.inline_all)
                t, sm = table(s, model, rows)
                tables.append(t)
                summaries.append(sm)
        finally:
            call.close()
        secs = [cache.data[k]["seconds"] for k in call.used if k in cache.data]
        if secs:
            secs.sort()
            speed.append(f"| {model} | {len(secs)} | {sum(secs) / len(secs):.2f} | {secs[len(secs) // 2]:.2f} |")
    cmd = "python bench/bench_headroom.py " + " ".join(sys.argv[1:])
    print(f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
          f"{time.strftime('%Y-%m-%d')}; temperature 0, {MAX_TOKENS} reply tokens, k = {a.k} demos from train "
          f"(seed 0); command: `{cmd.strip()}`\n")
    print(headline(summaries) + "\n")
    print("\n\n".join(tables) + "\n")
    if speed:
        print("Seconds per call as measured when each reply was first made (wall time of the request, on a shared "
              "machine), over the replies these tables use:\n")
        print("| model | replies | mean s / call | median s / call |\n|---|---:|---:|---:|")
        print("\n".join(speed))
    if a.json_out:
        a.json_out.write_text(json.dumps(summaries, indent=1) + "\n")


if __name__ == "__main__":
    main()
