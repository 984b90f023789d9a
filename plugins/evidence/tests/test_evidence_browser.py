"""index.html in a real headless Chromium: everything renders, nothing leaves the page."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from xlib_pipeline_evidence import build, load_private

from xlib_pipeline import PipelineManager

CHROMIUM = os.environ.get("XLIB_PIPELINE_CHROMIUM", "/usr/bin/chromium")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"{CHROMIUM} is absent (Debian: apt-get install -y chromium; .ci/run installs it)",
    ),
]


def test_index_html_renders_offline_in_chromium(recorded, key_file, tmp_path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    config, run_id = recorded
    cfg = {**config, "evidence": {**config["evidence"], "enabled": False}}
    with PipelineManager(cfg) as pm:
        out = build(pm, run_id, tmp_path / "pack", load_private(key_file))
    page_url = (out / "index.html").resolve().as_uri()
    requests: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-default-apps",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_url)
            page.wait_for_load_state("load")
            table = page.inner_text("#tasks")
            for name in ("extract", "clean", "report"):
                assert name in table
                assert page.locator(f"#dag text:has-text('{name}')").count() == 1
            badge = page.inner_text("#audit-badge")
            assert "Audit chain intact" in badge
            assert page.locator("#gantt rect.bar").count() == 4  # clean ran twice
            assert page.locator("#gantt").bounding_box()["width"] > 100
            assert "confidential" in table
            assert key_file.exists() and page.inner_text("#signer").startswith("Signed by")
            shot = tmp_path / "index.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert [u for u in requests if u != page_url] == [], requests
