"""The shared-prompt layout (each prompt run once for both answers) gives the full-row loss and gradients."""

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

from mlx_orpo.batching import collate
from mlx_orpo.config import TrainConfig
from mlx_orpo.forward import split_supported
from mlx_orpo.loss import batch_objective
from mlx_orpo.models import attach_adapters
from mlx_orpo.tokenize import EncodedPair

FULL_KEYS = ("tokens", "lengths", "prompt_lengths")


def tiny_lora_model(tied: bool):
    from mlx_lm.models import llama

    mx.random.seed(0)
    args = llama.ModelArgs(model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                           num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=300,
                           tie_word_embeddings=tied)
    model = llama.Model(args)
    attach_adapters(model, TrainConfig(lora_rank=4))
    # lora_b starts at zero; random values make the adapters matter
    model.update(tree_map(lambda x: 0.05 * mx.random.normal(x.shape), model.trainable_parameters()))
    mx.eval(model.parameters())
    return model


def pairs(lengths):
    rng = np.random.default_rng(0)
    ids = lambda n: tuple(int(i) for i in rng.integers(3, 300, n))
    return [EncodedPair(ids(p), ids(c), ids(r)) for p, c, r in lengths]


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("prompt_in_nll", [False, True])
def test_shared_prompt_matches_full_rows(tied, prompt_in_nll):
    model = tiny_lora_model(tied)
    assert split_supported(model)
    batch = collate(pairs([(12, 7, 3), (15, 2, 6), (10, 10, 12)]), pad_id=0, widths=1)
    assert "response_tokens" in batch and batch["prompt_tokens"].shape == (3, 15)
    full = {k: batch[k] for k in FULL_KEYS}
    step = nn.value_and_grad(model, partial(batch_objective, beta=0.3, prompt_in_nll=prompt_in_nll))
    (_, split_metrics), split_grads = step(model, batch)
    (_, full_metrics), full_grads = step(model, full)
    for key in full_metrics:
        assert split_metrics[key].item() == pytest.approx(full_metrics[key].item(), rel=1e-5, abs=1e-6), key
    for (name, a), (_, b) in zip(tree_flatten(split_grads), tree_flatten(full_grads)):
        assert np.linalg.norm(np.array(a - b)) <= 1e-4 * np.linalg.norm(np.array(b)), name


def test_collate_keeps_full_rows_when_splitting_costs_more():
    """A long prompt with a short answer next to a short prompt with a long answer: the split
    layout would need 2 x 40 + 4 x 40 positions against 4 x 48 for the full rows (of 49 tokens)."""
    batch = collate(pairs([(40, 4, 4), (4, 40, 40)]), pad_id=0, widths=8)
    assert "response_tokens" not in batch and batch["tokens"].shape == (4, 49)


def test_split_layout_shapes():
    batch = collate(pairs([(20, 5, 9), (18, 7, 3)]), pad_id=0, widths=8)
    assert batch["prompt_tokens"].shape == (2, 24) and batch["response_tokens"].shape == (4, 16)
    assert batch["response_lengths"].tolist() == [5, 7, 9, 3]
    assert batch["prompt_tokens"][1, 18:].tolist() == [0] * 6


def test_grad_checkpointed_blocks_keep_the_shared_prompt_and_its_gradients():
    """Recomputed blocks must pass the prompt keys and values on, or their gradients are lost."""
    from mlx_orpo.forward import enable_grad_checkpoint

    model = tiny_lora_model(True)
    batch = collate(pairs([(12, 7, 3), (15, 2, 6)]), pad_id=0, widths=1)
    assert "response_tokens" in batch
    step = nn.value_and_grad(model, partial(batch_objective, beta=0.3))
    expected_loss, expected = step(model, {k: batch[k] for k in FULL_KEYS})
    enable_grad_checkpoint(model)
    assert split_supported(model)
    loss, grads = nn.value_and_grad(model, partial(batch_objective, beta=0.3))(model, batch)
    assert abs(loss[0].item() - expected_loss[0].item()) <= 1e-5 * abs(expected_loss[0].item())
    for (name, a), (_, b) in zip(tree_flatten(grads), tree_flatten(expected)):
        assert np.linalg.norm(np.array(a - b)) <= 1e-4 * np.linalg.norm(np.array(b)), name
