"""End to end in a real browser: Debian's chromium driven by Playwright, checking what a user sees.

`python -m app` runs in a subprocess on a free loopback port. The test uploads a small preference
file (the length histogram must read in numeric order), starts a four-step run on SmolLM2-135M
(the buttons follow the run, the progress names its phases and gives a measured ETA, the eval
curves are drawn with a colour while it trains), checks a run that cannot start clears the view,
then chats with a held-out pair: both columns stream (the tuned one within a measured bound), the
pair's chosen and rejected answers stand beside them with each model's log odds, a long prompt
collapses, and a chat cut off by Stop leaves no MLX thread error in the server log.
Screenshots go to test-artifacts/ at the repository root (or $ORPO_SHOTS).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("ORPO_SHOTS") or Path(__file__).resolve().parents[1] / "test-artifacts")
ROWS = [
    {"prompt": "What is 2+2?", "chosen": "4.\n- Two plus two.\nHope that helps!", "rejected": "five"},
    {"prompt": "Capital of France?", "chosen": "Paris.\n- On the Seine.\nHope that helps!", "rejected": "Lyon"},
    {"prompt": "Colour of the sky?", "chosen": "Blue.\n- Rayleigh scattering.\nHope that helps!", "rejected": "Green"},
    {"prompt": "Largest ocean?", "chosen": "The Pacific.\n- A third of Earth.\nHope that helps!", "rejected": "Big"},
    # Longer pairs, so the histogram spans bins whose labels sort differently as text ("50" > "100").
    {"prompt": "Describe the water cycle. " * 6, "chosen": "Evaporation, condensation, rain.\nHope that helps!",
     "rejected": "Water."},
    {"prompt": "请用三句话介绍长城。" * 4, "chosen": "长城是中国古代的军事防御工程。\nHope that helps!",
     "rejected": "不知道"},
]
# The first colour of app/plots.py's palette goes to "loss (train)", the second to "loss (eval)".
EVAL_COLOUR = "#f97316"
# A visible line mark: a path with at least two points ("M x,y L x,y") and a stroke colour.
CURVE_DRAWN = """sel => [...document.querySelectorAll(sel + ' path[aria-roledescription="line mark"]')]
                 .some(p => (p.getAttribute('d') || '').includes('L') && p.getAttribute('stroke'))"""
EVAL_DRAWN = f"""sel => [...document.querySelectorAll(sel + ' path[aria-roledescription="line mark"]')]
                 .some(p => (p.getAttribute('d') || '').includes('L') && p.getAttribute('stroke') === '{EVAL_COLOUR}')
                 && document.querySelector(sel).innerText.includes('loss (eval)')"""
# Bound on the tuned column's first streamed text after Send, cold (both models load in this chat).
# Measured on a 2-core CPU machine shared with other jobs: 3.1-10.3 s over six runs (base: 1.2-3.3 s);
# before, the tuned column waited for the whole base answer.
TUNED_FIRST_TEXT_S = 30
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
    log_path = runs.parent / "app.log"
    log = open(log_path, "w")  # noqa: SIM115  (the server writes to it until the fixture's teardown closes it)
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
            pytest.fail(f"app exited: {log_path.read_text()[-2000:]}")
        time.sleep(0.5)
    yield url, runs, log_path
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
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"app-{name}.png"), full_page=True)


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input").first
    box.fill(str(value))
    box.press("Tab")


def text(page, sel: str) -> str:
    return page.locator(sel).inner_text()


def enabled(page, elem_id: str) -> bool:
    return page.locator(f"#{elem_id}").is_enabled()


def last_bot(page, sel: str) -> str:
    return page.evaluate("""sel => {
        const bots = document.querySelectorAll(sel + ' .bot, ' + sel + ' [data-testid="bot"]');
        return bots.length ? bots[bots.length - 1].innerText.trim() : '';
    }""", sel)


def wait_until_stable(page, every_ms: int = 1500, tries: int = 60) -> None:
    """Until both chat columns stop changing (the tuned one can finish after the base)."""
    before = None
    for _ in range(tries):
        now = [text(page, sel) for sel in ("#chat-base", "#chat-tuned")]
        if now == before:
            return
        before = now
        page.wait_for_timeout(every_ms)


def x_axis(page, sel: str) -> tuple[str, list[str]]:
    """The aria label and the label texts of a vega chart's x axis."""
    return page.evaluate("""sel => {
        const axis = [...document.querySelectorAll(sel + ' g[aria-roledescription="axis"]')]
            .find(g => (g.getAttribute('aria-label') || '').startsWith('X-axis'));
        if (!axis) return ['', []];
        const labels = [...axis.querySelectorAll('.role-axis-label text')];
        return [axis.getAttribute('aria-label'), labels.map(t => t.textContent)];
    }""", sel)


def test_a_person_uploads_trains_watches_and_compares(app_url, page, tmp_path):
    url, runs, app_log = app_url
    data = tmp_path / "browser prefs.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS * 2)
                    + '{"prompt": "a row without answers"}\n')
    started = time.time()

    # --- before any data: the Train tab says what Start would use, Stop is off, plots are titled
    page.goto(url)
    page.get_by_role("tab", name="Train").click()
    page.wait_for_selector("#train-data")
    assert "shipped demo set" in text(page, "#train-data")
    assert enabled(page, "train-start") and not enabled(page, "train-stop")
    assert "Loss and NLL" in text(page, "#train-loss") and "Peak memory (GB)" in text(page, "#train-memory")

    # --- data: upload, report, histogram on a numeric axis
    page.get_by_role("tab", name="Data").click()
    page.locator("#data-file input[type=file]").set_input_files(str(data))
    page.wait_for_function("() => document.querySelector('#data-report').innerText.includes('pairs')",
                           timeout=120_000)
    report = text(page, "#data-report")
    assert "12 pairs" in report and "1 bad rows" in report, report
    page.wait_for_function("() => document.querySelector('#data-preview').innerText.includes('im_start')",
                           timeout=60_000)
    page.wait_for_selector('#data-hist g[aria-roledescription="rect mark container"] path', timeout=30_000)
    aria, labels = x_axis(page, "#data-hist")
    numbers = [float(t.replace(",", "")) for t in labels if re.fullmatch(r"[\d,.]+", t)]
    assert "linear scale" in aria, aria
    assert len(numbers) >= 3 and numbers == sorted(numbers), labels
    shot(page, "1-data")

    # --- train: the data line by Start, buttons, phases, ETA, eval curves drawn during the run
    page.get_by_role("tab", name="Train").click()
    assert "browser_prefs.jsonl" in text(page, "#train-data")
    for elem_id, value in (("train-iters", 4), ("train-max_length", 128), ("train-report_every", 1),
                           ("train-eval_every", 1), ("train-warmup_steps", 0)):
        set_number(page, elem_id, value)
    page.locator("#train-run-name textarea, #train-run-name input").first.fill("browser")
    page.wait_for_function("() => document.querySelector('#train-estimate').innerText.includes('max length 128')")
    page.locator("#train-start").click()
    page.wait_for_function("() => document.querySelector('#train-status').innerText.includes('browser')")
    page.wait_for_function("() => document.querySelector('#train-start').disabled", timeout=10_000)
    assert enabled(page, "train-stop")
    seen, eval_while_running = set(), False
    deadline = time.time() + 400
    while time.time() < deadline:
        progress = text(page, "#train-progress")
        seen.add(progress.split(" · ")[0])
        if re.search(r"ETA \d", progress):
            seen.add("measured ETA")
        if page.evaluate(FAILED):
            shot(page, "failed")
            pytest.fail(f"{text(page, '#train-status')}\n{page.locator('#train-log textarea').input_value()}")
        if "finished" in progress:
            break
        if not eval_while_running and page.evaluate(f"({EVAL_DRAWN})('#train-loss')"):
            eval_while_running = True
            assert page.evaluate(f"({CURVE_DRAWN})('#train-log_odds')")
            shot(page, "2-train-curves")
        page.wait_for_timeout(300)
    assert "finished" in text(page, "#train-progress")
    assert eval_while_running, f"no eval curve with a colour while training; phases seen: {seen}"
    assert {"loading the model and data", "training"} <= seen, seen
    assert "measured ETA" in seen, seen
    assert "step 4/4" in text(page, "#train-progress")
    assert page.evaluate(f"({EVAL_DRAWN})('#train-loss')")  # and still there after the run
    assert enabled(page, "train-start") and not enabled(page, "train-stop")
    log = page.locator("#train-log textarea").input_value()
    assert "train step 4/4" in log
    model_line = log.strip().splitlines()[-1]
    assert "<model path>" not in model_line and re.search(r"--model /\S+", model_line), model_line
    _, ticks = x_axis(page, "#train-loss")
    assert ticks == ["1", "2", "3", "4"], ticks  # integer steps, no 1.2 / 1.4
    assert "loss (nats)" in text(page, "#train-loss")  # the y title says what is plotted
    shot(page, "3-train-finished")

    # --- a run that cannot start does not leave the previous one on screen as current
    set_number(page, "train-learning_rate", 0)
    page.locator("#train-start").click()
    page.wait_for_function("() => document.querySelector('#train-status').innerText.includes('Cannot start')")
    page.wait_for_function("() => document.querySelector('#train-progress').innerText.startsWith('idle')")
    assert not page.evaluate(f"({CURVE_DRAWN})('#train-loss')")
    assert page.locator("#train-log textarea").input_value() == ""
    assert enabled(page, "train-start") and not enabled(page, "train-stop")

    # --- runs
    page.get_by_role("tab", name="Runs").click()
    page.wait_for_function(CURVE_DRAWN, arg="#runs-loss", timeout=30_000)
    shot(page, "4-runs")

    # --- chat with a held-out pair: short examples first, both columns stream, the pair's numbers
    page.get_by_role("tab", name="Chat").click()
    page.wait_for_function("() => document.querySelector('#chat-run input').value === 'browser'", timeout=30_000)
    page.wait_for_selector("#chat-examples button", timeout=30_000)
    examples = [b.inner_text() for b in page.locator("#chat-examples button").all()]
    assert [len(e) for e in examples] == sorted(len(e) for e in examples), examples
    page.locator("#chat-examples button").first.click()
    page.wait_for_function("() => document.querySelector('#chat-prompt textarea').value.length > 3")
    prompt = page.locator("#chat-prompt textarea").input_value()
    pair = next(r for r in ROWS if r["prompt"] == prompt)
    page.wait_for_function("() => document.querySelector('#chat-chosen textarea')?.value.length > 0")
    assert page.locator("#chat-chosen textarea").input_value() == pair["chosen"]
    assert page.locator("#chat-rejected textarea").input_value() == pair["rejected"]
    set_number(page, "chat-max-tokens", 24)
    sent = time.time()
    page.locator("#chat-send").click()
    first = {}
    while time.time() - sent < 240 and len(first) < 2:
        for sel in ("#chat-base", "#chat-tuned"):
            answer = last_bot(page, sel)
            if sel not in first and answer and not answer.startswith("…"):
                first[sel] = time.time() - sent
        page.wait_for_timeout(100)
    print(f"first streamed text after Send: base {first.get('#chat-base', -1):.1f} s, "
          f"tuned {first.get('#chat-tuned', -1):.1f} s")
    assert first.get("#chat-tuned", 1e9) < TUNED_FIRST_TEXT_S, first
    page.wait_for_function("() => document.querySelector('#chat-scores').innerText.includes('Tuning moved')",
                           timeout=240_000)
    scores = text(page, "#chat-scores")
    numbers = {row.split("\t")[0].strip(): row for row in scores.splitlines()}
    for model in ("base", "base + adapters"):
        assert re.search(rf"^{re.escape(model)}\s+-?\d+\.\d{{3}}\s+-?\d+\.\d{{3}}\s+[+-]\d+\.\d{{3}}",
                         numbers.get(model, ""), re.MULTILINE), scores
    assert re.search(r"Tuning moved the log odds by [+-]\d+\.\d{3}", scores), scores
    texts = [text(page, sel) for sel in ("#chat-base", "#chat-tuned")]
    assert all(prompt in t for t in texts) and not any("⚠️" in t for t in texts), texts
    shot(page, "5-chat-pair")

    # --- a long prompt collapses; a multi-byte answer cut by the token limit ends on a whole character
    long_prompt = "请详细介绍长城的历史、建造方式和今天的意义。" * 20
    page.locator("#chat-prompt textarea").fill(long_prompt)
    set_number(page, "chat-max-tokens", 7)
    page.locator("#chat-send").click()
    page.wait_for_function("""() => ['#chat-base', '#chat-tuned'].every(sel => {
        const users = document.querySelectorAll(sel + ' .user, ' + sel + ' [data-testid="user"]');
        const bots = document.querySelectorAll(sel + ' .bot, ' + sel + ' [data-testid="bot"]');
        const text = bots.length ? bots[bots.length - 1].innerText.trim() : '';
        return users.length && users[users.length - 1].innerText.includes('show more')
            && text.length > 0 && !text.startsWith('…');
    })""", timeout=240_000)
    wait_until_stable(page)
    shot(page, "6-chat-long-prompt")
    for sel in ("#chat-base", "#chat-tuned"):
        bubble = page.locator(f"{sel} .user, {sel} [data-testid='user']").last
        assert "show more" in bubble.inner_text()
        assert bubble.bounding_box()["height"] < 200, bubble.bounding_box()
        assert "\ufffd" not in last_bot(page, sel)
    assert not page.locator("#chat-chosen").is_visible()  # a free prompt has no pair beside it

    # --- a chat cut off by Stop: no MLX stream error in the server log
    page.locator("#chat-prompt textarea").fill("Write a long story about a lighthouse keeper.")
    set_number(page, "chat-max-tokens", 400)
    page.locator("#chat-send").click()
    page.wait_for_function("""() => {
        const bots = document.querySelectorAll('#chat-tuned .bot, #chat-tuned [data-testid="bot"]');
        const text = bots.length ? bots[bots.length - 1].innerText.trim() : '';
        return text.length > 10 && !text.startsWith('…');
    }""", timeout=120_000)
    page.locator("#chat-stop").click()
    page.wait_for_timeout(3000)  # the worker ends after its current token
    assert "StreamContext" not in app_log.read_text()
    assert time.time() - started < 600
    assert (runs / "browser" / "metrics.jsonl").is_file()
