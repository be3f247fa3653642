"""Speed and quality of the embedded models, to choose the default one.

An optimization run makes a few hundred calls, most of them scoring one example, so what matters is seconds per scored
example and whether a plain instruction already beats the majority class; the rewrite probe checks that the model can
play the optimizer's part (propose a new prompt in a parseable form) at all.

    python3 bench/bench_local_model.py                      # all installed built-in models, 40 examples per set
    python3 bench/bench_local_model.py --models smollm2-135m --n 10 --out bench/results/local_model.md
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import importlib.metadata
import json
import os
import platform
import random
import re
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optimizers.local_model import MODELS, LocalServer, ModelError, model_path  # noqa: E402

SHARED = Path("/work/shared/data")
SEED = 0


@dataclass
class Dataset:
    name: str
    instruction: str
    labels: tuple[str, str]
    examples: list[tuple[str, str]]  # (input, label)


def _bbh(name: str, instruction: str, labels: tuple[str, str]) -> Dataset | None:
    path = SHARED / "bbh" / f"{name}.json"
    if not path.exists():
        return None
    ex = [(e["input"], e["target"]) for e in json.loads(path.read_text())["examples"]]
    return Dataset(name, instruction, labels, ex)


def _liar() -> Dataset | None:
    path = SHARED / "protegi" / "liar_train.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    ex = [(r["text"], "Yes" if int(r["label"]) == 1 else "No") for r in rows]
    return Dataset("liar", "Determine whether the Statement is a lie (Yes) or not (No) based on the Context and other "
                           "information.", ("Yes", "No"), ex)


def _sentiment() -> Dataset | None:
    """The project's own sentiment set, if another part of the project has added it (its columns are guessed)."""
    path = ROOT / "data" / "sentiment.csv"
    if not path.exists():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    cols = {c.lower(): c for c in rows[0]}
    text = next((cols[c] for c in ("text", "sentence", "review", "input") if c in cols), None)
    label = next((cols[c] for c in ("label", "sentiment", "target") if c in cols), None)
    if not text or not label:
        print(f"skipping {path}: no text/label columns in {list(rows[0])}", file=sys.stderr)
        return None
    names = {"1": "positive", "0": "negative", "pos": "positive", "neg": "negative"}
    ex = [(r[text], names.get(r[label].strip().lower(), r[label].strip().lower())) for r in rows]
    if len({lab for _, lab in ex}) != 2:
        print(f"skipping {path}: not binary", file=sys.stderr)
        return None
    return Dataset("sentiment", "Classify the sentiment of the text.", ("positive", "negative"), ex)


def datasets() -> list[Dataset]:
    found = [
        _sentiment(),
        _bbh("navigate", "Determine whether following the instructions returns you to the starting point.",
             ("Yes", "No")),
        _bbh("boolean_expressions", "Evaluate the Boolean expression.", ("True", "False")),
        _bbh("snarks", "Decide which of the two statements is sarcastic.", ("(A)", "(B)")),
        _liar(),
    ]
    return [d for d in found if d is not None]


def norm(text: str) -> str:
    """First word, lower case, without punctuation: '(A)' and 'A.' both become 'a'."""
    words = (text or "").strip().split()
    return re.sub(r"[^0-9a-z]", "", words[0].lower()) if words else ""


@dataclass
class Score:
    dataset: str
    n: int
    correct: int
    well_formed: int
    majority: float
    top_answer: float  # share of the most frequent reply: 1.0 means the model ignored the input
    seconds: float
    prompt_tokens: list[int] = field(default_factory=list)


def score(client: openai.OpenAI, model: str, ds: Dataset, n: int) -> Score:
    sample = random.Random(SEED).sample(ds.examples, min(n, len(ds.examples)))
    x, y = ds.labels
    head = f"{ds.instruction} Answer with only {x} or {y}.\n\n"
    allowed = {norm(x), norm(y)}
    correct = well_formed = 0
    tokens, answers = [], []
    t0 = time.perf_counter()
    for text, label in sample:
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": head + text}],
                                           temperature=0, max_tokens=8)
        got = norm(r.choices[0].message.content or "")
        answers.append(got)
        correct += got == norm(label)
        well_formed += got in allowed
        if r.usage:
            tokens.append(r.usage.prompt_tokens)
    seconds = (time.perf_counter() - t0) / len(sample)
    counts = [sum(lab == c for _, lab in sample) for c in ds.labels]
    top = max(answers.count(v) for v in set(answers)) / len(answers)
    return Score(ds.name, len(sample), correct, well_formed, max(counts) / len(sample), top, seconds, tokens)


OLD_PROMPT = "Determine whether the Statement is a lie (Yes) or not (No) based on the Context and other information."


def rewrite_probe(client: openai.OpenAI, model: str, liar: Dataset, seeds: int) -> tuple[int, float, list[str]]:
    """ProTeGi's step as two short calls (reasons, then the new prompt in tags), sampled with several seeds; returns
    the usable rewrites (tags present, sane length, not the old prompt)."""
    wrong = random.Random(SEED + 1).sample(liar.examples, 2)
    errors = "\n\n".join(f"Text: {t}\nLabel: {lab}\nPrediction: {'No' if lab == 'Yes' else 'Yes'}" for t, lab in wrong)
    ask = (f'I\'m trying to write a zero-shot classifier prompt.\n\nMy current prompt is:\n"{OLD_PROMPT}"\n\n'
           f"But this prompt gets the following examples wrong:\n\n{errors}\n\n"
           "Give two short reasons why the prompt could have gotten these examples wrong.")
    usable, texts = 0, []
    t0 = time.perf_counter()
    for seed in range(seeds):
        msgs = [{"role": "user", "content": ask}]
        r1 = client.chat.completions.create(model=model, messages=msgs, temperature=0.8, max_tokens=160, seed=seed)
        msgs += [{"role": "assistant", "content": r1.choices[0].message.content or ""},
                 {"role": "user", "content": "Based on these reasons, write an improved prompt for the task. Reply "
                                             "with only the new prompt between <START> and <END>."}]
        r2 = client.chat.completions.create(model=model, messages=msgs, temperature=0.8, max_tokens=160, seed=seed)
        m = re.search(r"<START>(.*?)<END>", r2.choices[0].message.content or "", re.S)
        new = m.group(1).strip() if m else ""
        ok = 20 <= len(new) <= 800 and new.lower().strip(' ."') != OLD_PROMPT.lower().strip(' ."') and "<" not in new
        usable += ok
        if ok:
            texts.append(new)
    return usable, (time.perf_counter() - t0) / seeds, texts


def installed_models(names: list[str]) -> list[str]:
    out = []
    for name in names:
        try:
            model_path(name)
            out.append(name)
        except ModelError as e:
            print(f"skipping {name}: {str(e).splitlines()[0]}", file=sys.stderr)
    return out


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split()
        simd = ", ".join(f for f in ("avx2", "avx512f") if f in flags)
    except (OSError, StopIteration):
        simd = "?"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores (nproc), {cpu} ({simd}), {mem:.0f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, "
            f"llama-cpp-python {importlib.metadata.version('llama-cpp-python')}, openai {openai.__version__}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"],
                    choices=list(MODELS))
    ap.add_argument("--n", type=int, default=40, help="examples per data set")
    ap.add_argument("--seeds", type=int, default=4, help="samples of the rewrite probe")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    ap.add_argument("--out", type=Path, help="also write the report (Markdown) here")
    a = ap.parse_args(argv)

    load_before = os.getloadavg()[0]
    sets = datasets()
    liar = next((d for d in sets if d.name == "liar"), None)
    lines = ["| model | server load s | data set | n | accuracy | majority class | well-formed | "
             "top answer share | s / example | prompt tokens |", "|---|---|---|---|---|---|---|---|---|---|"]
    probe = ["| model | usable rewrites | s / rewrite (2 calls) | first usable rewrite |", "|---|---|---|---|"]
    summary = ["| model | mean s / example | 300 scored examples | mean accuracy | mean majority |",
               "|---|---|---|---|---|"]
    for name in installed_models(a.models):
        server = LocalServer(name, n_threads=a.threads)
        server.start()
        print(f"{name}: ready in {server.load_seconds:.1f} s at {server.base_url}", file=sys.stderr, flush=True)
        try:
            client = openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0, timeout=300)
            scores = []
            for ds in sets:
                s = score(client, server.model_alias, ds, a.n)
                scores.append(s)
                tok = f"{statistics.mean(s.prompt_tokens):.0f}" if s.prompt_tokens else "?"
                lines.append(f"| {name} | {server.load_seconds:.1f} | {s.dataset} | {s.n} | {s.correct / s.n:.2f} | "
                             f"{s.majority:.2f} | {s.well_formed / s.n:.2f} | {s.top_answer:.2f} | {s.seconds:.2f} | {tok} |")
                print(lines[-1], file=sys.stderr, flush=True)
            if scores:
                per = statistics.mean(s.seconds for s in scores)
                summary.append(f"| {name} | {per:.2f} | {300 * per / 60:.1f} min | "
                               f"{statistics.mean(s.correct / s.n for s in scores):.2f} | "
                               f"{statistics.mean(s.majority for s in scores):.2f} |")
            if liar and a.seeds:
                usable, per_rewrite, texts = rewrite_probe(client, server.model_alias, liar, a.seeds)
                first = (texts[0][:160].replace("\n", " ").replace("|", "/") + ("…" if len(texts[0]) > 160 else "")
                         ) if texts else "—"
                probe.append(f"| {name} | {usable}/{a.seeds} | {per_rewrite:.1f} | {first} |")
                print(probe[-1], file=sys.stderr, flush=True)
        finally:
            server.stop()

    cmd = "python3 " + " ".join(shlex.quote(x) for x in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    report = "\n".join([
        "# Embedded local models: speed and plain-instruction accuracy", "",
        f"- Date: {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"- Machine: {machine()}",
        f"- Command (from the repo root): `{cmd}`",
        f"- Load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f} (the timings assume "
        "an otherwise idle machine; the server itself keeps about one load unit busy)",
        f"- Settings: {a.n} examples per data set (same seeded sample for every model), one example per call, "
        "temperature 0, max_tokens 8; the instruction, \"Answer with only X or Y.\" and the input in one user message; "
        "correct = normalised first word equals the label; well-formed = the first word is one of the two labels; top answer share = how often the most frequent reply was given "
        "(1.00: the model answered the same whatever the input). "
        "Server load = start of the child process until /v1/models answers (model file already unpacked).",
        f"- Rewrite probe: on LIAR, two fixed misclassified examples; call 1 asks for two reasons the prompt fails, "
        f"call 2 for a new prompt between <START> and <END>; T=0.8, seeds 0..{a.seeds - 1}; usable = tags present, "
        "20-800 characters, differs from the old prompt.", "",
        "## Per data set", "", *lines, "",
        "## Summary", "", *summary, "",
        "## Rewrite probe", "", *probe, ""])
    print(report)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
