"""A sweep from the dashboard on the embedded default model (no endpoint configured), as a user runs one: paste the
bundled 2 optimizers x 2 seeds sweep into the Sweeps page, check it, start it, follow the cells live and read the
leaderboard of four real runs. The screenshot (tests/e2e/artifacts/sweeps-embedded-leaderboard.png) shows it.

Slow (several minutes on 2 cores): the real model answers every request."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from optimizers.store import Store
from tests.e2e.conftest import shot, start_app
from tests.e2e.test_browser import no_traceback, settle, widget

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.integration]
pytest.importorskip("llama_cpp")

ROOT = Path(__file__).resolve().parents[2]
SWEEP = (ROOT / "sweeps" / "two_by_two.yaml").read_text()
CAP = yaml.safe_load(SWEEP)["budget"]["max_calls"]


@pytest.fixture(scope="module")
def embedded_app(tmp_path_factory):
    with start_app(None, tmp_path_factory.mktemp("sweeps-embedded")) as a:
        yield a


def test_a_two_by_two_sweep_on_the_embedded_model_from_the_dashboard(browser, embedded_app):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx.set_default_timeout(60_000)
    page = ctx.new_page()
    try:
        page.goto(embedded_app.url + "/Sweeps")
        settle(page, timeout=60)
        box = widget(page, "stTextArea", "Sweep (YAML or JSON").locator("textarea")
        box.fill(SWEEP)
        box.press("Control+Enter")
        settle(page)
        page.get_by_role("button", name="Check", exact=True).click()
        settle(page)
        page.get_by_text("4 runs (2 configurations x 2 seeds)").wait_for()
        page.get_by_role("button", name="Start sweep").click()
        page.wait_for_url(re.compile(r"[?&]sweep=s[0-9a-f]{9}"), timeout=120_000)
        sid = re.search(r"[?&]sweep=(s[0-9a-f]{9})", page.url).group(1)
        page.get_by_text("4 of 4 runs finished").wait_for(timeout=1_500_000)
        settle(page)
        with page.expect_download() as dl:
            page.get_by_role("button", name="Leaderboard + knobs JSON").click()
        report = json.loads(Path(dl.value.path()).read_text())
        rows = report["leaderboard"]
        assert report["sweep_id"] == sid
        assert sorted(r["cell"]["optimizer"] for r in rows) == ["baseline", "demos"]
        assert [(r["seeds"], r["runs"]) for r in rows] == [(2, 2), (2, 2)]
        store = Store(embedded_app.db)
        runs = [store.get_run(rid) for _, rid in store.sweep_cells(sid)]
        assert all(r["status"] in ("done", "budget") for r in runs)
        assert all(r["result"]["calls"] <= CAP for r in runs)  # each run inside its cap
        roles = {json.dumps(e.model_dump(mode="json")["roles"], sort_keys=True) for r in runs
                 for _, e in store.events(r["id"], kinds=["run_started"])}
        assert all("embedded llama.cpp" in x and "qwen2.5-coder-1.5b" in x for x in roles)  # the real model
        no_traceback(page)
        shot(page, "sweeps-embedded-leaderboard")
    finally:
        ctx.close()
