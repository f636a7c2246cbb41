"""What the training loop feeds each optimizer step: the order of an epoch's steps, each step's
micro-batches (--grad-accum), the counts each micro-batch's sums are divided by (NLL targets, pairs,
this rank's share when data-parallel), and the data position a resume starts from (LoopState's
epoch, batch_in_epoch and window_tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from .batching import Widths, batch_shape, collate, epoch_batches
from .checkpoint import LoopState
from .config import TrainConfig
from .distributed import Cluster
from .models import on_gpu
from .step import MicroBatch
from .tokenize import EncodedPair


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


class Feeder:
    """This rank's micro-batches, step after step, from the data position in `state`, which it
    advances as each micro-batch is handed out (and `rewind` puts back)."""

    def __init__(self, pairs: list[EncodedPair], cfg: TrainConfig, state: LoopState, *, pad_id: int,
                 shared_prompt: bool, cluster: Cluster):
        self.pairs, self.cfg, self.state, self.pad_id, self.cluster = pairs, cfg, state, pad_id, cluster
        self.shared_prompt = shared_prompt
        self.widths = Widths.for_config(cfg)
        self.global_batch = cfg.batch_size * cluster.size
        self.batches_per_epoch = math.ceil(len(pairs) / self.global_batch)
        self.order = dict(widths=self.widths, shared_prompt=shared_prompt, largest_first=state.largest_first)
        self.accum = cfg.grad_accum if state.step_groups else 1  # a checkpoint's own order, see LoopState
        self._batches = micro_batches(pairs, self.global_batch, cfg.seed, state.epoch, state.batch_in_epoch,
                                      self.accum, **self.order)

    def describe(self) -> str:
        """The line the trainer starts with: the batches of an epoch and how many shapes they compile."""
        first_epoch = [batch for step in step_order(self.pairs, self.global_batch, self.accum, self.cfg.seed,
                                                    self.state.epoch, **self.order) for batch in step]
        shapes = {batch_shape(self.cluster.shard([self.pairs[i] for i in b]) or [self.pairs[b[0]]], self.widths,
                              self.shared_prompt) for b in first_epoch}  # this rank's, as next_step's
        widths = self.widths
        return (f"batches: {len(first_epoch)} per epoch in {len(shapes)} shapes (widths: "
                f"{'powers of two x ' if widths.pow2 else 'multiples of '}{widths.multiple}, --pad-to; each new "
                f"shape compiles the step){', the largest first' if self.state.largest_first else ''}"
                + ("; the first run on a machine also builds MLX's GPU kernels, which can take minutes"
                   if on_gpu() else ""))

    def position(self) -> tuple[int, int, int]:
        return self.state.epoch, self.state.batch_in_epoch, self.state.window_tokens

    def rewind(self, position: tuple[int, int, int]) -> None:
        """Put the data position back (a dropped step: a resume takes the same micro-batches again)."""
        self.state.epoch, self.state.batch_in_epoch, self.state.window_tokens = position

    def next_step(self, on_micro_batch: Callable[[int], None] | None = None) -> Iterator[MicroBatch]:
        """This rank's micro-batches of the next optimizer step, each collated when the step asks for it.
        Each is weighted to its share of the step's pairs, as a rank is to its share of a global batch,
        so the step's loss and gradient are those of one batch of all its pairs. `on_micro_batch(k)`
        hears that the step asks for its k-th micro-batch."""
        state, cfg = self.state, self.cfg
        taken = []
        for epoch, index, indices, ends_step in self._batches:
            taken.append((epoch, index, indices))
            # (A checkpoint without step groups takes --grad-accum micro-batches, whatever their step.)
            if len(taken) == cfg.grad_accum or (ends_step and state.step_groups):
                break
        step_pairs = [self.pairs[i] for _, _, indices in taken for i in indices]
        for micro, (epoch, index, indices) in enumerate(taken):
            if on_micro_batch is not None:
                on_micro_batch(micro)
            global_pairs = [self.pairs[i] for i in indices]
            local_pairs = self.cluster.shard(global_pairs)
            # A rank left without pairs (a short last batch) runs a stand-in that divides its sums by
            # infinite counts: it adds nothing to the loss, the gradients or the metrics.
            if not local_pairs:
                nll_tokens, pair_count = math.inf, math.inf
            elif state.step_groups:
                nll_tokens, pair_count = shard_counts(step_pairs, cfg, self.cluster.size * len(taken))
            else:
                nll_tokens, pair_count = shard_counts(global_pairs, cfg, self.cluster.size)
            state.window_tokens += sum(p.tokens for p in global_pairs)
            last = index + 1 == self.batches_per_epoch
            state.epoch, state.batch_in_epoch = (epoch + 1, 0) if last else (epoch, index + 1)
            yield MicroBatch(collate(local_pairs or global_pairs[:1], self.pad_id, self.widths), nll_tokens,
                             pair_count)
