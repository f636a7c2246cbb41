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

`fit(cfg, budget)` turns the prediction into settings: before the model loads, the trainer
(`api.prepare_run`), the app and the scripts change a run planned over its --memory-budget to the
fastest plan that fits (gradient checkpointing, then smaller micro-batches with more accumulation).
With --memory-budget off the trainer only warns (`fits_warning`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import models
from .batching import Widths, batch_shape
from .config import TrainConfig, parse_bytes
from .fields import flag
from .forward import PLAIN_HEAD_MODEL_TYPES, SPLIT_MODEL_TYPES, logit_chunk
from .tokenize import EncodedPair

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


def shared_prompt(shape: ModelShape, model_config: dict) -> bool:
    """Whether the model runs each prompt once (forward.split_supported, asked of a config.json rather
    than a loaded model): mlx-lm llama-family models with no sliding-window layers."""
    text = model_config.get("text_config", model_config)
    return shape.model_type in SPLIT_MODEL_TYPES and "sliding_attention" not in (text.get("layer_types") or ())


def batch_layouts(cfg: TrainConfig, shape: ModelShape, prompt_len: int | None = None,
                  answer_len: int | None = None, gpu: bool = False,
                  shared: bool | None = None) -> dict[str, tuple[int, int, int]]:
    """(token positions, attention scores per head, scored vocabulary rows) per layout of a batch of
    cfg.batch_size pairs whose prompts have prompt_len tokens and whose answers answer_len (default:
    the longest pair cfg allows, the prompt at its budget), as `batching.collate` lays it out with the
    widths the trainer pads to here or on a GPU. `shared`: whether the model runs the shared-prompt
    layout (default: by its model type, see shared_prompt)."""
    widths = Widths.for_config(cfg, gpu)
    if prompt_len is None:
        prompt_len = min(cfg.prompt_budget, cfg.max_length - cfg.min_response_length)
    if answer_len is None:
        answer_len = cfg.max_length - prompt_len
    answer = (0,) * answer_len
    pairs = [EncodedPair((0,) * prompt_len, answer, answer)] * cfg.batch_size
    n = cfg.batch_size
    _, full = batch_shape(pairs, widths, shared_prompt=False)
    width = full - 1  # a full row runs all but its last token
    layouts = {"full rows": (2 * n * width, 2 * n * width * width, 2 * n * width)}
    split = batch_shape(pairs, widths, shared_prompt=shape.model_type in SPLIT_MODEL_TYPES if shared is None
                        else shared)
    if len(split) == 3:  # otherwise collate keeps the full rows
        _, prompt, answer_width = split
        layouts["shared prompt"] = (n * prompt + 2 * n * answer_width,
                                    n * prompt * prompt + 2 * n * answer_width * (prompt + answer_width),
                                    2 * n * answer_width + (n * prompt if cfg.prompt_in_nll else 0))
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
    layouts = batch_layouts(cfg, shape, prompt_len, answer_len, gpu, shared_prompt(shape, model_config))
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


def recommend(cfg: TrainConfig, model_config: dict, budget: int, limit: int = 5,
              on_gpu: bool | None = None) -> list[str]:
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
                    peak = predict_peak(trial, model_config, on_gpu=on_gpu).total
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
    """config.json of a model as `models.resolve_model` finds it (alias, directory, .gguf file or Hub id),
    without loading weights. The aliases' numbers are known offline (KNOWN_CONFIGS); a Hub id reads
    its config.json from the Hugging Face cache, or downloads that one file."""
    try:
        resolved = models.resolve_model(spec)
    except models.ModelNotFoundError as exc:
        raise ValueError(str(exc)) from None
    if Path(resolved).is_dir():
        return json.loads((Path(resolved) / "config.json").read_text())
    known = {models.MODEL_ALIASES[alias]: config for alias, config in KNOWN_CONFIGS.items()}
    if resolved in known:
        return dict(known[resolved])
    try:
        from huggingface_hub import hf_hub_download
        return json.loads(Path(hf_hub_download(resolved, "config.json")).read_text())
    except Exception as exc:
        raise ValueError(f"{spec}: could not read its config.json ({exc})") from None


# --memory-budget auto: the share of what MLX may use here that a run may plan for. The rest is left
# to the OS, the app and the Python process (tokenizer, data), which share a Mac's unified memory.
AUTO_GPU_SHARE = 0.9   # of Metal's recommended working set, or of a CUDA GPU's memory
AUTO_CPU_SHARE = 0.75  # of RAM, on MLX's CPU backend


@dataclass(frozen=True)
class Budget:
    """A memory budget in bytes, and where it came from (said in the log)."""
    bytes: int
    source: str

    def __str__(self) -> str:
        return f"{format_bytes(self.bytes)} ({self.source})"


def mac_working_set(ram: int) -> int:
    """Metal's recommended working set on an Apple-silicon Mac with `ram` bytes: macOS lets the GPU
    wire about two thirds of the memory on Macs of up to 36 GB and three quarters above (as reported by
    `mx.device_info()` on such Macs; the README's table uses it to predict what auto picks there)."""
    return int(ram * (2 / 3 if ram <= 36 * 2**30 else 3 / 4))


def auto_budget() -> Budget:
    """--memory-budget auto on this machine (see AUTO_GPU_SHARE and AUTO_CPU_SHARE)."""
    import mlx.core as mx
    try:
        info = mx.device_info()
    except Exception:
        info = {}
    if info.get("max_recommended_working_set_size"):
        total, what = int(info["max_recommended_working_set_size"]), "Metal's recommended working set"
    elif models.on_gpu() and info.get("memory_size"):
        total, what = int(info["memory_size"]), "the GPU's memory"
    else:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return Budget(int(AUTO_CPU_SHARE * ram), f"auto: {AUTO_CPU_SHARE:.0%} of RAM, {format_bytes(ram)}")
    return Budget(int(AUTO_GPU_SHARE * total), f"auto: {AUTO_GPU_SHARE:.0%} of {what}, {format_bytes(total)}")


def resolve_budget(cfg: TrainConfig) -> Budget | None:
    """cfg's --memory-budget: a Budget, or None for off."""
    if str(cfg.memory_budget).strip().lower() == "off":
        return None
    size = cfg.memory_budget_size
    return auto_budget() if size is None else Budget(size, "--memory-budget")


@dataclass(frozen=True)
class Change:
    """One setting auto-fit changed."""
    name: str
    before: object
    after: object

    def __str__(self) -> str:
        return f"{flag(self.name)} {_shown(self.before)} -> {_shown(self.after)}"


def _shown(value) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


class DoesNotFit(ValueError):
    """No plan the fit may choose is predicted to fit the budget; the message says what would."""


# What fit may change, and the settings that, given explicitly, hold each one.
FIT_SETTINGS = ("grad_checkpoint", "batch_size", "grad_accum")


def _with(cfg: TrainConfig, **changes) -> TrainConfig:
    return TrainConfig(**{**cfg.to_dict(), **changes})


def fit_candidates(cfg: TrainConfig, explicit: frozenset[str] | set[str] = frozenset()) -> list[TrainConfig]:
    """The plans fit tries, fastest first: cfg as it is; gradient checkpointing on; then fewer pairs per
    micro-batch (the divisors of the pairs per optimizer step) with --grad-accum raised to keep them.
    Settings in `explicit` stay as given."""
    pairs = cfg.batch_size * cfg.grad_accum
    checkpoint = cfg.grad_checkpoint or "grad_checkpoint" not in explicit
    options = [cfg, _with(cfg, grad_checkpoint=checkpoint)]
    if not {"batch_size", "grad_accum"} & set(explicit):
        options += [_with(cfg, grad_checkpoint=checkpoint, batch_size=b, grad_accum=pairs // b)
                    for b in range(cfg.batch_size - 1, 0, -1) if pairs % b == 0]
    unique = []
    for option in options:
        if option not in unique:
            unique.append(option)
    return unique


def changes_between(before: TrainConfig, after: TrainConfig) -> list[Change]:
    return [Change(n, getattr(before, n), getattr(after, n)) for n in FIT_SETTINGS
            if getattr(before, n) != getattr(after, n)]


def fit(cfg: TrainConfig, budget: int | Budget, *, model_config: dict | None = None,
        explicit: frozenset[str] | set[str] = frozenset(),
        on_gpu: bool | None = None) -> tuple[TrainConfig, Prediction, list[Change]]:
    """The fastest plan for cfg whose predicted peak is within `budget`: (fitted config, its prediction,
    what changed). The one rule the CLI, the API, the app and the scripts share.

    In order: cfg as given; gradient checkpointing on; then fewer pairs per micro-batch and more
    --grad-accum, so every optimizer step still sees the same pairs of the same data. --max-length, the
    pairs and the LoRA rank are never changed. Settings named in `explicit` (those the user gave) are
    kept. Raises DoesNotFit, whose message gives the plan and the changes that would fit, when none
    of those plans fits. cfg itself is left as it is.
    """
    budget = budget if isinstance(budget, Budget) else Budget(int(budget), "budget")
    model_config = load_model_config(cfg.model) if model_config is None else model_config
    tried = []
    for option in fit_candidates(cfg, explicit):
        prediction = predict_peak(option, model_config, on_gpu=on_gpu)
        if prediction.total <= budget.bytes:
            return option, prediction, changes_between(cfg, option)
        tried.append((option, prediction))
    raise DoesNotFit(_does_not_fit(cfg, budget, model_config, explicit, tried, on_gpu))


def _does_not_fit(cfg, budget, model_config, explicit, tried, on_gpu) -> str:
    last, prediction = tried[-1]
    plan = ", ".join(f"{name} {format_bytes(value)}" for name, value in prediction.breakdown.items())
    what = (f"the smallest plan fit may choose (batch {last.batch_size} x grad-accum {last.grad_accum}, "
            f"gradient checkpointing {_shown(last.grad_checkpoint)})" if len(tried) > 1 else "the run as given")
    text = (f"{cfg.model} at --max-length {cfg.max_length} does not fit the memory budget {budget}: {what} "
            f"is predicted to peak at {format_bytes(prediction.total)} ({plan})")
    held = [n for n in FIT_SETTINGS if n in explicit]
    if held:
        try:
            _, free_prediction, changes = fit(cfg, budget, model_config=model_config, on_gpu=on_gpu)
        except DoesNotFit:
            pass
        else:
            return (f"{text}. You gave {', '.join(map(flag, held))} explicitly, so "
                    f"they were kept; without them it would fit with {', '.join(map(str, changes))} "
                    f"(predicted {format_bytes(free_prediction.total)}). Or run as given with --memory-budget off")
    if prediction.breakdown["weights"] > budget.bytes:
        text += f"; the base weights alone ({format_bytes(prediction.breakdown['weights'])}) exceed it"
    options = []
    for length in (4096, 2048, 1024, 512, 256, 128):
        if length < cfg.max_length and length > cfg.min_response_length:
            trial = _with(last, max_length=length, max_prompt_length=None if cfg.max_prompt_length is None
                          else min(cfg.max_prompt_length, length // 2))
            if (peak := predict_peak(trial, model_config, on_gpu=on_gpu).total) <= budget.bytes:
                options.append(f"--max-length {length} ({format_bytes(peak)})")
                break
    shape = ModelShape.from_config(model_config)
    layers = adapted_layers(cfg, shape)
    for n in (layers // 2, layers // 4, layers // 8):
        if 1 <= n < layers and (peak := predict_peak(_with(last, lora_layers=n), model_config,
                                                     on_gpu=on_gpu).total) <= budget.bytes:
            options.append(f"--lora-layers {n} ({format_bytes(peak)})")
            break
    if not (cfg.bits or shape.quant_bits) and (
            peak := predict_peak(_with(last, bits=4), model_config, on_gpu=on_gpu).total) <= budget.bytes:
        options.append(f"--bits 4 ({format_bytes(peak)})")
    if options:
        plan_of = (f"batch {last.batch_size} x grad-accum {last.grad_accum}, gradient checkpointing "
                   f"{_shown(last.grad_checkpoint)}, " if len(tried) > 1 else "")
        choices = f"; with {plan_of}these would fit: {', '.join(options)}"
    else:
        choices = "; no shorter --max-length, fewer --lora-layers or 4-bit weights tried fits"
    return f"{text}{choices}. A smaller model, or --memory-budget off to try anyway"


def fit_line(before: TrainConfig, planned: int, prediction: Prediction, changes: list[Change], budget: Budget) -> str:
    """The one log line that says what fit did: what changed, from what, to what, and the predicted peak
    (`planned`: the peak predicted for `before`) against the budget."""
    if not changes:
        return f"memory: predicted peak {format_bytes(prediction.total)} within the budget {budget}"
    return (f"memory: the run as configured is predicted to peak at {format_bytes(planned)}, over the budget "
            f"{budget}; fitted: {', '.join(map(str, changes))} "
            f"(same {before.batch_size * before.grad_accum} pairs per optimizer step): "
            f"predicted peak {format_bytes(prediction.total)} <= {format_bytes(budget.bytes)}")


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
        budget, source = auto_budget().bytes, auto_budget().source
    verdict = "fits" if prediction.total <= budget else "does NOT fit"
    print(f"{verdict} in {format_bytes(budget)} ({source})")
    if prediction.total > budget:
        try:
            _, fitted, changes = fit(cfg, Budget(budget, source), model_config=config, on_gpu=on_gpu)
            print(f"auto-fit (--memory-budget) would train with {', '.join(map(str, changes))}: "
                  f"predicted {format_bytes(fitted.total)}")
        except DoesNotFit as exc:
            print(f"auto-fit (--memory-budget): {exc}")
        hints = recommend(cfg, config, budget, on_gpu=on_gpu)
        print("settings that fit:" if hints else "no tried setting fits this budget")
        for hint in hints:
            print(f"  {hint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
