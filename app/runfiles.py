"""Read a run directory: config, metrics.jsonl, checkpoints, log, progress.

The metrics file is the contract with the trainer; everything here only reads.
"""

from __future__ import annotations

import html
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mlx_orpo.checkpoint import list_checkpoints, read_metrics

from .paths import EXPORTS, UPLOADS, child

# (plot title, [(metric key, label)]): train and eval of each key share the axes.
CURVES = {
    "loss": ("Loss and NLL", [("loss", "loss"), ("nll_loss", "NLL")]),
    "log_odds": ("Log odds ratio", [("log_odds_chosen", "log odds ratio (log OR)"),
                                    ("log_odds_ratio", "log σ(log OR)")]),
    "rewards": ("Rewards (β · mean log p)", [("rewards/chosen", "chosen"), ("rewards/rejected", "rejected")]),
    "accuracy": ("Accuracy and margin", [("rewards/accuracies", "accuracy"), ("rewards/margins", "margin")]),
    "tokens": ("Throughput (tokens/s)", [("tokens_per_sec", "tokens/s")]),
    "memory": ("Peak memory (GB)", [("peak_memory_gb", "peak memory GB")]),
}
LOG_NAME = "train.log"
_STEP_IN_LOG = re.compile(r"step (\d+)/(\d+)")


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
            for plot, (_, keys) in CURVES.items()}


def records(run: Path) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if isinstance(r, dict) and "step" in r]


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

    @property
    def fraction(self) -> float:
        return min(self.step / self.total, 1.0) if self.total else 0.0


def progress(run: Path, recs: list[dict] | None = None) -> Progress:
    """Steps done and planned: the newest record (total_steps if the trainer writes it),
    else the trainer's "step k/N" log lines, else --iters from config.json."""
    recs = records(run) if recs is None else recs
    step = max((r["step"] for r in recs), default=0)
    total = next((r["total_steps"] for r in reversed(recs) if "total_steps" in r), None)
    if total is None:
        found = _STEP_IN_LOG.findall(log_tail(run, 40))
        if found:
            step = max(step, int(found[-1][0]))
            total = int(found[-1][1])
    if total is None:
        total = read_config(run).get("iters")
    return Progress(step, total)


def eta_text(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "—"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


class Rate:
    """Steps per second as seen by the UI (first and newest observation)."""

    def __init__(self):
        self.first: tuple[int, float] | None = None
        self.last: tuple[int, float] | None = None

    def observe(self, step: int, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if self.first is None or step < self.first[0]:
            self.first = (step, now)
        if self.last is None or step != self.last[0]:
            self.last = (step, now)

    def eta(self, p: Progress, started: float | None = None) -> float | None:
        """From the rate between two observed steps; with one, from the time since `started`
        (which includes loading the model, so an overestimate)."""
        if not p.total or self.last is None:
            return None
        if self.last[0] > self.first[0]:
            per_step = (self.last[1] - self.first[1]) / (self.last[0] - self.first[0])
        elif started is not None and self.last[0] > 0:
            per_step = (self.last[1] - started) / self.last[0]
        else:
            return None
        return per_step * max(p.total - p.step, 0)


def progress_html(p: Progress, status: str, eta: float | None) -> str:
    pct = round(100 * p.fraction)
    total = p.total if p.total else "?"
    return (f'<div class="orpo-progress"><div class="orpo-bar"><div style="width:{pct}%"></div></div>'
            f'<div class="orpo-progress-text">{html.escape(status)} · step {p.step}/{total} · {pct}% · ETA {eta_text(eta)}</div></div>')
