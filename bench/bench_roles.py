"""Two embedded models at once (task 0.5B, optimizer 1.5B): two llama.cpp children side by side, or one server that
swaps models on demand (llama-cpp-python's multi-model config loads the requested model and drops the other)? The
call pattern is an optimization's: one optimizer request (a new prompt, ~96 tokens), then a batch of task requests
(one short classification each, two in flight), repeated.

    nice -n 10 python bench/bench_roles.py [--rounds 3 --batch 16]

Prints one table: wall time per setup, seconds per optimizer and per task request, peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from optimizers.data import load_bundled  # noqa: E402
from optimizers.local_model import LocalServer, _free_port, model_path  # noqa: E402

TASK, OPT = "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"
SYSTEM = "Is this support ticket urgent? Answer urgent or normal."
META = ("Here is a prompt for classifying support tickets as urgent or normal, and its accuracy 0.55:\n\n{p}\n\n"
        "Write a better prompt. Reply with the new prompt only.")


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(f"{url}/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def pattern(task_url: str, opt_url: str, rounds: int, batch: int, tickets: list[str]) -> dict:
    t_opt = t_task = 0.0
    n_task = 0
    t0 = time.monotonic()
    prompt = SYSTEM
    for r in range(rounds):
        s = time.monotonic()
        out = post(opt_url, {"model": OPT, "messages": [{"role": "user", "content": META.format(p=prompt)}],
                             "max_tokens": 96, "temperature": 0.7, "seed": r})
        prompt = (out["choices"][0]["message"]["content"] or SYSTEM).strip()[:600]
        t_opt += time.monotonic() - s
        s = time.monotonic()
        def classify(ticket: str, instruction: str = prompt) -> dict:
            return post(task_url, {"model": TASK, "messages": [{"role": "system", "content": instruction},
                                                                {"role": "user", "content": ticket}],
                                   "max_tokens": 8, "temperature": 0})

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(classify, tickets[r * batch:(r + 1) * batch]))
        t_task += time.monotonic() - s
        n_task += batch
    return {"wall": time.monotonic() - t0, "opt_s": t_opt / rounds, "task_s": t_task / n_task}


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def two_children(a: argparse.Namespace, tickets: list[str]) -> dict:
    threads = max(1, (os.cpu_count() or 2) // 2)
    with LocalServer(TASK, n_threads=threads) as t, LocalServer(OPT, n_threads=threads) as o:
        res = pattern(t.base_url, o.base_url, a.rounds, a.batch, tickets)
        res["rss"] = rss_mb([t._proc.pid, o._proc.pid])
    return res


def one_swapping(a: argparse.Namespace, tickets: list[str]) -> dict:
    threads = os.cpu_count() or 2
    port = _free_port()
    cfg = {"host": "127.0.0.1", "port": port, "models": [
        {"model": str(model_path(m)), "model_alias": m, "n_threads": threads, "n_threads_batch": threads,
         "n_ctx": 4096} for m in (TASK, OPT)]}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg, f)
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--config_file", f.name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        res = pattern(url, url, a.rounds, a.batch, tickets)
        res["rss"] = rss_mb([proc.pid])
    finally:
        proc.terminate()
        proc.wait(30)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args()
    df, b = load_bundled("support_triage")
    tickets = [f"Ticket: {t}\nLabel:" for t in df[b.input_cols[0]].astype(str).tolist()[: a.rounds * a.batch]]
    rows = []
    for name, fn in (("two children (one per model, cores split)", two_children),
                     ("one server swapping models (all cores)", one_swapping)):
        print(f"# {name} ...", file=sys.stderr, flush=True)
        r = fn(a, tickets)
        rows.append((name, r))
    print(f"Machine: {os.cpu_count()} cores; pattern: {a.rounds} rounds of 1 optimizer request ({OPT}, 96 tokens) + "
          f"{a.batch} task requests ({TASK}, 2 in flight); command: `python bench/bench_roles.py --rounds {a.rounds} "
          f"--batch {a.batch}`\n")
    print("| setup | wall s | s / optimizer request | s / task request | peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['wall']:.1f} | {r['opt_s']:.2f} | {r['task_s']:.2f} | {r['rss']:.0f} |")


if __name__ == "__main__":
    main()
