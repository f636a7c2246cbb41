"""The ORPO training loop: one plain function, `train`, read top to bottom.

Each optimizer step is `step.OrpoStep`: `grad_accum` micro-batches through one
compiled function (chosen and rejected rows of a batch in a single forward), a
check of the loss, the gradient norm and then the updated weights for non-finite
values (a poisoned step is skipped and counted, never applied), and AdamW.
`feeding.Feeder` hands it each step's micro-batches; `report.Reporter` keeps the
records, status.json, checkpoints and timings. This module holds the loop, the
resume, the held-out evaluation and the stop requests.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx

from . import checkpoint as ckpt
from . import files, rundir
from .batching import Widths, collate
from .checkpoint import LoopState
from .config import TrainConfig
from .distributed import Cluster, Watchdog
from .feeding import Feeder
from .loss import METRIC_KEYS, LossParts, batch_loss, orpo_loss
from .report import Reporter
from .step import OrpoStep, build_optimizer
from .tokenize import EncodedPair


def total_steps(cfg: TrainConfig, n_train: int, world_size: int = 1) -> int:
    if cfg.iters:
        return cfg.iters
    batches_per_epoch = math.ceil(n_train / (cfg.batch_size * world_size))
    return max(1, math.ceil(cfg.epochs * batches_per_epoch / cfg.grad_accum))


def score_pairs(model, pairs: list[EncodedPair], cfg: TrainConfig, pad_id: int,
                loss: Callable | None = None, stop: Callable[[], bool] | None = None,
                on_batch: Callable[[int, int], None] | None = None) -> LossParts | None:
    """The objective's parts of `pairs` (in their order) under the model in eval mode, forward only:
    batches of cfg.batch_size pairs of similar length, each evaluated as it is done (a sync point).
    None when `stop()`, asked between batches, says to stop. `on_batch(done, total)` hears the
    pairs scored so far, before the first batch and after each."""
    order = sorted(range(len(pairs)), key=lambda i: pairs[i].length)
    if on_batch:
        on_batch(0, len(pairs))
    widths = Widths.for_config(cfg)
    chunks = []
    model.eval()
    for start in range(0, len(order), cfg.batch_size):
        if start and stop is not None and stop():
            model.train()
            return None
        chunk = [pairs[i] for i in order[start:start + cfg.batch_size]]
        chunks.append((loss or batch_loss)(model, collate(chunk, pad_id, widths), cfg.prompt_in_nll))
        mx.eval(chunks[-1])
        if on_batch:
            on_batch(start + len(chunk), len(pairs))
    model.train()
    parts = LossParts.concatenate(chunks)
    back = mx.argsort(mx.array(order))
    return parts._replace(chosen_logps=parts.chosen_logps[back], rejected_logps=parts.rejected_logps[back])


def evaluate(model, pairs: list[EncodedPair], cfg: TrainConfig, pad_id: int, loss: Callable | None = None,
             stop: Callable[[], bool] | None = None,
             on_batch: Callable[[int, int], None] | None = None) -> dict | None:
    """Held-out metrics (same keys, `eval_` prefix) over the whole held-out set: the NLL a token
    mean and the rest pair means over all evaluated pairs, whatever the batch size. None when
    `stop()`, asked between batches, says to stop: a partial evaluation is no evaluation.
    `on_batch(done, total)` hears the pairs evaluated so far, before the first batch and after each."""
    if cfg.eval_max_pairs:
        pairs = pairs[: cfg.eval_max_pairs]
    if not pairs:
        return {}
    parts = score_pairs(model, pairs, cfg, pad_id, loss, stop=stop, on_batch=on_batch)
    if parts is None:
        return None
    _, metrics = orpo_loss(parts, cfg.beta)
    return {f"eval_{k}": metrics[k].item() for k in METRIC_KEYS}


class _StopFlag:
    """SIGTERM/SIGINT ask the loop to checkpoint and return instead of dying mid-step. The loop
    looks between micro-batches and between evaluation batches, so it answers within one of
    them; a second signal meanwhile only says so (SIGKILL ends a process without a checkpoint)."""

    def __init__(self):
        self.stop = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: no signal handling
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def requested(self) -> bool:
        return self.stop

    def _handle(self, signum, frame):
        if self.stop:
            # os.write, not print: a signal handler may interrupt a print in progress.
            os.write(2, b"already stopping: saving a checkpoint after the current micro-batch\n")
        self.stop = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(model, train_pairs: list[EncodedPair], eval_pairs: list[EncodedPair], cfg: TrainConfig,
          run_dir: Path, *, pad_id: int, resume: bool = False, on_record: Callable[[dict], None] | None = None,
          log: Callable[[str], None] = print, progress: bool = True, cluster: Cluster | None = None,
          loss: Callable | None = None) -> LoopState:
    """Train the (adapter-bearing, base-frozen) model with ORPO; return the final loop state.

    Writes metrics.jsonl, adapters.safetensors and checkpoints under run_dir
    (rank 0 only when data-parallel). With resume=True, continues from the
    newest checkpoint in run_dir exactly. `loss` replaces loss.batch_loss (tests).
    """
    cluster = cluster or Cluster()
    loss = loss or batch_loss
    run_dir = Path(run_dir)
    steps = total_steps(cfg, len(train_pairs), cluster.size)
    optimizer = build_optimizer(cfg, steps)
    if cluster.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    state = _resume(run_dir, model, optimizer, cluster, log) if resume else LoopState(world_size=cluster.size)
    step = OrpoStep(model, cfg, optimizer, loss=loss, cluster=cluster)
    feed = Feeder(train_pairs, cfg, state, pad_id=pad_id, shared_prompt=step.shared_prompt, cluster=cluster)
    log(feed.describe())
    report = Reporter(run_dir, cfg, state, model, optimizer, steps=steps, batches_per_epoch=feed.batches_per_epoch,
                      eval_pairs=len(eval_pairs[: cfg.eval_max_pairs or None]), cluster=cluster, log=log,
                      on_record=on_record, progress=progress)
    model.train()
    mx.reset_peak_memory()
    with _StopFlag() as stop, Watchdog(cluster, cfg.dist_timeout, report.last_saved) as watchdog:
        while state.step < steps:
            # Dropout noise depends only on (seed, step), so a resumed run replays it exactly.
            mx.random.seed(cfg.seed * 1_000_003 + state.step)
            position = feed.position()
            report.step_started()
            result = step(feed.next_step(report.micro_batch), stop=stop.requested)
            if result.dropped:
                # The partial step is dropped and its data position put back: a resume takes the
                # same micro-batches again, so it stays the same run.
                feed.rewind(position)
            else:
                report.account(result)
                state.step += 1
                watchdog.beat()
                report.step_done()
                if report.evaluation_due(stop.requested()):
                    report.evaluation(evaluate(model, eval_pairs, cfg, pad_id, loss, on_batch=report.eval_progress,
                                               stop=None if state.step == steps else stop.requested))
            # Data-parallel ranks stop together, at the next step's agreement; one process stops here.
            stopping = result.stop_requested or (stop.requested() and cluster.size == 1)
            report.checkpoint(stopping=stopping)
            report.step_ended()
            if stopping:
                break
    report.finish()
    return state


def _resume(run_dir: Path, model, optimizer, cluster: Cluster, log: Callable[[str], None]) -> LoopState:
    """Load the newest checkpoint into model and optimizer; return its loop state."""
    # What a writer killed mid-checkpoint left behind (files.atomic_output's temporaries).
    for stale in files.remove_stale_temporaries(run_dir / rundir.CHECKPOINTS):
        log(f"removed {stale.name}, left by a checkpoint write that did not finish")
    if not ckpt.list_checkpoints(run_dir):
        # Stopped or killed before its first checkpoint: nothing was kept, so the run starts over.
        log(f"{run_dir} has no checkpoint yet (the run ended before its first one): starting from step 0")
        if cluster.is_main:
            rundir.truncate_records(run_dir, 0)
        return LoopState(world_size=cluster.size)
    found = ckpt.intact_checkpoints(run_dir, warn=log)  # a damaged newest one is named and passed over
    if not found:
        raise FileNotFoundError(f"{run_dir}: no checkpoint to resume from")
    # What an older version's state lacks is the value it ran with (rundir.FORMATS): it resumes in the
    # order and weighting it was written with.
    state = LoopState(**{**rundir.missing_fields(run_dir, rundir.STATE),
                         **ckpt.load_checkpoint(found[-1], model, optimizer)})
    if state.world_size != cluster.size:
        raise ValueError(f"{found[-1]} was written by {state.world_size} process(es); resume it with the same "
                         f"number (this run has {cluster.size}), so every step sees the same global batch")
    if cluster.is_main:
        rundir.truncate_records(run_dir, state.step)
    log(f"resumed from {found[-1]} at step {state.step}")
    return state
