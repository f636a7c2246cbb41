"""The six training-curve plots, shared by the Train and Runs tabs."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from .runfiles import CURVES, curve_frames

# No data is None, never an empty frame: a LinePlot that once showed an empty frame keeps an
# empty colour domain in Gradio 6 and draws every later line without a stroke (invisible).
EMPTY = None
# Gradio 6 fixes a plot's colour domain when it builds the chart and later only swaps the data, so a
# series that appears later (the first eval record) would get no colour and no legend entry. Every
# update therefore names its series in color_map: a new series changes the map, which rebuilds the chart.
PALETTE = ["#2563eb", "#f97316", "#16a34a", "#dc2626", "#9333ea", "#0891b2", "#ca8a04", "#db2777",
           "#4b5563", "#65a30d"]
# Up to this many distinct steps the step axis is categorical (one tick per reported step); beyond
# it the numeric axis has room for at least one tick per step, so its ticks are integers anyway.
CATEGORICAL_STEPS = 20


def make_plots(prefix: str) -> list[gr.LinePlot]:
    """Two plots per row; elem_id = f"{prefix}-{plot key}" (the browser test looks for them)."""
    plots, keys = [], list(CURVES)
    for i in range(0, len(keys), 2):
        with gr.Row():
            for key in keys[i:i + 2]:
                title, y_title, _ = CURVES[key]
                # Without data the title is the block label (a chart title shows only with data); with
                # data it is the chart's own title, since the block label would push the legend out of view.
                plots.append(gr.LinePlot(EMPTY, x="step", y="value", color="series", height=280,
                                         x_title="optimizer step", y_title=y_title, color_title="",
                                         label=title, show_label=True, elem_id=f"{prefix}-{key}",
                                         elem_classes=["orpo-plot"]))
    return plots


def series_names(key: str, runs: list[str]) -> list[str]:
    """Every series plot `key` can show for these runs, in a fixed order (so colours never move)."""
    prefixes = [f"{run} · " for run in runs] if len(runs) > 1 else [""]
    return [f"{prefix}{label} ({split})" for prefix in prefixes for _, label in CURVES[key][2]
            for split in ("train", "eval")]


def plot_update(key: str, frame: pd.DataFrame, runs: list[str]):
    if not len(frame):
        return gr.LinePlot(EMPTY, show_label=True)
    present = set(frame["series"])
    names = [name for name in series_names(key, runs) if name in present]
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(series_names(key, runs))}
    steps = sorted(set(frame["step"]))
    if len(steps) <= CATEGORICAL_STEPS:
        frame = frame.assign(step=frame["step"].astype(int).astype(str))
        order = [str(int(s)) for s in steps]
    else:
        order = None
    return gr.LinePlot(frame, color_map={name: colours[name] for name in names}, sort=order, title=CURVES[key][0],
                       show_label=False)


def plot_values(runs: list[tuple[str, list[dict]]]) -> list:
    if not runs:
        return [gr.LinePlot(EMPTY, show_label=True) for _ in CURVES]
    frames = curve_frames(runs)
    names = [name for name, _ in runs]
    return [plot_update(key, frames[key], names) for key in CURVES]
