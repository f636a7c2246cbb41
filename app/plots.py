"""The six training-curve plots, shared by the Train and Runs tabs."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from .runfiles import CURVES, curve_frames

# No data is None, never an empty frame: a LinePlot that once showed an empty frame keeps an
# empty colour domain in Gradio 6 and draws every later line without a stroke (invisible).
EMPTY = None


def make_plots(prefix: str) -> list[gr.LinePlot]:
    """Two plots per row; elem_id = f"{prefix}-{plot key}" (the browser test looks for them)."""
    plots, keys = [], list(CURVES)
    for i in range(0, len(keys), 2):
        with gr.Row():
            for key in keys[i:i + 2]:
                title, _ = CURVES[key]
                plots.append(gr.LinePlot(EMPTY, x="step", y="value", color="series", title=title, height=260,
                                         x_title="optimizer step", y_title=None, label=title, show_label=False,
                                         elem_id=f"{prefix}-{key}", elem_classes=["orpo-plot"]))
    return plots


def plot_values(runs: list[tuple[str, list[dict]]]) -> list[pd.DataFrame | None]:
    if not runs:
        return [EMPTY] * len(CURVES)
    frames = curve_frames(runs)
    return [frames[key] if len(frames[key]) else EMPTY for key in CURVES]
