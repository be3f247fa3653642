"""Does the cap hold on a real model? One run per optimizer on a bundled set through the CLI, each with a call cap that
covers the whole run, printing what was billed for the optimization, for the report, and in total.

    python bench/bench_budget.py [--data sentiment] [--max-calls 150] [--optimizers ape,protegi,opro,pe2,gpo]

Runs on the embedded model unless --base-url is given; a fresh cache per run, so nothing is free.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="sentiment")
    ap.add_argument("--max-calls", type=int, default=150)
    ap.add_argument("--optimizers", default="ape,protegi,opro,pe2,gpo")
    ap.add_argument("--base-url")
    ap.add_argument("--model")
    a = ap.parse_args()
    rows = []
    for name in a.optimizers.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "PROMPTOPT_DB": str(Path(tmp) / "runs.sqlite")}
            cmd = [sys.executable, "-m", "optimizers", "run", "--data", a.data, "--optimizer", name,
                   "--max-calls", str(a.max_calls), "--cache-dir", str(Path(tmp) / "cache"), "--json"]
            if a.base_url:
                cmd += ["--base-url", a.base_url] + (["--model", a.model] if a.model else [])
            p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if p.returncode not in (0, 1):
                print(f"{name}: failed: {p.stderr.strip()[-300:]}", file=sys.stderr)
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
        b, i = r["scores"]["best"].get("test"), r["scores"]["initial"].get("test")
        rows.append((name, a.max_calls, r["optimization_usage"]["calls"], r["report_usage"]["calls"], r["calls"],
                     r["status"], ", ".join(r.get("report_skipped") or []) or "-",
                     f"{i['score']:.3f} -> {b['score']:.3f}" if b and i else "-"))
        print(f"done {name}", file=sys.stderr)
    print(f"\n{a.data}, cap {a.max_calls} calls for the whole run\n")
    print("| optimizer | cap | optimization | report | total | status | splits left out | test initial -> best |")
    print("|---|---:|---:|---:|---:|---|---|---|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
    return 0 if all(r[4] <= r[1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
