"""End to end in a real browser: Debian's chromium driven by Playwright.

`python -m app` runs in a subprocess on a free loopback port. The test uploads a
small preference file, starts a two-step run on SmolLM2-135M, waits until the
loss and log-odds curves show lines, sends a chat prompt and waits for two
answers. Screenshots go to test-artifacts/ at the repository root.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ROWS = [
    {"prompt": "What is 2+2?", "chosen": "4.\n- Two plus two.\nHope that helps!", "rejected": "five"},
    {"prompt": "Capital of France?", "chosen": "Paris.\n- On the Seine.\nHope that helps!", "rejected": "Lyon"},
    {"prompt": "Colour of the sky?", "chosen": "Blue.\n- Rayleigh scattering.\nHope that helps!", "rejected": "Green"},
    {"prompt": "Largest ocean?", "chosen": "The Pacific.\n- A third of Earth.\nHope that helps!", "rejected": "Big"},
]
# A visible line mark: a path with at least two points ("M x,y L x,y") and a stroke colour
# (Gradio can draw lines without one, which leaves the plot looking empty).
CURVE_DRAWN = """sel => [...document.querySelectorAll(sel + ' path[aria-roledescription="line mark"]')]
                 .some(p => (p.getAttribute('d') || '').includes('L') && p.getAttribute('stroke'))"""


FAILED = "document.querySelector('#train-status').innerText.includes('failed')"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, smollm2_dir):
    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium not installed (apt-get install chromium)")
    pytest.importorskip("playwright")
    runs = tmp_path_factory.mktemp("browser-runs")
    port = free_port()
    log = open(runs.parent / "app.log", "w")
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port), "--runs-dir", str(runs)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parents[1])
    url = f"http://127.0.0.1:{port}/"
    import httpx

    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"app exited: {(runs.parent / 'app.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield url, runs
    proc.terminate()  # the app stops its training subprocesses on exit
    proc.wait(timeout=60)
    log.close()


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield page
        browser.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"app-{name}.png"), full_page=True)


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input").first
    box.fill(str(value))
    box.press("Tab")


def test_upload_train_watch_curves_and_chat(app_url, page, tmp_path):
    url, runs = app_url
    data = tmp_path / "browser prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS * 3) + '{"prompt": "a row without answers"}\n')
    started = time.time()

    page.goto(url)
    page.wait_for_selector("#data-file")
    page.locator("#data-file input[type=file]").set_input_files(str(data))
    page.wait_for_function("() => document.querySelector('#data-report').innerText.includes('pairs')",
                           timeout=120_000)
    report = page.locator("#data-report").inner_text()
    assert "12 pairs" in report and "1 bad rows" in report, report
    page.wait_for_function("() => document.querySelector('#data-preview').innerText.includes('im_start')",
                           timeout=60_000)
    shot(page, "1-data")

    page.get_by_role("tab", name="Train").click()
    set_number(page, "train-iters", 2)
    set_number(page, "train-max_length", 128)
    set_number(page, "train-report_every", 1)
    set_number(page, "train-eval_every", 1)
    page.locator("#train-run-name textarea, #train-run-name input").first.fill("browser")
    page.wait_for_function("() => document.querySelector('#train-estimate').innerText.includes('max length 128')")
    page.locator("#train-start").click()
    page.wait_for_function("() => document.querySelector('#train-status').innerText.includes('browser')")
    for plot in ("train-loss", "train-log_odds"):
        page.wait_for_function(f"sel => ({CURVE_DRAWN})(sel) || {FAILED}", arg=f"#{plot}", timeout=300_000)
        status = page.locator("#train-status").inner_text()
        if "failed" in status:
            shot(page, "failed")
            pytest.fail(f"{status}\n{page.locator('#train-log textarea').input_value()}")
    shot(page, "2-train-curves")
    page.wait_for_function("() => document.querySelector('#train-progress').innerText.includes('finished')",
                           timeout=120_000)
    assert "step 2/2" in page.locator("#train-progress").inner_text()
    assert "train step 2/2" in page.locator("#train-log textarea").input_value()
    shot(page, "3-train-finished")

    page.get_by_role("tab", name="Runs").click()
    page.wait_for_function(CURVE_DRAWN, arg="#runs-loss", timeout=30_000)
    shot(page, "4-runs")

    page.get_by_role("tab", name="Chat").click()
    page.wait_for_function("() => document.querySelector('#chat-run input').value === 'browser'", timeout=30_000)
    page.locator("#chat-examples button").first.click()  # a prompt from the run's held-out split
    page.wait_for_function("() => document.querySelector('#chat-prompt textarea').value.length > 3")
    prompt = page.locator("#chat-prompt textarea").input_value()
    page.locator("#chat-send").click()
    answered = """() => ['#chat-base', '#chat-tuned'].every(sel => {
        const bots = document.querySelectorAll(sel + ' .bot, ' + sel + ' [data-testid="bot"]');
        const text = bots.length ? bots[bots.length - 1].innerText.trim() : '';
        return text.length > 3 && !text.startsWith('…') && !text.startsWith('(waiting');
    })"""
    page.wait_for_function(answered, timeout=240_000)
    texts = None  # the adapter column streams after the base column: wait until both stop changing
    for _ in range(60):
        now = [page.locator(sel).inner_text() for sel in ("#chat-base", "#chat-tuned")]
        if now == texts:
            break
        texts = now
        page.wait_for_timeout(2000)
    shot(page, "5-chat")
    assert all(prompt in t for t in texts)
    assert not any("⚠️" in t for t in texts), texts
    assert time.time() - started < 600
    assert (runs / "browser" / "metrics.jsonl").is_file()
