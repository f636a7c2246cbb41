"""The ORPO training loop: one plain function, `train`.

Each optimizer step is `step.OrpoStep`: `grad_accum` micro-batches through one
compiled function (chosen and rejected rows of a batch in a single forward), a
check of the loss, the gradient norm and then the updated weights for non-finite
values (a poisoned step is skipped and counted, never applied), and AdamW. This
module feeds it batches and keeps the loop's state: resume, reports, held-out
evaluation, checkpoints, stop requests.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx

from . import checkpoint as ckpt
from . import files, rundir
from .batching import Widths, batch_shape, collate, epoch_batches
from .checkpoint import LoopState
from .config import TrainConfig
from .distributed import Cluster, Watchdog
from .loss import METRIC_KEYS, LossParts, batch_loss, orpo_loss
from .models import on_gpu
from .step import MicroBatch, OrpoStep, build_optimizer
from .tokenize import EncodedPair


def total_steps(cfg: TrainConfig, n_train: int, world_size: int = 1) -> int:
    if cfg.iters:
        return cfg.iters
    batches_per_epoch = math.ceil(n_train / (cfg.batch_size * world_size))
    return max(1, math.ceil(cfg.epochs * batches_per_epoch / cfg.grad_accum))


def step_order(pairs: list[EncodedPair], global_batch: int, accum: int, seed: int, epoch: int,
               **order) -> list[list[list[int]]]:
    """The optimizer steps of one epoch, each the list of its micro-batches (pair indices):
    epoch_batches of the pairs of a step (global_batch x accum), each cut into micro-batches of
    global_batch pairs. So the pairs of every step, and the order of the steps, do not depend on how
    a step is cut: batch 2 and batch 1 x --grad-accum 2 (what auto-fit turns the one into) train on
    the same pairs at each step, the epoch's short step included. `order`: epoch_batches' keyword
    arguments."""
    groups = epoch_batches(pairs, global_batch * accum, seed, epoch, **order)
    return [[group[i:i + global_batch] for i in range(0, len(group), global_batch)] for group in groups]


def micro_batches(pairs: list[EncodedPair], global_batch: int, seed: int, epoch: int, start: int,
                  accum: int = 1, **order):
    """Yield (epoch, index_in_epoch, pair indices of a global batch, whether it ends its step) forever,
    from a saved position. `accum` and `order`: step_order's arguments."""
    while True:
        batches = [(batch, k + 1 == len(step))
                   for step in step_order(pairs, global_batch, accum, seed, epoch, **order)
                   for k, batch in enumerate(step)]
        for i in range(start, len(batches)):
            yield epoch, i, *batches[i]
        epoch, start = epoch + 1, 0


def nll_targets(pair: EncodedPair, prompt_in_nll: bool) -> int:
    """Targets the NLL term averages over for this pair's chosen sequence."""
    return len(pair.prompt) + len(pair.chosen) - 1 if prompt_in_nll else len(pair.chosen)


def shard_counts(global_pairs, cfg: TrainConfig, world: int) -> tuple[float, float]:
    """(NLL targets, pairs) that each rank divides its sums by: the global batch's counts over the
    number of ranks, so the ranks' averaged losses are the global batch's token-mean NLL and pair
    means (a rank's share may hold any number of the pairs; with one process, its own counts)."""
    tokens = sum(nll_targets(p, cfg.prompt_in_nll) for p in global_pairs)
    return tokens / world, len(global_pairs) / world


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


def _format(record: dict, total: int) -> str:
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
    global_batch = cfg.batch_size * cluster.size
    steps = total_steps(cfg, len(train_pairs), cluster.size)
    batches_per_epoch = math.ceil(len(train_pairs) / global_batch)
    optimizer = build_optimizer(cfg, steps)
    if cluster.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    state = LoopState(world_size=cluster.size)
    if resume:
        state = _resume(run_dir, model, optimizer, cluster, log)
    step = OrpoStep(model, cfg, optimizer, loss=loss, cluster=cluster)
    widths = Widths.for_config(cfg)
    order = dict(widths=widths, shared_prompt=step.shared_prompt, largest_first=state.largest_first)
    accum = cfg.grad_accum if state.step_groups else 1  # a checkpoint's own order, see LoopState
    first_epoch = [batch for step in step_order(train_pairs, global_batch, accum, cfg.seed, state.epoch, **order)
                   for batch in step]
    shapes = {batch_shape(cluster.shard([train_pairs[i] for i in b]) or [train_pairs[b[0]]], widths,
                          step.shared_prompt) for b in first_epoch}  # this rank's, as step_micro_batches
    log(f"batches: {len(first_epoch)} per epoch in {len(shapes)} shapes (widths: "
        f"{'powers of two x ' if widths.pow2 else 'multiples of '}{widths.multiple}, --pad-to; each new shape "
        f"compiles the step){', the largest first' if state.largest_first else ''}"
        + ("; the first run on a machine also builds MLX's GPU kernels, which can take minutes" if on_gpu() else ""))

    def record(kind: str, entry: dict):
        entry = rundir.append_record(run_dir, kind, entry)
        if on_record:
            on_record(entry)
        log(_format(entry, steps))

    first_step = [True]

    def step_micro_batches():
        """This rank's micro-batches of the next optimizer step; advances the loop's data position.
        Each is weighted to its share of the step's pairs, as a rank is to its share of a global batch,
        so the step's loss and gradient are those of one batch of all its pairs."""
        timed, first_step[0] = first_step[0], False
        taken = []
        for epoch, index, indices, ends_step in batches:
            taken.append((epoch, index, indices))
            # (A checkpoint from before step groups takes --grad-accum micro-batches, whatever their step.)
            if len(taken) == cfg.grad_accum or (ends_step and state.step_groups):
                break
        step_pairs = [train_pairs[i] for _, _, indices in taken for i in indices]
        for micro, (epoch, index, indices) in enumerate(taken):
            # The first step's second micro-batch is timed (the first also compiles the step).
            if timed and micro == 1:
                started = time.perf_counter()
            elif timed and micro == 2:
                warn_long_step(time.perf_counter() - started, cfg.grad_accum, steps - state.step, log)
            global_pairs = [train_pairs[i] for i in indices]
            local_pairs = cluster.shard(global_pairs)
            # A rank left without pairs (a short last batch) runs a stand-in that divides its sums by
            # infinite counts: it adds nothing to the loss, the gradients or the metrics.
            if not local_pairs:
                nll_tokens, pair_count = math.inf, math.inf
            elif state.step_groups:
                nll_tokens, pair_count = shard_counts(step_pairs, cfg, cluster.size * len(taken))
            else:
                nll_tokens, pair_count = shard_counts(global_pairs, cfg, cluster.size)
            state.window_tokens += sum(p.tokens for p in global_pairs)
            last = index + 1 == batches_per_epoch
            state.epoch, state.batch_in_epoch = (epoch + 1, 0) if last else (epoch, index + 1)
            yield MicroBatch(collate(local_pairs or global_pairs[:1], pad_id, widths), nll_tokens,
                             pair_count)

    batches = micro_batches(train_pairs, global_batch, cfg.seed, state.epoch, state.batch_in_epoch, accum, **order)
    bar = _progress_bar(steps, state.step) if progress else None
    if bar is not None:
        log = bar.write  # keep the bar below the report lines
    model.train()
    mx.reset_peak_memory()
    window_start = time.perf_counter()
    last_saved = lambda: f"The last checkpoint in {run_dir} is intact; continue with --resume."
    eval_pairs_used = len(eval_pairs[: cfg.eval_max_pairs or None])

    def status(phase: str, **details):
        """What the loop is doing now, for the app (rundir.write_status); rank 0 only."""
        if cluster.is_main:
            rundir.write_status(run_dir, phase, step=state.step, total_steps=steps, eval_pairs=eval_pairs_used,
                                **details)

    eval_started = [0.0]

    def eval_progress(done: int, total: int):
        if done == 0:
            eval_started[0] = time.perf_counter()
        status(rundir.EVALUATING, eval_done=done, eval_total=total,
               eval_seconds=round(time.perf_counter() - eval_started[0], 3))

    compiling = True  # the first step of a process compiles it: its time is not a measure of the rest
    with _StopFlag() as stop, Watchdog(cluster, cfg.dist_timeout, last_saved) as watchdog:
        while state.step < steps:
            # Dropout noise depends only on (seed, step), so a resumed run replays it exactly.
            mx.random.seed(cfg.seed * 1_000_003 + state.step)
            position = (state.epoch, state.batch_in_epoch, state.window_tokens)
            step_start = time.perf_counter()
            result = step(step_micro_batches(), stop=lambda: stop.stop)
            if result.dropped:
                # The partial step is dropped and its data position not advanced: a resume takes
                # the same micro-batches again, so it stays the same run.
                state.epoch, state.batch_in_epoch, state.window_tokens = position
                # (A step that was just checkpointed keeps the checkpoint it has.)
                if cluster.is_main and state.step > 0 and state.step % cfg.save_every != 0:
                    status(rundir.SAVING)
                    ckpt.save_checkpoint(run_dir, state.step, model, optimizer, state.__dict__,
                                         cfg.keep_checkpoints)
                break
            if result.applied:
                for k in METRIC_KEYS:
                    state.window[k] = state.window.get(k, 0.0) + result.metrics[k].item()
                state.window_steps += 1
            else:
                state.skipped_steps += 1
                log(f"step {state.step + 1}: non-finite loss, gradient or updated weights; update skipped")
            state.step += 1
            status(rundir.TRAINING, step_seconds=None if compiling else round(time.perf_counter() - step_start, 3))
            compiling = False
            watchdog.beat()
            if bar is not None:
                bar.update(1)
            done = state.step == steps
            if state.step % cfg.report_every == 0 or done:
                if cluster.is_main:
                    elapsed = time.perf_counter() - window_start
                    record(rundir.TRAIN, _train_record(state, steps, batches_per_epoch, optimizer, elapsed))
                state.window, state.window_steps, state.window_tokens = {}, 0, 0
            # An evaluation not yet started is skipped once a stop is asked for, and one under way is
            # dropped: a resume runs none of them again. The final one is the exception: the run is
            # complete, and it is the only evaluation it would never get.
            if cluster.is_main and eval_pairs and rundir.eval_due(state.step, steps, cfg.eval_every) \
                    and (done or not stop.stop):
                held_out = evaluate(model, eval_pairs, cfg, pad_id, loss, stop=None if done else lambda: stop.stop,
                                    on_batch=eval_progress)
                if held_out is not None:
                    record(rundir.EVAL, {"step": state.step, **held_out})
            # Data-parallel ranks stop together, at the next step's agreement; one process stops here.
            stopping = result.stop_requested or (stop.stop and cluster.size == 1)
            if cluster.is_main and (state.step % cfg.save_every == 0 or done or stopping):
                status(rundir.SAVING)
                ckpt.save_checkpoint(run_dir, state.step, model, optimizer, state.__dict__, cfg.keep_checkpoints)
                if not (done or stopping):
                    status(rundir.TRAINING, step_seconds=None)
            if state.window_steps == 0:  # evals and saves do not count against tokens/s
                window_start = time.perf_counter()
            if stopping:
                break
    if bar is not None:
        bar.close()
    if state.step < steps and cluster.is_main:
        rundir.write_status(run_dir, rundir.STOPPED, step=state.step, total_steps=steps)
        log(stopped_message(run_dir, state.step, steps))
    return state


SLOW_STEP_SECONDS = 600  # an optimizer step longer than this gets a warning with its estimated time


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
    # A version-1 run's checkpoint resumes in the order and weighting it was written with.
    state = LoopState(**{**rundir.missing_fields(run_dir, rundir.STATE),
                         **ckpt.load_checkpoint(found[-1], model, optimizer)})
    if state.world_size != cluster.size:
        raise ValueError(f"{found[-1]} was written by {state.world_size} process(es); resume it with the same "
                         f"number (this run has {cluster.size}), so every step sees the same global batch")
    if cluster.is_main:
        rundir.truncate_records(run_dir, state.step)
    log(f"resumed from {found[-1]} at step {state.step}")
    return state


def _train_record(state: LoopState, steps: int, batches_per_epoch: int, optimizer, elapsed: float) -> dict:
    """The metrics record of the report window that just ended."""
    entry = {"step": state.step, "total_steps": steps,
             "epoch": round(state.epoch + state.batch_in_epoch / batches_per_epoch, 4)}
    # A window whose every step was skipped has no metrics: null, not NaN (valid JSON).
    entry.update({k: (state.window[k] / state.window_steps if state.window_steps else None) for k in METRIC_KEYS})
    entry.update({
        "learning_rate": optimizer.learning_rate.item(),
        "tokens_per_sec": state.window_tokens / max(elapsed, 1e-9),
        "peak_memory_gb": mx.get_peak_memory() / 1e9,
        "skipped_steps": state.skipped_steps,
    })
    return entry


def _progress_bar(steps: int, done: int):
    """A tqdm bar on an interactive terminal, else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=steps, initial=done, unit="step", dynamic_ncols=True, leave=False)
