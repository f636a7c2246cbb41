"""The training-curve plots (runfiles.CURVES), shared by the Train and Runs tabs.

Each plot is a whole Vega-Lite chart (Altair) drawn anew at every update: Gradio's LinePlot fixes
its colour domain when it first draws, so a series renamed or added later (an overlaid run, the
first evaluation) would get no colour and draw nothing, and it draws lines only, so a series with
one point (an evaluation at the end of a run) would be invisible. Here every series is named in the
colour scale, and each point has a marker as well as the line through it.
"""

from __future__ import annotations

import altair as alt
import gradio as gr
import pandas as pd

from .runfiles import CURVES, curve_frames

PALETTE = ["#2563eb", "#f97316", "#16a34a", "#dc2626", "#9333ea", "#0891b2", "#ca8a04", "#db2777",
           "#4b5563", "#65a30d"]
WIDTH, HEIGHT = 520, 220   # two plots side by side fit a 1400 px window
# SVG, so the marks are elements the browser test can find; no export menu over the chart.
EMBED = {"embedOptions": {"renderer": "svg", "actions": False}}
FEW_STEPS = 20
# One dash and one marker per overlaid run (two are drawn today; the rest make room for more).
DASHES = [[1, 0], [6, 4], [2, 2], [10, 3, 2, 3]]
MARKERS = ["circle", "square", "triangle-up", "diamond"]


def make_plots(prefix: str) -> list[gr.Plot]:
    """Two plots per row; elem_id = f"{prefix}-{plot key}" (the browser test looks for them)."""
    plots, keys = [], list(CURVES)
    for i in range(0, len(keys), 2):
        with gr.Row():
            for key in keys[i:i + 2]:
                plots.append(gr.Plot(None, label=CURVES[key][0], show_label=True, elem_id=f"{prefix}-{key}",
                                     elem_classes=["orpo-plot"]))
    return plots


def series_names(key: str, runs: list[str]) -> list[str]:
    """Every series plot `key` can show for these runs, in a fixed order (so colours never move)."""
    prefixes = [f"{run} · " for run in runs] if len(runs) > 1 else [""]
    return [f"{prefix}{label} ({split})" for prefix in prefixes for _, label in CURVES[key][2]
            for split in ("train", "eval")]


def chart(key: str, frame: pd.DataFrame, runs: list[str]) -> alt.LayerChart:
    """Lines with point markers, one colour per series (legend below), integer step ticks and
    values with at most four significant digits."""
    title, y_title, _ = CURVES[key]
    present = set(frame["series"])
    names = [name for name in series_names(key, runs) if name in present]
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(series_names(key, runs))}
    steps = sorted({int(step) for step in frame["step"]})
    # Up to FEW_STEPS reported steps, one tick each; beyond, Vega's own ticks, whole numbers only
    # (its automatic ticks at 1.5, 2.5 ... would read "2", "3" twice when formatted as integers).
    ticks = alt.Axis(format="d", values=steps) if len(steps) <= FEW_STEPS else alt.Axis(format="d", tickMinStep=1)
    by_run = {}
    if len(runs) > 1:  # besides its colour, each run has its own dash and marker (colour-blind users)
        legend = alt.Legend(title="run", orient="bottom", labelLimit=300)
        by_run = dict(strokeDash=alt.StrokeDash("run:N", scale=alt.Scale(domain=runs, range=DASHES[:len(runs)]),
                                                legend=legend),
                      shape=alt.Shape("run:N", scale=alt.Scale(domain=runs, range=MARKERS[:len(runs)]), legend=legend))
    base = alt.Chart(frame).encode(
        x=alt.X("step:Q", title="optimizer step", axis=ticks),
        y=alt.Y("value:Q", title=y_title, scale=alt.Scale(zero=False), axis=alt.Axis(format=".4~g")),
        color=alt.Color("series:N", scale=alt.Scale(domain=names, range=[colours[n] for n in names]),
                        legend=alt.Legend(title=None, orient="bottom", columns=2, labelLimit=300)),
        tooltip=["series:N", "step:Q", alt.Tooltip("value:Q", format=".4~g")],
        **by_run,
    )
    return (base.mark_line() + base.mark_point(filled=True, size=45, opacity=1)).properties(
        title=title, width=WIDTH, height=HEIGHT, usermeta=EMBED)


def plot_update(key: str, frame: pd.DataFrame, runs: list[str]):
    """The chart, or an empty plot whose label says that the runs' records hold none of its values (a run
    without reports yet, or one whose trainer did not record them, such as grad_norm before it existed)."""
    if not len(frame):
        return gr.Plot(None, label=f"{CURVES[key][0]} (none recorded)", show_label=True)
    return gr.Plot(chart(key, frame, runs), show_label=False)


def plot_values(runs: list[tuple[str, list[dict]]]) -> list:
    if not runs:
        return [gr.Plot(None, label=title, show_label=True) for title, _, _ in CURVES.values()]
    frames = curve_frames(runs)
    names = [name for name, _ in runs]
    return [plot_update(key, frames[key], names) for key in CURVES]
