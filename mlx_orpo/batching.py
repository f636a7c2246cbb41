"""Length-grouped batches of pairs, and their collation into MLX arrays."""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .config import TrainConfig
from .models import on_gpu
from .tokenize import EncodedPair


def epoch_batches(pairs: list[EncodedPair], batch_size: int, seed: int, epoch: int,
                  widths: Widths | int = 1, shared_prompt: bool = True,
                  largest_first: bool = True) -> list[list[int]]:
    """The batches of one epoch, as lists of pair indices.

    Pairs of similar length, then similar prompt length, go together (little padding). The batch
    that runs the most token positions (`positions`, for a model that does or does not run the
    shared prompt) comes first, so a run that does not fit in memory stops at its first step rather
    than hours in, and the first step's peak is the run's. The other batches follow in an order
    shuffled by a generator seeded with (seed, epoch), as is the tie-breaking, so a resumed run
    rebuilds exactly the same order. A last short batch is kept. `largest_first=False` is the order
    some version-1 runs trained in (rundir.FORMATS): the same shuffle, nothing moved to the front.
    """
    rng = np.random.default_rng([seed, epoch])
    shuffled = rng.permutation(len(pairs))
    # Then by prompt length: pairs truncated to the same max length still differ in where the
    # prompt ends, and batches of similar prompts can run each prompt once (see collate).
    by_length = sorted(shuffled, key=lambda i: (pairs[i].length, len(pairs[i].prompt)))
    batches = [[int(i) for i in by_length[i:i + batch_size]] for i in range(0, len(by_length), batch_size)]
    order = rng.permutation(len(batches))
    if not largest_first or not batches:
        return [batches[j] for j in order]
    size = lambda j: positions([pairs[i] for i in batches[j]], widths, shared_prompt)
    largest = max(range(len(batches)), key=size)
    return [batches[largest], *(batches[j] for j in order if j != largest)]


def padded_width(length: int, multiple: int) -> int:
    return multiple * math.ceil(length / multiple)


PAD_MULTIPLE = 32         # --pad-multiple's default on the CPU and Metal
CUDA_PAD_MULTIPLE = 128   # and on CUDA: see Widths.for_config


@dataclass(frozen=True)
class Widths:
    """The widths a batch's rows are padded to: a multiple of `multiple`, or with `pow2` that multiple
    times a power of two, never past `cap` (the longest row a run allows, rounded up to the multiple).

    The compiled step traces and compiles once per batch shape: a fraction of a second on the CPU,
    seconds on a GPU (kernels and attention plans are built per shape). Powers of two leave a handful
    of widths, so a whole run compiles a handful of shapes, for some padding.
    """
    multiple: int = 1
    pow2: bool = False
    cap: int | None = None

    def __call__(self, length: int) -> int:
        units = max(math.ceil(length / self.multiple), 1)
        if self.pow2:
            units = 1 << (units - 1).bit_length()
        width = self.multiple * units
        if self.cap is not None:
            width = min(width, padded_width(max(self.cap, length), self.multiple))
        return width

    @classmethod
    def for_config(cls, cfg: TrainConfig, gpu: bool | None = None) -> Widths:
        """cfg's widths on this machine, or on a GPU or the CPU (`gpu`). --pad-to auto is pow2 on a GPU
        (where each new shape costs seconds to compile) and plain multiples on the CPU (where it costs
        little and padding costs time). --pad-multiple defaults to CUDA_PAD_MULTIPLE on a CUDA GPU
        (MLX 0.32 runs attention's backward with cuDNN only for query lengths in multiples of 128, and
        unfused otherwise) and to PAD_MULTIPLE elsewhere (Metal trains with unfused attention anyway).
        A GPU that is not this machine's is taken to be a Mac's."""
        gpu = on_gpu() if gpu is None else gpu
        cuda = gpu and on_gpu() and mx.cuda.is_available()
        pow2 = cfg.pad_to == "pow2" or (cfg.pad_to == "auto" and gpu)
        return cls(cfg.pad_multiple or (CUDA_PAD_MULTIPLE if cuda else PAD_MULTIPLE), pow2, cfg.max_length)


def collate(pairs: list[EncodedPair], pad_id: int, widths: Widths | int) -> dict:
    """Rows [0, B) are prompt + chosen, rows [B, 2B) prompt + rejected, right padded.

    Also the split layout that lets `loss.batch_loss` run each prompt once:
    "prompt_tokens" (B, Wp), "response_tokens" (2B, Wr) and
    "response_lengths" (2B,). It is left out when it would cost more token
    positions than the full rows (prompts and answers of very different
    lengths in one batch), so no batch is ever made slower by it.
    `widths`: a `Widths`, or an int for plain multiples of it.
    """
    width, prompt_width, answer_width, shared = _layout(pairs, widths)
    rows = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    batch = {
        "tokens": _padded(rows, width, pad_id),
        "lengths": mx.array([len(r) for r in rows], dtype=mx.int32),
        "prompt_lengths": mx.array([len(p.prompt) for p in pairs] * 2, dtype=mx.int32),
    }
    if shared:
        answers = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        batch["prompt_tokens"] = _padded([p.prompt for p in pairs], prompt_width, pad_id)
        batch["response_tokens"] = _padded(answers, answer_width, pad_id)
        batch["response_lengths"] = mx.array([len(a) for a in answers], dtype=mx.int32)
    return batch


def _layout(pairs: list[EncodedPair], widths: Widths | int) -> tuple[int, int, int, bool]:
    """(full-row width, prompt width, answer width, whether the shared-prompt layout is used).

    Widths count the positions the model runs: a prompt row and an answer row run all their tokens,
    a full row of W tokens W - 1 (its last token is only a target), so full rows are one token wider
    than the widths (on CUDA, attention's fused backward needs the positions in multiples of 128).
    """
    widths = Widths(widths) if isinstance(widths, int) else widths
    answer = max(max(len(p.chosen), len(p.rejected)) for p in pairs)
    full = widths(max(len(p.prompt) + max(len(p.chosen), len(p.rejected)) for p in pairs) - 1) + 1
    prompt_width, answer_width = widths(max(len(p.prompt) for p in pairs)), widths(answer)
    return full, prompt_width, answer_width, prompt_width + 2 * answer_width <= 2 * (full - 1)


def positions(pairs: list[EncodedPair], widths: Widths | int, shared_prompt: bool = True) -> int:
    """The token positions `collate`'s batch of these pairs runs through the model (padding included),
    for a model that runs the shared prompt or (shared_prompt=False) only full rows."""
    full, prompt_width, answer_width, shared = _layout(pairs, widths)
    return len(pairs) * (prompt_width + 2 * answer_width if shared and shared_prompt else 2 * (full - 1))


def batch_shape(pairs: list[EncodedPair], widths: Widths | int, shared_prompt: bool = True) -> tuple[int, ...]:
    """What the compiled step's shape depends on (see step.OrpoStep.inputs): (pairs, prompt width,
    answer width) for a shared-prompt batch of a model that runs it, else (pairs, full-row width)."""
    full, prompt_width, answer_width, shared = _layout(pairs, widths)
    return (len(pairs), prompt_width, answer_width) if shared and shared_prompt else (len(pairs), full)


def _padded(rows, width: int, pad_id: int) -> mx.array:
    tokens = np.full((len(rows), width), pad_id, dtype=np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    return mx.array(tokens)
