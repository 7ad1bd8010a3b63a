"""`actrec serve` in a real browser: Debian's headless Chromium driven by Selenium uploads a video, waits for the
prediction, finds the expected top label in the page and saves a screenshot of each tab.

Skips without Chromium and its driver outside CI; fails inside CI (env CI set), where they are installed.
ACTREC_SERVE_SCREENSHOT_RUNS=FOLDER serves that run or sweep folder instead of a tiny run (how the README's
screenshots are made from `make demo`'s runs/sweeps/demo).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.serve.runs import find_runs
from tests.serve.server import Server, tiny_run

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT = 240  # seconds for one step of the page (a prediction on a busy 2-core machine included)


@pytest.fixture
def browser():
    """Headless Chromium under Selenium; skipped without it outside CI, a failure inside CI."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    try:
        from selenium import webdriver
    except ImportError as exc:
        missing.append(f"selenium ({exc})")
    if missing:
        if os.environ.get("CI"):  # CI installs them (.ci/run): there the browser test must run, never skip
            pytest.fail(f"no browser in CI: missing {', '.join(missing)}")
        pytest.skip(f"no headless browser: missing {', '.join(missing)}")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    yield driver
    driver.quit()


def served_folder(tiny_dataset_root, tmp_path) -> Path:
    given = os.environ.get("ACTREC_SERVE_SCREENSHOT_RUNS")
    return Path(given).resolve() if given else Path(tiny_run(tiny_dataset_root, tmp_path / "work").run.dir)


def clips_of_several_classes(run, out: Path, classes: int = 4) -> Path:
    """One test video of each of the first ``classes`` classes, one after the other: a video whose labels
    change over time, for the timeline."""
    import cv2
    import numpy as np

    from pipeline.inputs.video import video_fps
    from tests.helpers import read_video

    firsts = {}
    for item in run.split.test:
        firsts.setdefault(item.label, item.path)
    paths = [firsts[label] for label in sorted(firsts)[:classes]]
    frames = np.concatenate([read_video(path) for path in paths])
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), video_fps(paths[0]),
                             (frames.shape[2], frames.shape[1]))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return out


def expected_top_label(run, video: Path, tmp_path) -> str:
    """The top label `actrec predict` gives ``video`` with the run's checkpoint."""
    import json

    out = tmp_path / "expected.json"
    result = CliRunner().invoke(cli, ["predict", str(video), "--checkpoint", str(run.checkpoint), "--json", str(out),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())["video_top5"][0]["label"]


def test_page_in_a_real_browser(browser, tiny_dataset_root, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    folder = served_folder(tiny_dataset_root, tmp_path)
    run = find_runs([folder])[0]  # the run the page shows first
    video = clips_of_several_classes(run, tmp_path / "upload.avi")
    expected = expected_top_label(run, video, tmp_path)
    server = Server([folder], tmp_path / "server.log")
    try:
        wait = WebDriverWait(browser, WAIT)
        browser.get(server.url)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
        browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(video))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload video"))  # the upload has arrived
        browser.find_element(By.ID, "predict").click()
        wait.until(lambda d: first_label(d.find_element(By.ID, "top5").text, run.class_names) is not None)
        assert first_label(browser.find_element(By.ID, "top5").text, run.class_names) == expected
        screenshot(browser, tmp_path / "predict.png")

        tab(browser, "Errors").click()
        wait.until(lambda d: "wrong test videos" in d.page_source or "No errors to show" in d.page_source)
        thumbnails = browser.find_elements(By.CSS_SELECTOR, "#strips button img, #strips img")
        if thumbnails:  # show the most confident mistake's timeline
            thumbnails[0].click()
            wait.until(lambda d: first_label(d.find_element(By.ID, "error_top5").text, run.class_names))
        screenshot(browser, tmp_path / "errors.png")

        tab(browser, "Runs").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#curves img"))
        screenshot(browser, tmp_path / "runs.png")
        assert server.process.poll() is None
    finally:
        server.stop()
    assert all((tmp_path / f"{name}.png").stat().st_size > 10_000 for name in ("predict", "errors", "runs"))


def screenshot(browser, path: Path) -> None:
    """The whole page: the window is made as tall as the page first."""
    height = browser.execute_script(
        "return Math.max(...[document.documentElement, document.body, ...document.querySelectorAll('.gradio-container,"
        " .main, .wrap')].map(e => e.scrollHeight))")
    browser.set_window_size(1280, min(max(height + 120, 800), 4000))
    browser.save_screenshot(str(path))
    browser.set_window_size(1280, 1400)


def tab(browser, title: str):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.XPATH, f"//button[@role='tab' and contains(., '{title}')]")


def first_label(text: str, class_names: list[str]) -> str | None:
    """The class name that comes first in ``text`` (a top-5 table as the page shows it), if any."""
    found = [(text.find(name), name) for name in class_names if name in text]
    return min(found)[1] if found else None
