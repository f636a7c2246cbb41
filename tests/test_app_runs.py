"""The Runs tab's views of any run directory, called as the server calls them (no browser)."""

from __future__ import annotations

import json

import pytest
from helpers import odd_runs

pytest.importorskip("gradio")

from app import runs_tab
from app.cache import Models
from app.session import Context


def test_every_run_the_trainer_can_write_and_damaged_ones_render(tmp_path):
    ctx = Context(tmp_path, 10**6, Models())
    for name, says in odd_runs(tmp_path).items():
        config, text, *plots = runs_tab.show(ctx, name, runs_tab.NONE)
        assert says in text, (name, text)
        json.dumps([p.value if hasattr(p, "value") else None for p in plots])  # sent as JSON, NaN left out
    config, text, *_ = runs_tab.show(ctx, "config-a-list", runs_tab.NONE)
    assert config == {} and str(tmp_path / "config-a-list" / "config.json") in text
    _, text, *_ = runs_tab.show(ctx, "nan-loss", "null-loss")  # overlaid
    assert "Overlaid with **null-loss**" in text
