"""The dashboard end to end in a real browser: Playwright driving Debian's chromium against `streamlit run app.py`,
whose runs talk to a scripted OpenAI-compatible stub over HTTP (see conftest.py). Screenshots of every page are saved
to tests/e2e/artifacts/ as test artefacts.

Run: python -m pytest -q tests/e2e -x
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import API_KEY, COUNT_POINTS_JS, TASK_MODEL, shot

pytestmark = pytest.mark.e2e

RUNNING = '[data-testid="stStatusWidgetRunningIcon"], [data-testid="stStatusWidgetRunningManIcon"]'
BUSY = '[data-testid="stAppSkeleton"], [data-testid="stSkeleton"]'
TRACEBACK_MARKERS = ("Traceback (most recent call last)", '[data-testid="stException"]')


# --- helpers ------------------------------------------------------------------------------------------------------

def settle(page, timeout: float = 30.0, quiet: float = 0.6) -> None:
    """Wait until the app has drawn and no script run is in progress for `quiet` seconds."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    calm_since = None
    while time.monotonic() < deadline:
        running = page.locator(RUNNING).count() > 0
        skeleton = page.locator(BUSY).count() > 0
        if running or skeleton:
            calm_since = None
        elif calm_since is None:
            calm_since = time.monotonic()
        elif time.monotonic() - calm_since >= quiet:
            return
        time.sleep(0.1)


def goto(page, app, path: str = "", **query: str) -> None:
    url = app.url + "/" + path
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    page.goto(url)
    # the page's shell comes before its first script run: wait for content, or a check can read an empty page
    page.wait_for_function(
        "() => { const m = document.querySelector('[data-testid=\"stMain\"]'); return m && m.innerText.trim() }",
        timeout=30_000)
    settle(page)


def no_traceback(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]').first.inner_text()
    assert "Traceback (most recent call last)" not in page.content()


def main_text(page) -> str:
    return page.locator('[data-testid="stMain"]').inner_text()


# --- home ---------------------------------------------------------------------------------------------------------

def test_home_renders_and_shows_the_backend(page, app, stub):
    goto(page, app)
    page.get_by_role("heading", name="PromptOpt").wait_for()
    page.get_by_text("Task model:").first.wait_for()
    text = main_text(page)
    assert stub.base_url in text  # the backend in use: the stub endpoint from OPENAI_BASE_URL
    page.get_by_text(re.compile(r"Models found via /v1/models")).wait_for()
    assert TASK_MODEL in main_text(page)
    assert "Quick start" in text
    no_traceback(page)
    shot(page, "home")


# --- data ---------------------------------------------------------------------------------------------------------

REVIEWS_POS = ["Loved it, wonderful acting", "A delight from start to end", "Great fun for the family",
               "Superb and moving", "Brilliant, warm and funny", "I enjoyed every minute"]
REVIEWS_NEG = ["Hated it, dull plot", "A mess of a film", "Boring and slow", "Awful dialogue throughout",
               "Cold and tedious", "A terrible waste of time"]


def write_csv(path: Path, n: int = 48) -> Path:
    """A small labelled CSV whose label column is not where the guess looks (first, not last), so it must be mapped."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["verdict", "review", "source"])
        for i in range(n):
            pos = i % 2 == 0
            base = (REVIEWS_POS if pos else REVIEWS_NEG)[(i // 2) % 6]
            w.writerow(["positive" if pos else "negative", f"{base} (#{i + 1})", f"site{i % 3}"])
    return path


def widget(page, testid: str, label: str):
    return page.locator(f'[data-testid="{testid}"]').filter(
        has=page.locator('[data-testid="stWidgetLabel"]', has_text=label)).first


def open_combo(page, label: str) -> None:
    """Open the option list of a selectbox / multiselect (a react-aria combobox) found by its label."""
    combo = page.get_by_role("combobox", name=label, exact=True)
    combo.click()
    try:
        page.get_by_role("option").first.wait_for(timeout=3000)
    except Exception:  # the click only focused it (e.g. during a rerun): use its Open button
        combo.locator("xpath=..").locator("xpath=..").get_by_role("button", name="Open").click()
        page.get_by_role("option").first.wait_for(timeout=10_000)


def choose(page, label: str, option: str) -> None:
    """Pick an option of a selectbox by its label."""
    open_combo(page, label)
    page.get_by_role("option", name=option, exact=True).click()
    settle(page)


def upload(page, path: Path) -> None:
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(path))
    settle(page)


def open_upload(page, app) -> None:
    goto(page, app, "Data")
    page.get_by_text("Upload a file", exact=True).click()
    settle(page)
    page.locator('[data-testid="stFileUploader"]').wait_for()


def load_reviews(page, app, tmp_path) -> None:
    """Data page: upload the CSV, map its columns, check the preview and label chart, and use it (po_data)."""
    csv_path = write_csv(tmp_path / "reviews.csv")
    open_upload(page, app)
    upload(page, csv_path)
    page.get_by_text("Preview: 48 rows, 3 columns").wait_for()
    # map: the label is 'verdict' (the guess takes the last column), the input only 'review'
    choose(page, "Label column", "verdict")
    ms = widget(page, "stMultiSelect", "Input column(s)")
    tags = ms.get_by_role("group", name="Selected values")
    for name in ("verdict", "source"):
        remove = tags.get_by_role("button", name=f"Remove {name}", exact=True)
        if remove.count():
            remove.click()
            settle(page)
    if not tags.get_by_role("button", name="Remove review", exact=True).count():
        open_combo(page, "Input column(s)")
        page.get_by_role("option", name="review", exact=True).click()
        page.keyboard.press("Escape")
        settle(page)
    assert [t.strip() for t in tags.locator("[data-tag]").all_inner_texts()] == ["review"]
    tpl = widget(page, "stTextArea", "Template").locator("textarea")
    tpl.fill("{prompt}\n\nReview: {review}\nSentiment:")
    tpl.press("Control+Enter")
    settle(page)
    prompt = widget(page, "stTextArea", "Initial prompt").locator("textarea")
    prompt.fill("Classify the text.")
    prompt.press("Control+Enter")
    settle(page)
    # the rendered example: row 1 through the template, as the task model will see it
    page.get_by_text(re.compile(r"Rendered example \(row 1, label: 'positive'\)")).wait_for()
    code = page.locator('[data-testid="stCode"]').filter(has_text="Review: Loved it, wonderful acting (#1)").first
    assert code.inner_text().strip().startswith("Classify the text.")
    assert "Sentiment:" in code.inner_text()
    # the label chart: a Plotly bar chart of the two labels
    page.get_by_text("Labels: 2 distinct in 'verdict'").wait_for()
    charts = page.locator(".js-plotly-plot")
    charts.first.wait_for()
    xs = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')][0].data.map(t => Array.from(t.x || []))")
    assert sorted({x for xs_ in xs for x in xs_}) == ["negative", "positive"]
    assert page.locator('[data-testid="stMetric"]').filter(has_text="train").count() >= 1
    page.get_by_role("button", name="Use this data").click()
    page.get_by_text(re.compile(r"Saved: reviews \(train \d+, dev \d+, test \d+\)")).wait_for()


def test_data_upload_map_columns_preview_and_labels(page, app, tmp_path):
    load_reviews(page, app, tmp_path)
    no_traceback(page)
    shot(page, "data")


def test_data_bad_file_shows_an_error_not_a_traceback(page, app, tmp_path):
    bad = tmp_path / "broken.csv"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    open_upload(page, app)
    upload(page, bad)
    err = page.locator('[data-testid="stAlertContentError"], [data-testid="stAlert"]').filter(has_text="broken.csv")
    err.first.wait_for()
    assert "Could not read broken.csv" in main_text(page)
    no_traceback(page)
    assert "Traceback" not in main_text(page)
    shot(page, "data_bad_file")


def test_two_browser_sessions_do_not_share_data(browser, app, tmp_path):
    """Each tab is its own Streamlit session: data loaded in one is not seen by the other."""
    a = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    b = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    try:
        load_reviews(a, app, tmp_path)
        goto(b, app, "Optimize")
        b.get_by_role("button", name=re.compile("Load the bundled sentiment set")).wait_for()
        assert "Load the bundled sentiment set" in main_text(b)  # b has no data of its own
        b.get_by_role("button", name=re.compile("Load the bundled sentiment set")).click()
        settle(b)
        assert "Data: sentiment" in main_text(b)
        a.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Optimize", exact=True).click()
        a.get_by_text(re.compile("Data: reviews")).first.wait_for()
        settle(a)
        assert "Data: sentiment" not in main_text(a)
    finally:
        a.context.close()
        b.context.close()


# --- optimize -----------------------------------------------------------------------------------------------------

RUNS: dict[str, str] = {}  # optimizer -> run id, made by the Optimize tests and reused by Inspect / Runs
COUNT_POINTS = COUNT_POINTS_JS


def db(app, sql: str, *args):
    import sqlite3

    if not Path(app.db).exists():
        return []
    with sqlite3.connect(f"file:{app.db}?mode=ro", uri=True, timeout=10) as c:
        return c.execute(sql, args).fetchall()


def registered() -> set[str]:
    import optimizers.methods  # noqa: F401
    from optimizers.base import REGISTRY

    return set(REGISTRY)


def set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    settle(page)


def run_id_from_url(page) -> str:
    page.wait_for_url(re.compile(r"[?&]run=[0-9a-f]+"), timeout=30_000)
    return re.search(r"[?&]run=([0-9a-f]+)", page.url).group(1)


def start_run(page, app, optimizer_title: str, max_calls: int) -> str:
    """On a fresh session: load the bundled sentiment sample on Optimize, pick the optimizer, set the call budget,
    start; returns the new run's id (from ?run=)."""
    goto(page, app, "Optimize")
    page.get_by_role("button", name=re.compile(r"Load the bundled sentiment set")).click()
    settle(page)
    page.get_by_text(re.compile(r"Data: sentiment: train \d+, dev \d+, test \d+")).wait_for()
    choose(page, "Optimizer", optimizer_title)
    set_number(page, "Budget: max calls (0 = none)", max_calls)
    page.get_by_role("button", name="Start the run").click()
    rid = run_id_from_url(page)
    settle(page)
    return rid


def chart_points(page) -> int:
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    return int(page.evaluate(COUNT_POINTS))


def wait_status(page, text: str, timeout: float = 90.0) -> None:
    page.locator('[data-testid="stAlert"]').filter(has_text=f"Status: {text}").first.wait_for(timeout=timeout * 1000)


@pytest.mark.slow
def test_optimize_protegi_live_chart_gains_points_then_stop(page, app):
    if "protegi" not in registered():
        pytest.skip("protegi is not registered in optimizers.methods")
    rid = start_run(page, app, "ProTeGi (textual gradients + beam search)", 5000)
    RUNS["protegi"] = rid
    page.get_by_role("heading", name=re.compile(rf"Run {rid}: protegi on sentiment")).wait_for()
    first = chart_points(page)
    # the page polls the store (fragment every 2 s): the chart must gain points while the worker runs
    deadline = time.monotonic() + 60
    later = first
    while time.monotonic() < deadline and later <= first:
        page.wait_for_timeout(1000)
        later = chart_points(page)
    assert later > first, f"the chart did not gain points: {first} -> {later}"
    shot(page, "optimize_live")
    # let a gradient be stored (Inspect shows it), then stop
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not db(app, "SELECT 1 FROM events WHERE run_id=? AND kind='gradient'", rid):
        time.sleep(0.5)
    page.get_by_role("button", name="Stop", exact=True).click()
    wait_status(page, "stopped by the user")
    assert db(app, "SELECT status FROM runs WHERE id=?", rid) == [("stopped",)]
    page.get_by_role("button", name="Resume").first.wait_for()  # a stopped run can be resumed
    no_traceback(page)
    shot(page, "optimize_stopped")


GPO_TITLE = "GPO (trajectory retrieval + generation + decaying edit budget)"


def finished_run(app, optimizer: str) -> str | None:
    rows = db(app, "SELECT id FROM runs WHERE optimizer=? AND status IN ('done','budget','stopped') "
                   "ORDER BY created DESC", optimizer)
    return rows[0][0] if rows else None


@pytest.mark.slow
def test_optimize_gpo_run_to_its_budget(page, app):
    if "gpo" not in registered():
        pytest.skip("gpo is not registered in optimizers.methods yet")
    rid = start_run(page, app, GPO_TITLE, 300)
    RUNS["gpo"] = rid
    page.get_by_role("heading", name=re.compile(rf"Run {rid}: gpo on sentiment")).wait_for()
    page.locator('[data-testid="stAlert"]').filter(
        has_text=re.compile(r"Status: (budget reached|finished)")).first.wait_for(timeout=120_000)
    assert chart_points(page) > 0
    no_traceback(page)
    shot(page, "optimize_gpo")


# --- inspect ------------------------------------------------------------------------------------------------------

def test_inspect_protegi_shows_a_gradient(page, app):
    rid = RUNS.get("protegi") or finished_run(app, "protegi")
    if rid is None:
        pytest.skip("no ProTeGi run (the Optimize test did not make one)")
    steps = [s for (s,) in db(app, "SELECT DISTINCT step FROM events WHERE run_id=? AND kind='gradient' "
                                   "ORDER BY step", rid)]
    assert steps, "the ProTeGi run stored no gradient"
    goto(page, app, "Inspect", run=rid, step=str(steps[0]))
    page.get_by_role("heading", name="Inspect a run").wait_for()
    page.get_by_role("heading", name=re.compile(r"Textual gradients \([1-9]\d*\)")).wait_for()
    page.locator('[data-testid="stMarkdownContainer"]').filter(
        has_text=re.compile(r"Gradient \S+ on parent \S+")).first.wait_for()
    page.get_by_text("Critique (the gradient)").first.wait_for()
    assert "never says to judge the sentiment" in main_text(page)  # the stub's critique, shown as text
    assert page.locator('[data-testid="stMetric"]').filter(has_text="protegi").count() == 1
    no_traceback(page)
    shot(page, "inspect_protegi")


def test_inspect_gpo_shows_retrieval_and_edit_budget(page, app):
    rid = RUNS.get("gpo") or finished_run(app, "gpo")
    if rid is None:
        pytest.skip("no GPO run (gpo is not registered, or its Optimize test did not run)")
    steps = [s for (s,) in db(app, "SELECT DISTINCT step FROM events WHERE run_id=? AND kind='edit_budget' "
                                   "ORDER BY step", rid)]
    assert steps, "the GPO run stored no edit budget"
    goto(page, app, "Inspect", run=rid, step=str(steps[0]))
    page.get_by_role("heading", name="Retrieved trajectory").wait_for()
    page.get_by_role("heading", name="Edit budget").wait_for()
    page.get_by_text(re.compile(r"Budget at this step: (\d+ words|none)")).first.wait_for()
    page.get_by_role("heading", name="Generated candidates").wait_for()
    no_traceback(page)
    shot(page, "inspect_gpo")


# --- compare ------------------------------------------------------------------------------------------------------

def nav(page, name: str) -> None:
    """Another page in the same session (a new page load would start a new session)."""
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=name, exact=True).click()
    settle(page)


def test_compare_two_typed_prompts_side_by_side_with_cis(page, app, tmp_path):
    load_reviews(page, app, tmp_path)  # the uploaded data is the session's (po_data): its test split is used
    nav(page, "Compare")
    page.get_by_role("heading", name="Compare prompts").wait_for()
    typed = widget(page, "stTextArea", "Or type prompts").locator("textarea")
    typed.fill("Classify the sentiment of the review.\n---\nSay something about the text.")
    typed.press("Control+Enter")
    settle(page)
    page.get_by_text("P1", exact=False).first.wait_for()
    page.get_by_text("the data loaded on the Data page").click()
    settle(page)
    page.get_by_text(re.compile(r"reviews: \d+ test examples")).wait_for()
    set_number(page, "Test examples to use", 12)
    page.get_by_role("button", name="Score side by side").click()
    page.get_by_role("heading", name="3. Scores").wait_for(timeout=60_000)
    settle(page)
    summary = page.locator('[data-testid="stDataFrame"]').first
    summary.wait_for()
    # the CI chart: one interval per prompt
    page.locator(".js-plotly-plot").first.wait_for()
    text = main_text(page)
    assert re.search(r"P2 (differs|does not differ) significantly from P1 \(exact McNemar p = ", text), text[-2000:]
    ci = page.evaluate("""() => { const el = [...document.querySelectorAll('.js-plotly-plot')].find(e =>
            (e.layout && e.layout.title && String(e.layout.title.text || e.layout.title).includes('95% CI')));
        if (!el) return null;
        const t = el._fullData[0], e = t.error_y || {};
        return {x: Array.from(t.x || []), y: Array.from(t.y || []), up: Array.from(e.array || []),
                down: Array.from(e.arrayminus || []), visible: !!e.visible}; }""")
    assert ci is not None, "no '... with 95% CI' chart"
    assert ci["x"] == ["P1", "P2"] and ci["visible"], ci  # side by side, with error bars
    assert len(ci["up"]) == len(ci["down"]) == 2 and all(u + d > 0 for u, d in zip(ci["up"], ci["down"])), ci
    assert all(0 <= y - d and y + u <= 1 for y, u, d in zip(ci["y"], ci["up"], ci["down"])), ci
    page.get_by_role("heading", name="4. Per-example outputs").wait_for()
    page.get_by_role("heading", name="5. Confusion matrices").wait_for()
    with page.expect_download() as dl:
        page.get_by_role("button", name="Everything (JSON)").click()
    data = json.loads(Path(dl.value.path()).read_text())
    blob = json.dumps(data)
    assert "Classify the sentiment of the review." in blob and "Say something about the text." in blob
    assert API_KEY not in blob
    no_traceback(page)
    shot(page, "compare")


# --- runs ---------------------------------------------------------------------------------------------------------

def test_runs_listed_and_exported_without_the_key(page, app):
    ids = [r for (r,) in db(app, "SELECT id FROM runs ORDER BY created DESC")]
    if not ids:
        pytest.skip("no stored runs (the Optimize tests did not run)")
    rid = RUNS.get("protegi") or ids[0]
    goto(page, app, "Runs", run=rid)
    page.get_by_role("heading", name="Runs", exact=True).wait_for()
    table = page.locator('[data-testid="stDataFrame"]').first
    table.wait_for()
    page.get_by_role("heading", name=f"Run {rid}").wait_for()
    page.get_by_role("button", name="Run JSON (config + full trajectory)").wait_for()
    page.get_by_role("button", name="Candidates CSV").wait_for()
    with page.expect_download() as dl:
        page.get_by_role("button", name="Run JSON (config + full trajectory)").click()
    raw = Path(dl.value.path()).read_text()
    data = json.loads(raw)
    assert rid in raw and data
    assert API_KEY not in raw and "sk-e2e" not in raw
    with page.expect_download() as dl:
        page.get_by_role("button", name="Candidates CSV").click()
    csv_text = Path(dl.value.path()).read_text()
    assert csv_text.splitlines() and API_KEY not in csv_text
    # every stored run is listed (the grid is a canvas: the selectbox lists the same runs)
    open_combo(page, "Run")
    options = page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    assert all(any(i in o for o in options) for i in ids), (ids, options)
    no_traceback(page)
    shot(page, "runs")


# --- sweeps -------------------------------------------------------------------------------------------------------

SWEEP = """\
name: e2e-two-by-two
data: [sentiment]
optimizers:
  demos: {k: 2, trials: 2}
  baseline: {}
seeds: [0, 1]
split: {max_train: 16, max_dev: 10, max_test: 20}
budget: {max_calls: 80}
max_total: {max_calls: 400}
parallel: 2
"""


@pytest.mark.slow
def test_sweeps_launch_two_by_two_and_read_the_leaderboard(page, app, tmp_path):
    """Upload a 2 optimizers x 2 seeds sweep on the Sweeps page, check it, start it (a worker process against the
    stub), follow the cells live until the leaderboard has both configurations with both seeds."""
    goto(page, app, "Sweeps")
    page.get_by_role("heading", name="Sweeps", exact=True).wait_for()
    path = tmp_path / "two_by_two.yaml"
    path.write_text(SWEEP)
    upload(page, path)
    box = widget(page, "stTextArea", "Sweep (YAML or JSON").locator("textarea")
    assert box.input_value() == SWEEP  # the upload fills the text
    page.get_by_role("button", name="Check", exact=True).click()
    settle(page)
    page.get_by_text("4 runs (2 configurations x 2 seeds)").wait_for()
    page.get_by_role("button", name="Start sweep").click()
    page.wait_for_url(re.compile(r"[?&]sweep=s[0-9a-f]{9}"), timeout=30_000)
    sid = re.search(r"[?&]sweep=(s[0-9a-f]{9})", page.url).group(1)
    page.get_by_role("heading", name=f"Sweep e2e-two-by-two ({sid})").wait_for(timeout=60_000)
    page.get_by_text("4 of 4 runs finished").wait_for(timeout=240_000)
    settle(page)
    page.get_by_role("button", name="Leaderboard + knobs JSON").wait_for()
    with page.expect_download() as dl:
        page.get_by_role("button", name="Leaderboard + knobs JSON").click()
    report = json.loads(Path(dl.value.path()).read_text())
    rows = report["leaderboard"]
    assert report["sweep_id"] == sid
    assert sorted(r["cell"]["optimizer"] for r in rows) == ["baseline", "demos"]
    assert [(r["seeds"], r["runs"]) for r in rows] == [(2, 2), (2, 2)]
    assert all(r["test_low"] <= r["test_mean"] <= r["test_high"] for r in rows)
    assert {k["value"] for k in report["knobs"] if k["knob"] == "optimizer"} == {"baseline", "demos"}
    # the leaderboard's bar chart draws the same configurations
    bars = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].map(el => (el._fullData || [])"
                         ".filter(t => t.type === 'bar').map(t => Array.from(t.x || [])))")
    assert sorted(bars[0][0]) == sorted(r["config"] for r in rows)
    assert db(app, "SELECT COUNT(*) FROM sweep_cells WHERE sweep_id=? AND run_id IS NOT NULL", sid) == [(4,)]
    no_traceback(page)
    shot(page, "sweeps-leaderboard")


# --- the key ------------------------------------------------------------------------------------------------------

TYPED_KEY = "sk-e2e-typed-secret-4242"


def _without_password_values(html: str) -> str:
    """The page source minus the value of password inputs (the browser's own field holds what was typed)."""
    return re.sub(r'(<input[^>]*type="password"[^>]*?)\svalue="[^"]*"', r"\1", html)


def test_api_key_never_in_the_page_source(page, app, stub):
    goto(page, app)
    key_box = page.get_by_label("Task API key", exact=True)
    assert key_box.get_attribute("type") == "password"
    key_box.fill(TYPED_KEY)
    key_box.press("Enter")
    settle(page)
    page.get_by_text("A key is set for this session.").wait_for()
    # the key is used (a score on Home sends it to the endpoint) but never drawn
    instruction = page.get_by_label("Instruction", exact=True)
    instruction.fill(f"Classify the sentiment of the review. (key check {time.time():.0f})")  # no cache hits
    instruction.press("Control+Enter")
    settle(page)
    before = len(stub.requests)
    page.get_by_role("button", name="Score on the test split").click()
    page.locator('[data-testid="stMetric"]').filter(has_text="Accuracy").wait_for(timeout=60_000)
    settle(page)
    sent = [r["_headers"].get("authorization") for r in stub.requests[before:] if "_headers" in r]
    assert f"Bearer {TYPED_KEY}" in sent, "the typed key did not reach the endpoint"
    pages = ["Data", "Optimize", "Inspect", "Compare", "Runs", "Sweeps"]
    for name in [None, *pages]:
        if name:  # same session: navigate with the sidebar, not a new page load
            nav(page, name)
            page.get_by_text("A key is set for this session.").wait_for()
        html = _without_password_values(page.content())
        assert TYPED_KEY not in html, f"the typed key is in the page source of {name or 'Home'}"
        assert API_KEY not in html, f"the environment's key is in the page source of {name or 'Home'}"
        assert TYPED_KEY not in page.url
    shot(page, "key_entered")
    # nothing on disk either: the run store and the worker logs never hold a key
    for f in [app.db, *app.dir.glob("**/*.log")]:
        if f.is_file():
            assert TYPED_KEY.encode() not in f.read_bytes(), f


def test_api_key_not_even_in_the_password_field_after_it_is_set(page, app):
    goto(page, app)
    key_box = page.get_by_label("Task API key", exact=True)
    key_box.fill(TYPED_KEY)
    key_box.press("Enter")
    settle(page)
    page.get_by_text("A key is set for this session.").wait_for()
    assert TYPED_KEY not in page.content(), "the key is in the page source (the password input's value attribute)"
    nav(page, "Runs")
    page.get_by_text("A key is set for this session.").wait_for()
    assert TYPED_KEY not in page.content()
