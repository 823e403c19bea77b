"""The app in a real browser: `streamlit run app/main.py` driven by headless Debian Chromium.

Screenshots of every page land in tests/e2e/screenshots/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.main import APP_DIR, PAGES
from icp_core.params import DEFAULT_ORDER
from icp_core.workspace import Workspace

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not Path("/usr/bin/chromium").exists(),
        reason="Debian chromium is not installed at /usr/bin/chromium (apt-get install chromium)",
    ),
]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
VIEWPORT = {"width": 1500, "height": 2100}  # Streamlit scrolls inside the page: shoot it tall


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(sample_workspace, tmp_path_factory):
    """A streamlit server started with no arguments: it opens on the sample in its cache."""
    tmp_path = tmp_path_factory.mktemp("e2e")
    cache = tmp_path / "cache"
    cache.mkdir()
    workspace = cache / "sample.duckdb"
    shutil.copyfile(sample_workspace, workspace)
    port = _free_port()
    env = dict(os.environ, ICP_APP_CACHE=str(cache))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(APP_DIR.parent), env.get("PYTHONPATH")]))
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (closed after the server stops)
    process = subprocess.Popen(
        [
            sys.executable, "-m", "streamlit", "run", str(APP_DIR / "main.py"),
            "--server.headless", "true", "--server.port", str(port),
            "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"no server:\n{(tmp_path / 'server.log').read_text()}")
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", workspace
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(server[0])
    settle(page, PAGES[0].title)
    yield page
    page.close()


def settle(page, title: str) -> None:
    """Wait until the page shows `title` and its script run has finished (charts drawn)."""
    page.get_by_role("heading", name=title, exact=True).wait_for(timeout=90_000)
    page.wait_for_selector(
        "[data-testid=stStatusWidgetRunningIcon]", state="detached", timeout=90_000
    )
    page.wait_for_timeout(1000)


def shoot(page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def context_header(page) -> str:
    return page.get_by_text(re.compile(r"documents · [\d,]+ tokens")).first.inner_text()


def open_page(page, title: str) -> None:
    page.get_by_role("link", name=title, exact=True).click()
    settle(page, title)


def test_opens_on_the_sample_and_every_page_draws(page):
    assert "(bundled sample)" in page.get_by_text("2,000 documents · k = 10").first.inner_text()
    for number, spec in enumerate(PAGES, start=1):
        open_page(page, spec.title)
        assert not page.get_by_test_id("stException").count(), spec.title
        assert not page.get_by_test_id("stAlertContentError").count(), spec.title
        shoot(page, f"{number}-{Path(spec.file).stem}")
    page.get_by_text("Data", exact=True).click()  # the sidebar's workspace/upload panel
    page.wait_for_timeout(500)
    shoot(page, "6-sidebar-data")


def test_map_draws_a_path_and_lists_lassoed_documents(page):
    open_page(page, "Map")
    assert page.locator(".js-plotly-plot").count() == 1
    page.get_by_role("combobox", name="Draw a context's path").click()
    page.get_by_role("option", name="context 3", exact=True).click()
    settle(page, "Map")
    assert page.get_by_text("documents in order").count() >= 1  # the path's legend entry
    shoot(page, "7-map-with-path")
    area = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
    cx, cy = area["x"] + area["width"] / 2, area["y"] + area["height"] / 2
    r = min(area["width"], area["height"]) / 5
    page.mouse.move(cx - r, cy - r)
    page.mouse.down()
    for x, y in ((cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r), (cx - r, cy - r)):
        page.mouse.move(x, y, steps=10)
    page.mouse.up()
    selected = page.get_by_role("heading", name=re.compile(r"^[\d,]+ selected documents$"))
    selected.wait_for(timeout=60_000)
    settle(page, "Map")
    assert int(selected.inner_text().split()[0].replace(",", "")) > 0
    shoot(page, "8-map-lasso-selection")


def test_export_writes_a_folder_and_shows_its_manifest(page, tmp_path):
    open_page(page, "Export")
    page.get_by_text("parquet", exact=True).click()
    settle(page, "Export")
    out = tmp_path / "export"
    folder = page.get_by_label("Output folder")
    folder.fill(str(out))
    folder.press("Enter")
    page.get_by_role("button", name="Write", exact=True).click()
    page.get_by_role("heading", name="Manifest").wait_for(timeout=60_000)
    settle(page, "Export")
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == {
        "README.md",
        "data/train-00000-of-00001.parquet",
        "manifest.json",
        "removed/duplicates.jsonl",
        "removed/rejects.jsonl",
    }
    shoot(page, "9-export-done")


def test_applying_a_new_k_updates_the_contexts(page, server):
    workspace = server[1]
    open_page(page, "Contexts")
    before = context_header(page)
    assert f"k = 10, order = {DEFAULT_ORDER}" in before
    k_box = page.get_by_label("k (neighbours per document)")
    k_box.fill("5")
    k_box.press("Tab")
    started = time.monotonic()
    page.get_by_role("button", name="Apply").click()
    page.get_by_text(f"k = 5, order = {DEFAULT_ORDER}").first.wait_for(timeout=90_000)
    updated_after = time.monotonic() - started
    settle(page, "Contexts")
    after = context_header(page)
    assert f"k = 5, order = {DEFAULT_ORDER}" in after
    assert after != before
    assert page.get_by_text(re.compile("Last run .*re-ran dedup, order, pack, metrics")).count()
    shoot(page, "10-contexts-after-k5")
    with Workspace(workspace, read_only=True) as ws:
        assert ws.load_settings()["k"] == 5
        assert ws.stage_state("embed")["counts"]["embedded"] == 0
    print(f"\napply k=5: contexts view updated {updated_after:.2f} s after the click")
