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


def test_learning_rate_and_gradient_norm_are_drawn_and_a_run_without_grad_norm_says_so(tmp_path):
    from helpers import TRAIN_RECORD, written_run

    from app.plots import plot_values
    from app.runfiles import CURVES, curve_frames, records

    with_norm = written_run(tmp_path, "new", [{**TRAIN_RECORD, "grad_norm": 0.8},
                                              {**TRAIN_RECORD, "step": 2, "grad_norm": 0.6, "learning_rate": 5e-5}])
    older = written_run(tmp_path, "old", [TRAIN_RECORD])  # a trainer that did not record grad_norm
    frames = curve_frames([("new", records(with_norm))])
    assert list(frames["grad_norm"]["value"]) == [0.8, 0.6]
    assert list(frames["lr"]["value"]) == [1e-4, 5e-5]
    plots = dict(zip(CURVES, plot_values([("old", records(older))])))
    assert plots["grad_norm"].value is None and "none recorded" in plots["grad_norm"].label
    assert plots["lr"].value is not None and plots["loss"].value is not None
