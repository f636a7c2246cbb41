"""Train tab: hyperparameters from TrainConfig, a memory estimate, Start / Stop / Resume,
and live curves, progress and log tail read from the run directory every ~1.5 s."""

from __future__ import annotations

import time

import gradio as gr

from mlx_orpo.config import FIELDS, TrainConfig
from mlx_orpo.models import resolve_model
from mlx_orpo.runlock import holder as run_holder

from . import runfiles
from .estimate import estimate_markdown, fit_markdown
from .jobs import launch
from .paths import PathError, child, new_run_dir
from .plots import make_plots, plot_values
from .session import Context, Session

REFRESH_S = 1.5
BITS = [("none (full precision)", "none"), ("4-bit (QLoRA)", "4"), ("8-bit (QLoRA)", "8")]
# (field, label): the widgets shown, in order; defaults and help text come from TrainConfig.
NUMBERS = [
    ("beta", "λ (beta): odds-ratio weight"), ("learning_rate", "Learning rate"),
    ("epochs", "Epochs"), ("iters", "Iterations (0: use epochs)"),
    ("batch_size", "Batch size (pairs)"), ("grad_accum", "Gradient accumulation"),
    ("max_length", "Max length (tokens)"), ("lora_rank", "LoRA rank r"), ("lora_alpha", "LoRA alpha"),
    ("warmup_steps", "Warmup steps"), ("report_every", "Report every (steps)"),
    ("eval_every", "Evaluate every (steps)"), ("save_every", "Checkpoint every (steps)"), ("seed", "Seed"),
]
INTEGER = {"iters", "batch_size", "grad_accum", "max_length", "lora_rank", "warmup_steps", "report_every",
           "eval_every", "save_every", "seed"}
FORM = [name for name, _ in NUMBERS] + ["bits", "grad_checkpoint"]


def help_text(name: str) -> str:
    return FIELDS[name].metadata["help"]


def config_from_form(model: str, values: list) -> TrainConfig:
    """TrainConfig from the widgets' values (in FORM order); TrainConfig.validate() has the last word."""
    form = dict(zip(FORM, values))
    kwargs = {"model": (model or "").strip() or FIELDS["model"].default}
    for name in FORM:
        value = form[name]
        if name == "bits":
            kwargs["bits"] = None if value in (None, "", "none") else int(value)
        elif name == "grad_checkpoint":
            kwargs[name] = bool(value)
        elif value is None or value == "":
            if name != "iters":
                raise ValueError(f"{name.replace('_', ' ')}: a value is needed")
            kwargs[name] = None
        else:
            kwargs[name] = int(value) if name in INTEGER else float(value)
    if kwargs.get("iters") == 0:
        kwargs["iters"] = None
    return TrainConfig(**kwargs).validate()


def memory(model: str, *values, fit: bool = True) -> str:
    try:
        cfg = config_from_form(model, list(values))
        return f"{estimate_markdown(cfg)}\n\n{fit_markdown(cfg, fit)}"
    except ValueError as exc:
        return f"**Memory estimate:** unavailable ({exc})"


def resumable(ctx: Context) -> list[str]:
    return [name for name in runfiles.list_runs(ctx.runs_dir)
            if runfiles.checkpoints(ctx.runs_dir / name)]


def _busy(session: Session) -> str | None:
    if session.job is not None and session.job.running:
        return f"A run is already going ({session.job.run_dir.name}); stop it first."
    return None


def data_line(session: Session) -> str:
    """Said beside the Start button: each browser tab has its own data choice."""
    hint = "" if session.data else " (choose other data on the Data tab)"
    return f"Start trains on **{session.data_label}**{hint}."


def buttons(running: bool, stopping: bool = False) -> tuple:
    """(Start, Stop, Resume) as the run's state allows."""
    return (gr.Button(interactive=not running), gr.Button(interactive=running and not stopping),
            gr.Button(interactive=not running))


def _cleared(phase: str) -> tuple:
    """(progress, log, *plots) of a run that has not written anything yet."""
    return (runfiles.progress_html(runfiles.Progress(phase=phase), phase, None), "",
            *plot_values([]))


def start(ctx: Context, session: Session, run_name: str, model: str, *values, fit: bool = True):
    """Start a fresh run: (session, status, timer, resume choices, progress, log, *plots, *buttons).
    `fit`: the "Fit to memory" switch; off trains as typed (--memory-budget off)."""
    if (busy := _busy(session)) is not None:
        return (session, f"⚠️ {busy}", gr.Timer(active=True), gr.skip(), *[gr.skip()] * (2 + N_PLOTS),
                *buttons(True))
    try:
        cfg = config_from_form(model, list(values))
        resolve_model(cfg.model)  # an unknown alias or a missing path fails here, not in the subprocess
        run = new_run_dir(ctx.runs_dir, run_name)
    except (ValueError, OSError) as exc:  # ModelNotFoundError is an OSError
        session.job = None  # nothing runs: the bar, curves and log no longer show the previous run
        return (session, f"⚠️ **Cannot start:** {exc}", gr.Timer(active=False), gr.skip(), *_cleared("idle"),
                *buttons(False))
    if session.skipped:  # the Data tab listed them; train on the rest, as its report says
        cfg.skip_bad_rows = True
    if not fit:
        cfg.memory_budget = "off"
    session.job = launch(run, session.data, cfg)
    session.rate, session.last_seen, session.shown = runfiles.Rate(), (), ()
    skipped = f", skipping its {len(session.skipped)} bad rows" if session.skipped else ""
    started = f"Started **{run.name}** on {session.data_label}{skipped} (model `{cfg.model}`). Loading the model…"
    return session, started, gr.Timer(active=True), gr.skip(), *_cleared(runfiles.LOADING), *buttons(True)


def stop(session: Session):
    if session.job is None or not session.job.running:
        return session, "No run of this session is going.", *buttons(False)
    session.job.stop()
    return (session, f"Stopping **{session.job.run_dir.name}**: writing a checkpoint, then it can be resumed.",
            *buttons(True, stopping=True))


def resume(ctx: Context, session: Session, name: str):
    if (busy := _busy(session)) is not None:
        return session, f"⚠️ {busy}", gr.skip(), *[gr.skip()] * (2 + N_PLOTS), *buttons(True)
    try:
        run = child(ctx.runs_dir, name or "")
    except PathError as exc:
        return session, f"⚠️ **Cannot resume:** {exc}", gr.skip(), *[gr.skip()] * (2 + N_PLOTS), *buttons(False)
    if not runfiles.checkpoints(run):
        return (session, f"⚠️ **Cannot resume:** {run.name} has no checkpoint.", gr.skip(),
                *[gr.skip()] * (2 + N_PLOTS), *buttons(False))
    if (pid := run_holder(run)) is not None:  # the trainer would refuse too; say so here, not in its log
        return (session, (f"⚠️ **Cannot resume:** {run.name} is still being trained by another process "
                          f"(pid {pid}); stop it first."), gr.skip(), *[gr.skip()] * (2 + N_PLOTS), *buttons(False))
    session.job = launch(run, None, TrainConfig(), resume=True)
    session.rate, session.last_seen, session.shown = runfiles.Rate(), (), ()
    return (session, f"Resuming **{run.name}** from {runfiles.checkpoints(run)[0]}…", gr.Timer(active=True),
            *_cleared(runfiles.LOADING), *buttons(True))


def _status(session: Session, phase: str) -> str:
    job = session.job
    if job.running:
        return "stopping" if job.stop_requested else phase
    if job.stop_requested:  # a stop before the training loop starts ends the process without a checkpoint
        return "stopped (resumable)" if runfiles.checkpoints(job.run_dir) else "stopped before the first checkpoint"
    return "finished" if job.returncode == 0 else f"failed (exit {job.returncode})"


N_PLOTS = len(runfiles.CURVES)


def refresh(ctx: Context, session: Session):
    """Timer tick: (session, progress, log, status, timer, resume choices, *plots, start, stop, resume);
    skips what has not changed."""
    if session.job is None:
        return (session, *[gr.skip()] * 3, gr.Timer(active=False), *[gr.skip()] * (1 + N_PLOTS),
                *buttons(False))
    run, running = session.job.run_dir, session.job.running
    sizes = tuple((run / f).stat().st_size if (run / f).is_file() else 0
                  for f in ("config.json", "metrics.jsonl", "train.log"))
    seen = (*sizes, running)
    if seen == session.last_seen:
        if not (running and session.shown and session.shown[2] is not None):
            return (session, *[gr.skip()] * (5 + N_PLOTS + 3))
        p, status, eta, when = session.shown  # nothing new: count the ETA down
        html = runfiles.progress_html(p, status, max(eta - (time.time() - when), 0.0))
        return (session, html, *[gr.skip()] * (4 + N_PLOTS + 3))
    session.last_seen = seen
    recs = runfiles.records(run)
    p = runfiles.progress(run, recs, running)
    session.rate.observe(recs)
    status = _status(session, p.phase)
    log = runfiles.log_tail(run)
    message = f"**{run.name}**: {status}."
    if status.startswith("failed"):
        last = [line for line in log.splitlines() if line.strip()]
        message = f"⚠️ **{run.name} failed** (exit {session.job.returncode}): {last[-1] if last else 'no output'}"
    elif status == "stopped (resumable)":
        message += " Resume continues it from its newest checkpoint."
    elif status == "finished":
        message += " Compare it with the base model on the Chat tab, or export it."
    eta = session.rate.eta(p, runfiles.read_config(run)) if running else None
    session.shown = (p, status, eta, time.time())
    timer = gr.Timer(active=running)
    choices = resumable(ctx)
    resume_choice = gr.skip() if running else gr.Dropdown(choices=choices,
                                                          value=run.name if run.name in choices else None)
    return (session, runfiles.progress_html(p, status, eta), log, message, timer, resume_choice,
            *plot_values([(run.name, recs)]), *buttons(running, session.job.stop_requested))


def build(ctx: Context, state: gr.State, model: gr.Dropdown) -> dict:
    defaults = TrainConfig()
    widgets = []
    with gr.Accordion("Hyperparameters (defaults from TrainConfig)", open=True):
        for i in range(0, len(NUMBERS), 5):
            with gr.Row():
                for name, label in NUMBERS[i:i + 5]:
                    value = getattr(defaults, name)
                    widgets.append(gr.Number(value, label=label, info=help_text(name), minimum=0,
                                             precision=0 if name in INTEGER else None,
                                             step=1 if name in INTEGER else None, elem_id=f"train-{name}"))
        with gr.Row():
            widgets.append(gr.Dropdown(BITS, value="none", label="Quantise base (bits)", info=help_text("bits")))
            widgets.append(gr.Checkbox(defaults.grad_checkpoint, label="Gradient checkpointing",
                                       info=help_text("grad_checkpoint")))
            run_name = gr.Textbox(label="Run name (optional)", placeholder="orpo-<date>-<time>",
                                  elem_id="train-run-name")
    fit_box = gr.Checkbox(True, label="Fit to memory", elem_id="train-fit",
                          info="Before Start, change the settings you left at their defaults to the fastest plan "
                               "predicted to fit the memory budget: " + help_text("memory_budget"))
    estimate = gr.Markdown(memory(defaults.model, *[getattr(defaults, n) if n != "bits" else "none"
                                                    for n in FORM]), elem_id="train-estimate")
    with gr.Row(equal_height=True):
        start_btn = gr.Button("Start", variant="primary", elem_id="train-start", scale=1)
        stop_btn = gr.Button("Stop", variant="stop", elem_id="train-stop", interactive=False, scale=1)
        data_info = gr.Markdown(data_line(Session()), elem_id="train-data")
        resume_run = gr.Dropdown(resumable(ctx), value=None, label="Run to resume", allow_custom_value=True,
                                 scale=2)
        resume_btn = gr.Button("Resume", elem_id="train-resume", scale=1)
    status = gr.Markdown(elem_id="train-status")
    progress = gr.HTML(runfiles.progress_html(runfiles.Progress(), "idle", None), elem_id="train-progress")
    plots = make_plots("train")
    log = gr.Textbox(label="Log (tail of train.log)", lines=8, max_lines=16, autoscroll=True, interactive=False,
                     elem_id="train-log")
    timer = gr.Timer(REFRESH_S, active=False)
    button_row = [start_btn, stop_btn, resume_btn]

    # The switch comes last, so the API's callers that leave it out get its default (on).
    for w in [model, *widgets, fit_box]:
        w.change(lambda m, *v: memory(m, *v[:-1], fit=v[-1]), [model, *widgets, fit_box], estimate,
                 show_progress="hidden", queue=False, api_visibility="private")
    start_btn.click(lambda s, r, m, *v: start(ctx, s, r, m, *v[:-1], fit=v[-1]), [state, run_name, model, *widgets,
                                                                                 fit_box],
                    [state, status, timer, resume_run, progress, log, *plots, *button_row],
                    api_name="start_training")
    stop_btn.click(stop, state, [state, status, *button_row], api_name="stop_training")
    resume_btn.click(lambda s, r: resume(ctx, s, r), [state, resume_run],
                     [state, status, timer, progress, log, *plots, *button_row], api_name="resume_training")
    timer.tick(lambda s: refresh(ctx, s), state,
               [state, progress, log, status, timer, resume_run, *plots, *button_row],
               api_name="refresh_training", show_progress="hidden")
    resume_run.focus(lambda: gr.Dropdown(choices=resumable(ctx)), None, resume_run, queue=False,
                     api_visibility="private")
    return {"data_info": data_info, "max_length": widgets[[n for n, _ in NUMBERS].index("max_length")],
            "status": status}
