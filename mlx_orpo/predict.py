"""Predict a run's peak memory from the model's config.json, before loading any weights.

    prediction = predict_peak(cfg, load_model_config(cfg.model))
    print(prediction.table())

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
docs/performance.md); everything else is counted.

The peak is the largest over batch shapes (`batching.batch_shape`'s tuples: what the compiled step's
memory depends on). By default they are the longest batch a run can meet (`ceiling_shapes`): B pairs
at --max-length, the prompt at its budget, both as full rows (the layout `batching.collate` falls back
to) and in the shared-prompt layout. A run plans for the batches its data makes (`data_shapes`: the
trainer's micro-batches and its evaluation batches, which run forward only and keep no activations
for a backward pass).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from . import models
from .batching import Widths, batch_shape
from .budget import format_bytes
from .config import TrainConfig
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
#
# The attention scores cost ACT_SCORES per block kept for the backward pass, plus ACT_SCORES_BACKWARD
# of one block's while its backward runs. That split is set from SmolLM2-135M's shapes at 1,024 tokens
# (1 pair, prompt 64 + answer 960 and 512 + 512, shared prompt: 5.92 and 4.44 GB measured), which take
# 1.22 per block over 30 blocks, where the fit's 2- to 8-block configs took 1.735: the fit's 2-block
# configs are predicted as before (2 x 1.185 + 1.1 = 2 x 1.735), and so are checkpointed runs.
ACT_HIDDEN = 13.12
ACT_MLP = 4.0
ACT_SCORES = 1.185
ACT_SCORES_BACKWARD = 1.1
CKPT_HIDDEN = 2.159
CKPT_BLOCKS = 2
LOGIT_COPIES = 0.222
FULL_LOGIT_COPIES = 2.98
OVERHEAD_BYTES = 3_000_000
# An evaluation batch runs forward only (trainer.evaluate). Its float32 logits are all alive at once
# (EVAL_LOGIT_COPIES of all scored rows: the chunks of forward.head_logps are evaluated together when no
# backward pass follows), beside EVAL_HIDDEN x hidden values per token and EVAL_SCORES values per
# attention score of one block. Bounds over 7 batches of SmolLM2-135M (float32, CPU: 1 or 2 pairs,
# prompts of 64-500 and answers of 448-960 tokens, both layouts), where the logits were 85-99% of
# what the evaluation added to the memory in use.
EVAL_HIDDEN = 14.0
EVAL_SCORES = 0.5
EVAL_LOGIT_COPIES = 1.0

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

    def tensors(self) -> list[tuple[int, int]]:
        """(elements, dimensions) of each parameter of the model unquantised: every block's linear
        layers and its two norms, the embeddings (and an untied output head), the final norm."""
        block = [(i * o, 2) for i, o in self.block_linears().values()] + [(self.hidden, 1)] * 2
        head = [] if self.tied else [(self.vocab * self.hidden, 2)]
        return block * self.layers + [(self.vocab * self.hidden, 2), *head, (self.hidden, 1)]

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


def weight_bytes(shape: ModelShape, dtype_bytes: int, bits: int | None, group: int) -> int:
    """Base weights. Quantised models keep linears and embeddings at `bits` plus a scale and bias per group."""
    matrices = sum(size for size, ndim in shape.tensors() if ndim == 2)
    norms = sum(size for size, ndim in shape.tensors() if ndim == 1)
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
    backward = ACT_SCORES_BACKWARD * shape.heads * scores  # one block's, while its backward runs
    if cfg.grad_checkpoint:  # every block's input, and one block's activations during its recompute
        return int(act_bytes * (CKPT_HIDDEN * shape.hidden * tokens * shape.layers + CKPT_BLOCKS * per_block
                                + backward))
    return int(act_bytes * (per_block * shape.layers + backward))


def logit_bytes(shape: ModelShape, rows: int, gpu: bool) -> int:
    """The float32 vocabulary logits alive at the peak, for `rows` scored positions."""
    if shape.model_type in PLAIN_HEAD_MODEL_TYPES:
        return int(LOGIT_COPIES * min(rows, logit_chunk(gpu)) * shape.vocab * 4)
    return int(FULL_LOGIT_COPIES * rows * shape.vocab * 4)


def forward_bytes(shape: ModelShape, act_bytes: int, tokens: int, scores: int) -> int:
    """What a forward pass without gradients (an evaluation batch) holds at once besides its logits:
    one block's working values for `tokens` token positions and `scores` attention scores per head
    (MLX frees a block's values once the next block has read them)."""
    return int(act_bytes * (EVAL_HIDDEN * shape.hidden * tokens + EVAL_SCORES * shape.heads * scores))


def eval_logit_bytes(shape: ModelShape, rows: int, gpu: bool) -> int:
    """The float32 vocabulary logits an evaluation batch holds at once, for `rows` scored positions."""
    if shape.model_type in PLAIN_HEAD_MODEL_TYPES:
        return int(EVAL_LOGIT_COPIES * rows * shape.vocab * 4)
    return int(FULL_LOGIT_COPIES * rows * shape.vocab * 4)


def shared_prompt(shape: ModelShape, model_config: dict) -> bool:
    """Whether the model runs each prompt once (forward.split_supported, asked of a config.json rather
    than a loaded model): mlx-lm llama-family models with no sliding-window layers."""
    text = model_config.get("text_config", model_config)
    return shape.model_type in SPLIT_MODEL_TYPES and "sliding_attention" not in (text.get("layer_types") or ())



LAYOUTS = {2: "full rows", 3: "shared prompt"}  # by the length of a batching.batch_shape tuple


def ceiling_shapes(cfg: TrainConfig, gpu: bool, shared: bool, prompt_len: int | None = None,
                   answer_len: int | None = None) -> list[tuple[int, ...]]:
    """The batch shapes (batching.batch_shape) of cfg.batch_size pairs whose prompts have prompt_len
    tokens and whose answers answer_len (default: the longest pair cfg allows, the prompt at its
    budget), padded as the trainer pads them here or on a GPU (`gpu`): as full rows, and in the
    shared-prompt layout when the model runs it (`shared`, see shared_prompt) and collate would."""
    widths = Widths.for_config(cfg, gpu)
    if prompt_len is None:
        prompt_len = min(cfg.prompt_budget, cfg.max_length - cfg.min_response_length)
    if answer_len is None:
        answer_len = cfg.max_length - prompt_len
    answer = (0,) * answer_len
    pairs = [EncodedPair((0,) * prompt_len, answer, answer)] * cfg.batch_size
    shapes = [batch_shape(pairs, widths, shared_prompt=False)]
    split = batch_shape(pairs, widths, shared_prompt=shared)
    if len(split) == 3:  # otherwise collate keeps the full rows
        shapes.append(split)
    return shapes


def batch_work(shape: tuple[int, ...], prompt_in_nll: bool) -> tuple[int, int, int]:
    """(token positions, attention scores per head, scored vocabulary rows) of one batch shape: B pairs
    as 2B full rows of W tokens (W - 1 positions each), or as B prompt rows and 2B answer rows that
    attend to their prompt."""
    if len(shape) == 2:
        n, full = shape
        width = full - 1  # a full row runs all but its last token
        return 2 * n * width, 2 * n * width * width, 2 * n * width
    n, prompt, answer = shape
    return (n * prompt + 2 * n * answer, n * prompt * prompt + 2 * n * answer * (prompt + answer),
            2 * n * answer + (n * prompt if prompt_in_nll else 0))


class BatchShapes(NamedTuple):
    """The batch shapes (batching.batch_shape tuples) a run builds: its training micro-batches, on every
    rank, and its evaluation batches (forward only)."""
    train: tuple[tuple[int, ...], ...]
    eval: tuple[tuple[int, ...], ...] = ()


def data_shapes(cfg: TrainConfig, train_pairs: list[EncodedPair], eval_pairs: list[EncodedPair], *,
                gpu: bool, shared: bool, world: int = 1) -> BatchShapes:
    """The shapes of the batches the trainer builds of these pairs with cfg's settings: the micro-batches
    of one epoch's optimizer steps (feeding.step_order, padded by cfg's widths on a GPU or the CPU), each
    rank's round-robin share of them with `world` data-parallel ranks, and the evaluation batches
    (trainer.evaluate: the first --eval-max-pairs held-out pairs by length, cfg.batch_size at a time).
    Every epoch makes the same shapes: epochs differ only in the order of pairs that tie on (length,
    prompt length), and those pad alike. `shared`: whether the model runs each prompt once."""
    from .feeding import step_order  # the trainer's own grouping of pairs into steps and micro-batches

    widths = Widths.for_config(cfg, gpu)
    steps = step_order(train_pairs, cfg.batch_size * world, cfg.grad_accum, cfg.seed, 0, widths=widths,
                       shared_prompt=shared)
    train = {batch_shape([train_pairs[i] for i in micro][rank::world] or [train_pairs[micro[0]]], widths, shared)
             for step in steps for micro in step for rank in range(world)}
    held_out = sorted(eval_pairs[: cfg.eval_max_pairs or None], key=lambda p: p.length)
    evals = {batch_shape(held_out[i:i + cfg.batch_size], widths, shared)
             for i in range(0, len(held_out), cfg.batch_size)}
    return BatchShapes(tuple(sorted(train)), tuple(sorted(evals)))


def predict_peak(cfg: TrainConfig, model_config: dict, *, on_gpu: bool | None = None,
                 shapes: BatchShapes | Iterable[tuple[int, ...]] | None = None) -> Prediction:
    """Peak memory of training `cfg` on the model described by `model_config` (its config.json): the
    largest over the batch `shapes` (a BatchShapes, from data_shapes, or training batch shapes alone;
    default: ceiling_shapes, the longest batch cfg allows). `on_gpu`: predict for a GPU or the CPU
    (default: where MLX computes here)."""
    shape = ModelShape.from_config(model_config)
    gpu = models.on_gpu() if on_gpu is None else on_gpu
    dtype = models.compute_dtype(cfg.dtype, gpu) or shape.checkpoint_dtype
    dtype_bytes = _DTYPE_BYTES[dtype]
    bits = cfg.bits or shape.quant_bits
    group = cfg.group_size if cfg.bits else shape.quant_group
    weights = weight_bytes(shape, dtype_bytes, bits, group)
    # values, gradients and AdamW's two moments, float32; one more gradient copy when accumulating
    adapters = adapter_params(cfg, shape) * 4 * (4 + (cfg.grad_accum > 1))
    ceiling = shapes is None
    if ceiling:
        shapes = BatchShapes(tuple(ceiling_shapes(cfg, gpu, shared_prompt(shape, model_config))))
    elif not isinstance(shapes, BatchShapes):
        shapes = BatchShapes(tuple(shapes))
    best, peak_batch = None, None
    for batch, training in [(b, True) for b in shapes.train] + [(b, False) for b in shapes.eval]:
        tokens, scores, rows = batch_work(batch, cfg.prompt_in_nll)
        if training:
            activations = activation_bytes(cfg, shape, dtype_bytes, tokens, scores)
            logits = logit_bytes(shape, rows, gpu)
        else:
            activations, logits = forward_bytes(shape, dtype_bytes, tokens, scores), eval_logit_bytes(shape, rows, gpu)
        total = weights + adapters + activations + logits + OVERHEAD_BYTES
        if best is None or total > best.total:
            layout = LAYOUTS[len(batch)] + ("" if training else ", evaluation")
            best, peak_batch = Prediction(total, {"weights": weights, "adapters + optimizer": adapters,
                                                  "activations": activations, "logits": logits,
                                                  "overhead": OVERHEAD_BYTES}, layout), batch
    if best is None:
        raise ValueError("no batch shapes to predict for")
    batch = (f"batch of {cfg.batch_size} pairs at {cfg.max_length} tokens" if ceiling
             else f"largest batch: {peak_batch[0]} pairs, widths {' + '.join(map(str, peak_batch[1:]))}")
    best.notes.append(f"{dtype} compute, {f'{bits}-bit' if bits else 'float'} base weights, {batch}")
    if cfg.dora:
        best.notes.append("DoRA also builds each adapted weight in full in the forward pass (not counted)")
    return best


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
