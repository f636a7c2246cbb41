"""Length-grouped batches of pairs, and their collation into MLX arrays."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np

from .tokenize import EncodedPair


def epoch_batches(pairs: list[EncodedPair], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch, as lists of pair indices.

    Pairs of similar length go together (little padding); the batch order and
    the tie-breaking are shuffled by a generator seeded with (seed, epoch), so a
    resumed run rebuilds exactly the same order. A last short batch is kept.
    """
    rng = np.random.default_rng([seed, epoch])
    shuffled = rng.permutation(len(pairs))
    by_length = sorted(shuffled, key=lambda i: pairs[i].length)
    batches = [by_length[i:i + batch_size] for i in range(0, len(by_length), batch_size)]
    order = rng.permutation(len(batches))
    return [[int(i) for i in batches[j]] for j in order]


def padded_width(length: int, multiple: int) -> int:
    return multiple * math.ceil(length / multiple)


def collate(pairs: list[EncodedPair], pad_id: int, pad_multiple: int) -> dict:
    """Rows [0, B) are prompt + chosen, rows [B, 2B) prompt + rejected, right padded."""
    rows = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    width = padded_width(max(len(r) for r in rows), pad_multiple)
    tokens = np.full((len(rows), width), pad_id, dtype=np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    prompt_lengths = [len(p.prompt) for p in pairs] * 2
    return {
        "tokens": mx.array(tokens),
        "lengths": mx.array([len(r) for r in rows], dtype=mx.int32),
        "prompt_lengths": mx.array(prompt_lengths, dtype=mx.int32),
    }
