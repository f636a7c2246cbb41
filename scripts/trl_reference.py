"""TRL's ORPOTrainer as an independent reference, fed our exact token ids.

Used by tests/test_parity_trl.py and bench.py. Both sides get the same weights, the same LoRA
values and the same token ids, so the comparison pins the maths (masking,
averaging, the odds ratio, gradients) and nothing else: tokenisation
differences can neither hide nor create a mismatch.

LoRA layouts: mlx-lm computes y = W x + s · (x @ lora_a) @ lora_b with lora_a
(in, r) and lora_b (r, out); PEFT computes y = W x + s · B(A(x)) with
A.weight (r, in) and B.weight (out, r). So A = lora_a.T and B = lora_b.T, and
s = alpha / r on both sides.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

PEFT_PREFIX = "base_model.model."
PEFT_SUFFIX = {"lora_A": ".lora_A.default.weight", "lora_B": ".lora_B.default.weight"}


def lora_values(shapes: dict[str, tuple[int, int]], seed: int) -> dict[str, np.ndarray]:
    """Random non-zero values for every MLX LoRA parameter (name -> shape).

    lora_b is zero at initialisation in both libraries; giving it values makes
    the adapter change the outputs and the gradient w.r.t. lora_a non-zero.
    lora_a keeps mlx-lm's own init range, U(±1/√in); lora_b is kept small so
    the adapted model stays a sensible language model.
    """
    rng = np.random.default_rng(seed)
    values = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if name.endswith("lora_a"):
            bound = 1.0 / np.sqrt(shape[0])
            values[name] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
        else:
            values[name] = (0.02 * rng.standard_normal(size=shape)).astype(np.float32)
    return values


def peft_name(mlx_name: str) -> str:
    """model.layers.0.self_attn.q_proj.lora_a -> PEFT's parameter name."""
    module, leaf = mlx_name.rsplit(".", 1)
    return PEFT_PREFIX + module + PEFT_SUFFIX["lora_A" if leaf == "lora_a" else "lora_B"]


def peft_model(model_dir, rank: int, alpha: float, targets: list[str], values: dict[str, np.ndarray]):
    """SmolLM2 in float32 wrapped by PEFT, with our LoRA values (transposed) copied in."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, bias="none",
                        task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    expected = {peft_name(n) for n in values}
    assert trainable == expected, f"LoRA layouts differ: {sorted(trainable ^ expected)[:6]}"
    with torch.no_grad():
        for name, value in values.items():
            params[peft_name(name)].copy_(torch.from_numpy(value.T.copy()))
    model.eval()  # no dropout anywhere (LoRA dropout is 0 as well)
    return model


def orpo_trainer(model, tokenizer, beta: float, output_dir):
    """An ORPOTrainer on CPU that never logs, saves or downloads.

    Its constructor insists on a train_dataset (it tokenizes it up front), so
    it gets one tiny row; the test never calls train() and feeds its own batch.
    """
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    args = ORPOConfig(output_dir=str(output_dir), beta=beta, max_length=1024, use_cpu=True, report_to=[],
                      save_strategy="no", logging_strategy="no", remove_unused_columns=False,
                      per_device_train_batch_size=1)
    dummy = Dataset.from_dict({"prompt": ["Hi."], "chosen": [" Hello."], "rejected": [" Go away."]})
    return ORPOTrainer(model=model, args=args, train_dataset=dummy, processing_class=tokenizer)


def trl_batch(encoded, pad_id: int) -> dict[str, torch.Tensor]:
    """The padded batch TRL's collator would build from our EncodedPairs.

    Labels are the input ids with the prompt and the padding at -100, as
    ORPOTrainer.tokenize_row and DPODataCollatorWithPadding make them.
    """
    def pad(rows, value):
        width = max(len(r) for r in rows)
        return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)

    batch = {}
    for side in ("chosen", "rejected"):
        rows = [p.prompt + getattr(p, side) for p in encoded]
        labels = [(-100,) * len(p.prompt) + getattr(p, side) for p in encoded]
        batch[f"{side}_input_ids"] = pad(rows, pad_id)
        batch[f"{side}_attention_mask"] = pad([(1,) * len(r) for r in rows], 0)
        batch[f"{side}_labels"] = pad(labels, -100)
    batch["prompt_input_ids"] = pad([p.prompt for p in encoded], pad_id)
    batch["prompt_attention_mask"] = pad([(1,) * len(p.prompt) for p in encoded], 0)
    return batch


def trl_loss_metrics_grads(trainer, batch) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """TRL's loss and metrics on one batch, and the LoRA gradients, keyed by PEFT name."""
    model = trainer.model
    model.zero_grad(set_to_none=True)
    loss, metrics = trainer.get_batch_loss_metrics(model, batch, train_eval="train")
    loss.backward()
    metrics = dict(metrics, loss=loss.item())
    grads = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return metrics, grads


def response_nll(model, encoded, pad_id: int) -> float:
    """Mean NLL over every chosen response token of the batch (pooled, not per sequence), in torch."""
    batch = trl_batch(encoded, pad_id)
    with torch.no_grad():
        logits = model(batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"]).logits
    logps = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    labels = batch["chosen_labels"][:, 1:]
    mask = labels != -100
    picked = logps.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return float(-(picked * mask).sum() / mask.sum())
