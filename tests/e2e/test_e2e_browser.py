"""The app in a real browser: `streamlit run app/main.py` driven by headless Debian Chromium.

Screenshots of every page land in tests/e2e/screenshots/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import contextlib
import os
import re
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
VIEWPORT = {"width": 1366, "height": 768}  # a laptop screen: what a new user sees
FULL_HD = {"width": 1920, "height": 1080}  # a desktop screen
TIMES: dict[str, float] = {}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ, ICP_APP_CACHE=str(cache))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(APP_DIR.parent), env.get("PYTHONPATH")]))
    return env


@contextlib.contextmanager
def streamlit_server(cache: Path, log_path: Path):
    """`streamlit run app/main.py` with no arguments (it opens on the sample in `cache`);
    yields its URL once it accepts connections."""
    port = _free_port()
    log = open(log_path, "w")  # noqa: SIM115 (closed after the server stops)
    process = subprocess.Popen(
        [
            sys.executable, "-m", "streamlit", "run", str(APP_DIR / "main.py"),
            "--server.headless", "true", "--server.port", str(port),
            "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
        ],
        env=_env(cache), stdout=log, stderr=subprocess.STDOUT,
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
                    pytest.fail(f"no server:\n{log_path.read_text()}")
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def prepared_cache(tmp_path_factory) -> Path:
    """An empty app cache, prepared the way scripts/app.sh does after the install."""
    cache = tmp_path_factory.mktemp("e2e") / "cache"
    cache.mkdir()
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "icp_core.sample", "--prepare"],
        env=_env(cache), check=True, timeout=600,
    )  # fmt: skip
    TIMES["prepare"] = time.monotonic() - started
    print(f"\ninstall step (python -m icp_core.sample --prepare, empty cache): "
          f"{TIMES['prepare']:.1f} s")  # fmt: skip
    return cache


@pytest.fixture(scope="module")
def server(prepared_cache, browser):
    """The server's first start on the prepared cache; measures server start to a usable
    Overview in the browser."""
    started = time.monotonic()
    with streamlit_server(prepared_cache, prepared_cache.parent / "server.log") as url:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url)
        settle(page, "Overview")
        TIMES["first start"] = time.monotonic() - started
        print(f"\nfirst start (server start to a usable Overview): {TIMES['first start']:.1f} s")
        shoot(page, "01-first-start-overview")
        page.close()
        yield url, prepared_cache / "sample.duckdb"


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
    # Streamlit marks the app root with its script's state: wait for the run to finish
    page.wait_for_selector(
        "[data-testid=stApp][data-test-script-state=notRunning]", timeout=120_000
    )
    page.wait_for_selector("[data-stale=true]", state="detached", timeout=60_000)
    # every element drawn: a chart, table or metric whose code the browser is still loading
    # shows a grey skeleton in its place (seen at 1920x1080 in a fresh tab) and is not yet a
    # plotly chart, so the check below would pass over it
    page.wait_for_function(
        """() => [...document.querySelectorAll(
                     '[data-testid=stSkeleton], [data-testid=stSkeletonElement]')]
                 .every(skeleton => skeleton.offsetParent === null)""",
        timeout=120_000,
    )
    # every chart on the page drawn by plotly
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid=stPlotlyChart]')]
                 .every(chart => chart.querySelector('.js-plotly-plot .main-svg'))""",
        timeout=120_000,
    )


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
    assert not page.get_by_role("button", name="Deploy").count()
    for number, spec in enumerate(PAGES, start=2):
        open_page(page, spec.title)
        assert not page.get_by_test_id("stException").count(), spec.title
        assert not page.get_by_test_id("stAlertContentError").count(), spec.title
        shoot(page, f"{number:02d}-{Path(spec.file).stem}")
    page.get_by_text("Data", exact=True).click()  # the sidebar's workspace/upload panel
    page.get_by_text("New workspace from a JSONL or Parquet file").wait_for()
    shoot(page, "09-sidebar-data")


def test_map_draws_a_path_and_lists_lassoed_documents(page):
    open_page(page, "Map")
    assert page.locator(".js-plotly-plot").count() == 1
    page.get_by_role("combobox", name="Draw a context's path").click()
    page.get_by_role("option", name="context 3", exact=True).click()
    # the rerun has drawn the path (its legend entry) before anything reads the chart; a
    # lasso on the chart the rerun then replaces would select nothing
    page.get_by_text("documents in order").first.wait_for(timeout=90_000)
    settle(page, "Map")
    shoot(page, "10-map-with-path")
    area = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
    cx, cy = area["x"] + area["width"] / 2, area["y"] + area["height"] / 2
    r = min(area["width"], area["height"]) / 5
    page.mouse.move(cx - r, cy - r)
    page.mouse.down()
    for x, y in ((cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r), (cx - r, cy - r)):
        page.mouse.move(x, y, steps=10)
    page.mouse.up()
    selected = page.get_by_role("heading", name=re.compile(r"^[\d,]+ selected documents$"))
    selected.wait_for(timeout=120_000)
    settle(page, "Map")
    assert int(selected.inner_text().split()[0].replace(",", "")) > 0
    page.mouse.move(0, 0)  # the pointer's hover box would cover the screenshot
    selected.scroll_into_view_if_needed()
    shoot(page, "11-map-lasso-selection")


def test_export_writes_a_folder_and_shows_its_manifest(page, tmp_path):
    open_page(page, "Export")
    page.get_by_text("parquet", exact=True).click()
    # each format has its own folder box (widget key): until the click's rerun has drawn the
    # parquet one, typing lands in the jsonl box the rerun then throws away. settle() alone
    # cannot tell: the script still reads "notRunning" until the server starts the rerun
    page.get_by_text(re.compile(r"^Writes the folder \S+-parquet\b")).wait_for(timeout=120_000)
    settle(page, "Export")
    out = tmp_path / "export"
    folder = page.get_by_label("Output folder")
    folder.fill(str(out))
    folder.press("Enter")
    # the page has taken the new folder (a click before that would write the default one)
    page.get_by_text(f"Writes the folder {out}").wait_for(timeout=120_000)
    settle(page, "Export")
    page.get_by_role("button", name="Write", exact=True).click()
    # this export's own message (a Manifest heading may remain from an earlier export)
    wrote = page.get_by_text(f"Wrote {out}")
    wrote.wait_for(timeout=120_000)
    settle(page, "Export")
    assert not page.get_by_test_id("stException").count()
    wrote.scroll_into_view_if_needed()
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == {
        "README.md",
        "data/train-00000-of-00001.parquet",
        "manifest.json",
        "removed/duplicates.jsonl",
        "removed/rejects.jsonl",
    }
    shoot(page, "12-export-done")


def test_an_edit_is_marked_until_applied_and_apply_shows_the_new_metrics(page, server):
    workspace = server[1]
    apply = page.get_by_role("button", name="Apply")
    assert apply.is_disabled()  # nothing to apply
    before = page.get_by_test_id("stMetricValue").first.inner_text()
    k_box = page.get_by_label("k (neighbours per document)")
    k_box.fill("5")
    k_box.press("Tab")
    marker = page.get_by_text("Not applied yet")
    marker.wait_for()
    settle(page, "Overview")
    sidebar = page.get_by_test_id("stSidebar").inner_text()
    assert "k: 10 → 5" in sidebar and "re-runs dedup, order, pack, metrics, about" in sidebar
    assert page.get_by_text("k = 10 · order").count()  # the header: still the applied values
    assert page.get_by_text("1 edit in the sidebar not applied").count()
    shoot(page, "13-unapplied-edit")
    started = time.monotonic()
    apply.click()
    page.get_by_text(f"k = 5 · order = {DEFAULT_ORDER}").first.wait_for(timeout=90_000)
    updated_after = time.monotonic() - started
    settle(page, "Overview")
    assert not page.get_by_text("Not applied yet").count()
    assert page.get_by_role("button", name="Apply").is_disabled()
    assert page.get_by_text(re.compile("Last run .*re-ran dedup, order, pack, metrics")).count()
    assert page.get_by_test_id("stMetricValue").first.inner_text() != before
    shoot(page, "14-overview-after-k5")
    with Workspace(workspace, read_only=True) as ws:
        assert ws.load_settings()["k"] == 5
    print(f"\napply k=5: the Overview showed the new metrics {updated_after:.2f} s after the click")


def test_compare_shows_another_method_next_to_the_applied_one(page):
    open_page(page, "Compare")
    page.get_by_role("combobox", name="Compare with (ordering)").click()
    page.get_by_role("option", name="random", exact=True).click()
    # the metrics table's header names the other setting (a canvas grid: attached, not visible)
    other = page.get_by_text(re.compile(r"^random · k = \d+ · L"))
    other.first.wait_for(state="attached", timeout=90_000)
    settle(page, "Compare")
    assert page.get_by_role("heading", name="The same document under each").count()
    assert not page.get_by_test_id("stAlertContentError").count()
    shoot(page, "15-compare")
    # what `icp eval` computes, in a background job; then its table and the bounds under it
    page.get_by_role("button", name="Evaluate applied setting").click()
    page.get_by_text(re.compile(r"Upper bounds on adjacent similarity: applied")).wait_for(
        timeout=180_000
    )
    settle(page, "Compare")
    assert not page.get_by_role("button", name="Evaluate applied setting").count()
    page.get_by_role("heading", name="Every method × pack policy").scroll_into_view_if_needed()
    shoot(page, "15b-compare-evaluation")


def test_a_failed_upload_keeps_the_workspace_and_shows_why(page, tmp_path):
    bad = tmp_path / "notes.jsonl"
    bad.write_text("".join(f'{{"id": "n{i}", "body": "no text field"}}\n' for i in range(3)))
    page.get_by_text("Data", exact=True).click()
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(bad))
    page.get_by_role("button", name="Create workspace").click()
    page.get_by_text("The upload did not make a workspace").wait_for(timeout=90_000)
    settle(page, "Overview")
    assert page.get_by_text("(bundled sample)").count()  # the sample is still open
    assert page.get_by_text("Rejected rows of the upload").count()
    alert = page.get_by_test_id("stAlertContentError").first.inner_text()
    assert "rejected" in alert and "--" not in alert and "icp " not in alert, alert
    shoot(page, "16-failed-upload")


@pytest.mark.parametrize("spec", PAGES, ids=[spec.title for spec in PAGES])
def test_every_page_reads_at_full_hd(browser, server, spec):
    page = browser.new_page(viewport=FULL_HD)
    page.goto(server[0])
    settle(page, PAGES[0].title)
    if spec != PAGES[0]:
        open_page(page, spec.title)
    assert not page.get_by_test_id("stException").count(), spec.title
    shoot(page, f"20-full-hd-{Path(spec.file).stem}")
    page.close()


def test_a_later_start_is_quick(browser, server, prepared_cache):
    with Workspace(server[1], read_only=True) as ws:
        runs_before = ws.scalar("SELECT count(*) FROM stage_runs")
    started = time.monotonic()
    with streamlit_server(prepared_cache, prepared_cache.parent / "server2.log") as url:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url)
        settle(page, "Overview")
        TIMES["later start"] = time.monotonic() - started
        page.close()
    print(f"\nlater start (server start to a usable Overview): {TIMES['later start']:.1f} s")
    # quick because it reuses what the first start prepared: no stage ran again (its time,
    # printed above, depends on how busy the machine is)
    with Workspace(server[1], read_only=True) as ws:
        assert ws.scalar("SELECT count(*) FROM stage_runs") == runs_before
