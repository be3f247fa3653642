"""Engine overhead and throughput against a scripted OpenAI-compatible server that answers after a fixed latency L and
serves at most C requests at once (run in its own process, so its work does not share our GIL).

Prints a markdown table: evaluator throughput vs the limit C/L for 100 / 1,000 / 10,000 examples, the per-call
overhead of the engine (client + cache + extraction), a warm-cache re-run (must make zero calls), the cost of storing
events with their per-example predictions, and the peak memory of a stored baseline run over 10,000 examples.

    python bench/bench_engine.py [--latency 0.05] [--concurrency 8] [--sizes 100 1000 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optimizers.data import Example, Splits  # noqa: E402
from optimizers.evaluate import Evaluator  # noqa: E402
from optimizers.llm import LLM, Endpoint, Meter, ResponseCache  # noqa: E402
from optimizers.task import Task  # noqa: E402

TASK = Task(template="{prompt}\n\nText: {text}\nAnswer:", input_cols=["text"], labels=["positive", "negative"])

SERVER = r"""
import sys, time
sys.path.insert(0, sys.argv[3])
from tests.stub_server import StubServer
s = StubServer(lambda req: "positive", latency=float(sys.argv[1]), max_concurrency=int(sys.argv[2])).start()
print(s.base_url, flush=True)
while True:
    time.sleep(3600)
"""


def start_server(latency: float, concurrency: int) -> tuple[subprocess.Popen, str]:
    root = str(Path(__file__).resolve().parents[1])
    p = subprocess.Popen([sys.executable, "-c", SERVER, str(latency), str(concurrency), root], stdout=subprocess.PIPE,
                         text=True)
    return p, p.stdout.readline().strip()


def examples(n: int) -> list[Example]:
    return [Example(str(i), {"text": f"Review {i}: {'great fun' if i % 2 else 'a dull mess'}."},
                    "positive" if i % 2 else "negative") for i in range(n)]


def evaluate(url: str, n: int, concurrency: int, cache_dir: Path) -> tuple[float, int, int]:
    ep = Endpoint(url, "bench", max_concurrency=concurrency, max_retries=0)
    meter = Meter()
    llm = LLM(ep, "stub-task", meter=meter, cache=ResponseCache(cache_dir))
    t = time.perf_counter()
    Evaluator(llm, TASK).evaluate("Classify the review.", examples(n))
    wall = time.perf_counter() - t
    c = meter.snapshot()
    llm.cache.close()
    return wall, c.calls, c.cache_hits


def store_cost(n: int, tmp: Path) -> float:
    """Seconds per stored CandidateScored event carrying 50 per-example predictions (the runner's unit of work)."""
    from optimizers.events import CandidateScored
    from optimizers.store import Store

    store = Store(tmp / "store-bench.sqlite")
    rid = store.create_run({"bench": True}, optimizer="baseline", seed=0, data_name="bench",
                           splits=Splits(examples(50), [], []))
    from optimizers.evaluate import Prediction

    preds = [Prediction(str(i), "positive", "positive", "positive", True, prompt_tokens=20, completion_tokens=1).as_dict()
             for i in range(50)]
    t = time.perf_counter()
    for k in range(n):
        ev = CandidateScored(step=k, candidate_id=f"c{k}", split="train", n=50, score=1.0,
                             example_ids=[str(i) for i in range(50)], correct=[True] * 50)
        store.append_event(rid, ev, preds, stream_index=k)
    return (time.perf_counter() - t) / n


def run_memory(n: int, url: str, tmp: Path) -> tuple[float, float]:
    """Peak RSS (MB) and wall time of a child process that stores and executes a baseline run over n dev examples."""
    code = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[4])
from bench.bench_engine import examples, TASK
from optimizers import methods
from optimizers.data import Splits
from optimizers.config import DataConfig, RoleEndpoint, RunConfig
from optimizers.runner import Runner
from optimizers.store import Store
n, url, tmp = int(sys.argv[1]), sys.argv[2], sys.argv[3]
exs = examples(n)
store = Store(tmp + "/mem.sqlite")
cfg = RunConfig(optimizer="baseline", initial_prompt="Classify the review.", task=TASK,
                task_endpoint=RoleEndpoint(base_url=url, model="stub-task"),
                data=DataConfig(name="bench", input_cols=["text"], label_col="label"),
                max_concurrency=8, cache_dir=tmp + "/mem-cache", report_splits=["dev"])
t = time.perf_counter()
from optimizers.data import Example
train = [Example("t" + e.id, e.fields, e.label) for e in exs[:10]]
res = Runner(store, api_key="bench").execute(Runner(store).create(cfg, Splits(train, exs, [])))
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "wall": time.perf_counter() - t, "status": res.status}))
"""
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code, str(n), url, str(tmp), root], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"memory run failed:\n{out.stderr[-3000:]}")
    d = json.loads(out.stdout.strip().splitlines()[-1])
    assert d["status"] == "done", d
    return d["rss_mb"], d["wall"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    a = ap.parse_args()
    L, C = a.latency, a.concurrency
    limit = C / L
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"stub latency L={L * 1000:.0f} ms, concurrency C={C}, limit C/L = {limit:.0f} calls/s\n")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        srv, url = start_server(L, C)
        srv0, url0 = start_server(0.0, C)
        try:
            print("| examples | cold: wall s | calls/s | % of C/L | overhead ms/call | warm re-run: wall s | "
                  "warm calls | warm hits |")
            print("|---:|---:|---:|---:|---:|---:|---:|---:|")
            for n in a.sizes:
                cache = tmp / f"cache-{n}"
                wall, calls, _ = evaluate(url, n, C, cache)
                wwall, wcalls, whits = evaluate(url, n, C, cache)
                overhead = (wall * C / calls - L) * 1000 if calls else float("nan")
                print(f"| {n:,} | {wall:.2f} | {calls / wall:.0f} | {100 * calls / wall / limit:.0f}% | "
                      f"{overhead:.2f} | {wwall:.2f} | {wcalls} | {whits:,} |")
            n0 = min(max(a.sizes), 2000)
            wall0, calls0, _ = evaluate(url0, n0, C, tmp / "cache-zero")
            print(f"\nZero-latency server, {n0:,} examples, C={C}: {calls0 / wall0:.0f} calls/s "
                  f"({wall0 / calls0 * 1000:.2f} ms per call: client + HTTP + stub + cache + extraction, "
                  "the engine's ceiling on this machine)")
            per = store_cost(500, tmp)
            print(f"Store: {per * 1000:.2f} ms per stored candidate_scored event with 50 predictions "
                  "(SQLite WAL, one transaction each, committed before anything reads it)")
            rss, mwall = run_memory(10000, url0, tmp)
            print(f"Memory: a stored baseline run over 10,000 dev examples peaks at {rss:.0f} MB RSS "
                  f"({mwall:.1f} s against the zero-latency server)")
        finally:
            srv.kill()
            srv0.kill()


if __name__ == "__main__":
    main()
