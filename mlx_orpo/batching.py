"""Length-grouped batches of pairs, and their collation into MLX arrays."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np

from .tokenize import EncodedPair


def epoch_batches(pairs: list[EncodedPair], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch, as lists of pair indices.

    Pairs of similar length, then similar prompt length, go together (little padding); the batch order and
    the tie-breaking are shuffled by a generator seeded with (seed, epoch), so a
    resumed run rebuilds exactly the same order. A last short batch is kept.
    """
    rng = np.random.default_rng([seed, epoch])
    shuffled = rng.permutation(len(pairs))
    # Then by prompt length: pairs truncated to the same max length still differ in where the
    # prompt ends, and batches of similar prompts can run each prompt once (see collate).
    by_length = sorted(shuffled, key=lambda i: (pairs[i].length, len(pairs[i].prompt)))
    batches = [by_length[i:i + batch_size] for i in range(0, len(by_length), batch_size)]
    order = rng.permutation(len(batches))
    return [[int(i) for i in batches[j]] for j in order]


def padded_width(length: int, multiple: int) -> int:
    return multiple * math.ceil(length / multiple)


def collate(pairs: list[EncodedPair], pad_id: int, pad_multiple: int) -> dict:
    """Rows [0, B) are prompt + chosen, rows [B, 2B) prompt + rejected, right padded.

    Also the split layout that lets `loss.batch_loss` run each prompt once:
    "prompt_tokens" (B, Wp), "response_tokens" (2B, Wr) and
    "response_lengths" (2B,). It is left out when it would cost more token
    positions than the full rows (prompts and answers of very different
    lengths in one batch), so no batch is ever made slower by it.
    """
    rows = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    width = padded_width(max(len(r) for r in rows), pad_multiple)
    batch = {
        "tokens": _padded(rows, width, pad_id),
        "lengths": mx.array([len(r) for r in rows], dtype=mx.int32),
        "prompt_lengths": mx.array([len(p.prompt) for p in pairs] * 2, dtype=mx.int32),
    }
    answers = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    prompt_width = padded_width(max(len(p.prompt) for p in pairs), pad_multiple)
    answer_width = padded_width(max(len(a) for a in answers), pad_multiple)
    if len(pairs) * prompt_width + len(rows) * answer_width <= len(rows) * width:
        batch["prompt_tokens"] = _padded([p.prompt for p in pairs], prompt_width, pad_id)
        batch["response_tokens"] = _padded(answers, answer_width, pad_id)
        batch["response_lengths"] = mx.array([len(a) for a in answers], dtype=mx.int32)
    return batch


def _padded(rows, width: int, pad_id: int) -> mx.array:
    tokens = np.full((len(rows), width), pad_id, dtype=np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    return mx.array(tokens)
