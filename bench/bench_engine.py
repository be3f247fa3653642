"""Engine overhead and throughput against an OpenAI-compatible server that answers after a fixed latency L and serves
at most C requests at once (bench/latency_server.py, in its own process so its work does not share our GIL).

Prints markdown tables: evaluator throughput vs the limit C/L for C = 8, 64, 256 and 100 / 1,000 / 10,000 examples,
with the process's CPU per call (the engine and the openai client it calls through); a warm-cache re-run (zero calls);
the engine's own CPU per call with the HTTP client taken out; the zero-latency ceiling; the cost of storing events;
the peak memory of a 100,000-example evaluation and of a stored baseline run over 10,000.

    python bench/bench_engine.py [--latency 0.2] [--concurrency 8 64 256] [--sizes 100 1000 10000]
                                 [--processes 0 2] [--throughput-only]

Each row is run once per --processes value: 0 is the threaded path in one process, N > 0 sends the HTTP requests
from N worker processes (optimizers/http_workers.py); its CPU per call sums the parent and the workers.
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

def start_server(latency: float, concurrency: int) -> tuple[subprocess.Popen, str]:
    server = Path(__file__).resolve().parent / "latency_server.py"
    p = subprocess.Popen([sys.executable, str(server), str(latency), str(concurrency)], stdout=subprocess.PIPE,
                         text=True)
    return p, p.stdout.readline().strip()


def peak_rss_mb() -> float:
    """This process's peak resident memory since exec (VmHWM): getrusage's ru_maxrss keeps the high-water mark of the
    parent that forked it, which is this benchmark's own, not the child's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def examples(n: int) -> list[Example]:
    return [Example(str(i), {"text": f"Review {i}: {'great fun' if i % 2 else 'a dull mess'}."},
                    "positive" if i % 2 else "negative") for i in range(n)]


def proc_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes `pids` have used so far (/proc/PID/stat, Linux only)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def evaluate(url: str, n: int, concurrency: int, cache_dir: Path, run_id: str = "bench-cold", processes: int = 0
             ) -> tuple[float, float, int, int]:
    """Wall seconds, CPU seconds, calls, cache hits of one cold or warm evaluation of n examples. CPU: the evaluating
    process's, plus its HTTP worker processes' with `processes` > 0 (started and answering before the clock starts).
    A warm re-run is another run (its own id): replies stamped by the same run would count as its own unrecorded
    calls."""
    ep = Endpoint(url, "bench", max_concurrency=concurrency, max_retries=0, processes=processes)
    pids = ep._workers.start() if ep._workers is not None else []
    meter = Meter()
    meter.run_id = run_id  # journal every request, as a stored run does
    llm = LLM(ep, "stub-task", meter=meter, cache=ResponseCache(cache_dir))
    t, cpu, wcpu = time.perf_counter(), time.process_time(), proc_cpu(pids)
    Evaluator(llm, TASK).evaluate("Classify the review.", examples(n))
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu + proc_cpu(pids) - wcpu
    c = meter.snapshot()
    llm.cache.close()
    ep.close()
    return wall, cpu, c.calls, c.cache_hits


def client_alone(url: str, n: int, concurrency: int) -> tuple[float, float]:
    """Wall and CPU seconds of the openai client by itself sending n such requests from `concurrency` threads (a
    client each, made before the clock starts, the same `client.post` the engine uses): the ceiling that the rule
    "the LLM is reached only through the openai client" sets, with no cache, journal, budget or evaluator."""
    import threading

    import httpx2
    import openai

    tls = httpx2.create_ssl_context()
    clients = [openai.OpenAI(base_url=url, api_key="bench", max_retries=0, http_client=openai.DefaultHttpxClient(verify=tls))
               for _ in range(concurrency)]
    todo, lock = iter(examples(n)), threading.Lock()

    def work(client: openai.OpenAI) -> None:
        while True:
            with lock:
                ex = next(todo, None)
            if ex is None:
                return
            body = {"temperature": 0.0, "max_tokens": 32, "model": "stub-task",
                    "messages": TASK.messages("Classify the review.", ex)}
            json.loads(client.post("/chat/completions", body=body, cast_to=bytes,
                                   options={"security": {"bearer_auth": True}}))

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    t, cpu = time.perf_counter(), time.process_time()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t, time.process_time() - cpu


def engine_only(n: int, concurrency: int, latency: float, cache_dir: Path) -> float:
    """CPU ms per call of everything but the HTTP client: the request is answered in-process (after `latency`,
    sleeping like a socket wait), everything else (cache, journal, budget, extraction, threads) is the real path."""
    reply = {"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "positive"}}],
             "usage": {"prompt_tokens": 20, "completion_tokens": 1}}

    def send(self, messages, p):  # noqa: ANN001 - stands in for LLM._send
        time.sleep(latency)
        return reply

    real, LLM._send = LLM._send, send
    try:
        meter = Meter()
        meter.run_id = "bench"
        llm = LLM(Endpoint("http://127.0.0.1:9/v1", "bench", max_concurrency=concurrency), "stub-task", meter=meter,
                  cache=ResponseCache(cache_dir))
        cpu = time.process_time()
        Evaluator(llm, TASK).evaluate("Classify the review.", examples(n))
        return (time.process_time() - cpu) / n * 1000
    finally:
        LLM._send = real


def eval_memory(n: int, url: str, tmp: Path) -> tuple[float, float]:
    """Peak RSS (MB) and wall time of a child process that evaluates a prompt on n examples (C = 64)."""
    code = r"""
import json, sys, time
sys.path.insert(0, sys.argv[4])
from bench.bench_engine import examples, peak_rss_mb, TASK
from optimizers.evaluate import Evaluator
from optimizers.llm import LLM, Endpoint, Meter, ResponseCache
n, url, tmp = int(sys.argv[1]), sys.argv[2], sys.argv[3]
exs = examples(n)
t = time.perf_counter()
res = Evaluator(LLM(Endpoint(url, "bench", max_concurrency=64), "stub-task", meter=Meter(),
                    cache=ResponseCache(tmp + "/eval-mem-cache")), TASK).evaluate("Classify the review.", exs)
assert res.n == n
print(json.dumps({"rss_mb": peak_rss_mb(),
                  "wall": time.perf_counter() - t}))
"""
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code, str(n), url, str(tmp), root], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"evaluation memory run failed:\n{out.stderr[-3000:]}")
    d = json.loads(out.stdout.strip().splitlines()[-1])
    return d["rss_mb"], d["wall"]


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
import json, sys, time
sys.path.insert(0, sys.argv[4])
from bench.bench_engine import examples, peak_rss_mb, TASK
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
print(json.dumps({"rss_mb": peak_rss_mb(),
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
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 64, 256])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--max-seconds", type=float, default=60.0, help="skip a size that would take longer at C/L")
    ap.add_argument("--memory-examples", type=int, default=100_000)
    ap.add_argument("--processes", type=int, nargs="+", default=[0, 2],
                    help="HTTP worker processes (Endpoint(processes=N)); 0: the threaded path in one process")
    ap.add_argument("--throughput-only", action="store_true", help="only the throughput table")
    a = ap.parse_args()
    L = a.latency
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"latency server L = {L * 1000:.0f} ms (bench/latency_server.py)\n")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print("| C | examples | HTTP processes | limit C/L calls/s | cold: wall s | calls/s | % of C/L | CPU ms/call "
              "(engine + openai client, all its processes) | warm re-run: wall s | warm calls |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for C in a.concurrency:
            srv, url = start_server(L, C)
            try:
                for n in a.sizes:
                    if n / (C / L) > a.max_seconds:
                        continue
                    for procs in a.processes:
                        cache = tmp / f"cache-{C}-{n}-{procs}"
                        wall, cpu, calls, _ = evaluate(url, n, C, cache, processes=procs)
                        wwall, _, wcalls, _ = evaluate(url, n, C, cache, run_id="bench-warm", processes=procs)
                        print(f"| {C} | {n:,} | {procs or '- (threads)'} | {C / L:.0f} | {wall:.2f} | "
                              f"{calls / wall:.0f} | {100 * calls / wall / (C / L):.1f}% | {cpu / calls * 1000:.2f} | "
                              f"{wwall:.2f} | {wcalls} |", flush=True)
                    bwall, bcpu = client_alone(url, n, C)
                    print(f"| {C} | {n:,} | openai client alone | {C / L:.0f} | {bwall:.2f} | {n / bwall:.0f} | "
                          f"{100 * n / bwall / (C / L):.1f}% | {bcpu / n * 1000:.2f} | | |", flush=True)
            finally:
                srv.kill()
        print()
        if a.throughput_only:
            return
        for C in (1, 64):
            ms = engine_only(3000, C, 0.0 if C == 1 else L, tmp / f"engine-only-{C}")
            print(f"Engine's own CPU per call without the HTTP client (cache, journal, budget, extraction, threads), "
                  f"C = {C}{'' if C == 1 else f', L = {L * 1000:.0f} ms'}: {ms:.2f} ms")
        srv0, url0 = start_server(0.0, 256)
        try:
            n0 = 3000
            wall0, cpu0, calls0, _ = evaluate(url0, n0, 64, tmp / "cache-zero")
            print(f"Zero-latency server, {n0:,} examples, C = 64: {calls0 / wall0:.0f} calls/s, "
                  f"{cpu0 / calls0 * 1000:.2f} ms CPU per call (the engine's ceiling on this machine)")
            per = store_cost(500, tmp)
            print(f"Store: {per * 1000:.2f} ms per stored candidate_scored event with 50 predictions "
                  "(SQLite WAL, one transaction each, committed before anything reads it)")
            rss, mwall = eval_memory(a.memory_examples, url0, tmp)
            print(f"Memory: evaluating one prompt on {a.memory_examples:,} examples (C = 64, zero-latency server) peaks "
                  f"at {rss:.0f} MB RSS ({mwall:.1f} s)")
            rss, mwall = run_memory(10000, url0, tmp)
            print(f"Memory: a stored baseline run over 10,000 dev examples peaks at {rss:.0f} MB RSS "
                  f"({mwall:.1f} s against the zero-latency server)")
        finally:
            srv0.kill()


if __name__ == "__main__":
    main()
