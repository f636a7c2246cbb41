"""What the training loop tells and keeps between its steps: `Reporter`.

The loop calls it after each step, evaluation and stop; it keeps the report window in the loop's
state (metric sums and tokens since the last report), writes the metrics records and status.json
(rank 0 only), saves the checkpoints (the planned ones and the one a stop asks for go through
`checkpoint`), times the steps for the records and the app's ETA, warns of a slow step, and keeps a
progress bar under the report lines on a terminal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx

from . import checkpoint as ckpt
from . import rundir
from .checkpoint import LoopState
from .config import TrainConfig
from .distributed import Cluster
from .loss import METRIC_KEYS
from .step import StepResult

# A train record's mean global gradient norm over its window's applied steps, before clipping.
GRAD_NORM = "grad_norm"
SLOW_STEP_SECONDS = 600  # an optimizer step longer than this gets a warning with its estimated time


class Reporter:
    """The loop's records, status, checkpoints and timings for one run of `steps` optimizer steps."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, state: LoopState, model, optimizer, *, steps: int,
                 batches_per_epoch: int, eval_pairs: int, cluster: Cluster, log: Callable[[str], None] = print,
                 on_record: Callable[[dict], None] | None = None, progress: bool = True):
        self.run_dir, self.cfg, self.state, self.steps, self.cluster = run_dir, cfg, state, steps, cluster
        self.model, self.optimizer = model, optimizer
        self.batches_per_epoch, self.eval_pairs, self.on_record = batches_per_epoch, eval_pairs, on_record
        self.bar = _progress_bar(steps, state.step) if progress else None
        self.log = log if self.bar is None else self.bar.write  # keep the bar below the report lines
        self.saved_step = state.step  # the newest checkpoint's step (a run starts from its own)
        self.compiling = True  # the first step of a process compiles it: its time is not a measure of the rest
        self.window_start = self.step_start = self.micro_start = self.eval_start = time.perf_counter()

    def last_saved(self) -> str:
        return f"The last checkpoint in {self.run_dir} is intact; continue with --resume."

    def status(self, phase: str, **details) -> None:
        """What the loop is doing now, for the app (rundir.write_status); rank 0 only."""
        if self.cluster.is_main:
            rundir.write_status(self.run_dir, phase, step=self.state.step, total_steps=self.steps,
                                eval_pairs=self.eval_pairs, **details)

    def record(self, kind: str, entry: dict) -> None:
        entry = rundir.append_record(self.run_dir, kind, entry)
        if self.on_record:
            self.on_record(entry)
        self.log(format_record(entry, self.steps))

    # -- a step ------------------------------------------------------------------------------------

    def step_started(self) -> None:
        self.step_start = time.perf_counter()

    def micro_batch(self, micro: int) -> None:
        """The step asks for its `micro`-th micro-batch. The first step's second micro-batch is timed
        (the first also compiles the step), to warn of a slow step before it ends."""
        if not self.compiling:
            return
        if micro == 1:
            self.micro_start = time.perf_counter()
        elif micro == 2:
            warn_long_step(time.perf_counter() - self.micro_start, self.cfg.grad_accum,
                           self.steps - self.state.step, self.log)

    def account(self, result: StepResult) -> None:
        """Add an applied step's metrics to the report window; count a skipped one."""
        state = self.state
        if result.applied:
            for k in METRIC_KEYS:
                state.window[k] = state.window.get(k, 0.0) + result.metrics[k].item()
            # The norm is evaluated already, by the step's finite check: .item() only reads it. A window
            # that a version-1 or -2 checkpoint began holds no norms for its steps before the resume.
            if state.window_steps == 0 or GRAD_NORM in state.window:
                state.window[GRAD_NORM] = state.window.get(GRAD_NORM, 0.0) + result.grad_norm.item()
            state.window_steps += 1
        else:
            state.skipped_steps += 1
            self.log(f"step {state.step + 1}: non-finite loss, gradient or updated weights; update skipped")

    def step_done(self) -> None:
        """The step is counted (state.step): say so, and report when a report is due."""
        state, done = self.state, self.state.step == self.steps
        self.status(rundir.TRAINING,
                    step_seconds=None if self.compiling else round(time.perf_counter() - self.step_start, 3))
        self.compiling = False
        if self.bar is not None:
            self.bar.update(1)
        if state.step % self.cfg.report_every == 0 or done:
            if self.cluster.is_main:
                self.record(rundir.TRAIN, self.train_record(time.perf_counter() - self.window_start))
            state.window, state.window_steps, state.window_tokens = {}, 0, 0

    def train_record(self, elapsed: float) -> dict:
        """The metrics record of the report window that just ended."""
        state = self.state
        entry = {"step": state.step, "total_steps": self.steps,
                 "epoch": round(state.epoch + state.batch_in_epoch / self.batches_per_epoch, 4)}
        # A window whose every step was skipped has no metrics: null, not NaN (valid JSON).
        entry.update({k: (state.window[k] / state.window_steps if state.window_steps else None)
                      for k in METRIC_KEYS})
        entry.update({
            GRAD_NORM: state.window[GRAD_NORM] / state.window_steps if GRAD_NORM in state.window else None,
            "learning_rate": self.optimizer.learning_rate.item(),
            "tokens_per_sec": state.window_tokens / max(elapsed, 1e-9),
            "peak_memory_gb": mx.get_peak_memory() / 1e9,
            "skipped_steps": state.skipped_steps,
        })
        return entry

    # -- evaluation --------------------------------------------------------------------------------

    def evaluation_due(self, stop_requested: bool) -> bool:
        """Whether rank 0 evaluates after this step. An evaluation not yet started is skipped once a stop
        is asked for (and one under way is dropped): a resume runs none of them again. The final one is
        the exception: the run is complete, and it is the only evaluation it would never get."""
        done = self.state.step == self.steps
        return (self.cluster.is_main and self.eval_pairs > 0
                and rundir.eval_due(self.state.step, self.steps, self.cfg.eval_every) and (done or not stop_requested))

    def eval_progress(self, done: int, total: int) -> None:
        if done == 0:
            self.eval_start = time.perf_counter()
        self.status(rundir.EVALUATING, eval_done=done, eval_total=total,
                    eval_seconds=round(time.perf_counter() - self.eval_start, 3))

    def evaluation(self, held_out: dict | None) -> None:
        """Record an evaluation's metrics; None (a stopped one) is no evaluation."""
        if held_out is not None:
            self.record(rundir.EVAL, {"step": self.state.step, **held_out})

    # -- checkpoints and the end -------------------------------------------------------------------

    def checkpoint(self, *, stopping: bool) -> None:
        """The one save path (rank 0): every --save-every steps, after the last step, and when the run
        stops (its last whole step, which a dropped step leaves as it was), unless that step is saved."""
        state, cfg = self.state, self.cfg
        due = state.step % cfg.save_every == 0 or state.step == self.steps or stopping
        if not (self.cluster.is_main and due and state.step > self.saved_step):
            return
        self.status(rundir.SAVING)
        ckpt.save_checkpoint(self.run_dir, state.step, self.model, self.optimizer, state.__dict__,
                             cfg.keep_checkpoints)
        self.saved_step = state.step
        if not (state.step == self.steps or stopping):
            self.status(rundir.TRAINING, step_seconds=None)

    def step_ended(self) -> None:
        """After a step's report, evaluation and save: a new report window starts its clock here, so
        evaluations and saves do not count against tokens/s."""
        if self.state.window_steps == 0:
            self.window_start = time.perf_counter()

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.state.step < self.steps and self.cluster.is_main:
            rundir.write_status(self.run_dir, rundir.STOPPED, step=self.state.step, total_steps=self.steps)
            self.log(stopped_message(self.run_dir, self.state.step, self.steps))


def format_record(record: dict, total: int) -> str:
    """One readable terminal line per metrics record."""
    prefix = "eval_" if record["kind"] == rundir.EVAL else ""

    def show(key, spec):
        value = record.get(prefix + key)
        return "n/a" if value is None else format(value, spec)

    parts = [f"{'eval ' if prefix else 'train'} step {record['step']}/{total}", f"loss {show('loss', '.4f')}",
             f"nll {show('nll_loss', '.4f')}", f"log odds {show('log_odds_chosen', '+.3f')}",
             f"acc {show('rewards/accuracies', '.2f')}", f"margin {show('rewards/margins', '+.4f')}"]
    if not prefix:
        parts += [f"lr {record['learning_rate']:.2e}", f"{record['tokens_per_sec']:.0f} tok/s",
                  f"{record['peak_memory_gb']:.2f} GB"]
        if record["skipped_steps"]:
            parts.append(f"skipped {record['skipped_steps']}")
    return " | ".join(parts)


def warn_long_step(micro_seconds: float, grad_accum: int, steps_left: int, log: Callable[[str], None]) -> None:
    """Warn when --grad-accum makes one optimizer step take longer than SLOW_STEP_SECONDS, as
    measured on one micro-batch: progress, reports and checkpoints all wait for whole steps."""
    per_step = micro_seconds * grad_accum
    if per_step > SLOW_STEP_SECONDS:
        log(f"warning: --grad-accum {grad_accum}: one optimizer step takes about {_duration(per_step)} "
            f"({micro_seconds:.2f} s per micro-batch), the {steps_left} steps left about "
            f"{_duration(per_step * steps_left)}; nothing is reported or saved in between (a stop keeps only "
            "whole steps). A smaller --grad-accum with a larger --batch-size gives the same batch sooner.")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def stopped_message(run_dir: Path, step: int, steps: int) -> str:
    """What a stopped run prints last (the app and scripts read its first words)."""
    saved = "checkpoint saved" if step else "no step had finished, so nothing to save; it starts again from step 0"
    return f"stopped at step {step}/{steps}; {saved}. Continue with: python -m mlx_orpo.train --resume {run_dir}"


def _progress_bar(steps: int, done: int):
    """A tqdm bar on an interactive terminal, else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=steps, initial=done, unit="step", dynamic_ncols=True, leave=False)
