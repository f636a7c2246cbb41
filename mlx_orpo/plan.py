"""Predict a run's peak memory from the model's config.json, before loading any weights.

    python -m mlx_orpo.plan --model mistral-7b-4bit --batch-size 2 --max-length 1024 --budget 16GB

The prediction is a sum of parts, each an arithmetic function of the model's
shapes and the run's settings:

- weights: every base parameter at its stored width (4-bit: half a byte plus a
  scale and a bias per group);
- adapters + optimizer: the LoRA matrices in float32, four times over (values,
  gradients, AdamW's two moments);
- activations: what the backward pass keeps per transformer block, per token
  (multiples of the hidden and MLP widths) and per attention score;
- logits: the float32 vocabulary rows alive at once (a chunk of the scored
  positions, see forward.head_logps);
- a fixed overhead.

The per-token and per-score multiples were measured (`mx.get_peak_memory()`
of one training step on llama configs, scripts/fit_plan.py, tests/test_plan.py and
docs/performance.md); everything else is counted. The batch assumed is the
longest one a run can meet: B pairs at --max-length, the prompt at its
budget, and also the same pairs laid out as full rows (the layout
`batching.collate` falls back to), whichever needs more.

The trainer and the app call `fits_warning(cfg, model_config)` before training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import models
from .batching import Widths
from .config import TrainConfig, parse_bytes
from .forward import PLAIN_HEAD_MODEL_TYPES, SPLIT_MODEL_TYPES, logit_chunk

# The config.json numbers of the aliases, so the planner works offline for
# models that are not on disk (mistral-7b-4bit on a machine that never
# downloaded it). Copied from the Hub repos the aliases point to.
KNOWN_CONFIGS = {
    "smollm2-135m": {  # HuggingFaceTB/SmolLM2-135M-Instruct
        "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30,
        "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16"},
    "mistral-7b-4bit": {  # mlx-community/Mistral-7B-Instruct-v0.3-4bit
        "model_type": "mistral", "vocab_size": 32768, "hidden_size": 4096, "num_hidden_layers": 32,
        "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "quantization": {"group_size": 64, "bits": 4}},
    "llama-2-7b-4bit": {  # mlx-community/Llama-2-7b-chat-4-bit
        "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "num_hidden_layers": 32,
        "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32,
        "tie_word_embeddings": False, "torch_dtype": "float16",
        "quantization": {"group_size": 64, "bits": 4}},
    "phi-2": {  # microsoft/phi-2
        "model_type": "phi", "vocab_size": 51200, "hidden_size": 2560, "num_hidden_layers": 32,
        "intermediate_size": 10240, "num_attention_heads": 32, "num_key_value_heads": 32,
        "tie_word_embeddings": False, "torch_dtype": "float16"},
}

# Measured multiples (float32, MLX CPU backend, mlx 0.32), fitted by scripts/fit_plan.py on one
# training step each of 15 tiny, 8-block and SmolLM2-shaped llama configs (docs/performance.md
# "Memory planner"). Per transformer block and token, the backward pass keeps ACT_HIDDEN x hidden
# + ACT_MLP x intermediate values (ACT_MLP set from the block's structure), and ACT_SCORES values
# per attention score (query x key, per head). A checkpointed run keeps CKPT_HIDDEN x hidden per
# token and block, plus CKPT_BLOCKS blocks' worth while one is recomputed (its activations and
# their gradients; set, not fitted). The vocabulary logits exist forward.logit_chunk() positions at
# a time (forward.head_logps; 256 on the CPU, where this was fitted), LOGIT_COPIES times over;
# models whose head is not plain (forward.PLAIN_HEAD_MODEL_TYPES) hold all scored rows
# FULL_LOGIT_COPIES times (measured with the logits in one piece).
ACT_HIDDEN = 13.12
ACT_MLP = 4.0
ACT_SCORES = 1.735
CKPT_HIDDEN = 2.159
CKPT_BLOCKS = 2
LOGIT_COPIES = 0.222
FULL_LOGIT_COPIES = 2.98
OVERHEAD_BYTES = 3_000_000

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a config.json that memory depends on."""
    model_type: str
    vocab: int
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    checkpoint_dtype: str
    quant_bits: int | None
    quant_group: int

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        text = config.get("text_config", config)  # multimodal configs nest the language model
        heads = text["num_attention_heads"]
        hidden = text["hidden_size"]
        quant = config.get("quantization") or config.get("quantization_config") or {}
        dtype = str(text.get("torch_dtype") or text.get("dtype") or "float16")
        return cls(
            model_type=text.get("model_type", "llama"),
            vocab=text["vocab_size"], hidden=hidden, layers=text["num_hidden_layers"],
            intermediate=text.get("intermediate_size") or 4 * hidden, heads=heads,
            kv_heads=text.get("num_key_value_heads") or heads,
            head_dim=text.get("head_dim") or hidden // heads,
            tied=bool(text.get("tie_word_embeddings", False)),
            checkpoint_dtype=dtype if dtype in _DTYPE_BYTES else "float16",
            quant_bits=quant.get("bits"), quant_group=quant.get("group_size", 64))

    @property
    def mlp_matrices(self) -> int:
        return 2 if self.model_type in ("phi", "gpt2", "starcoder2") else 3  # gelu MLPs: fc1, fc2

    def block_linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one block, by mlx-lm module name suffix."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = {"q_proj": (self.hidden, q), "k_proj": (self.hidden, kv), "v_proj": (self.hidden, kv),
                "o_proj": (q, self.hidden)}
        if self.mlp_matrices == 2:
            return {**attn, "fc1": (self.hidden, self.intermediate), "fc2": (self.intermediate, self.hidden)}
        return {**attn, "gate_proj": (self.hidden, self.intermediate), "up_proj": (self.hidden, self.intermediate),
                "down_proj": (self.intermediate, self.hidden)}


@dataclass
class Prediction:
    """Predicted peak bytes, with the parts that add up to it."""
    total: int
    breakdown: dict[str, int]
    layout: str  # the batch layout that gave the peak: "shared prompt" or "full rows"
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        lines = [f"{name:24s} {format_bytes(value):>10s}" for name, value in self.breakdown.items()]
        lines.append(f"{'predicted peak':24s} {format_bytes(self.total):>10s}  ({self.layout})")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def format_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def weight_bytes(shape: ModelShape, dtype_bytes: int, bits: int | None, group: int) -> int:
    """Base weights. Quantised models keep linears and embeddings at `bits` plus a scale and bias per group."""
    per_block = sum(i * o for i, o in shape.block_linears().values())
    embeddings = shape.vocab * shape.hidden * (1 if shape.tied else 2)
    norms = (2 * shape.layers + 1) * shape.hidden
    matrices = shape.layers * per_block + embeddings
    if bits:
        return int(matrices * (bits / 8 + 2 * dtype_bytes / group) + norms * dtype_bytes)
    return (matrices + norms) * dtype_bytes


def adapted_layers(cfg: TrainConfig, shape: ModelShape) -> int:
    return shape.layers if cfg.lora_layers < 0 else min(cfg.lora_layers, shape.layers)


def adapter_params(cfg: TrainConfig, shape: ModelShape) -> int:
    targets = set(cfg.lora_targets or ["all-linear"])
    per_block = sum(cfg.lora_rank * (i + o) + (o if cfg.dora else 0)
                    for name, (i, o) in shape.block_linears().items()
                    if "all-linear" in targets or name in targets)
    return per_block * adapted_layers(cfg, shape)


def activation_bytes(cfg: TrainConfig, shape: ModelShape, act_bytes: int, tokens: int, scores: int) -> int:
    """Backward-pass residue of all blocks for `tokens` token positions and `scores` attention scores per head."""
    per_token = ACT_HIDDEN * shape.hidden + ACT_MLP * shape.intermediate
    per_block = per_token * tokens + ACT_SCORES * shape.heads * scores
    if cfg.grad_checkpoint:  # every block's input, and one block's activations during its recompute
        return int(act_bytes * (CKPT_HIDDEN * shape.hidden * tokens * shape.layers + CKPT_BLOCKS * per_block))
    return int(act_bytes * per_block * shape.layers)


def logit_bytes(shape: ModelShape, rows: int, gpu: bool) -> int:
    """The float32 vocabulary logits alive at the peak, for `rows` scored positions."""
    if shape.model_type in PLAIN_HEAD_MODEL_TYPES:
        return int(LOGIT_COPIES * min(rows, logit_chunk(gpu)) * shape.vocab * 4)
    return int(FULL_LOGIT_COPIES * rows * shape.vocab * 4)


def batch_layouts(cfg: TrainConfig, shape: ModelShape, prompt_len: int | None = None,
                  answer_len: int | None = None, gpu: bool = False) -> dict[str, tuple[int, int, int]]:
    """(token positions, attention scores per head, scored vocabulary rows) per layout of a batch of
    cfg.batch_size pairs whose prompts have prompt_len tokens and whose answers answer_len (default:
    the longest pair cfg allows, the prompt at its budget), padded as the trainer pads on the CPU or
    a GPU (batching.Widths)."""
    pad = Widths.for_config(cfg, gpu)
    if prompt_len is None:
        prompt_len = min(cfg.prompt_budget, cfg.max_length - cfg.min_response_length)
    if answer_len is None:
        answer_len = cfg.max_length - prompt_len
    pairs, width = cfg.batch_size, pad(prompt_len + answer_len - 1)  # a full row runs all but its last token
    layouts = {"full rows": (2 * pairs * width, 2 * pairs * width * width, 2 * pairs * width)}
    if shape.model_type in SPLIT_MODEL_TYPES:  # see forward.split_supported
        prompt, answer = pad(prompt_len), pad(answer_len)
        tokens = pairs * prompt + 2 * pairs * answer
        if tokens <= 2 * pairs * width:  # otherwise collate keeps the full rows
            scores = pairs * prompt * prompt + 2 * pairs * answer * (prompt + answer)
            rows = 2 * pairs * answer + (pairs * prompt if cfg.prompt_in_nll else 0)
            layouts["shared prompt"] = (tokens, scores, rows)
    return layouts


def predict_peak(cfg: TrainConfig, model_config: dict, *, on_gpu: bool | None = None, layout: str | None = None,
                 prompt_len: int | None = None, answer_len: int | None = None) -> Prediction:
    """Peak memory of training `cfg` on the model described by `model_config` (its config.json).

    By default the larger of the two batch layouts at the longest pair cfg allows (shared-prompt
    batches and the full-row fallback); `layout`, `prompt_len` and `answer_len` pin one batch.
    """
    shape = ModelShape.from_config(model_config)
    gpu = models.on_gpu() if on_gpu is None else on_gpu
    dtype = models.compute_dtype(cfg.dtype, gpu) or shape.checkpoint_dtype
    dtype_bytes = _DTYPE_BYTES[dtype]
    bits = cfg.bits or shape.quant_bits
    group = cfg.group_size if cfg.bits else shape.quant_group
    weights = weight_bytes(shape, dtype_bytes, bits, group)
    # values, gradients and AdamW's two moments, float32; one more gradient copy when accumulating
    adapters = adapter_params(cfg, shape) * 4 * (4 + (cfg.grad_accum > 1))
    best = None
    layouts = batch_layouts(cfg, shape, prompt_len, answer_len, gpu)
    for name, (tokens, scores, rows) in layouts.items():
        if layout is not None and name != layout:
            continue
        activations = activation_bytes(cfg, shape, dtype_bytes, tokens, scores)
        logits = logit_bytes(shape, rows, gpu)
        total = weights + adapters + activations + logits + OVERHEAD_BYTES
        if best is None or total > best.total:
            best = Prediction(total, {"weights": weights, "adapters + optimizer": adapters,
                                      "activations": activations, "logits": logits, "overhead": OVERHEAD_BYTES},
                              name)
    if best is None:
        raise ValueError(f"layout {layout!r} does not apply here; possible: {sorted(layouts)}")
    best.notes.append(f"{dtype} compute, {f'{bits}-bit' if bits else 'float'} base weights, "
                      f"batch of {cfg.batch_size} pairs at {cfg.max_length} tokens")
    if cfg.dora:
        best.notes.append("DoRA also builds each adapted weight in full in the forward pass (not counted)")
    return best


def available_memory() -> tuple[int, str]:
    """(bytes, where the number came from): Metal's recommended working set, else total RAM."""
    import mlx.core as mx
    try:
        info = mx.device_info()
    except Exception:
        info = {}
    if info.get("max_recommended_working_set_size"):
        return int(info["max_recommended_working_set_size"]), "Metal's recommended working set"
    if models.on_gpu() and info.get("memory_size"):
        return int(info["memory_size"]), "device memory"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "total RAM"


def fits_warning(cfg: TrainConfig, model_config: dict) -> str | None:
    """A one-paragraph warning when the predicted peak exceeds the memory available, else None."""
    prediction = predict_peak(cfg, model_config)
    available, source = available_memory()
    if prediction.total <= available:
        return None
    hints = recommend(cfg, model_config, available)
    return (f"predicted peak memory {format_bytes(prediction.total)} exceeds {source} "
            f"({format_bytes(available)}); the run may swap or be killed. "
            + (f"Settings that fit: {hints[0]}." if hints else "No setting tried fits; try a smaller model."))


def recommend(cfg: TrainConfig, model_config: dict, budget: int, limit: int = 5) -> list[str]:
    """Changes to cfg that bring the prediction under `budget`, cheapest in lost quality/speed first."""
    shape = ModelShape.from_config(model_config)
    options = []
    for checkpointing in ((False, True) if not cfg.grad_checkpoint else (True,)):
        for bits in ((None, 4) if not (cfg.bits or shape.quant_bits) else (cfg.bits,)):
            for batch in sorted({cfg.batch_size, 4, 2, 1}, reverse=True):
                for length in sorted({cfg.max_length, 2048, 1024, 512, 256}, reverse=True):
                    if batch > cfg.batch_size or length > cfg.max_length:
                        continue
                    trial = TrainConfig(**{**cfg.to_dict(), "batch_size": batch, "max_length": length,
                                           "grad_checkpoint": checkpointing, "bits": bits,
                                           "grad_accum": cfg.grad_accum * max(1, cfg.batch_size // batch)})
                    peak = predict_peak(trial, model_config).total
                    if peak <= budget:
                        # prefer long sequences, then no checkpointing, then big batches, then float weights
                        score = (length, not checkpointing, batch, bits is None)
                        text = (f"--batch-size {batch} --grad-accum {trial.grad_accum} --max-length {length}"
                                + (" --grad-checkpoint" if checkpointing else "")
                                + (f" --bits {bits}" if bits and not cfg.bits else "")
                                + f" (predicted {format_bytes(peak)})")
                        options.append((score, text))
    options.sort(key=lambda o: o[0], reverse=True)
    seen, result = set(), []
    for _, text in options:
        if text not in seen:
            seen.add(text)
            result.append(text)
    return result[:limit]


def load_model_config(spec: str) -> dict:
    """config.json of an alias, a local model directory or a cached Hub repo, without loading weights."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return json.loads((path / "config.json").read_text())
    if spec in KNOWN_CONFIGS:
        return dict(KNOWN_CONFIGS[spec])
    if spec.count("/") == 1:
        try:
            from huggingface_hub import hf_hub_download
            return json.loads(Path(hf_hub_download(spec, "config.json")).read_text())
        except Exception as exc:
            raise ValueError(f"{spec}: could not read its config.json ({exc})") from None
    raise ValueError(f"{spec!r}: not an alias ({', '.join(KNOWN_CONFIGS)}) or a model directory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlx_orpo.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=TrainConfig.model, help="alias, model directory or Hub id")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--max-length", type=int, default=TrainConfig.max_length)
    parser.add_argument("--bits", type=int, choices=(4, 8), default=None)
    parser.add_argument("--rank", type=int, default=TrainConfig.lora_rank)
    parser.add_argument("--grad-checkpoint", action="store_true")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    parser.add_argument("--device", choices=("cpu", "gpu"), default=None,
                        help="predict for this device (default: the one MLX would use here)")
    parser.add_argument("--budget", default=None, help="memory budget, e.g. 16GB; default: this machine's")
    args = parser.parse_args(argv)
    cfg = TrainConfig(model=args.model, batch_size=args.batch_size, max_length=args.max_length, bits=args.bits,
                      lora_rank=args.rank, grad_checkpoint=args.grad_checkpoint, dtype=args.dtype).validate()
    try:
        config = load_model_config(args.model)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    on_gpu = None if args.device is None else args.device == "gpu"
    prediction = predict_peak(cfg, config, on_gpu=on_gpu)
    print(f"{args.model}: batch {cfg.batch_size} pairs, max length {cfg.max_length}, LoRA r={cfg.lora_rank}")
    print(prediction.table())
    if args.budget:
        budget, source = parse_bytes(args.budget), "budget"
    else:
        budget, source = available_memory()
    verdict = "fits" if prediction.total <= budget else "does NOT fit"
    print(f"{verdict} in {format_bytes(budget)} ({source})")
    if args.budget and (models.on_gpu() if on_gpu is None else on_gpu):
        print(f"on a GPU with more memory than that, train with --memory-limit {args.budget}: MLX queues kernels "
              f"ahead, and the buffers they hold count towards the peak")
    if prediction.total > budget:
        hints = recommend(cfg, config, budget)
        print("settings that fit:" if hints else "no tried setting fits this budget")
        for hint in hints:
            print(f"  {hint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
