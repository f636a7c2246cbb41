"""No optimizer update may leave a trainable weight non-finite (mlx_orpo.update and the trainer).

A finite gradient can still give a non-finite weight (`--learning-rate inf` once turned all
2,442,240 adapter values into inf/NaN while every loss and gradient check passed), so the
updated weights themselves are checked and the step undone.
"""

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from helpers import cfg_for, make, pairs
from mlx.utils import tree_flatten, tree_map

import mlx_orpo.step as step_mod
import mlx_orpo.trainer as trainer_mod
from mlx_orpo.rundir import read_records


def snapshot(tree) -> dict:
    return {k: np.array(v) for k, v in tree_flatten(tree)}


def test_an_update_that_makes_a_weight_non_finite_is_undone():
    from mlx_orpo.update import apply_finite_update

    model = nn.Linear(4, 3)
    optimizer = optim.Adam(learning_rate=1e-2)
    grads = tree_map(mx.ones_like, model.trainable_parameters())
    assert apply_finite_update(model, optimizer, grads)  # a finite step is applied
    weights, state = snapshot(model.trainable_parameters()), snapshot(optimizer.state)
    optimizer.learning_rate = float("inf")
    assert not apply_finite_update(model, optimizer, grads)
    after, state_after = snapshot(model.trainable_parameters()), snapshot(optimizer.state)
    assert all(np.array_equal(weights[k], after[k]) for k in weights)
    # Adam's moments and step count are restored too, so the next step is the one that was skipped.
    assert state.keys() == state_after.keys()
    assert all(np.array_equal(state[k], state_after[k]) for k in state if k != "learning_rate")


def test_training_with_an_infinite_learning_rate_skips_every_step_and_keeps_finite_weights(tmp_path, monkeypatch):
    """The schedule is forced to inf past config validation: losses and gradients stay finite,
    only the updated weights show the damage."""
    monkeypatch.setattr(step_mod, "build_schedule", lambda cfg, steps: (lambda step: mx.array(float("inf"))))
    cfg = cfg_for(tmp_path, iters=3, eval_every=0)
    model = make(cfg)
    initial = snapshot(model.trainable_parameters())
    lines = []
    state = trainer_mod.train(model, pairs(8), [], cfg, tmp_path, pad_id=0, log=lines.append, progress=False)
    assert state.skipped_steps == 3
    assert sum("updated weights; update skipped" in line for line in lines) == 3
    final = snapshot(model.trainable_parameters())
    assert all(np.isfinite(v).all() and np.array_equal(v, initial[k]) for k, v in final.items())
    saved = mx.load(str(tmp_path / "adapters.safetensors"))
    assert all(np.isfinite(np.array(v)).all() for v in saved.values())
    assert read_records(tmp_path)[-1]["skipped_steps"] == 3
