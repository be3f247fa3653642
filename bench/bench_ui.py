"""UI latency in a real browser (Playwright + Debian's /usr/bin/chromium) against `streamlit run app.py`:

1. time to first paint of each page: from navigation to the page's content drawn and the script run finished;
2. event-to-chart delay on the Optimize page of a running run: an event is committed to the store at a known time
   and the browser is polled (every 25 ms) until the live chart shows one more point.

    python bench/bench_ui.py [--repeats 3] [--events 10] [--embedded]

--embedded also measures, on the embedded default model (no stub), the time from clicking Quick start on Home to the
first point on the Optimize page's chart (it includes starting the model server and scoring the initial prompt).

The app talks to a scripted OpenAI-compatible stub (no model work), so the figures are the dashboard's own cost.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optimizers import methods  # noqa: E402,F401
from optimizers.config import DataConfig, RunConfig  # noqa: E402
from optimizers.data import Splits  # noqa: E402
from optimizers.events import CandidateProposed, CandidateScored, StepDone  # noqa: E402
from optimizers.runner import Runner  # noqa: E402
from optimizers.store import Store  # noqa: E402
from tests.conftest import TOY_TASK, toy_examples  # noqa: E402
from tests.e2e.conftest import COUNT_POINTS_JS, E2EResponder, start_app  # noqa: E402
from tests.stub_server import StubServer  # noqa: E402

PAGES = {"Home": "", "Data": "Data", "Optimize": "Optimize", "Inspect": "Inspect", "Compare": "Compare",
         "Runs": "Runs"}
RUNNING = '[data-testid="stStatusWidgetRunningIcon"], [data-testid="stStatusWidgetRunningManIcon"]'


def painted(page, timeout: float = 60.0) -> float:
    """Seconds until the main area has content and no script run is in progress."""
    t0 = time.perf_counter()
    page.wait_for_selector('[data-testid="stMain"] [data-testid="stHeading"], [data-testid="stMain"] h1',
                           timeout=timeout * 1000)
    while page.locator(RUNNING).count() > 0 and time.perf_counter() - t0 < timeout:
        time.sleep(0.02)
    return time.perf_counter() - t0


def fake_running_run(store: Store) -> str:
    """A run marked running by this process (alive, so not 'crashed'), whose events this bench writes itself."""
    cfg = RunConfig(optimizer="baseline", initial_prompt="Classify the text.", task=TOY_TASK,
                    data=DataConfig(name="toy", input_cols=["text"], label_col="label"))
    rid = Runner(store).create(cfg, Splits(toy_examples(8), toy_examples(4, start=50), toy_examples(4, start=90)))
    store.set_status(rid, "running", worker_pid=os.getpid())
    return rid


def add_point(store: Store, rid: str, k: int, oi: int) -> tuple[float, int]:
    ids = [str(i) for i in range(1, 9)]
    cid = f"cbench{k:04d}"
    store.append_event(rid, CandidateProposed(step=k, candidate_id=cid, text=f"Prompt number {k}.",
                                              origin="generated"), stream_index=oi)
    t = time.perf_counter()
    correct = [(i + k) % 3 != 0 for i in range(8)]
    store.append_event(rid, CandidateScored(step=k, candidate_id=cid, split="train", n=8, score=sum(correct) / 8,
                                            example_ids=ids, correct=correct, purpose="selection"),
                       stream_index=oi + 1)
    store.append_event(rid, StepDone(step=k, best_id=cid, best_score=sum(correct) / 8, best_split="train",
                                     beam=[cid]), stream_index=oi + 2)
    return t, oi + 3


# scoring progress: a first answered call, or requests sent to the model and waiting for it
PROGRESS_JS = """() => /Working: ([1-9][0-9,]* calls so far|0 calls so far.*[1-9][0-9]* waiting for the model)/.test(
    document.body.innerText)"""


def quick_start_to_first_point(read_s: float = 0.0) -> tuple[float, float]:
    """(seconds to the first progress shown, seconds to the first point on the chart) after clicking Quick start,
    `read_s` seconds after Home is drawn (Home warms the embedded model in the background meanwhile)."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as d, start_app(None, Path(d)) as app, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=os.environ.get("PROMPTOPT_E2E_CHROMIUM", "/usr/bin/chromium"),
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(app.url)
        painted(page)
        time.sleep(read_s)
        t0 = time.perf_counter()
        page.get_by_role("button", name="Quick start").click()
        progress = None
        while True:
            if progress is None and page.evaluate(PROGRESS_JS):
                progress = time.perf_counter() - t0
            if page.locator(".js-plotly-plot").count() and page.evaluate(COUNT_POINTS_JS) > 0:
                break
            if time.perf_counter() - t0 > 600:
                raise SystemExit("no point on the chart 600 s after Quick start")
            time.sleep(0.1)
        took = time.perf_counter() - t0
        browser.close()
        return (progress if progress is not None else took), took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--events", type=int, default=10)
    ap.add_argument("--embedded", action="store_true")
    a = ap.parse_args()
    # clicked at once (the model still loading), and after 10 s on Home (a user reading it; the model loaded)
    first_point = {r: quick_start_to_first_point(r) for r in (0.0, 10.0)} if a.embedded else None
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as d, StubServer(E2EResponder()) as stub:
        tmp = Path(d)
        with start_app(stub, tmp) as app, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=os.environ.get("PROMPTOPT_E2E_CHROMIUM", "/usr/bin/chromium"),
                                         args=["--no-sandbox", "--disable-dev-shm-usage"])
            store = Store(app.db)
            rid = fake_running_run(store)
            paint: dict[str, list[float]] = {}
            for _ in range(a.repeats):
                for name, path in PAGES.items():
                    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
                    page = ctx.new_page()
                    t0 = time.perf_counter()
                    page.goto(f"{app.url}/{path}" + (f"?run={rid}" if name in ("Optimize", "Inspect") else ""))
                    paint.setdefault(name, []).append(time.perf_counter() - t0 + painted(page))
                    ctx.close()
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = ctx.new_page()
            page.goto(f"{app.url}/Optimize?run={rid}")
            painted(page)
            delays, oi = [], 0
            for k in range(a.events):
                before = page.evaluate(COUNT_POINTS_JS)
                t, oi = add_point(store, rid, k, oi)
                while page.evaluate(COUNT_POINTS_JS) <= before:
                    if time.perf_counter() - t > 30:
                        raise SystemExit(f"event {k}: no new point on the chart after 30 s")
                    time.sleep(0.025)
                delays.append(time.perf_counter() - t)
                time.sleep(0.3 + (k % 4) * 0.45)  # land at different phases of the page's polling period
            store.set_status(rid, "stopped", "bench done")
            browser.close()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}; command: python bench/bench_ui.py --repeats {a.repeats} --events {a.events}\n")
    print("| page | first paint, median s | max s |")
    print("|---|---:|---:|")
    for name, v in paint.items():
        print(f"| {name} | {statistics.median(v):.2f} | {max(v):.2f} |")
    if first_point is not None:
        print("\nEmbedded default model, click Quick start -> first progress shown (requests waiting for the model, "
              "or calls answered) / first point on the chart (the initial prompt scored on dev):\n")
        print("| clicked | first progress s | first point s |\n|---|---:|---:|")
        for r, (prog, pt) in first_point.items():
            print(f"| {r:.0f} s after Home is drawn | {prog:.1f} | {pt:.1f} |")
    q = sorted(delays)
    print(f"\nEvent stored -> point on the Optimize chart (live fragment polls the store every second): median "
          f"{statistics.median(q):.2f} s, p90 {q[int(0.9 * (len(q) - 1))]:.2f} s, max {q[-1]:.2f} s over {len(q)} events")


if __name__ == "__main__":
    main()
