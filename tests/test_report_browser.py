"""The report as a person sees it: a sonify run whose provided concepts, captions and image file
name carry markup, reported with `run_pipeline.py report`, then opened in headless Chromium over
http on loopback. Debian's chromium and chromedriver are installed when missing (as root, like CI)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipelines.config import load_config
from tests.helpers import POOL_PLOTS, SONIFY_PLOTS

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1600",
)
MARKUP_CAPTION = "a \"quoted\" & <b>bold</b> caption <script>document.title='pwned'</script>"
MARKUP_LABEL = "<script>document.title='pwned'</script>"
MARKUP_TEXT = "<img src=x onerror=\"document.title='pwned'\"> a dog barks"
MARKUP_FILE_STEM = 'x"><img src=x onerror="document.title=\'pwned\'">'


def ensure_chromium() -> None:
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.fail(
            f"{CHROMIUM} and {CHROMEDRIVER} are missing; install Debian's chromium and chromium-driver (as root)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, capture_output=True, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "chromium", "chromium-driver"],
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    ensure_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


class ServedFolder:
    """A folder served over http on 127.0.0.1, from a thread."""

    def __init__(self, folder: Path) -> None:
        handler = functools.partial(QuietHandler, directory=str(folder))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".flac": "audio/flac"}

    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def markup_run(pipeline_runs, single_node_run):
    """A finished sonify run over the shared test images plus one whose file name is markup, with
    concepts and captions from a provided file full of markup; the reference run's pool. Returns
    the config and the printed output of `report`."""
    config_path = pipeline_runs.config("report-markup", pool_dir=single_node_run.pool_dir())
    folder = config_path.parent
    pixels = (np.random.default_rng(7).random((72, 96, 3)) * 255).astype(np.uint8)
    (folder / "images").mkdir()
    Image.fromarray(pixels).save(folder / "images" / f"{MARKUP_FILE_STEM}.png")
    stems = [p.stem for p in sorted((pipeline_runs.root / "inputs" / "images").glob("*.png"))] + [MARKUP_FILE_STEM]
    concepts = [
        {
            "image_id": stem,
            "caption": MARKUP_CAPTION,
            "concepts": [{"label": MARKUP_LABEL, "text": MARKUP_TEXT}, {"label": "rain", "text": "rain on a tin roof"}],
        }
        for stem in stems
    ]
    (folder / "concepts.jsonl").write_text("".join(json.dumps(c) + "\n" for c in concepts))
    tree = yaml.safe_load(config_path.read_text())
    tree["models"]["vlm"] = [
        {"name": "given", "backend": "provided", "path": str(folder / "concepts.jsonl"), "batch_size": 4}
    ]
    tree["sonify"]["images"].append(str(folder / "images" / "*"))
    tree["sonify"]["images_per_chunk"] = 20
    config_path.write_text(yaml.safe_dump(tree))
    pipeline_runs.run("sonify", config_path)
    report = pipeline_runs.run("report", config_path)
    return config_path, report.log.read_text(), len(stems)


def open_page(driver, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drops what earlier pages logged
    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return [...document.images].every(i => i.complete)"))


def check_plots(driver, expected: set[str]) -> None:
    plots = driver.execute_script(
        "return [...document.querySelectorAll('figure.plot')].map(f => [f.id, f.querySelector('img').naturalWidth])"
    )
    assert {name.removeprefix("plot-") for name, _ in plots} == expected
    assert all(width > 0 for _, width in plots), plots


def console_errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def save_full_page(driver, path: Path) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(height, 12000))
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 1600)


def test_report_pages_in_chromium(markup_run, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    config_path, printed, images = markup_run
    config = load_config(config_path)
    out, pool = Path(config.sonify.out), Path(config.pool.dir)
    assert f"report: {out}/report/index.html" in printed and f"report: {pool}/report/index.html" in printed

    with ServedFolder(out / "report") as base:
        open_page(browser, f"{base}/index.html")
        WebDriverWait(browser, 60).until(
            lambda d: d.execute_script(
                "return [...document.querySelectorAll('audio')].every(a => a.readyState >= 1 || a.error)"
            )
        )
        audio = browser.execute_script(
            "return [...document.querySelectorAll('.item audio')].map(a => [a.duration, a.error && a.error.code])"
        )
        assert len(audio) == images, "every sample is in a gallery of up to 48"
        for duration, error in audio:
            assert error is None and duration == pytest.approx(config.pool.clip_seconds, abs=0.05)
        # The most used clips: one row each, by uses, each playing its pool clip.
        manifest = pq.read_table(out / "manifest", columns=["concepts", "error"]).to_pylist()
        uses = Counter(c["clip_id"] for row in manifest if row["error"] is None for c in row["concepts"])
        rows = browser.execute_script(
            "return [...document.querySelectorAll('#top-clips tr')].slice(1).map(r => ["
            "r.cells[1].innerText.split('\\n')[0], Number(r.cells[2].innerText),"
            "r.querySelector('audio') && r.querySelector('audio').duration,"
            "r.querySelector('audio') && r.querySelector('audio').error])"
        )
        assert len(rows) == min(20, len(uses))
        assert [n for _, n, _, _ in rows] == sorted((n for n in uses.values()), reverse=True)[: len(rows)]
        for clip_id, n, duration, error in rows:
            assert uses[clip_id] == n
            assert error is None and duration == pytest.approx(config.pool.clip_seconds, abs=0.05)
        thumbnails = browser.execute_script(
            "return [...document.querySelectorAll('img.thumb')].map(i => i.naturalWidth)"
        )
        assert len(thumbnails) == images and all(width > 0 for width in thumbnails)
        check_plots(browser, SONIFY_PLOTS)

        # The markup is shown as text and none of it runs or becomes an element.
        assert browser.title == "Sonify report"
        assert browser.execute_script("return document.scripts.length") == 0
        assert browser.execute_script("return document.querySelectorAll('[onerror]').length") == 0
        assert not browser.execute_script(
            "return [...document.querySelectorAll('b')].some(b => b.textContent === 'bold')"
        )
        assert browser.execute_script("return document.querySelectorAll('img').length") == images + len(SONIFY_PLOTS)
        text = browser.execute_script("return document.body.innerText")
        for untrusted in (MARKUP_CAPTION, MARKUP_LABEL, MARKUP_TEXT, f"{MARKUP_FILE_STEM}.png"):
            assert untrusted in text
        assert console_errors(browser) == []
        save_full_page(browser, tmp_path / "sonify-report.png")

    with ServedFolder(pool / "report") as base:
        open_page(browser, f"{base}/index.html")
        check_plots(browser, POOL_PLOTS)
        assert console_errors(browser) == []
        save_full_page(browser, tmp_path / "pool-report.png")
    assert (tmp_path / "sonify-report.png").stat().st_size > 0
