"""Accuracy of each bundled set's plain starting instruction on its test split, and seconds per scored example,
with the embedded default model (or any endpoint via OPENAI_BASE_URL). Prints a Markdown table.

    python bench/bench_plain_prompts.py [--limit N] [--sets a,b]

Uses a fresh response cache so every example is a real call (timing is honest).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from optimizers.data import BUNDLED  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--sets", default=",".join(BUNDLED))
    a = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="promptopt-bench-")
    env = {**os.environ, "PROMPTOPT_CACHE_DIR": cache}
    models = Path.home() / ".cache" / "promptopt" / "models"
    if models.exists():
        os.symlink(models, Path(cache) / "models")
    rows = []
    for name in a.sets.split(","):
        args = [sys.executable, "-m", "optimizers", "eval", "--data", name, "--split", "test", "--json"]
        if a.limit:
            args += ["--limit", str(a.limit)]
        t0 = time.perf_counter()
        r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode:
            rows.append(f"| {name} | error: {r.stderr.strip()[-200:]} |||||")
            continue
        o = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append(f"| {name} | {o['model']} | {o['n']} | {o['score']:.3f} [{o['ci_low']:.2f}, {o['ci_high']:.2f}] "
                    f"| {wall / max(o['n'], 1):.2f} | {o['calls']} |")
        print(rows[-1], file=sys.stderr)
    print(f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
          f"{time.strftime('%Y-%m-%d')}; command: python bench/bench_plain_prompts.py"
          + (f" --limit {a.limit}" if a.limit else ""))
    print()
    print("| set | model | n (test) | accuracy [95% CI] | s / example (incl. server start) | calls |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
