"""The Train and Runs tabs in a real browser (Debian's chromium driven by Playwright): the form keeps what
is typed, the memory preview is what Start runs, the Runs tab renders any run the trainer can write, the
ETA comes from the server's own record, and the smaller things a user sees.

The app runs as `python -m app` on a free loopback port (conftest.py's `app_url`, one per module); the
tests run in file order and share its runs folder, each waiting for its own run to end.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import EVAL_RECORD, TRAIN_RECORD, form, odd_runs, set_number, shot, text, written_run

from mlx_orpo import rundir
from mlx_orpo.runlock import holder

pytestmark = pytest.mark.slow

TINY = dict(max_length=64, batch_size=2, report_every=1, eval_every=0, warmup_steps=0)


def client_for(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


def wait_for_end(run: Path, timeout: float = 300) -> str:
    """Until the trainer in `run` has finished, stopped or failed and let go of the run; its last status
    phase ("error" if it failed)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = rundir.read_status(run)
        log = run / rundir.LOG
        failed = log.is_file() and "error:" in log.read_text(errors="replace")
        ended = failed or (status is not None and status.phase in (rundir.FINISHED, rundir.STOPPED))
        if ended and holder(run) is None:
            return "error" if failed else status.phase
        time.sleep(0.5)
    pytest.fail(f"{run.name} did not end: {(run / rundir.LOG).read_text(errors='replace')[-2000:]}")


def start_by_api(url: str, name: str, **settings) -> None:
    started = client_for(url).predict(name, "smollm2-135m", *form(**settings), api_name="/start_training")
    assert f"Started **{name}**" in started, started


def open_train_tab(page, url: str) -> None:
    page.goto(url)
    page.get_by_role("tab", name="Train").click()


def fill_text(page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(value)


def click_start(page) -> str:
    page.locator("#train-start").click()
    page.wait_for_function("() => /Started|Cannot start/.test(document.querySelector('#train-status').innerText)",
                           timeout=60_000)
    return text(page, "#train-status")


# -- 1. the form keeps what is typed ----------------------------------------------------------------------


def test_a_blank_iterations_box_shows_blank(app_url, page):
    """Iterations is optional (blank: train for --epochs); the box must not show a 0 that means nothing."""
    open_train_tab(page, app_url[0])
    box = page.locator("#train-iters input")
    box.wait_for(state="visible")
    page.wait_for_function("() => !document.querySelector('#train-iters input').disabled", timeout=30_000)
    assert box.input_value() == ""
    set_number(page, "train-iters", 7)
    set_number(page, "train-iters", "")
    assert box.input_value() == ""


def test_what_is_typed_right_after_opening_the_tab_is_what_start_runs(app_url, page):
    url, runs, _ = app_url
    start_by_api(url, "first", iters=1, **TINY)  # the server's job: its settings are the ones the page opens with
    assert wait_for_end(runs / "first") == rundir.FINISHED
    open_train_tab(page, url)
    fill_text(page, "train-run-name", "second")  # as soon as the page lets the user type
    set_number(page, "train-iters", 3)
    page.wait_for_timeout(3000)  # a user reads the form before pressing Start
    assert page.locator("#train-iters input").input_value() == "3"
    page.get_by_text("The same run from a terminal").click()  # and the command that repeats it
    wait_for_text(page, "#train-command", "--iters 3", timeout=90_000)
    assert re.search(r"--output-dir \S+/second\b", text(page, "#train-command")), text(page, "#train-command")
    status = click_start(page)
    assert "Started second" in status, status
    launched = (runs / "second" / rundir.LAUNCH).read_text()
    assert re.search(r"^iters: 3$", launched, re.M), launched
    assert wait_for_end(runs / "second") == rundir.FINISHED
    assert rundir.read_config(runs / "second")["iters"] == 3
    assert sorted(p.name for p in runs.iterdir() if p.name != "uploads") == ["first", "second"]


# -- 2. the memory preview is what Start runs ----------------------------------------------------------------

SETTINGS = re.compile(r"batch (\d+) × grad-accum (\d+), max length (\d+), gradient checkpointing (on|off)")


def set_checkbox(page, elem_id: str, on: bool) -> None:
    box = page.locator(f"#{elem_id} input[type=checkbox]")
    if box.is_checked() != on:
        box.click()


@pytest.mark.parametrize(("name", "budget", "max_length"), [
    ("plan-off", "off", 2048),  # the run trains as set: a preview that fits it anyway would not be what runs
    ("plan-fit", "1GB", 1024),  # predicted 1.6 GB as set: checkpointing is turned on, in the preview and the run
])
def test_the_memory_preview_is_what_start_runs(app_url, page, name, budget, max_length):
    url, runs, _ = app_url
    open_train_tab(page, url)
    for elem_id, value in (("train-iters", 1), ("train-max_length", max_length), ("train-batch_size", 2),
                           ("train-grad_accum", 1), ("train-eval_every", 0), ("train-warmup_steps", 0)):
        set_number(page, elem_id, value)
    set_checkbox(page, "train-grad_checkpoint", False)
    fill_text(page, "train-memory_budget", budget)
    page.locator("#train-memory_budget textarea, #train-memory_budget input").first.press("Tab")
    fill_text(page, "train-run-name", name)
    shown = "Memory budget: off" if budget == "off" else "Memory budget: 1.00 GB"
    page.wait_for_function(f"() => document.querySelector('#train-estimate').innerText.includes('{shown}') && "
                           f"document.querySelector('#train-estimate').innerText.includes('max length {max_length}')",
                           timeout=30_000)
    preview = text(page, "#train-estimate")
    shot(page, f"train-preview-{name}")
    batch, accum, length, checkpointing = SETTINGS.findall(preview)[-1]  # the settings Start trains with
    assert "Started" in click_start(page)
    assert wait_for_end(runs / name) == rundir.FINISHED, (runs / name / rundir.LOG).read_text()
    ran = rundir.read_config(runs / name)
    assert (ran["batch_size"], ran["grad_accum"], ran["max_length"], ran["grad_checkpoint"]) == \
        (int(batch), int(accum), int(length), checkpointing == "on"), preview
    assert ran["memory_budget"] == budget
    if budget != "off":
        assert ran["grad_checkpoint"], preview  # the fit did change something


# -- 3. the Runs tab renders any run ---------------------------------------------------------------------------


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.locator(f"#{elem_id}").get_by_role("option", name=option, exact=True).click()


def wait_for_text(page, sel: str, wanted: str, timeout: float = 30_000) -> None:
    page.wait_for_function("([sel, wanted]) => document.querySelector(sel).innerText.includes(wanted)",
                           arg=[sel, wanted], timeout=timeout)


def test_the_runs_tab_renders_any_run_the_trainer_can_write(app_url, page):
    """A null loss (every step of a window skipped), NaN, one record, no step at all, no evaluation, and
    two damaged files: each renders, the damaged file named, and no error ever reaches the page."""
    url, runs, _ = app_url
    expected = odd_runs(runs)
    page.goto(url)
    page.get_by_role("tab", name="Runs").click()  # opens on the newest run: the null loss
    wait_for_text(page, "#runs-summary", expected["null-loss"])
    for name, says in expected.items():
        choose(page, "runs-run", name)
        wait_for_text(page, "#runs-summary", says)
        assert name in text(page, "#runs-summary")
    choose(page, "runs-other", "null-loss")
    wait_for_text(page, "#runs-summary", "Overlaid with null-loss")
    shot(page, "runs-odd")
    assert page.locator(".toast-body.error").count() == 0, text(page, ".toast-body.error")


# -- 4. the ETA is the server's, from the first steps ----------------------------------------------------------


def eta_shown(progress: str) -> bool:
    return bool(re.search(r"ETA (\d+h )?(\d+m )?\d+s", progress))


def test_a_tab_opened_during_the_first_evaluation_shows_an_eta_at_once(app_url, page, cli_env):
    """No tab is open while the first steps run (the trainer is started from the terminal); a tab opened
    during the first evaluation shows an ETA while that evaluation still runs, from the server's own
    record of the step times, instead of "estimating…" until the next step."""
    url, runs, _ = app_url
    run = runs / "eta-cli"
    proc = subprocess.Popen([sys.executable, "-m", "mlx_orpo.train", "--output-dir", str(run), "--iters", "5",
                             "--max-length", "64", "--batch-size", "2", "--eval-every", "3", "--eval-fraction", "0.2",
                             "--eval-max-pairs", "0", "--report-every", "1", "--warmup-steps", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=cli_env)
    try:
        deadline = time.time() + 600
        while (status := rundir.read_status(run)) is None or status.phase != rundir.EVALUATING:
            assert proc.poll() is None and time.time() < deadline, "the run never reached its first evaluation"
            time.sleep(0.2)
        open_train_tab(page, url)
        page.wait_for_function("() => /ETA (\\d+h )?(\\d+m )?\\d+s/.test(document.querySelector('#train-progress')"
                               ".innerText)", timeout=300_000)
        shown_at, progress = time.time(), text(page, "#train-progress")
        status = rundir.read_status(run)
        shot(page, "train-eta-first-evaluation")
        assert status.phase == rundir.EVALUATING and status.step == 3, (status, progress)
        assert "evaluating" in progress and "eta-cli" in progress, progress
        assert proc.wait(timeout=600) == 0
        eta = re.search(r"ETA (?:(\d+)h )?(?:(\d+)m )?(\d+)s", progress).groups()
        print(f"ETA shown during the first evaluation: {progress.split(' · ')[-1]}; the run ended "
              f"{time.time() - shown_at:.0f} s later ({sum(int(g or 0) * f for g, f in zip(eta, (3600, 60, 1)))} s)")
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)


# -- 5. smaller things ----------------------------------------------------------------------------------------


def test_after_start_the_bar_never_shows_the_last_runs_outcome(app_url, page):
    """A run that failed (exit 2: nothing fits a 100 MB budget), then Start: from the moment the page says
    "Started", the bar never shows the failed run's outcome."""
    url, runs, _ = app_url
    open_train_tab(page, url)
    for elem_id, value in (("train-iters", 1), ("train-max_length", 64), ("train-batch_size", 2),
                           ("train-eval_every", 0), ("train-warmup_steps", 0)):
        set_number(page, elem_id, value)
    fill_text(page, "train-memory_budget", "100MB")
    fill_text(page, "train-run-name", "too-big")
    assert "Started" in click_start(page)
    assert wait_for_end(runs / "too-big") == "error"
    wait_for_text(page, "#train-progress", "failed (exit 2)")
    fill_text(page, "train-memory_budget", "auto")
    fill_text(page, "train-run-name", "after-failure")
    page.evaluate("""() => {
        window.seen = [];
        const note = () => window.seen.push([document.querySelector('#train-status').innerText,
                                             document.querySelector('#train-progress').innerText]);
        new MutationObserver(note).observe(document.body, {subtree: true, childList: true, characterData: true});
    }""")
    assert "Started" in click_start(page)
    wait_for_text(page, "#train-progress", "after-failure")
    seen = page.evaluate("() => window.seen")
    after = [bar for status, bar in seen if "Started" in status]
    assert after and not [bar for bar in after if "failed" in bar], after
    assert wait_for_end(runs / "after-failure") == rundir.FINISHED


def test_overlaid_runs_differ_by_dash_and_marker_besides_colour(app_url, page):
    url, runs, _ = app_url
    records = [{**TRAIN_RECORD, "step": step, "loss": 2.5 - step / 10} for step in (1, 2, 3)] + [EVAL_RECORD]
    written_run(runs, "dash-a", records)
    written_run(runs, "dash-b", [{**r, "loss": r.get("loss", 0) + 0.2} if "loss" in r else r for r in records])
    page.goto(url)
    page.get_by_role("tab", name="Runs").click()
    choose(page, "runs-run", "dash-a")
    choose(page, "runs-other", "dash-b")
    wait_for_text(page, "#runs-loss", "dash-b · loss")
    lines = page.evaluate("""() => [...document.querySelectorAll('#runs-loss path[aria-roledescription="line mark"]')]
        .filter(p => (p.getAttribute('d') || '').includes('L'))
        .map(p => [p.getAttribute('aria-label') || '', p.getAttribute('stroke-dasharray') || 'solid'])""")
    dashes = {run: {dash for label, dash in lines if f"{run} ·" in label} for run in ("dash-a", "dash-b")}
    assert all(len(d) == 1 for d in dashes.values()) and dashes["dash-a"] != dashes["dash-b"], lines
    shapes = page.evaluate("""() => [...document.querySelectorAll('#runs-loss path[aria-roledescription="point"]')]
        .map(p => (p.getAttribute('d') || '').replace(/[-\\d.e]+/g, '#'))""")
    assert len(set(shapes)) >= 2, shapes  # a circle for one run, a square for the other
    shot(page, "runs-overlay-dashes")
