"""Runs tab: past runs in the runs directory, their config and curves; overlay two runs."""

from __future__ import annotations

import math

import gradio as gr

from mlx_orpo import rundir

from . import runfiles
from .paths import PathError
from .plots import make_plots, plot_values
from .session import Context

NONE = "(none)"


def choices(ctx: Context):
    runs = runfiles.list_runs(ctx.runs_dir)
    return gr.Dropdown(choices=runs), gr.Dropdown(choices=[NONE, *runs])


def overlay_choices(ctx: Context, current: str | None):
    """Fresh "Overlay with" choices, keeping the current pick (runs made since the page was built included)."""
    runs = [NONE, *runfiles.list_runs(ctx.runs_dir)]
    return gr.Dropdown(choices=runs, value=current if current in runs else NONE)


def shown(value, fmt: str) -> str:
    """A metric as the summary shows it: formatted when it is a finite number, "—" when the record has
    none (a report window whose every step was skipped writes null), and as it is otherwise (NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—"
    return format(value, fmt) if math.isfinite(value) else str(value)


def summary(ctx: Context, name: str) -> tuple[dict, str]:
    """(config, text) of one run, whatever the trainer left: a damaged config.json is named in the text
    (and the config shown as {}), missing or null metrics read "—", a run without steps says so."""
    run = runfiles.run_dir(ctx.runs_dir, name)
    lines, cfg = [], {}
    try:
        cfg = rundir.read_config(run)
    except (rundir.CorruptFileError, OSError) as exc:
        lines.append(f"⚠️ **{rundir.CONFIG} is damaged**, so the run's settings cannot be shown: {exc}")
    recs = runfiles.records(run)
    p = runfiles.progress(run, recs)
    ckpts = runfiles.checkpoints(run)
    status = rundir.read_status(run)
    last = next((r for r in reversed(recs) if r["kind"] == rundir.TRAIN), None)
    last_eval = next((r for r in reversed(recs) if r["kind"] == rundir.EVAL), None)
    lines.insert(0, f"**{run.name}** — model `{cfg.get('model', '?')}`, data `{cfg.get('data') or 'demo set'}`")
    lines.append(f"step {p.step}/{p.total or '?'}" + (f" ({status.phase})" if status else "")
                 + f"; checkpoints: {', '.join(ckpts) if ckpts else 'none'}")
    if last:
        lines.append(f"last train loss {shown(last.get('loss'), '.4f')}, log odds ratio "
                     f"{shown(last.get('log_odds_chosen'), '+.3f')}, accuracy "
                     f"{shown(last.get('rewards/accuracies'), '.2f')}"
                     + (f"; {last['skipped_steps']} steps skipped (not finite)" if last.get("skipped_steps") else ""))
    else:
        lines.append("no training report yet" + (" (stopped before its first step)" if p.step == 0 and status
                                                 and status.phase == rundir.STOPPED else ""))
    if last_eval:
        lines.append(f"last eval loss {shown(last_eval.get('eval_loss'), '.4f')}, "
                     f"accuracy {shown(last_eval.get('eval_rewards/accuracies'), '.2f')}")
    return cfg, "  \n".join(lines)


def show(ctx: Context, name: str, other: str):
    """(config, summary, *plots) for run `name`, overlaid with `other` unless it is (none)."""
    if not name:
        return {}, "Choose a run.", *plot_values([])
    try:
        cfg, text = summary(ctx, name)
        runs = [(name, runfiles.records(runfiles.run_dir(ctx.runs_dir, name)))]
        if other and other not in (NONE, name):
            runs.append((other, runfiles.records(runfiles.run_dir(ctx.runs_dir, other))))
            text += f"  \nOverlaid with **{other}** (series named by run)."
    except PathError as exc:
        raise gr.Error(str(exc)) from None
    return cfg, text, *plot_values(runs)


def build(ctx: Context) -> dict:
    runs = runfiles.list_runs(ctx.runs_dir)
    with gr.Row():
        run = gr.Dropdown(runs, value=runs[0] if runs else None, label="Run", scale=2, allow_custom_value=True,
                          elem_id="runs-run")
        other = gr.Dropdown([NONE, *runs], value=NONE, label="Overlay with", scale=2, allow_custom_value=True,
                            elem_id="runs-other")
        refresh = gr.Button("Refresh list", scale=1)
    text = gr.Markdown(elem_id="runs-summary")
    plots = make_plots("runs")
    with gr.Accordion("Resolved config (config.json)", open=False):
        config = gr.JSON()
    outputs = [config, text, *plots]
    refresh.click(lambda: choices(ctx), None, [run, other], api_name="list_runs")
    run.change(lambda a, b: show(ctx, a, b), [run, other], outputs, show_progress="hidden", api_name="show_run")
    other.change(lambda a, b: show(ctx, a, b), [run, other], outputs, show_progress="hidden",
                 api_visibility="private")
    return {"run": run, "other": other, "outputs": outputs, "show": lambda a, b: show(ctx, a, b)}
