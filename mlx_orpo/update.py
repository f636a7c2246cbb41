"""One optimizer update that can never leave a trainable weight non-finite.

The trainer already skips a step whose loss or gradient norm is not finite, but a
finite gradient can still give a non-finite weight: with `--learning-rate inf` every
gradient is finite and all 2,442,240 adapter values become inf/NaN. So the updated
weights themselves are checked, and the step is undone if any is not finite.
"""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map


def all_finite(tree) -> mx.array:
    """A lazy boolean scalar: every array in `tree` is finite."""
    return mx.stack([mx.isfinite(v).all() for _, v in tree_flatten(tree)]).all()


def apply_finite_update(model, optimizer, grads) -> bool:
    """Apply `grads`; if a trainable weight comes out non-finite, restore the weights and the
    optimizer state (its step count included) and return False. One sync point."""
    before = model.trainable_parameters()  # arrays are immutable: keeping the trees is free
    # The optimizer mutates its state dicts in place, so copy the containers (not the arrays).
    state_before = tree_map(lambda v: v, optimizer.state)
    optimizer.update(model, grads)
    finite = all_finite(model.trainable_parameters())
    mx.eval(model.trainable_parameters(), optimizer.state, finite)
    if finite.item():
        return True
    model.update(before)
    optimizer.state = state_before
    return False
