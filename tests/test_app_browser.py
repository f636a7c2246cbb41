"""The app in a real browser: Debian's chromium driven by Playwright, checking what a user sees.

`python -m app` runs in a subprocess on a free loopback port. One module fixture (`journey`) trains
once, through the page: it uploads a small preference file, starts an eight-step run on SmolLM2-135M
with evaluations due every three steps, reloads the page and opens a second tab while it trains, presses
Stop in the second tab, resumes in the first and watches the run finish, noting what the page said
and when. The tests below each check one part of that record, or act on the trained run (Runs,
Chat), so an early failure does not hide the later checks.
Screenshots go to test-artifacts/ at the repository root (or $ORPO_SHOTS).
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import time
from pathlib import Path

import pytest
from helpers import enabled, new_page, set_number, shot, text

from mlx_orpo import rundir

pytestmark = pytest.mark.slow

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
# Rows the Data tab's report counts: their own system prompt, and text already lost to a bad encoding.
SYSTEM_ROW = {"system": "You answer in one word.", "prompt": "Tallest mountain?", "chosen": "Everest.",
              "rejected": "Alps"}
FFFD_ROW = {"prompt": "Caf\ufffd name?", "chosen": "Caf\ufffd Central.", "rejected": "none"}
ITERS, EVAL_EVERY = 8, 3
# The first colour of app/plots.py's palette goes to "loss (train)", the second to "loss (eval)".
EVAL_COLOUR = "#f97316"
POINTS = """(sel, colour) => [...document.querySelectorAll(sel + ' path[aria-roledescription="point"]')]
                  .filter(p => !colour || p.getAttribute('fill') === colour).length"""
LINES = """sel => [...document.querySelectorAll(sel + ' path[aria-roledescription="line mark"]')]
                 .filter(p => (p.getAttribute('d') || '').includes('L')).map(p => p.getAttribute('stroke'))"""
# Bound on the tuned column's first streamed text after Send, cold (both models load in this chat).
# Measured on a 2-core CPU machine shared with other jobs: 3.1-10.3 s over six runs (base: 1.2-3.3 s).
TUNED_FIRST_TEXT_S = 30


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


def axis_labels(page, sel: str, axis: str) -> tuple[str, list[str]]:
    """The aria label and the label texts of a vega chart's X or Y axis."""
    return page.evaluate("""([sel, axis]) => {
        const found = [...document.querySelectorAll(sel + ' g[aria-roledescription="axis"]')]
            .find(g => (g.getAttribute('aria-label') || '').startsWith(axis + '-axis'));
        if (!found) return ['', []];
        const labels = [...found.querySelectorAll('.role-axis-label text')];
        return [found.getAttribute('aria-label'), labels.map(t => t.textContent)];
    }""", [sel, axis])


def eta_seconds(progress: str) -> float | None:
    found = re.search(r"ETA (?:(\d+)h )?(?:(\d+)m )?(\d+)s", progress)
    if not found:
        return None
    h, m, s = (int(g) if g else 0 for g in found.groups())
    return 3600 * h + 60 * m + s


def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "browser prefs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS * 3 + [SYSTEM_ROW, FFFD_ROW])
                    + '{"prompt": "a row without answers"}\n')
    return path


def upload(page, path: Path) -> str:
    page.get_by_role("tab", name="Data").click()
    page.locator("#data-file input[type=file]").set_input_files(str(path))
    page.wait_for_function("() => document.querySelector('#data-report').innerText.includes('pairs')",
                           timeout=120_000)
    return text(page, "#data-report")


def progress_text(page) -> str:
    return text(page, "#train-progress")


class Timeline:
    """What a page's Train tab said and when: (seconds since the start, progress text)."""

    def __init__(self, page, t0: float):
        self.page, self.t0, self.seen = page, t0, []

    def poll(self) -> str:
        now = progress_text(self.page)
        self.seen.append((time.time() - self.t0, now))
        return now

    def wait_for(self, predicate, timeout: float, what: str) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            now = self.poll()
            if "failed" in now:
                pytest.fail(f"{text(self.page, '#train-status')}\n"
                            f"{self.page.locator('#train-log textarea').input_value()}")
            if predicate(now):
                return now
            self.page.wait_for_timeout(250)
        pytest.fail(f"timed out waiting for {what}; last: {self.seen[-3:]}")


@pytest.fixture(scope="module")
def journey(app_url, browser, tmp_path_factory):
    """Train once, through the page, and note what it showed: a dict the tests below read."""
    url, runs, _ = app_url
    seen: dict = {"runs": runs}
    t0 = time.time()
    a = new_page(browser)
    a.goto(url)
    seen["report"] = upload(a, data_file(tmp_path_factory.mktemp("journey")))
    a.get_by_role("tab", name="Train").click()
    seen["data_line_before"] = text(a, "#train-data")
    seen["buttons_idle"] = (enabled(a, "train-start"), enabled(a, "train-stop"))
    # Steps of 4 short pairs: seconds each, longer than the page's 1.5 s refresh, so the page shows
    # every step and a Stop lands mid-run.
    for elem_id, value in (("train-iters", ITERS), ("train-max_length", 64), ("train-batch_size", 4),
                           ("train-report_every", 1), ("train-eval_every", EVAL_EVERY),
                           ("train-warmup_steps", 10 + ITERS)):
        set_number(a, elem_id, value)
    a.locator("#train-run-name textarea, #train-run-name input").first.fill("browser")
    a.wait_for_function(f"() => document.querySelector('#train-estimate').innerText"
                        f".includes('warmup ({10 + ITERS} steps) is longer than the run')")
    seen["estimate"] = text(a, "#train-estimate")
    set_number(a, "train-warmup_steps", 0)
    a.locator("#train-start").click()
    a.wait_for_function("() => document.querySelector('#train-status').innerText.includes('Started')")
    timeline = Timeline(a, t0)
    seen["timeline"] = timeline
    timeline.wait_for(lambda t: "training" in t and "step 1/" in t, 300, "the first step")
    shot(a, "1-train-first-step")

    # A reload while it trains: the page shows the job, its settings and its controls again.
    a.reload()
    a.get_by_role("tab", name="Train").click()
    reloaded = time.time()
    a.wait_for_function("() => document.querySelector('#train-progress').innerText.includes('browser')",
                        timeout=20_000)
    a.wait_for_function(f"() => document.querySelector('#train-iters input').value === '{ITERS}'", timeout=20_000)
    seen["reload"] = {"after_s": time.time() - reloaded, "progress": progress_text(a),
                      "buttons": (enabled(a, "train-start"), enabled(a, "train-stop"), enabled(a, "train-resume")),
                      "data_line": text(a, "#train-data"),
                      "max_length": a.locator("#train-max_length input").input_value()}
    shot(a, "2-train-after-reload")

    # A second tab (another session) shows the same job.
    b = new_page(browser)
    b.goto(url)
    b.get_by_role("tab", name="Train").click()
    b.wait_for_function("() => document.querySelector('#train-progress').innerText.includes('browser')",
                        timeout=20_000)
    b.wait_for_function("() => !document.querySelector('#train-stop').disabled", timeout=20_000)
    seen["second_tab"] = {"progress": progress_text(b), "data_line": text(b, "#train-data"),
                          "buttons": (enabled(b, "train-start"), enabled(b, "train-stop"))}

    # Mid-run, an evaluation due at step 3: the ETA then, against when step 3's evaluation ends.
    now = timeline.wait_for(lambda t: eta_seconds(t) is not None, 300, "a measured ETA")
    seen["first_eta"] = (timeline.seen[-1][0], eta_seconds(now), now)
    step_no = lambda t: int(m.group(1)) if (m := re.search(r"step (\d+)/", t)) else 0
    if "evaluating" in timeline.wait_for(lambda t: "evaluating" in t or step_no(t) >= 4, 300, "step 3's evaluation"):
        shot(a, "3-train-evaluating")
    timeline.wait_for(lambda t: step_no(t) >= 4, 300, "step 4")
    # Stop, from the second tab, at step 4 of 8: click to "stopped at step N; checkpoint saved" in the first.
    step_s = rundir.read_status(runs / "browser").step_seconds
    clicked = time.time()
    b.locator("#train-stop").click()
    stopped = timeline.wait_for(lambda t: "stopped at step" in t, 300, "stopped")
    seen["stop"] = {"latency_s": time.time() - clicked, "step_s": step_s, "progress": stopped,
                    "status": text(a, "#train-status"),
                    "buttons": (enabled(a, "train-start"), enabled(a, "train-stop"), enabled(a, "train-resume")),
                    "data_line": text(a, "#train-data")}
    shot(a, "4-train-stopped")
    b.context.close()

    # Resume: a "resuming" phase, then training to the end; the ETA from the middle is checked against it.
    a.locator("#train-resume-run input").click()
    a.get_by_role("option", name="browser").click()
    resumed = time.time() - t0
    a.locator("#train-resume").click()
    timeline.wait_for(lambda t: "finished" in t, 600, "the resumed run to finish")
    seen["resumed_at"], seen["finished_at"] = resumed, timeline.seen[-1][0]
    shot(a, "5-train-finished")
    seen["final"] = {"progress": progress_text(a), "log": a.locator("#train-log textarea").input_value(),
                     "buttons": (enabled(a, "train-start"), enabled(a, "train-stop"))}
    seen["eval_points"] = a.evaluate(f"({POINTS})('#train-loss', '{EVAL_COLOUR}')")
    seen["lines"] = a.evaluate(f"({LINES})('#train-loss')")
    seen["loss_text"] = text(a, "#train-loss")
    seen["x_ticks"] = axis_labels(a, "#train-loss", "X")[1]
    seen["y_ticks"] = axis_labels(a, "#train-loss", "Y")[1]
    a.context.close()
    total = time.time() - t0
    print(f"journey: {total:.0f} s; stop latency {seen['stop']['latency_s']:.1f} s "
          f"(the step before took {seen['stop']['step_s']} s)")
    return seen


# -- the Data tab (no training) --------------------------------------------------------------------------


def test_data_report_preview_histogram_and_uploads_stored_once(app_url, page, tmp_path):
    url, runs, _ = app_url
    page.goto(url)
    path = data_file(tmp_path)
    report = upload(page, path)
    assert "20 pairs" in report and "1 bad rows" in report, report
    assert "1 pairs carry their own system prompt" in report and "1 pairs contain U+FFFD" in report, report
    page.wait_for_function("() => document.querySelector('#data-preview').innerText.includes('im_start')",
                           timeout=60_000)
    cell = page.locator("#data-preview td").first.inner_text()
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>" in cell, cell  # line breaks kept
    page.wait_for_selector('#data-hist g[aria-roledescription="rect mark container"] path', timeout=30_000)
    aria, labels = axis_labels(page, "#data-hist", "X")
    numbers = [float(t.replace(",", "")) for t in labels if re.fullmatch(r"[\d,.]+", t)]
    assert "linear scale" in aria, aria
    assert len(numbers) >= 3 and numbers == sorted(numbers), labels
    shot(page, "0-data")
    page.goto(url)  # the same file again (a File box that holds a file has no input until cleared)
    upload(page, path)
    assert sorted(p.name for p in (runs / "uploads").iterdir()) == ["browser_prefs.jsonl"]


# -- one training run, seen from two tabs ------------------------------------------------------------------


def test_start_says_what_it_uses_and_flags_a_warmup_longer_than_the_run(journey):
    assert "browser_prefs.jsonl" in journey["data_line_before"]
    assert journey["buttons_idle"] == (True, False)
    assert f"warmup ({10 + ITERS} steps) is longer than the run ({ITERS} steps)" in journey["estimate"]


def test_a_reload_shows_the_running_job(journey):
    reload = journey["reload"]
    assert "browser" in reload["progress"] and re.search(rf"step \d/{ITERS}", reload["progress"]), reload
    assert reload["buttons"] == (False, True, False), reload  # Start and Resume off, Stop on
    assert "browser is training on uploads/browser_prefs.jsonl" in reload["data_line"], reload
    assert reload["max_length"] == "64"  # the job's settings, not the defaults
    assert reload["after_s"] < 10, reload


def test_a_second_tab_shows_the_same_job_and_cannot_start_another(journey):
    second = journey["second_tab"]
    assert "browser" in second["progress"] and second["buttons"] == (False, True), second
    assert "browser is training" in second["data_line"], second
    assert sorted(p.name for p in journey["runs"].iterdir() if p.name != "uploads") == ["browser"]


def test_phases_eta_and_evaluation_progress(journey):
    texts = [t for _, t in journey["timeline"].seen]
    phases = {t.split(": ", 1)[-1].split(" · ")[0] for t in texts}
    assert "compiling the first step" in phases or "loading the model and data" in phases, phases
    assert any("ETA estimating…" in t for t in texts), phases  # until a step has been timed
    assert any(re.search(r"evaluating: \d of \d+ held-out pairs", t) for t in texts), phases
    assert any(t.startswith("browser: resuming") for t in texts), phases
    early_zero = [t for t in texts if "ETA 0s" in t and f"step {ITERS}/{ITERS}" not in t]
    assert not early_zero, early_zero


def test_eta_in_the_middle_of_the_resumed_run_is_close(journey):
    """Error of the ETA shown while the resumed run trains (evaluations due at steps 6 and 8),
    against the time it actually finished."""
    end = journey["finished_at"]
    errors = [(t, eta_seconds(s) - (end - t)) for t, s in journey["timeline"].seen
              if t > journey["resumed_at"] and eta_seconds(s) is not None and "training" in s]
    assert errors, "no ETA shown while the resumed run trained"
    middle = errors[len(errors) // 2]
    remaining = end - middle[0]
    print(f"ETA error mid-resume: {middle[1]:+.1f} s of {remaining:.1f} s left; "
          f"median |error| {statistics.median(abs(e) for _, e in errors):.1f} s over {len(errors)} readings")
    assert abs(middle[1]) < max(0.5 * remaining, 15), errors


def test_stop_from_the_second_tab_stops_within_a_step(journey):
    stop = journey["stop"]
    assert re.search(r"stopped at step [4-6]; checkpoint saved", stop["progress"]), stop
    assert "Resume continues it" in stop["status"], stop
    assert stop["buttons"] == (True, False, True), stop
    # The reloaded tab took the run's data as its own: Start would train on the same again.
    assert "Start trains on **uploads/browser_prefs.jsonl**" in stop["data_line"] or \
        "Start trains on uploads/browser_prefs.jsonl" in stop["data_line"], stop
    # One step here takes 3-12 s on a shared 2-core CPU; the stop may wait for the step under way and a save.
    assert stop["latency_s"] < 45, stop


def test_curves_show_single_points_colours_and_readable_ticks(journey):
    final = journey["final"]
    assert "finished" in final["progress"] and f"step {ITERS}/{ITERS}" in final["progress"], final
    assert final["buttons"] == (True, False)
    assert f"train step {ITERS}/{ITERS}" in final["log"]
    assert journey["eval_points"] == 3  # evaluations at steps 3, 6 and 8, each a marker
    assert len(set(journey["lines"])) >= 2, journey["lines"]  # loss and NLL (train), each its colour
    assert "loss (eval)" in journey["loss_text"] and "loss (nats)" in journey["loss_text"]
    assert journey["x_ticks"] == [str(i) for i in range(1, ITERS + 1)], journey["x_ticks"]
    assert all(len(t) <= 6 for t in journey["y_ticks"]), journey["y_ticks"]


# -- acting on the trained run ---------------------------------------------------------------------------


def test_runs_overlay_draws_both_runs(journey, app_url, page):
    url, runs, _ = app_url
    shutil.copytree(runs / "browser", runs / "browser-copy", ignore=shutil.ignore_patterns(".lock"))
    page.goto(url)
    page.get_by_role("tab", name="Runs").click()
    page.locator("#runs-run input").click()
    page.locator("#runs-run").get_by_role("option", name="browser", exact=True).click()
    page.wait_for_function(f"() => ({POINTS})('#runs-loss', null) > 0", timeout=30_000)
    page.locator("#runs-other input").click()
    page.locator("#runs-other").get_by_role("option", name="browser-copy", exact=True).click()
    page.wait_for_function("() => document.querySelector('#runs-loss').innerText.includes('browser-copy · loss')",
                           timeout=30_000)
    colours = set(page.evaluate(f"({LINES})('#runs-loss')"))
    assert len(colours) == 8, colours  # loss and NLL, train and eval, of each run
    shot(page, "6-runs-overlay")
    page.locator("#runs-other input").click()
    page.locator("#runs-other").get_by_role("option", name="(none)", exact=True).click()
    page.wait_for_function("() => !document.querySelector('#runs-loss').innerText.includes('browser-copy')",
                           timeout=30_000)
    assert len(set(page.evaluate(f"({LINES})('#runs-loss')"))) == 4


def open_chat(page, url: str) -> None:
    """The Chat tab, on the run the journey trained."""
    page.goto(url)
    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat-run input").click()
    page.get_by_role("option", name="browser", exact=True).click()


def test_chat_with_a_held_out_pair(journey, app_url, page):
    open_chat(page, app_url[0])
    page.wait_for_selector("#chat-examples button", timeout=30_000)
    page.locator("#chat-examples button").first.click()
    page.wait_for_function("() => document.querySelector('#chat-chosen textarea')?.value.length > 0")
    prompt = page.locator("#chat-prompt textarea").input_value()
    pair = next(r for r in ROWS + [SYSTEM_ROW, FFFD_ROW] if r["prompt"] == prompt)
    assert page.locator("#chat-rejected textarea").input_value() == pair["rejected"]
    for sel in ("#chat-base", "#chat-tuned"):  # the pair's own answers stand below, not beside
        assert page.locator(sel).bounding_box()["width"] >= 400, page.locator(sel).bounding_box()
    assert not enabled(page, "chat-stop")
    set_number(page, "chat-max-tokens", 12)
    sent = time.time()
    page.locator("#chat-send").click()
    page.wait_for_function("() => document.querySelector('#chat-send').disabled", timeout=10_000)
    assert enabled(page, "chat-stop")
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
    assert re.search(r"Tuning moved the log odds by [+-]\d+\.\d{3}", text(page, "#chat-scores"))
    page.wait_for_function("() => !document.querySelector('#chat-send').disabled", timeout=60_000)
    assert not enabled(page, "chat-stop")
    shot(page, "7-chat-pair")


def test_chat_marks_cut_and_stopped_answers_and_collapses_long_prompts(journey, app_url, page):
    url, _, app_log = app_url
    open_chat(page, url)
    page.wait_for_function("() => document.querySelector('#chat-ckpt input').value === 'final'", timeout=30_000)
    # 142 characters of Chinese: fewer than the 160 that used to collapse a prompt, taller than three lines.
    long_prompt = ("请详细介绍长城的历史、建造方式和今天的意义。" * 7)[:142]
    page.locator("#chat-prompt textarea").fill(long_prompt)
    set_number(page, "chat-max-tokens", 7)
    page.locator("#chat-send").click()
    page.wait_for_function("""() => ['#chat-base', '#chat-tuned'].every(sel => {
        const bots = document.querySelectorAll(sel + ' .bot, ' + sel + ' [data-testid="bot"]');
        return bots.length && bots[bots.length - 1].innerText.includes('cut at 7 tokens');
    })""", timeout=240_000)
    wait_until_stable(page)
    shot(page, "8-chat-cut")
    for sel in ("#chat-base", "#chat-tuned"):
        bubble = page.locator(f"{sel} .user, {sel} [data-testid='user']").last
        assert "show more" in bubble.inner_text()
        assert bubble.bounding_box()["height"] < 160, bubble.bounding_box()
        assert "\ufffd" not in last_bot(page, sel)

    page.locator("#chat-prompt textarea").fill("Write a long story about a lighthouse keeper.")
    set_number(page, "chat-max-tokens", 400)
    page.locator("#chat-send").click()
    page.wait_for_function("""() => {
        const users = document.querySelectorAll('#chat-tuned .user, #chat-tuned [data-testid="user"]');
        const bots = document.querySelectorAll('#chat-tuned .bot, #chat-tuned [data-testid="bot"]');
        const text = bots.length ? bots[bots.length - 1].innerText.trim() : '';
        return users.length && users[users.length - 1].innerText.includes('lighthouse')
            && text.length > 10 && !text.startsWith('…');
    }""", timeout=120_000)
    before = last_bot(page, "#chat-tuned")
    page.locator("#chat-stop").click()
    page.wait_for_function("""() => {
        const bots = document.querySelectorAll('#chat-tuned .bot, #chat-tuned [data-testid="bot"]');
        return bots.length && bots[bots.length - 1].innerText.includes('stopped');
    }""", timeout=30_000)
    after = last_bot(page, "#chat-tuned")
    assert after.startswith(before[:10]) and len(after) > len("⏹ stopped") + 10, (before, after)  # text kept
    page.wait_for_function("() => !document.querySelector('#chat-send').disabled", timeout=10_000)
    assert not enabled(page, "chat-stop")
    shot(page, "9-chat-stopped")
    page.wait_for_timeout(3000)  # the worker ends after its current token
    assert "StreamContext" not in app_log.read_text()
