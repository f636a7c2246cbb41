"""One ORPO optimizer step, built once and called by whoever needs it.

    step = OrpoStep(model, cfg, build_optimizer(cfg, steps))
    result = step([MicroBatch(collate(pairs, pad_id, Widths.for_config(cfg)))])
    result.applied, result.metrics["loss"]

The trainer, scripts/bench.py and the memory planner's calibration
(measure.py, for tests/test_plan.py and scripts/fit_plan.py) all run this same step, so what is
benchmarked and planned is what trains. A step is:

1. `gradients`: per micro-batch, the compiled value-and-grad of the ORPO loss
   (`loss.orpo_loss` of `loss.batch_loss`'s parts, divided by the global batch's counts);
2. `accumulate`: the micro-batches' gradients and metrics summed, evaluated
   after each one (this is what keeps the peak low, see there);
3. `reduce`: averaged over micro-batches and data-parallel ranks, with every
   rank's stop request carried by the same all-reduce;
4. `apply`: gradient clipping, the finite checks and AdamW: the one place an
   update is applied or refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map

from .config import TrainConfig
from .distributed import Cluster
from .forward import enable_grad_checkpoint, split_supported
from .loss import METRIC_KEYS, batch_loss, orpo_loss
from .update import apply_finite_update

# The learning rate after warmup, one per --lr-schedule choice (config.FIELD_SPECS; a test keeps them equal):
# (peak, decay steps) -> schedule.
SCHEDULES = {
    "constant": lambda peak, _steps: (lambda _step: mx.array(peak, dtype=mx.float32)),
    "linear": lambda peak, steps: optim.linear_schedule(peak, 0.0, steps),
    "cosine": lambda peak, steps: optim.cosine_decay(peak, steps, 0.0),
}


def build_schedule(cfg: TrainConfig, steps: int):
    peak, warmup = cfg.learning_rate, min(cfg.warmup_steps, max(steps - 1, 0))
    main = SCHEDULES[cfg.lr_schedule](peak, max(steps - warmup, 1))
    if warmup == 0:
        return main
    # Warmup starts at peak / (warmup + 1), not 0, so the first step is not wasted.
    return optim.join_schedules([optim.linear_schedule(peak / (warmup + 1), peak, warmup), main], [warmup])


def build_optimizer(cfg: TrainConfig, steps: int) -> optim.AdamW:
    # Bias-corrected Adam, as in PyTorch/TRL: without it MLX's first updates are about 3x the learning rate.
    return optim.AdamW(learning_rate=build_schedule(cfg, steps), weight_decay=cfg.weight_decay,
                       bias_correction=True)


class MicroBatch(NamedTuple):
    """One micro-batch (`batching.collate`'s dict) and the counts its NLL sum and pair sums are divided
    by: this rank's share of the global batch's (see feeding.shard_counts); 0: the micro-batch's own."""
    batch: dict
    nll_tokens: float = 0.0
    pairs: float = 0.0


@dataclass
class StepResult:
    metrics: dict          # METRIC_KEYS -> scalar arrays, means over micro-batches and ranks
    grad_norm: mx.array    # before clipping
    applied: bool          # False: non-finite loss, gradient or updated weights; the step was skipped
    stop_requested: bool   # some rank asked to stop (carried by the metrics' all-reduce)
    dropped: bool = False  # a stop request came between micro-batches: nothing was applied or measured


class OrpoStep:
    """The compiled ORPO step of one (model, optimizer, cfg), built once.

    `loss(model, batch, prompt_in_nll) -> loss.LossParts` defaults to loss.batch_loss
    (tests inject fakes). With cfg.grad_checkpoint the model's blocks are made to recompute in
    the backward (forward.enable_grad_checkpoint) here, once.
    """

    def __init__(self, model, cfg: TrainConfig, optimizer: optim.Optimizer, *,
                 loss: Callable | None = None, cluster: Cluster | None = None):
        self.model, self.cfg, self.optimizer = model, cfg, optimizer
        self.cluster = cluster or Cluster()
        loss = loss or batch_loss
        if cfg.grad_checkpoint:
            enable_grad_checkpoint(model)

        def objective(model, batch, nll_tokens, pairs):
            parts = loss(model, batch, cfg.prompt_in_nll)
            own_pairs = parts.chosen_logps.shape[0]
            return orpo_loss(parts, cfg.beta, mx.where(nll_tokens > 0, nll_tokens, parts.nll_tokens),
                             mx.where(pairs > 0, pairs, own_pairs))

        value_and_grad = nn.value_and_grad(model, objective)
        compiled_state = [model.state, mx.random.state]

        @partial(mx.compile, inputs=compiled_state, outputs=compiled_state)
        def grad_step(batch, nll_tokens, pairs):
            # `batch` is collate's dict: with or without the shared-prompt layout (a new trace each).
            (_, metrics), grads = value_and_grad(model, batch, nll_tokens, pairs)
            return metrics, grads

        self._grad_step = grad_step
        self.shared_prompt = split_supported(model)

    def gradients(self, micro: MicroBatch):
        """(metrics, gradients) of one micro-batch, lazy."""
        return self._grad_step(self.inputs(micro.batch), mx.array(float(micro.nll_tokens)),
                               mx.array(float(micro.pairs)))

    def inputs(self, batch: dict) -> dict:
        """What the compiled step is given of a batch: a shared-prompt batch that this model runs as
        such leaves its full rows out, as their width would make a new shape to compile for nothing."""
        if "response_tokens" in batch and self.shared_prompt:
            return {k: v for k, v in batch.items() if k != "tokens"}
        return batch

    def accumulate(self, micro_batches: Iterable[MicroBatch], stop: Callable[[], bool] | None = None):
        """(gradient sum, metric sum, count) over the micro-batches, each evaluated as it is added;
        None when `stop()` (asked before every micro-batch after the first) says to stop."""
        grads_sum, metrics_sum, count = None, None, 0
        for micro in micro_batches:
            if count and stop is not None and self.stop_agreed(stop()):
                return None
            metrics, grads = self.gradients(micro)
            grads_sum = grads if grads_sum is None else tree_map(mx.add, grads_sum, grads)
            metrics_sum = metrics if metrics_sum is None else {k: metrics_sum[k] + metrics[k] for k in metrics}
            # Evaluated here, as the only roots: MLX then walks the backward block by block. Left for
            # the clipping and the finite check to pull in, the same step peaked 2.7x higher with
            # gradient checkpointing (0.96 -> 2.54 GB, SmolLM2-135M, 1,536 tokens).
            mx.eval(grads_sum, metrics_sum)
            count += 1
        return grads_sum, metrics_sum, count

    def stop_agreed(self, stop: bool) -> bool:
        """Whether any rank asks to stop (one small all-reduce when data-parallel, so all drop together)."""
        if self.cluster.size == 1:
            return stop
        return self.cluster.sum(mx.array(float(stop))).item() > 0

    def reduce(self, grads_sum, metrics_sum, count: int, stop: bool = False):
        """(mean gradients, mean metrics, whether any rank asked to stop) over micro-batches and ranks."""
        cluster = self.cluster
        grads = cluster.average_gradients(tree_map(lambda g: g / count, grads_sum))
        # One all-reduce carries the metrics and every rank's stop request, so all stop together.
        reduced = cluster.sum(mx.stack([metrics_sum[k] for k in METRIC_KEYS] + [mx.array(float(stop))]))
        metrics = {k: reduced[i] / (cluster.size * count) for i, k in enumerate(METRIC_KEYS)}
        return grads, metrics, reduced[-1].item() > 0

    def apply(self, grads, metrics: dict) -> tuple[bool, mx.array]:
        """Clip, check and update: the one place an update is applied or refused.

        Returns (applied, gradient norm before clipping). `metrics` are evaluated with the
        update when it is applied.
        """
        if self.cfg.max_grad_norm > 0:
            grads, grad_norm = optim.clip_grad_norm(grads, self.cfg.max_grad_norm)
        else:
            grad_norm = mx.sqrt(sum((g.astype(mx.float32) ** 2).sum() for _, g in tree_flatten(grads)))
        finite = mx.isfinite(metrics["loss"]) & mx.isfinite(grad_norm)
        if not finite.item():  # sync point: never apply a non-finite update
            return False, grad_norm
        # Second sync point: nor one that makes a trainable weight non-finite (undone if it does).
        applied = apply_finite_update(self.model, self.optimizer, grads)
        mx.eval(metrics)
        return applied, grad_norm

    def __call__(self, micro_batches: Iterable[MicroBatch], stop: Callable[[], bool] | None = None) -> StepResult:
        """One optimizer step over `micro_batches` (gradient accumulation when there are several).
        `stop()` says whether this rank wants the run to stop: asked between micro-batches (a stop
        there drops the partial step: `dropped`) and once the gradients are in."""
        totals = self.accumulate(micro_batches, stop)
        if totals is None:
            return StepResult({}, mx.array(0.0), applied=False, stop_requested=True, dropped=True)
        grads, metrics, stop_requested = self.reduce(*totals, stop=bool(stop and stop()))
        applied, grad_norm = self.apply(grads, metrics)
        return StepResult(metrics, grad_norm, applied, stop_requested)
