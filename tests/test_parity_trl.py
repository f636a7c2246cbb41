"""Parity with TRL's ORPOTrainer (PyTorch, CPU, float32) on the real SmolLM2-135M-Instruct.

Same weights, same LoRA values, same token ids on both sides (see
scripts/trl_reference.py). TRL puts the prompt tokens into the NLL term, so our side
runs with prompt_in_nll=True for the comparison; test_response_only_nll pins
our default (prompt_in_nll=False) against an NLL computed directly in torch.

Tolerances: every metric within 1e-4 relative, with an absolute floor of 1e-6
for values near zero (|reference| < 1e-2 makes a relative error meaningless);
every LoRA gradient tensor within 1e-3 relative, as
‖ours − TRL‖ / ‖TRL‖.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("trl")

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_flatten, tree_unflatten  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import trl_reference as ref  # noqa: E402  (shared with scripts/bench.py)

from mlx_orpo.batching import collate  # noqa: E402
from mlx_orpo.config import TrainConfig  # noqa: E402
from mlx_orpo.data import PreferencePair  # noqa: E402
from mlx_orpo.loss import batch_objective  # noqa: E402
from mlx_orpo.models import attach_adapters, load_model  # noqa: E402
from mlx_orpo.tokenize import encode_pair  # noqa: E402

RANK, ALPHA = 4, 8.0
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_SEED = 1234
METRIC_RTOL, METRIC_ATOL = 1e-4, 1e-6
GRAD_RTOL = 1e-3
METRICS = ("loss", "nll_loss", "log_odds_ratio", "log_odds_chosen", "rewards/chosen", "rewards/rejected",
           "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected")

# Short real pairs of different lengths, so that both the chosen/rejected
# rows and the pairs themselves need padding.
PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris.", "France's capital is Berlin."),
    ("Give me one word for 'happy'.", "Joyful.",
     "Sad. Happiness is overrated anyway, and I would rather not give you a synonym today."),
    ("How many legs does a spider have?",
     "A spider has eight legs, arranged in four pairs attached to its cephalothorax.", "Six."),
    ("Write a haiku about rain.", "Soft rain on the roof,\nthe garden drinks quietly,\nclouds hum a lullaby.",
     "Rain is water that falls from clouds. It is wet."),
]


@pytest.fixture(scope="module")
def encoded_pairs(ours):
    _, tokenizer = ours
    pairs = [PreferencePair(prompt=({"role": "user", "content": p},), chosen=c, rejected=r) for p, c, r in PAIRS]
    encoded = [encode_pair(tokenizer, pair) for pair in pairs]
    rows = {len(e.prompt + e.chosen) for e in encoded} | {len(e.prompt + e.rejected) for e in encoded}
    assert len(rows) > 2, "the pairs should exercise padding"
    return encoded


@pytest.fixture(scope="module")
def lora(ours):
    model, _ = ours
    shapes = {name: value.shape for name, value in tree_flatten(model.trainable_parameters())}
    return ref.lora_values(shapes, LORA_SEED)


@pytest.fixture(scope="module")
def ours(smollm2_dir):
    """Our model in float32 with LoRA on every target module of every block."""
    model, tokenizer, _, _ = load_model(str(smollm2_dir), dtype="float32")
    attach_adapters(model, TrainConfig(lora_rank=RANK, lora_alpha=ALPHA, lora_targets=TARGETS))
    return model, tokenizer


@pytest.fixture(scope="module")
def ours_with_lora(ours, lora):
    model, tokenizer = ours
    model.update(tree_unflatten([(name, mx.array(value)) for name, value in lora.items()]))
    mx.eval(model.parameters())
    return model, tokenizer


@pytest.fixture(scope="module")
def theirs(smollm2_dir, lora):
    """The transformers model wrapped by PEFT with the same LoRA values, and its tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    return ref.peft_model(smollm2_dir, RANK, ALPHA, TARGETS, lora), tokenizer


def our_loss_metrics_grads(model, batch, beta: float, prompt_in_nll: bool):
    loss_fn = functools.partial(batch_objective, beta=beta, prompt_in_nll=prompt_in_nll)
    (loss, metrics), grads = nn.value_and_grad(model, loss_fn)(model, batch)
    mx.eval(loss, metrics, grads)
    metrics = {k: float(v) for k, v in metrics.items()}
    return metrics, {name: np.array(g) for name, g in tree_flatten(grads)}


def relative_error(ours: float, theirs: float) -> float:
    return abs(ours - theirs) / max(abs(theirs), METRIC_ATOL / METRIC_RTOL)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_loss_metrics_and_grads_match_trl(beta, ours_with_lora, theirs, encoded_pairs, tmp_path):
    model, tokenizer = ours_with_lora
    torch_model, hf_tokenizer = theirs
    pad_id = tokenizer.pad_token_id
    assert pad_id == hf_tokenizer.pad_token_id

    batch = collate(encoded_pairs, pad_id, widths=32)
    our_metrics, our_grads = our_loss_metrics_grads(model, batch, beta, prompt_in_nll=True)

    trainer = ref.orpo_trainer(torch_model, hf_tokenizer, beta, tmp_path)
    trl_metrics, trl_grads = ref.trl_loss_metrics_grads(trainer, ref.trl_batch(encoded_pairs, pad_id))

    errors = {k: relative_error(our_metrics[k], trl_metrics[k]) for k in METRICS}
    report = "\n".join(f"{k:20s} ours {our_metrics[k]: .8g}  trl {trl_metrics[k]: .8g}  rel {errors[k]:.2e}"
                       for k in METRICS)
    print(f"\nbeta={beta}\n{report}")
    assert max(errors.values()) <= METRIC_RTOL, report

    assert set(map(ref.peft_name, our_grads)) == set(trl_grads)
    grad_errors = {}
    for name, grad in our_grads.items():
        expected = trl_grads[ref.peft_name(name)].T
        assert np.linalg.norm(expected) > 0, f"{name}: TRL gradient is zero (LoRA values not copied?)"
        grad_errors[name] = np.linalg.norm(grad - expected) / np.linalg.norm(expected)
    worst = max(grad_errors, key=grad_errors.get)
    print(f"LoRA gradients: {len(grad_errors)} tensors, max rel {grad_errors[worst]:.2e} ({worst}), "
          f"median {np.median(list(grad_errors.values())):.2e}")
    assert grad_errors[worst] <= GRAD_RTOL, f"{worst}: relative gradient error {grad_errors[worst]:.2e}"


def test_response_only_nll(ours_with_lora, theirs, encoded_pairs):
    """Our default NLL is the mean over chosen response tokens, pooled over the batch."""
    model, tokenizer = ours_with_lora
    torch_model, _ = theirs
    batch = collate(encoded_pairs, tokenizer.pad_token_id, widths=32)
    _, metrics = batch_objective(model, batch, beta=0.1, prompt_in_nll=False)
    expected = ref.response_nll(torch_model, encoded_pairs, tokenizer.pad_token_id)
    nll = float(metrics["nll_loss"])
    print(f"\nresponse-only NLL ours {nll:.8g} torch {expected:.8g} rel {relative_error(nll, expected):.2e}")
    assert relative_error(nll, expected) <= METRIC_RTOL
