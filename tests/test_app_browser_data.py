"""The Data tab and the Export tab in a real browser (Debian's chromium driven by Playwright): the token
histogram after Max length changes, the column mapping of a file with other names, the export sizes.

This module runs its own app server (the `app_url` fixture of test_app_browser)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import test_app_browser as shared
from test_app_browser import set_number, shot, text, upload

pytestmark = pytest.mark.slow
app_url, browser, page = shared.app_url, shared.browser, shared.page  # this module's own server and browser

# The bars of a vega chart, by their aria labels:
# "tokens (prompt + longer answer): 0 – 300; pairs: 22; fits: ≤ max length".
BARS = """sel => [...document.querySelectorAll(sel + ' g[aria-roledescription="rect mark container"] path')]
              .map(p => p.getAttribute('aria-label') || '')"""
BAR = re.compile(r": ([\d,]+) – ([\d,]+); pairs: (\d+); fits: (.+)$")


def bars(page, sel: str = "#data-hist") -> list[tuple[int, int, int, str]]:
    """(bin start, bin end, pairs, fits) of each bar drawn."""
    found = [BAR.search(label) for label in page.evaluate(f"({BARS})('{sel}')")]
    return [(int(m[1].replace(",", "")), int(m[2].replace(",", "")), int(m[3]), m[4]) for m in found if m]


def spread_file(tmp_path: Path, n: int = 60) -> Path:
    """Pairs whose lengths spread from about 40 to 3,500 tokens (prompts of growing length)."""
    rows = [{"prompt": "Tell me about the river. " * (1 + i * i // 6), "chosen": f"The river {i} flows east.",
             "rejected": "No."} for i in range(n)]
    path = tmp_path / "spread.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stats_line(page, max_length: int) -> tuple[int, int, int]:
    """The Data tab's text at `max_length`: (truncated, pairs, dropped)."""
    line = f"At max length {max_length}:"
    page.wait_for_function(f"() => document.body.innerText.includes({json.dumps(line)})", timeout=60_000)
    body = page.locator("body").inner_text()
    found = re.search(rf"{line} (\d+) of (\d+) pairs will be truncated, (\d+) dropped", body)
    assert found, body[-2000:]
    return tuple(int(g) for g in found.groups())


def settled_bars(page, fits_expected: int) -> list[tuple[int, int, int, str]]:
    """The bars once the chart shows `fits_expected` pairs as fitting (or its last drawing after 20 s)."""
    drawn = []
    for _ in range(80):
        drawn = bars(page)
        if drawn and sum(b[2] for b in drawn if b[3] == "≤ max length") == fits_expected:
            page.wait_for_timeout(1000)  # and still so a moment later (no late redraw with other rows)
            return bars(page)
        page.wait_for_timeout(250)
    return drawn


def test_histogram_rebins_when_max_length_changes(app_url, page, tmp_path):
    """Issue: after Max length 1024 -> 300 the chart kept the old counts on the new bins and counted
    pairs as fitting that the text said would be truncated; and a bin held pairs on both sides of
    the limit."""
    page.goto(app_url[0])
    upload(page, spread_file(tmp_path))
    for max_length in (1024, 300, 700):
        if max_length != 1024:
            set_number(page, "data-max-length", max_length)
        truncated, n, dropped = stats_line(page, max_length)
        fit = n - truncated - dropped
        drawn = settled_bars(page, fit)
        shot(page, f"data-hist-{max_length}")
        assert sum(b[2] for b in drawn if b[3] == "≤ max length") == fit, (max_length, drawn)
        assert sum(b[2] for b in drawn) == n, (max_length, drawn)
        assert any(end == max_length for _, end, _, _ in drawn), (max_length, drawn)  # the limit is an edge
        for _, end, _, fits in drawn:  # every bar on its side of the limit
            assert (end <= max_length) == (fits == "≤ max length"), (max_length, drawn)


def pick(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.locator(f"#{elem_id}").get_by_role("option", name=option, exact=True).click()


def test_columns_with_other_names_are_mapped_and_the_mapping_travels_to_the_run(app_url, page, tmp_path):
    from mlx_orpo import rundir

    url, runs, _ = app_url
    rows = [{"q": f"What is {i} + {i}?", "x": f"{2 * i}.", "y": "No idea.", "n": i} for i in range(6)]
    path = tmp_path / "odd names.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    page.goto(url)
    page.get_by_role("tab", name="Data").click()
    page.locator("#data-file input[type=file]").set_input_files(str(path))
    page.wait_for_function("() => document.querySelector('#data-report').innerText.includes('Apply mapping')",
                           timeout=120_000)
    assert "cannot detect the format" in text(page, "#data-report")
    page.wait_for_selector("#data-mapping", state="visible", timeout=30_000)
    for role, column in (("prompt", "q"), ("chosen", "x"), ("rejected", "y")):
        pick(page, f"data-map-{role}", column)
    page.locator("#data-map-apply").click()
    page.wait_for_function("() => document.querySelector('#data-report').innerText.includes('6 pairs')",
                           timeout=60_000)
    assert "Columns mapped: prompt=q,chosen=x,rejected=y" in text(page, "#data-report")
    drawn = settled_bars(page, 6)
    assert sum(b[2] for b in drawn) == 6, drawn
    shot(page, "data-mapping")
    page.get_by_role("tab", name="Train").click()
    page.wait_for_function("() => document.querySelector('#train-data').innerText.includes('prompt=q')",
                           timeout=30_000)
    for elem_id, value in (("train-iters", 1), ("train-max_length", 64), ("train-eval_every", 0)):
        set_number(page, elem_id, value)
    page.locator("#train-run-name textarea, #train-run-name input").first.fill("mapped")
    page.locator("#train-start").click()
    page.wait_for_function("() => document.querySelector('#train-progress').innerText.includes('finished')",
                           timeout=300_000)
    assert rundir.read_config(runs / "mapped")["columns"] == {"prompt": "q", "chosen": "x", "rejected": "y"}


SIZE = re.compile(r"([\d.]+) (B|KB|MB|GB)")
UNITS = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3}


def size_of(text_: str) -> float:
    number, unit = SIZE.search(text_).groups()
    return float(number) * UNITS[unit]


def size_rows(page) -> dict[str, tuple[float, str]]:
    """The Export tab's sizes table: {format name: (bytes, room)}."""
    rows = page.evaluate("""() => [...document.querySelectorAll('#export-sizes tbody tr')]
                               .map(tr => [...tr.querySelectorAll('td')].map(td => td.innerText))""")
    return {name: (size_of(size), room) for name, size, room in rows}


def test_export_shows_each_formats_size_and_room_before_exporting(app_url, page, smollm2_dir):
    from helpers import make_run

    url, runs, _ = app_url
    make_run(runs / "sized", smollm2_dir)  # random adapters on SmolLM2-135M: an exportable run
    page.goto(url)
    page.get_by_role("tab", name="Export").click()
    pick(page, "export-run", "sized")
    page.wait_for_function("() => document.querySelector('#export-sizes').innerText.includes('GGUF')",
                           timeout=60_000)
    rows = size_rows(page)
    shot(page, "export-sizes")
    hf, gguf, peft = (rows[next(k for k in rows if k.startswith(p))] for p in ("Hugging Face", "GGUF", "PEFT"))
    assert 250e6 < hf[0] < 290e6 and 250e6 < gguf[0] < 290e6 and 1e6 < peft[0] < 10e6, rows  # 135M at 16 bits
    assert all(room == "fits" for _, room in rows.values()), rows
    assert "Export PEFT · " in page.locator("#export-peft").inner_text()
    pick(page, "export-gguf-type", "q8_0")
    page.wait_for_function("() => document.querySelector('#export-gguf').innerText.includes('Export GGUF · 1')",
                           timeout=30_000)  # about 139 MB: 34 bytes per 32 weights
    assert 0.5 < size_rows(page)[next(k for k in rows if k.startswith("GGUF"))][0] / gguf[0] < 0.56
    page.locator("#export-peft").click()  # the size shown is the size written
    page.wait_for_function("() => document.querySelector('#export-log textarea').value.includes('done:')",
                           timeout=120_000)
    written = re.search(r"done: \d+ files, ([\d.]+ \w+)", page.locator("#export-log textarea").input_value())[1]
    assert abs(size_of(written) / peft[0] - 1) < 0.03, (written, peft)
