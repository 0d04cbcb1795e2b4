"""The real web UI in headless chromium: select SCALe, set its fields, check the preview, press Start.

Needs Debian's chromium (``apt-get install chromium chromium-driver``) and the ``playwright`` package; never
downloads a browser. Skipped, saying which is missing, otherwise. ``SCALE_UPDATE_DOCS_IMG=1`` copies the
screenshot to ``docs/img/llamafactory_scale.png``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from .helpers import CLI, step_logs

STEPS = 60

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HAS_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
DOCS_IMAGE = Path(__file__).resolve().parents[2] / "docs" / "img" / "llamafactory_scale.png"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no system chromium (apt-get install chromium chromium-driver)"),
    pytest.mark.skipif(
        not HAS_PLAYWRIGHT, reason="no playwright package (pip install playwright; no browser download)"
    ),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def webui(tmp_path):
    """``scale-llamafactory webui`` on 127.0.0.1 and a free port, run in ``tmp_path`` (LlamaBoard's caches)."""
    port = _free_port()
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "BROWSER": "true",  # the UI asks the default browser to open it: do nothing
        "LLAMAFACTORY_VERBOSITY": "INFO",
    }
    log = (tmp_path / "webui.log").open("w")
    proc = subprocess.Popen([CLI, "webui"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("the web UI did not start:\n" + (tmp_path / "webui.log").read_text()[-3000:])
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _field(page, label: str):
    """The visible control labelled ``label`` (other tabs have fields of the same names, hidden)."""
    return page.get_by_label(label).filter(visible=True).first


def _fill(page, label: str, text: str) -> None:
    box = _field(page, label)
    box.fill(text)
    box.press("Tab")


def _choose(page, label: str, option: str) -> None:
    _field(page, label).click()
    page.get_by_role("option", name=option, exact=True).filter(visible=True).first.click()


def _set_number(page, label: str, value: float) -> None:
    _fill(page, f"number input for {label}", str(value))


def _dismiss_toasts(page) -> None:
    """Close the toasts still shown. Gradio's toasts also close by themselves: one that is gone before its close
    button is clicked is fine (a fresh-clone CI run once waited 30 s on a toast that had just closed)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for close in page.locator(".toast-close").all():
        try:
            close.click(timeout=3_000)
        except PlaywrightTimeout:
            if close.is_visible():
                raise


def test_select_scale_preview_and_start(webui, tiny, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(webui, wait_until="domcontentloaded")
            _field(page, "Loss function").wait_for(timeout=60_000)

            _choose(page, "Model name", "Custom")
            _fill(page, "Model path", str(tiny.model))
            _choose(page, "Finetuning method", "full")
            _choose(page, "Chat template", "chatml")
            _fill(page, "Data dir", str(tiny.dataset_dir))
            _choose(page, "Dataset", "cot")
            page.keyboard.press("Escape")
            _choose(page, "Compute type", "fp32")
            _set_number(page, "Cutoff length", 128)
            _set_number(page, "Batch size", 4)
            _set_number(page, "Gradient accumulation", 1)
            page.get_by_text("Extra configurations", exact=True).click()
            # LlamaBoard's monitor reads the log every 2 s while the run lives and shows, once it ended, the log it read
            # last: a run that logged and ended between two reads would show none of it. 60 steps (a few seconds on
            # the tiny model) keep the run alive over several reads after its first log line.
            extra = {"max_steps": STEPS, "logging_steps": 1, "preprocessing_num_workers": 1, "save_strategy": "no"}
            _fill(page, "Extra arguments", json.dumps(extra))

            _choose(page, "Loss function", "SCALe")
            _field(page, "Weight schedule").wait_for()  # the SCALe settings opened
            _choose(page, "Weight schedule", "linear")
            _set_number(page, "Answer weight at start", 0.2)
            _set_number(page, "Answer weight at end", 0.6)

            # an invalid setting: the pop-up shows the message with its tags (Gradio renders it as HTML)
            _fill(page, "Extra segments", "p:<p>")
            page.get_by_role("button", name="Preview command").click()
            toast = page.locator(".toast-body", has_text="must look like").first
            toast.wait_for(timeout=30_000)
            assert "'p:<p>' must look like 'name:<open>:</close>" in toast.inner_text(), toast.inner_text()
            _dismiss_toasts(page)
            _fill(page, "Extra segments", "")

            page.get_by_role("button", name="Preview command").click()
            preview = page.get_by_text("scale-llamafactory train")
            preview.wait_for(timeout=30_000)
            text = page.locator("pre", has_text="scale-llamafactory train").inner_text()
            for line in (
                "--use_scale_loss True",
                "--scale_schedule linear",
                "--scale_answer_weight_start 0.2",
                "--scale_think_open '<think>'",  # shell-quoted: pasted into bash, no redirection
            ):
                assert line in text, text
            assert "llamafactory-cli" not in text
            _dismiss_toasts(page)  # e.g. "non-instruct model" warnings
            page.screenshot(path=str(tmp_path / "webui_full.png"), full_page=True)
            # the docs picture: from the top of the page to the end of the SCALe settings. The model path box shows a
            # placeholder, not this machine's temporary folder (the DOM value only: the UI's state keeps the real one)
            page.evaluate("window.scrollTo(0, 0)")
            bottom = _field(page, "Extra segments").bounding_box()
            shot = tmp_path / "llamafactory_scale.png"
            clip = {"x": 0, "y": 0, "width": 1400, "height": bottom["y"] + bottom["height"] + 40}
            model_box = _field(page, "Model path")
            model_box.evaluate("(el, value) => { el.value = value; }", "path/to/your/model")
            page.screenshot(path=str(shot), clip=clip, full_page=True)
            model_box.evaluate("(el, value) => { el.value = value; }", str(tiny.model))
            if os.getenv("SCALE_UPDATE_DOCS_IMG") == "1":
                DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shot, DOCS_IMAGE)

            page.get_by_role("button", name="Start", exact=True).click()
            # while it trains, the monitor shows the log (and the loss plot once there is a step)
            page.get_by_text("'scale/think_loss'", exact=False).first.wait_for(timeout=240_000)
            page.get_by_text("Finished.", exact=False).first.wait_for(timeout=240_000)
            shown = page.locator("pre", has_text="'scale/answer_weight'").first.inner_text()
            page.screenshot(path=str(tmp_path / "webui_finished.png"), full_page=True)
        finally:
            browser.close()

    states = list((tmp_path / "saves").rglob("trainer_state.json"))
    assert len(states) == 1, states
    run = states[0].parent
    logs = step_logs(run)
    assert len(logs) == STEPS
    weights = [entry["scale/answer_weight"] for entry in logs]
    assert weights[0] == pytest.approx(0.2) and weights[-1] == pytest.approx(0.6) and weights == sorted(weights)
    assert "SCALe loss active on rank 0" in (run / "running_log.txt").read_text()
    # the UI's log: one line of SCALe metrics per logging step, as in the file it reads (up to the monitor's last read)
    seen = [
        entry
        for entry in logs
        if f"'scale/answer_weight': {entry['scale/answer_weight']:.4f}" in shown
        and f"'scale/think_loss': {entry['scale/think_loss']:.4f}" in shown
    ]
    assert seen and seen[0] is logs[0], shown
    # trainer_log.jsonl (the UI's loss plot reads it) has the SCALe metrics of every step
    lines = [json.loads(line) for line in (run / "trainer_log.jsonl").read_text().splitlines()]
    lines = [line for line in lines if "loss" in line]
    for key in ("scale/think_loss", "scale/answer_loss", "scale/think_weight", "scale/answer_weight"):
        assert [line[key] for line in lines] == pytest.approx([entry[key] for entry in logs])
