"""Read a run directory: config, metrics.jsonl, checkpoints, log, progress.

The metrics file is the contract with the trainer; everything here only reads.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mlx_orpo import rundir
from mlx_orpo.checkpoint import list_checkpoints

from .paths import EXPORTS, UPLOADS, child

# plot key: (title, y-axis title, [(metric key, label)]); train and eval of each key share the axes.
CURVES = {
    "loss": ("Loss and NLL", "loss (nats)", [("loss", "loss"), ("nll_loss", "NLL")]),
    "log_odds": ("Log odds ratio", "log odds", [("log_odds_chosen", "log odds ratio (log OR)"),
                                                ("log_odds_ratio", "log σ(log OR)")]),
    "rewards": ("Rewards (β · mean log p)", "reward", [("rewards/chosen", "chosen"),
                                                       ("rewards/rejected", "rejected")]),
    "accuracy": ("Accuracy and margin", "accuracy / margin", [("rewards/accuracies", "accuracy"),
                                                              ("rewards/margins", "margin")]),
    "tokens": ("Throughput (tokens/s)", "tokens / s", [("tokens_per_sec", "tokens/s")]),
    "memory": ("Peak memory (GB)", "GB", [("peak_memory_gb", "peak memory GB")]),
}
LOG_NAME = "train.log"


def list_runs(runs_dir: Path) -> list[str]:
    """Run directories (config.json, metrics.jsonl or train.log inside), newest first."""
    if not runs_dir.is_dir():
        return []
    found = [p for p in runs_dir.iterdir()
             if p.is_dir() and p.name not in (UPLOADS, EXPORTS) and not p.is_symlink()
             and any((p / f).is_file() for f in ("config.json", "metrics.jsonl", LOG_NAME))]
    return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def run_dir(runs_dir: Path, name: str) -> Path:
    return child(runs_dir, name)


def read_config(run: Path) -> dict:
    try:
        return json.loads((run / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
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
        if not (run / "adapters.safetensors").is_file():
            raise FileNotFoundError(f"{run.name} has no adapters yet")
        return run
    return child(run / "checkpoints", checkpoint)


def curve_frame(records: list[dict], keys: list[tuple[str, str]], run_label: str = "") -> pd.DataFrame:
    """Long table (step, value, series) of train and eval values of `keys`, for one plot."""
    rows = []
    prefix = f"{run_label} · " if run_label else ""
    for r in records:
        for key, label in keys:
            for split, name in (("train", key), ("eval", f"eval_{key}")):
                value = r.get(name)
                if isinstance(value, (int, float)) and value == value:  # skip NaN
                    rows.append((r["step"], float(value), f"{prefix}{label} ({split})"))
    return pd.DataFrame(rows, columns=["step", "value", "series"])


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

    @property
    def fraction(self) -> float:
        return min(self.step / self.total, 1.0) if self.total else 0.0


# What a running trainer is doing, as far as its files tell (the metrics records are the contract).
LOADING, COMPILING, TRAINING, EVALUATING, SAVING = (
    "loading the model and data", "compiling and running the first steps", "training",
    "evaluating on the held-out pairs", "saving the adapters")


def progress(run: Path, recs: list[dict] | None = None, running: bool = False) -> Progress:
    """Steps done and planned (metrics records, else --iters from config.json) and, while the
    trainer runs, its phase: loading (no config.json yet: the trainer writes it once the model is
    loaded), compiling (no record yet), training, evaluating (a train record whose evaluation is due
    and not yet written) or saving (the last step's records are all in)."""
    recs = records(run) if recs is None else recs
    cfg = read_config(run)
    step = max((r["step"] for r in recs), default=0)
    total = next((r["total_steps"] for r in reversed(recs) if "total_steps" in r), None) or cfg.get("iters")
    if not running:
        return Progress(step, total, "idle")
    if not cfg:
        return Progress(step, total, LOADING)
    trained = [r for r in recs if r["kind"] == rundir.TRAIN]
    if not trained:
        return Progress(step, total, COMPILING)
    last = trained[-1]["step"]
    evaluated = any(r["kind"] == rundir.EVAL and r["step"] == last for r in recs)
    has_eval = any(r["kind"] == rundir.EVAL for r in recs) or cfg.get("eval_fraction", 0) > 0 or cfg.get("eval_data")
    if has_eval and rundir.eval_due(last, total, cfg.get("eval_every") or 0) and not evaluated:
        phase = EVALUATING
    elif total and last >= total:
        phase = SAVING
    else:
        phase = TRAINING
    return Progress(step, total, phase)


def eta_text(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "—"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


class Rate:
    """Step and evaluation times as the UI measures them: when each new train (and eval) record
    was first seen. The first record's time includes loading and compiling, so it only starts
    the clock; the ETA needs two train records."""

    def __init__(self):
        self.train: list[tuple[int, float]] = []   # (step, first seen) of each train record
        self.eval_s: list[float] = []              # seconds from a train record to its eval record
        self._seen_eval: set[int] = set()

    def observe(self, recs: list[dict], now: float | None = None) -> None:
        now = time.time() if now is None else now
        seen = {step for step, _ in self.train}
        for r in recs:
            if r["kind"] == rundir.TRAIN and r["step"] not in seen:
                self.train.append((r["step"], now))
                seen.add(r["step"])
            elif r["kind"] == rundir.EVAL and r["step"] not in self._seen_eval:
                self._seen_eval.add(r["step"])
                at = dict(self.train).get(r["step"])
                if at is not None and len(self.train) > 1:  # the first train record's eval ran after compiling
                    self.eval_s.append(now - at)

    @property
    def step_s(self) -> float | None:
        """Measured seconds per optimizer step (excluding the first report: it includes compiling)."""
        if len(self.train) < 2:
            return None
        (s0, t0), (s1, t1) = self.train[0], self.train[-1]
        return (t1 - t0) / (s1 - s0) if s1 > s0 else None

    def eta(self, p: Progress, cfg: dict) -> float | None:
        """Seconds left: remaining steps at the measured step time, plus the evaluations still due
        at the measured evaluation time (when one was measured)."""
        if not p.total or self.step_s is None:
            return None
        left = self.step_s * max(p.total - p.step, 0)
        if self.eval_s:
            every = cfg.get("eval_every") or 0
            due = sum(1 for s in range(p.step + 1, p.total + 1) if rundir.eval_due(s, p.total, every))
            if p.phase == EVALUATING:
                due += 1
            left += due * sum(self.eval_s) / len(self.eval_s)
        return left


def progress_html(p: Progress, status: str, eta: float | None) -> str:
    pct = round(100 * p.fraction)
    total = p.total if p.total else "?"
    eta_part = "" if status in ("idle",) or status.startswith(("finished", "failed", "stopped")) \
        else f" · ETA {eta_text(eta)}"
    return (f'<div class="orpo-progress"><div class="orpo-bar"><div style="width:{pct}%"></div></div>'
            f'<div class="orpo-progress-text">{html.escape(status)} · step {p.step}/{total} · {pct}%'
            f'{eta_part}</div></div>')
