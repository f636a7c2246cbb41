"""The Train and Runs tabs in a real browser (Debian's chromium driven by Playwright): the form keeps what
is typed, the memory preview is what Start runs, the Runs tab renders any run the trainer can write, the
ETA comes from the server's own record, and the smaller things a user sees.

The app runs as `python -m app` on a free loopback port (conftest.py's `app_url`, one per module); the
tests run in file order and share its runs folder, each waiting for its own run to end.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from helpers import form, new_page, set_number, shot, text

from mlx_orpo import rundir

pytestmark = pytest.mark.slow

TINY = dict(max_length=64, batch_size=2, report_every=1, eval_every=0, warmup_steps=0)


def client_for(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


def wait_for_end(run: Path, timeout: float = 300) -> str:
    """Until the trainer in `run` has finished, stopped or failed; its last status phase ("error" if it failed)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = rundir.read_status(run)
        if status is not None and status.phase in (rundir.FINISHED, rundir.STOPPED):
            return status.phase
        log = run / rundir.LOG
        if log.is_file() and "error:" in log.read_text(errors="replace"):
            return "error"
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
    status = click_start(page)
    assert "Started second" in status, status
    launched = (runs / "second" / rundir.LAUNCH).read_text()
    assert re.search(r"^iters: 3$", launched, re.M), launched
    assert wait_for_end(runs / "second") == rundir.FINISHED
    assert rundir.read_config(runs / "second")["iters"] == 3
    assert sorted(p.name for p in runs.iterdir() if p.name != "uploads") == ["first", "second"]
