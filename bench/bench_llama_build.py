"""Speed of llama-cpp-python builds on this machine, for the two shapes of call an optimization makes: scoring (a
task prompt of ~150 tokens, a short answer) and proposing (a meta-prompt of ~700 tokens, a long reply). Why: the
build in requirements.txt is a portable AVX2 one, not -march=native (which crashed on a CPU with AMX tiles); this
says what that choice costs against a native build without AMX.

    python bench/bench_llama_build.py --python .venv/bin/python --python /tmp/venv-native/bin/python

Each interpreter runs the same child (in-process llama.cpp, no server), one after the other, at temperature 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, sys, time
import llama_cpp
from llama_cpp import Llama
path, threads, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
m = Llama(path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
scoring = [{"role": "system", "content": "Which option is the antecedent of the pronoun? Answer (A), (B) or (C)."},
           {"role": "user", "content": "Q: In the following sentences, explain the antecedent of the pronoun (which "
            "thing the pronoun refers to), or state that it is ambiguous. Sentence: The developer argued with the "
            "designer because she did not like the design. Options: (A) The developer did not like the design (B) "
            "The designer did not like the design (C) Ambiguous" * 2 + "\nA:"}]
meta = [{"role": "user", "content": ("Here are some instructions and their scores on a task. " * 60) +
         "Write a new instruction that is different from the old ones and has a score as high as possible."}]
m.create_chat_completion(scoring, max_tokens=1)  # warm-up: the first call maps the weights
out = {"system_info": llama_cpp.llama_print_system_info().decode()}
for name, msgs, n in (("scoring", scoring, 16), ("proposing", meta, 200)):
    times, toks = [], []
    for i in range(reps):
        t = time.perf_counter()
        # a new first token each time: llama-cpp-python reuses the longest cached prefix, which would skip the prompt
        fresh = [{**msgs[0], "content": f"#{i}. " + msgs[0]["content"]}, *msgs[1:]]
        r = m.create_chat_completion(fresh, max_tokens=n, temperature=0, seed=i)
        times.append(time.perf_counter() - t)
        toks.append((r["usage"]["prompt_tokens"], r["usage"]["completion_tokens"]))
    out[name] = {"s": sorted(times)[len(times) // 2], "tokens": toks[0]}
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", action="append", required=True, help="an interpreter with llama-cpp-python (repeat)")
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    from optimizers.local_model import model_path

    path = str(model_path(a.model))
    print(f"model {a.model}, {a.threads} threads, median of {a.reps} calls each\n")
    print("| build (interpreter) | SIMD | scoring call (s) | proposing call (s) | tokens in / out (scoring; proposing) |")
    print("|---|---|---:|---:|---|")
    for py in a.python:
        r = subprocess.run([py, "-c", CHILD, path, str(a.threads), str(a.reps)], capture_output=True, text=True)
        if r.returncode:
            print(f"| {py} | failed (exit {r.returncode}) | | | {r.stderr.strip()[-120:]} |")
            continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        simd = " ".join(f.split(" = ")[0].strip() for f in d["system_info"].split("|")
                        if f.strip().endswith("= 1") and "AVX" in f)
        print(f"| {py} | {simd} | {d['scoring']['s']:.2f} | {d['proposing']['s']:.2f} | "
              f"{d['scoring']['tokens'][0]}/{d['scoring']['tokens'][1]}; "
              f"{d['proposing']['tokens'][0]}/{d['proposing']['tokens'][1]} |")


if __name__ == "__main__":
    main()
