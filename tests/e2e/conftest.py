"""End-to-end fixtures: a scripted OpenAI-compatible stub over real HTTP, `streamlit run app.py` against it in a
subprocess, and Playwright driving Debian's chromium (/usr/bin/chromium; no browser downloads).

The module is skipped (with the reason) when the browser or the Playwright package is missing; CI installs both.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.stub_server import StubServer

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = os.environ.get("PROMPTOPT_E2E_CHROMIUM", "/usr/bin/chromium")
API_KEY = "test-key-e2e"  # the key the app's environment holds; a second one is typed into the sidebar by a test
TASK_MODEL, OPT_MODEL = "stub-task", "stub-opt"
LATENCY = 0.05  # seconds per stub request: a run lasts some seconds, so the chart is seen gaining points

POS_WORDS = ("loved", "wonderful", "delight", "great", "superb", "warm", "brilliant", "enjoyed")
NEG_WORDS = ("hated", "dull", "mess", "boring", "awful", "cold", "terrible", "waste")


def _last_user(req: dict[str, Any]) -> str:
    for m in reversed(req.get("messages") or []):
        if m.get("role") == "user":
            return m.get("content") or ""
    return req.get("prompt") or ""


def _h(*parts: str) -> int:
    return int(hashlib.md5("\x00".join(parts).encode()).hexdigest()[:8], 16)


class E2EResponder:
    """Task requests get a label; optimizer requests (anything asking for <START>/<END> or a variation) get prompts
    that differ every time (a counter), so ProTeGi, GPO, OPRO, ... keep making new candidates."""

    def __init__(self) -> None:
        self.n: Counter[str] = Counter()
        self.lock = threading.Lock()

    def _next(self, kind: str) -> int:
        with self.lock:
            self.n[kind] += 1
            return self.n[kind]

    @staticmethod
    def _is_optimizer(req: dict[str, Any], text: str) -> bool:
        if req.get("model") == OPT_MODEL:
            return True
        if req.get("model") == TASK_MODEL:
            return False
        return "<START>" in text or text.startswith("Write a variation")

    def task_answer(self, text: str) -> str:
        instruction, _, rest = text.partition("\n\n")
        low = rest.lower()
        pos = any(w in low for w in POS_WORDS)
        neg = any(w in low for w in NEG_WORDS)
        if pos != neg:
            gold = "positive" if pos else "negative"
        else:
            gold = "positive" if _h("gold", low) % 2 else "negative"
        # the instruction decides how often the answer is right: 'sentiment' helps, the rest is a stable coin
        good = "sentiment" in instruction.lower()
        right = _h(instruction, low) % 100 < (80 if good else 55)
        return gold if right else ("negative" if gold == "positive" else "positive")

    def optimizer_answer(self, text: str) -> str:
        if "reasons why the prompt" in text or "problems with the current prompt" in text or "find the problems" in text:
            i = self._next("gradient")
            return f"<START>The prompt never says to judge the sentiment of the review (reason {i}).<END>"
        if text.startswith("Write a variation"):
            i = self._next("paraphrase")
            return f"Output: Decide the sentiment of the review, variant {i}."
        i = self._next("prompt")
        return f"<START>Classify the sentiment of the review, attempt {i}.<END>"

    def __call__(self, req: dict[str, Any]) -> str:
        text = _last_user(req)
        if self._is_optimizer(req, text):
            return self.optimizer_answer(text)
        return self.task_answer(text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_health(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"streamlit did not answer /_stcore/health in {timeout:.0f} s:\n"
                       f"{log.read_text(errors='replace')[-4000:]}")


def _worker_pids(db: Path) -> list[int]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return [int(p) for (p,) in c.execute("SELECT worker_pid FROM runs WHERE worker_pid IS NOT NULL")]
    except sqlite3.Error:
        return []


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    for _ in range(30):
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- the environment ----------------------------------------------------------------------------------------------

def pytest_collection_modifyitems(config, items):
    reason = None
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing (CI installs Debian's chromium with apt: apt-get install -y chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright Python package is missing (pip install -r requirements-dev.txt)"
    if reason:
        for item in items:
            if "tests/e2e" in str(item.fspath).replace(os.sep, "/"):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def stub():
    with StubServer(E2EResponder(), latency=LATENCY, models=(TASK_MODEL, OPT_MODEL)) as s:
        yield s


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


# points drawn: Plotly's processed traces (_fullData) hold decoded arrays (el.data may keep plotly.py's binary
# {dtype, bdata} specs); _length is the trace's point count
COUNT_POINTS_JS = """() => [...document.querySelectorAll('.js-plotly-plot')].map(el =>
    (el._fullData || el.data || []).reduce((n, t) => n + (typeof t._length === 'number' ? t._length
        : ((t.x && t.x.length) || 0)), 0)).reduce((a, b) => a + b, 0)"""


@contextlib.contextmanager
def start_app(stub: StubServer | None, workdir: Path):
    """`streamlit run app.py` on a free port, against the stub; yields an object with url, db, log, dir.
    Shared by the e2e fixture and bench/bench_ui.py."""
    port = _free_port()
    db = workdir / "runs.sqlite"
    log = workdir / "streamlit.log"
    env = dict(os.environ)
    for k in ("PROMPTOPT_EMBEDDED_URL", "PROMPTOPT_EMBEDDED_ALIAS"):
        env.pop(k, None)
    env.update(PROMPTOPT_DB=str(db), PROMPTOPT_PATIENCE="10", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    if stub is not None:
        env.update(OPENAI_BASE_URL=stub.base_url, OPENAI_API_KEY=API_KEY, PROMPTOPT_CACHE_DIR=str(workdir / "cache"),
                   PROMPTOPT_TASK_MODEL=TASK_MODEL, PROMPTOPT_OPTIMIZER_MODEL=OPT_MODEL)
    else:  # the embedded default model (bench only): a fresh response cache, the assembled models reused
        for k in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "PROMPTOPT_TASK_MODEL", "PROMPTOPT_OPTIMIZER_MODEL",
                  "PROMPTOPT_LAZY_MODEL"):  # as a user starts it: Home warms the model
            env.pop(k, None)
        cache = workdir / "cache"
        cache.mkdir(exist_ok=True)
        models = Path.home() / ".cache" / "promptopt" / "models"
        if models.exists() and not (cache / "models").exists():
            os.symlink(models, cache / "models")
        env["PROMPTOPT_CACHE_DIR"] = str(cache)
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", "--server.runOnSave", "false"]
    out = open(log, "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)

    class App:
        url = f"http://127.0.0.1:{port}"

    App.db, App.log, App.proc, App.dir = db, log, proc, workdir
    try:
        _wait_health(App.url, proc, log)
        yield App
    finally:
        for pid in _worker_pids(db):  # workers run in their own sessions (spawn_worker): stop them too
            _kill_group(pid)
        _kill_group(proc.pid)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        out.close()
        for pid in _worker_pids(db):
            _kill_group(pid)


@pytest.fixture(scope="session")
def app(stub, e2e_dir) -> Any:
    with start_app(stub, e2e_dir) as a:
        yield a
    if ARTIFACTS.exists():  # keep the server log next to the screenshots
        shutil.copy(a.log, ARTIFACTS / "streamlit.log")


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def page(browser, app, request):
    """A fresh browser context (so a fresh Streamlit session) per test."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    ctx.set_default_timeout(30_000)
    p = ctx.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.js_errors = errors
    try:
        yield p
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:  # what the browser showed when the test failed
            try:
                shot(p, f"FAILED_{request.node.name}")
                (ARTIFACTS / f"FAILED_{request.node.name}.html").write_text(p.content())
            except Exception:
                pass
    finally:
        ctx.close()


@pytest.fixture(scope="session", autouse=True)
def _artifacts_dir():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for pattern in ("*.png", "FAILED_*.html"):
        for f in ARTIFACTS.glob(pattern):
            f.unlink()
    yield


def shot(page, name: str) -> Path:
    """A full-page screenshot saved as a test artefact: tests/e2e/artifacts/<name>.png."""
    path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    # Streamlit scrolls inside its main container, so full_page alone stops at the viewport: grow the viewport to
    # the content's height first, then restore it.
    size = page.viewport_size or {"width": 1400, "height": 1000}
    height = page.evaluate("""() => Math.max(document.body.scrollHeight, ...[...document.querySelectorAll(
        '[data-testid="stMain"], [data-testid="stAppViewContainer"], [data-testid="stMainBlockContainer"], '
        + '[data-testid="stSidebarContent"]')].map(e => e.scrollHeight))""")
    tall = min(max(int(height) + 40, size["height"]), 12_000)
    page.mouse.move(0, 0)  # no tooltip over the content
    try:
        if tall > size["height"]:
            page.set_viewport_size({"width": size["width"], "height": tall})
            page.wait_for_timeout(400)
        page.screenshot(path=str(path), full_page=True)
    finally:
        if tall > size["height"]:
            page.set_viewport_size(size)
    return path
