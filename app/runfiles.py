"""Read a run directory: config, metrics.jsonl, checkpoints, log, progress.

The metrics file is the contract with the trainer; everything here only reads.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mlx_orpo import rundir
from mlx_orpo.checkpoint import list_checkpoints
from mlx_orpo.config import TrainConfig, load_yaml

from .paths import EXPORTS, UPLOADS, child, relative

# plot key: (title, y-axis title, [(metric key, label)]); train and eval of each key share the axes.
CURVES = {
    "loss": ("Loss and NLL", "loss (nats)", [("loss", "loss"), ("nll_loss", "NLL")]),
    "log_odds": ("Log odds ratio", "log odds", [("log_odds_chosen", "log odds ratio (log OR)"),
                                                ("log_odds_ratio", "log σ(log OR)")]),
    "lr": ("Learning rate", "learning rate", [("learning_rate", "learning rate")]),
    # grad_norm: the norm of each report window's gradients before clipping (runs of older trainers lack it)
    "grad_norm": ("Gradient norm", "norm", [("grad_norm", "gradient norm")]),
    "rewards": ("Rewards (β · mean log p)", "reward", [("rewards/chosen", "chosen"),
                                                       ("rewards/rejected", "rejected")]),
    "accuracy": ("Accuracy and margin", "accuracy / margin", [("rewards/accuracies", "accuracy"),
                                                              ("rewards/margins", "margin")]),
    "tokens": ("Throughput (tokens/s)", "tokens / s", [("tokens_per_sec", "tokens/s")]),
    "memory": ("Peak memory (GB)", "GB", [("peak_memory_gb", "peak memory GB")]),
}
LOG_NAME = rundir.LOG


def list_runs(runs_dir: Path) -> list[str]:
    """Run directories (config.json, metrics.jsonl or train.log inside), newest first."""
    if not runs_dir.is_dir():
        return []
    found = [p for p in runs_dir.iterdir()
             if p.is_dir() and p.name not in (UPLOADS, EXPORTS) and not p.is_symlink()
             and any((p / f).is_file() for f in (rundir.CONFIG, rundir.METRICS, LOG_NAME))]
    return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def run_dir(runs_dir: Path, name: str) -> Path:
    return child(runs_dir, name)


def data_label(runs_dir: Path, data: str | None) -> str:
    """A run's data as the user knows it: the demo set, an upload (relative to the runs directory)
    or a Hub name."""
    if not data:
        return "the shipped demo set"
    return relative(runs_dir, data) if Path(data).is_absolute() else data


def read_config(run: Path) -> dict:
    """The run's settings (rundir.read_config), or {} while it has none (or they cannot be read)."""
    try:
        return rundir.read_config(run)
    except (OSError, ValueError):
        return {}


def job_settings(run: Path) -> dict:
    """A job's settings: its config.json, else (while the trainer loads) the launch.yaml the app gave it
    over the defaults; {} when neither can be read."""
    if settings := read_config(run):
        return settings
    try:
        return {**TrainConfig().to_dict(), **load_yaml(run / rundir.LAUNCH)}
    except (OSError, ValueError):
        return {}


def checkpoints(run: Path) -> list[str]:
    """Checkpoint names (step-NNNNNN), newest first."""
    return [p.name for p in reversed(list_checkpoints(run))]


def adapter_choices(runs_dir: Path, name: str | None) -> list[str]:
    """What the Chat and Export tabs offer for a run: "final" (its newest adapters) and its checkpoints."""
    return ["final"] + checkpoints(run_dir(runs_dir, name or ""))


def adapter_dir(run: Path, checkpoint: str | None) -> Path:
    """The run's newest adapters ("final"/None) or one checkpoint's, as an adapter directory."""
    if not checkpoint or checkpoint == "final":
        if not (run / rundir.ADAPTERS).is_file():
            raise FileNotFoundError(f"{run.name} has no adapters yet")
        return run
    return child(run / rundir.CHECKPOINTS, checkpoint)


def curve_frame(records: list[dict], keys: list[tuple[str, str]], run_label: str = "") -> pd.DataFrame:
    """Long table (step, value, series, run) of train and eval values of `keys`, for one plot."""
    rows = []
    prefix = f"{run_label} · " if run_label else ""
    for r in records:
        for key, label in keys:
            for split, name in (("train", key), ("eval", f"eval_{key}")):
                value = r.get(name)
                # null (a window of skipped steps), NaN and inf are not drawn: Vega cannot place them
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    rows.append((r["step"], float(value), f"{prefix}{label} ({split})", run_label))
    return pd.DataFrame(rows, columns=["step", "value", "series", "run"])


def curve_frames(runs: list[tuple[str, list[dict]]]) -> dict[str, pd.DataFrame]:
    """One frame per entry of CURVES; several runs are overlaid with their names in the legend."""
    label_runs = len(runs) > 1
    return {plot: pd.concat([curve_frame(records, keys, name if label_runs else "") for name, records in runs],
                            ignore_index=True)
            for plot, (_, _, keys) in CURVES.items()}


def records(run: Path) -> list[dict]:
    return rundir.read_records(run)


def log_tail(run: Path, lines: int = 15) -> str:
    path = run / LOG_NAME
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 16384))
        text = f.read().decode("utf-8", "replace")
    # tqdm-style carriage returns: keep what the terminal would show
    shown = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join([line for line in shown if line.strip()][-lines:])


@dataclass
class Progress:
    step: int = 0
    total: int | None = None
    phase: str = "idle"
    eval_done: int | None = None     # while evaluating: held-out pairs done of eval_total
    eval_total: int | None = None

    @property
    def fraction(self) -> float:
        return min(self.step / self.total, 1.0) if self.total else 0.0

    @property
    def label(self) -> str:
        if self.phase == EVALUATING and self.eval_total:
            return f"evaluating: {self.eval_done or 0} of {self.eval_total} held-out pairs"
        return self.phase


# What a running trainer is doing: its status.json (rundir.write_status) once written, else loading.
LOADING, RESUMING, COMPILING, TRAINING, EVALUATING, SAVING, STOPPING, FINISHING = (
    "loading the model and data", "resuming: loading the model and checkpoint", "compiling the first step",
    "training", "evaluating", "saving a checkpoint", "stopping", "finishing")
_PHASES = {rundir.LOADING: COMPILING, rundir.TRAINING: TRAINING, rundir.EVALUATING: EVALUATING,
           rundir.SAVING: SAVING, rundir.STOPPED: STOPPING, rundir.FINISHED: FINISHING}


def progress(run: Path, recs: list[dict] | None = None, running: bool = False, *, since: float = 0.0,
             resume: bool = False) -> Progress:
    """Steps done and planned, and, while the trainer runs, its phase. The trainer's status.json says
    what it does now; a status older than `since` (the launch) is a previous process's, so the new one
    is still loading (or resuming). Without a status, steps come from the metrics records."""
    recs = records(run) if recs is None else recs
    status = rundir.read_status(run)
    step = max((r["step"] for r in recs), default=0)
    total = next((r["total_steps"] for r in reversed(recs) if isinstance(r.get("total_steps"), int)), None) \
        or read_config(run).get("iters")
    fresh = status is not None and status.time >= since
    if fresh:
        step, total = status.step if status.step is not None else step, status.total_steps or total
    if not running:
        return Progress(step, total, "idle")
    if not fresh:
        return Progress(step, total, RESUMING if resume else LOADING)
    return Progress(step, total, _PHASES.get(status.phase, LOADING), status.eval_done, status.eval_total)


def eta_text(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "estimating…"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


# Until an evaluation has been timed, a held-out pair is taken to cost a third of a trained pair
# (a forward pass without the backward): about what SmolLM2-135M measured on the CPU (0.3-0.4).
EVAL_PAIR_SHARE = 1 / 3


class Rate:
    """Step and evaluation times as the trainer measured them (its status.json): the median step
    (the first step of a process, which compiles, is not a measure) and seconds per held-out pair."""

    def __init__(self):
        self.step_times: dict[int, float] = {}   # step -> its seconds
        self.eval_pair_s: dict[int, float] = {}  # evaluation at step -> seconds per pair so far
        self.status: rundir.Status | None = None  # the newest status seen

    def observe(self, status: rundir.Status | None) -> None:
        if status is None or (self.status is not None and status.time < self.status.time):
            return
        self.status = status
        if status.phase == rundir.TRAINING and status.step_seconds:
            self.step_times[status.step] = status.step_seconds
        elif status.phase == rundir.EVALUATING and status.eval_done and status.eval_seconds is not None:
            self.eval_pair_s[status.step] = status.eval_seconds / status.eval_done

    def carried(self) -> Rate:
        """The measurements, for the same run resumed (its status starts afresh)."""
        rate = Rate()
        rate.step_times, rate.eval_pair_s = dict(self.step_times), dict(self.eval_pair_s)
        return rate

    @property
    def step_s(self) -> float | None:
        """Measured seconds per optimizer step (None until one has been measured)."""
        times = sorted(self.step_times.values())
        return times[len(times) // 2] if times else None

    def pair_s(self, cfg: dict) -> float | None:
        """Seconds per held-out pair: measured, else estimated from the step time."""
        if self.eval_pair_s:
            return list(self.eval_pair_s.values())[-1]
        if self.step_s is None:
            return None
        pairs_per_step = (cfg.get("batch_size") or 1) * (cfg.get("grad_accum") or 1)
        return self.step_s / pairs_per_step * EVAL_PAIR_SHARE

    def eta(self, p: Progress, cfg: dict, now: float | None = None) -> float | None:
        """Seconds left: the steps still to run at the measured step time, plus the evaluations still
        due (and what is left of the current one) at the time per held-out pair; counted down from the
        status's time, but never below what certainly remains after the step or batch under way."""
        if not (p.total and self.step_s is not None and self.status and p.phase in (TRAINING, EVALUATING, SAVING)):
            return None
        pair_s = self.pair_s(cfg) or 0.0
        n_eval = self.status.eval_pairs or 0
        every = cfg.get("eval_every") or 0
        due = sum(1 for s in range(p.step + 1, p.total + 1) if rundir.eval_due(s, p.total, every)) if n_eval else 0
        steps_left = max(p.total - p.step, 0)
        after = steps_left * self.step_s + due * n_eval * pair_s
        current = 0.0
        if p.phase == EVALUATING and p.eval_total:
            current = (p.eval_total - (p.eval_done or 0)) * pair_s
        left = after + current
        # The item under way: the next step (training), the rest of this evaluation, or the save.
        floor = after - (self.step_s if p.phase == TRAINING and steps_left else 0.0)
        elapsed = max((time.time() if now is None else now) - self.status.time, 0.0)
        return max(left - elapsed, floor, 0.0)


def progress_html(p: Progress, status: str, eta: float | None, run: str | None = None) -> str:
    pct = round(100 * p.fraction)
    total = p.total if p.total else "?"
    running = status in (LOADING, RESUMING, COMPILING, TRAINING, EVALUATING, SAVING) or status.startswith(
        "evaluating")
    eta_part = f" · ETA {eta_text(eta)}" if running else ""
    return (f'<div class="orpo-progress"><div class="orpo-bar"><div style="width:{pct}%"></div></div>'
            f'<div class="orpo-progress-text">{f"<b>{html.escape(run)}</b>: " if run else ""}'
            f'{html.escape(status)} · step {p.step}/{total} · {pct}%'
            f'{eta_part}</div></div>')
