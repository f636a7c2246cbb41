"""Train tab: hyperparameters from TrainConfig, a memory estimate, Start / Stop / Resume,
and the server's training job (progress, phase, ETA, curves and log tail) read from its run
directory every ~1.5 s, in every tab and after any reload."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import gradio as gr

from mlx_orpo import rundir
from mlx_orpo.config import TrainConfig
from mlx_orpo.data import DataError, load_pairs
from mlx_orpo.models import resolve_model
from mlx_orpo.runlock import holder as run_holder
from mlx_orpo.train import EXIT_STOPPED

from . import runfiles
from .estimate import plan_markdown
from .form import FORM, config_from_form, form_values, widget
from .jobs import Job, command_line
from .paths import PathError, child, new_run_dir, sanitise
from .plots import plot_values
from .session import Context, Session

REFRESH_S = 1.5
FORM_ROW = 5  # widgets per row of the form
N_PLOTS = len(runfiles.CURVES)


def warnings(cfg: TrainConfig) -> list[str]:
    if cfg.iters and cfg.warmup_steps > cfg.iters:
        return [f"warmup ({cfg.warmup_steps} steps) is longer than the run ({cfg.iters} steps): the learning "
                f"rate never reaches its peak of {cfg.learning_rate:g}"]
    return []


def run_config(session: Session, model: str, values) -> TrainConfig:
    """The settings Start launches a run with: the form's, this tab's data, and skip_bad_rows when the
    Data tab listed bad rows (the run trains on the rest, as its report says). ValueError naming a field."""
    cfg = config_from_form(model, list(values))
    cfg.data = session.data
    cfg.columns = session.columns  # the Data tab's column mapping, which its data was read with
    if session.skipped:
        cfg.skip_bad_rows = True
    return cfg


def plan_inputs(session: Session, cfg: TrainConfig) -> tuple:
    """(splits, tokenizer) for api.plan_run: cfg's data as read_data reads it and its model's tokenizer,
    kept in the session while neither changes (each edit of the form plans again)."""
    from mlx_orpo.api import load_tokenizer, read_data

    source = Path(cfg.data) if cfg.data else None
    stamp = source.stat().st_mtime_ns if source is not None and source.is_file() else None
    reading = (cfg.data, stamp, cfg.eval_data, cfg.format, cfg.columns, cfg.eval_fraction, cfg.seed, cfg.skip_bad_rows,
               cfg.system)
    kept = session.plan_inputs
    splits = kept["splits"] if kept.get("reading") == reading else read_data(cfg)
    tokenizer = kept["tokenizer"] if kept.get("model") == cfg.model else load_tokenizer(cfg.model)
    session.plan_inputs = {"reading": reading, "splits": splits, "model": cfg.model, "tokenizer": tokenizer}
    return splits, tokenizer


def preview(session: Session, model: str, *values) -> str:
    """What Start would run, as the run will do it: its plan (plan_markdown) and warnings."""
    try:
        cfg = run_config(session, model, values)
        splits, tokenizer = plan_inputs(session, cfg)
    except Exception as exc:  # an invalid setting, unreadable data, an unknown model: say so, never fail the page
        return f"**Memory estimate:** unavailable ({exc})"
    return plan_markdown(cfg, splits, tokenizer) + "".join(f"\n\n⚠️ {w}" for w in warnings(cfg))


def command(ctx: Context, session: Session, run_name: str, model: str, *values) -> str:
    """The terminal command that repeats what Start would run (jobs.command_line), into RUNS/NAME when a
    run name is typed."""
    try:
        cfg = run_config(session, model, values)
    except ValueError as exc:
        return f"# not a valid run: {exc}"
    name = sanitise(run_name, "") if run_name and run_name.strip() else None
    return command_line(cfg, ctx.runs_dir / name if name else None)


def resumable(ctx: Context) -> list[str]:
    return [name for name in runfiles.list_runs(ctx.runs_dir)
            if runfiles.checkpoints(ctx.runs_dir / name)]


RESUME_INFO = "Runs with a checkpoint. A run is resumable once it has saved one (every --save-every steps, at Stop)."


def resume_dropdown(ctx: Context, value: str | None = None, keep: bool = True):
    """The resumable runs, and which runs are left out and why (keep: leave the choice as it is)."""
    names = resumable(ctx)
    running = ctx.jobs.running()
    missing = [name for name in runfiles.list_runs(ctx.runs_dir)
               if name not in names and not (running and running.run_dir.name == name)]
    info = RESUME_INFO + (f" Not listed (no checkpoint yet): {', '.join(missing[:5])}"
                          + (" …" if len(missing) > 5 else "") + "." if missing else "")
    return gr.Dropdown(choices=names, info=info) if keep else gr.Dropdown(choices=names, info=info, value=value)


def data_line(ctx: Context, session: Session) -> str:
    """Said beside the Start button: what Start would train on, or the job that runs now."""
    if (job := ctx.jobs.running()) is not None:
        return f"**{job.run_dir.name}** is training on {job.data_label}; Start and Resume wait for it to end."
    hint = "" if session.data else " (choose other data on the Data tab)"
    return f"Start trains on **{session.data_label}**{hint}."


def buttons(running: bool, stopping: bool = False) -> tuple:
    """(Start, Stop, Resume) as the server's job allows."""
    return (gr.Button(interactive=not running), gr.Button(interactive=running and not stopping),
            gr.Button(interactive=not running))


def _busy_message(job: Job, verb: str) -> str:
    return (f"⚠️ **Cannot {verb}:** {job.run_dir.name} is training (pid {job.pid}), started from this or "
            "another tab; it is shown below. Stop it first.")


def start(ctx: Context, session: Session, run_name: str, model: str, *values):
    """Start a fresh run: (session, status message, *buttons). The timer draws the job (and redraws the
    bar, which the click set to "starting", whatever the outcome)."""
    session.last_seen = ()
    if (job := ctx.jobs.running()) is not None:
        return session, _busy_message(job, "start"), *buttons(True)
    try:
        cfg = run_config(session, model, values)
        resolve_model(cfg.model)  # an unknown alias or a missing path fails here, not in the subprocess
        run = new_run_dir(ctx.runs_dir, run_name)
    except (ValueError, OSError) as exc:  # ModelNotFoundError is an OSError
        return session, f"⚠️ **Cannot start:** {exc}", *buttons(False)
    try:
        ctx.jobs.launch(run, cfg.data, cfg, data_label=session.data_label)
    except RuntimeError as exc:  # another tab started one a moment ago
        with contextlib.suppress(OSError):
            run.rmdir()
        return session, f"⚠️ **Cannot start:** {exc}", *buttons(True)
    skipped = f", skipping its {len(session.skipped)} bad rows" if session.skipped else ""
    notes = "".join(f"  \n⚠️ {w}" for w in warnings(cfg))
    return (session, f"Started **{run.name}** on {session.data_label}{skipped} (model `{cfg.model}`).{notes}",
            *buttons(True))


def stop(ctx: Context):
    job = ctx.jobs.running()
    if job is None:
        return "No run is training.", *buttons(False)
    job.stop()
    return (f"Stopping **{job.run_dir.name}**: it stops after the step under way (an evaluation not yet "
            "started is skipped), saves a checkpoint, and can then be resumed.", *buttons(True, stopping=True))


def resume(ctx: Context, session: Session, name: str):
    session.last_seen = ()  # the timer redraws the bar, which the click set to "resuming"
    if (job := ctx.jobs.running()) is not None:
        return session, _busy_message(job, "resume"), *buttons(True)
    try:
        run = child(ctx.runs_dir, name or "")
    except PathError as exc:
        return session, f"⚠️ **Cannot resume:** {exc}", *buttons(False)
    if not runfiles.checkpoints(run):
        return session, f"⚠️ **Cannot resume:** {run.name} has no checkpoint yet; start it again.", *buttons(False)
    if (pid := run_holder(run)) is not None:  # the trainer would refuse too; say so here, not in its log
        return (session, (f"⚠️ **Cannot resume:** {run.name} is still being trained by another process "
                          f"(pid {pid}); stop it first."), *buttons(False))
    cfg = runfiles.read_config(run)
    label = runfiles.data_label(ctx.runs_dir, cfg.get("data"))
    try:
        ctx.jobs.launch(run, None, None, resume=True, data_label=label)
    except RuntimeError as exc:
        return session, f"⚠️ **Cannot resume:** {exc}", *buttons(True)
    return session, f"Resuming **{run.name}** from {runfiles.checkpoints(run)[0]}…", *buttons(True)


def outcome(job: Job, p: runfiles.Progress) -> str:
    """How a job that no longer runs ended: stopped (by Stop, SIGTERM or Ctrl-C), finished or failed."""
    status = rundir.read_status(job.run_dir)
    fresh = status is not None and status.time >= job.started
    code = job.returncode
    completed = code == 0 and bool(p.total) and p.step >= p.total
    stopped = fresh and status.phase == rundir.STOPPED
    if stopped or code == EXIT_STOPPED or (job.stop_requested and not completed):
        ckpts = runfiles.checkpoints(job.run_dir)
        if not ckpts:
            return "stopped before the first checkpoint"
        step = status.step if stopped else rundir.checkpoint_step(ckpts[0])
        return f"stopped at step {step}; checkpoint saved"
    if code == 0 or (fresh and status.phase == rundir.FINISHED):
        return "finished"
    if code is None:
        return "ended"  # a trainer started elsewhere: its exit code is not ours to read
    return f"failed (exit {code})"


def adopt_data(ctx: Context, session: Session, cfg: dict) -> None:
    """A tab that has chosen no data of its own (a new tab, a reload) takes the shown run's, so that
    its settings and its data are shown together and Start would train on the same again."""
    source = cfg.get("data")
    if session.data is not None or session.pairs or not source:
        return
    if Path(source).is_file():  # an upload: read it as the Data tab did, for its bad-row count
        try:
            session.pairs, report = load_pairs(source, skip_bad_rows=True, columns=cfg.get("columns"))
        except (DataError, OSError, ValueError):
            return
        session.skipped = report.skipped
    session.data, session.data_label = source, runfiles.data_label(ctx.runs_dir, source)
    session.columns = cfg.get("columns")


def _message(job: Job, status: str, log: str) -> str:
    name = job.run_dir.name
    if status.startswith("failed"):
        last = [line for line in log.splitlines() if line.strip()]
        return f"⚠️ **{name} failed** (exit {job.returncode}): {last[-1] if last else 'no output'}"
    if status.startswith("stopped at"):
        took = f" ({job.stopped_seen - job.stop_requested:.1f} s after Stop)" if job.stop_requested else ""
        return f"**{name}**: {status}{took}. Resume continues it from there."
    if status == "finished":
        return f"**{name}**: finished. Compare it with the base model on the Chat tab, or export it."
    if job.running and job.stop_requested:
        return f"**{name}**: stopping after the step under way…"
    return f"**{name}**: {status} (on {job.data_label})."


def refresh(ctx: Context, session: Session):
    """Timer tick: (session, progress, log, message, resume choices, data line, *plots, *buttons); draws
    the server's job, skips what has not changed, counts the ETA down. It never touches the form."""
    skip_rest = [gr.skip()] * (N_PLOTS + 3)
    job = ctx.jobs.current()
    if job is None:
        if session.last_seen == ("none",):
            return session, *[gr.skip()] * 5, *skip_rest
        session.last_seen = ("none",)
        return (session, runfiles.progress_html(runfiles.Progress(), "idle", None), gr.skip(), gr.skip(),
                gr.skip(), data_line(ctx, session), *[gr.skip()] * N_PLOTS, *buttons(False))
    run, running = job.run_dir, job.running
    status_now = rundir.read_status(run)
    p = runfiles.progress(run, None, running, since=job.started, resume=job.resume)
    if running:
        label = "stopping" if job.stop_requested else p.label
    else:
        if job.stop_requested and job.stopped_seen is None:
            job.stopped_seen = time.time()
        label = outcome(job, p)
    eta = job.rate.eta(p, runfiles.read_config(run)) if running and not job.stop_requested else None
    bar = runfiles.progress_html(p, label, eta, run.name)
    sizes = tuple((run / f).stat().st_size if (run / f).is_file() else 0
                  for f in (rundir.CONFIG, rundir.METRICS, rundir.LOG))
    seen = (str(run), job.started, *sizes, status_now and status_now.time, running, job.stop_requested)
    if seen == session.last_seen:
        return session, bar, *[gr.skip()] * 4, *skip_rest
    session.last_seen = seen
    log = runfiles.log_tail(run)
    resume_choice = gr.skip() if running else resume_dropdown(
        ctx, run.name if run.name in resumable(ctx) else None, keep=False)
    return (session, bar, log, _message(job, label, log), resume_choice, data_line(ctx, session),
            *plot_values([(run.name, runfiles.records(run))]), *buttons(running, job.stop_requested is not None))


def open_form(ctx: Context, session: Session):
    """The form's values when a page opens, filled before it can be edited (it is built locked): the
    settings of the server's job (running, or the last one started here), else the defaults. After this
    only "Load settings" fills it, so nothing changes under the user's hands. (session, *widgets)"""
    job = ctx.jobs.current()
    settings = runfiles.job_settings(job.run_dir) if job is not None else {}
    if settings:
        adopt_data(ctx, session, settings)
    return session, *[gr.update(value=value, interactive=True) for value in form_values(settings)]


def load_settings(ctx: Context, session: Session, name: str | None):
    """The "Load settings" action: (session, message, data line, model, *widgets) from a run's config.json;
    the run's data too, when this tab has chosen none."""
    keep = [gr.skip()] * (len(FORM) + 2)
    try:
        run = child(ctx.runs_dir, name or "")
        cfg = rundir.read_config(run)
    except (PathError, OSError, rundir.CorruptFileError) as exc:
        return session, f"⚠️ **Cannot load settings:** {exc}", *keep
    adopt_data(ctx, session, cfg)
    return (session, f"Loaded the settings of **{run.name}** (model `{cfg['model']}`, data "
                     f"{runfiles.data_label(ctx.runs_dir, cfg.get('data'))}); Start begins a new run with them.",
            data_line(ctx, session), cfg["model"], *form_values(cfg))


def build(ctx: Context, state: gr.State, model: gr.Dropdown) -> dict:
    defaults = TrainConfig()
    widgets = []
    with gr.Row(equal_height=True):
        settings_run = gr.Dropdown(runfiles.list_runs(ctx.runs_dir), value=None, label="Settings of run",
                                   allow_custom_value=True, scale=3, elem_id="train-settings-run",
                                   info="Fill the form with a past run's settings (and its data, if this tab has "
                                        "chosen none).")
        load_btn = gr.Button("Load settings", scale=1, elem_id="train-load-settings")
    with gr.Accordion("Hyperparameters (defaults from TrainConfig)", open=True):
        for i in range(0, len(FORM), FORM_ROW):
            with gr.Row():
                widgets += [widget(name, getattr(defaults, name), interactive=False)
                            for name in FORM[i:i + FORM_ROW]]
                if i + FORM_ROW >= len(FORM):  # the last row
                    run_name = gr.Textbox(label="Run name (optional)", placeholder="orpo-<date>-<time>",
                                          elem_id="train-run-name")
    estimate = gr.Markdown(preview(Session(), defaults.model, *form_values(defaults.to_dict())),
                           elem_id="train-estimate")
    with gr.Accordion("The same run from a terminal", open=False):
        terminal = gr.Code(command(ctx, Session(), "", defaults.model, *form_values(defaults.to_dict())),
                           language="shell", interactive=False, show_label=False, elem_id="train-command")
    plan_and_command = lambda s, r, m, *v: (preview(s, m, *v), command(ctx, s, r, m, *v))
    with gr.Row(equal_height=True):
        start_btn = gr.Button("Start", variant="primary", elem_id="train-start", scale=1)
        stop_btn = gr.Button("Stop", variant="stop", elem_id="train-stop", interactive=False, scale=1)
        data_info = gr.Markdown(data_line(ctx, Session()), elem_id="train-data")
        resume_run = gr.Dropdown(resumable(ctx), value=None, label="Run to resume", allow_custom_value=True,
                                 info=RESUME_INFO, scale=2, elem_id="train-resume-run")
        resume_btn = gr.Button("Resume", elem_id="train-resume", scale=1)
    status = gr.Markdown(elem_id="train-status")
    progress = gr.HTML(runfiles.progress_html(runfiles.Progress(), "idle", None), elem_id="train-progress")
    from .plots import make_plots

    plots = make_plots("train")
    log = gr.Textbox(label="Log (tail of train.log)", lines=8, max_lines=16, autoscroll=True, interactive=False,
                     elem_id="train-log")
    # Always on: the job may be started, stopped or finished from any tab, or by the CLI.
    timer = gr.Timer(REFRESH_S, active=True)
    button_row = [start_btn, stop_btn, resume_btn]

    # One listener, queued, the last change winning: separate unqueued listeners answered out of order,
    # and an estimate from before the last edit could land last.
    gr.on([w.change for w in [model, run_name, *widgets]], plan_and_command, [state, run_name, model, *widgets],
          [estimate, terminal], show_progress="hidden", trigger_mode="always_last", api_visibility="private")
    # The click clears the bar at once (unqueued), so the last job's outcome ("failed (exit 2)") is never
    # shown beside the new job's "Started"; the timer then draws the new job.
    start_btn.click(lambda: runfiles.progress_html(runfiles.Progress(), "starting", None), None, progress,
                    queue=False, api_visibility="private")
    resume_btn.click(lambda: runfiles.progress_html(runfiles.Progress(), "resuming", None), None, progress,
                     queue=False, api_visibility="private")
    start_btn.click(lambda s, r, m, *v: start(ctx, s, r, m, *v), [state, run_name, model, *widgets],
                    [state, status, *button_row], api_name="start_training")
    stop_btn.click(lambda: stop(ctx), None, [status, *button_row], api_name="stop_training")
    resume_btn.click(lambda s, r: resume(ctx, s, r), [state, resume_run], [state, status, *button_row],
                     api_name="resume_training")
    timer.tick(lambda s: refresh(ctx, s), state,
               [state, progress, log, status, resume_run, data_info, *plots, *button_row],
               api_name="refresh_training", show_progress="hidden")
    resume_run.focus(lambda: resume_dropdown(ctx), None, resume_run, queue=False, api_visibility="private")
    settings_run.focus(lambda: gr.Dropdown(choices=runfiles.list_runs(ctx.runs_dir)), None, settings_run,
                       queue=False, api_visibility="private")
    load_btn.click(lambda s, n: load_settings(ctx, s, n), [state, settings_run],
                   [state, status, data_info, model, *widgets], api_name="load_settings")
    return {"open": (lambda s: open_form(ctx, s), [state], [state, *widgets]),
            "preview": (plan_and_command, [state, run_name, model, *widgets], [estimate, terminal]),
            "data_info": data_info, "max_length": widgets[FORM.index("max_length")], "status": status,
            "progress": progress}
