"""A rough training-memory estimate shown before a run starts.

Stand-in until the library's planner (`mlx_orpo.plan`) exists: `estimate_memory`
is the one function to swap. Calibrated loosely against SmolLM2-135M on the CPU
(batch 4 x 512 tokens peaked at 6.3 GB); treat it as an order of magnitude.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mlx_orpo.config import TrainConfig

GB = 1e9


@dataclass
class MemoryEstimate:
    params: int            # base model parameters
    weights_gb: float
    adapters_gb: float     # LoRA weights, gradients and AdamW moments
    activations_gb: float  # kept for the backward pass, every sequence at max length
    source: str = "app estimate"

    @property
    def total_gb(self) -> float:
        return self.weights_gb + self.adapters_gb + self.activations_gb


def model_config(spec: str) -> dict:
    """config.json of a local/converted model or a Hub model already in the cache; never downloads."""
    from mlx_orpo.models import resolve_model

    path = Path(resolve_model(spec))
    if path.is_dir():
        return json.loads((path / "config.json").read_text())
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(str(path), "config.json")
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text())
    raise FileNotFoundError(f"{spec}: not downloaded yet, so its size is unknown (the first run downloads it)")


def _linear_shapes(c: dict) -> dict[str, tuple[int, int]]:
    h = c["hidden_size"]
    heads = c["num_attention_heads"]
    head_dim = c.get("head_dim") or h // heads
    kv = c.get("num_key_value_heads", heads)
    inter = c.get("intermediate_size", 4 * h)
    return {"q_proj": (h, heads * head_dim), "k_proj": (h, kv * head_dim), "v_proj": (h, kv * head_dim),
            "o_proj": (heads * head_dim, h), "gate_proj": (h, inter), "up_proj": (h, inter),
            "down_proj": (inter, h)}


def _on_gpu() -> bool:
    import mlx.core as mx

    return mx.default_device() != mx.cpu


def estimate_memory(cfg: TrainConfig, config: dict | None = None) -> MemoryEstimate:
    c = config if config is not None else model_config(cfg.model)
    c = c.get("text_config", c)
    shapes = _linear_shapes(c)
    layers = c["num_hidden_layers"]
    h, vocab = c["hidden_size"], c["vocab_size"]
    embed = vocab * h * (1 if c.get("tie_word_embeddings", True) else 2)
    params = embed + layers * sum(i * o for i, o in shapes.values())

    quant = c.get("quantization", {}).get("bits") or cfg.bits
    float_bytes = 4 if cfg.dtype == "float32" or (cfg.dtype == "auto" and not _on_gpu()) else 2
    weight_bytes = (quant / 8 + 4 / cfg.group_size) if quant else float_bytes
    weights = params * weight_bytes

    targets = set(cfg.lora_targets)
    adapted = [s for name, s in shapes.items() if "all-linear" in targets or name in targets]
    lora_layers = layers if cfg.lora_layers < 0 else min(cfg.lora_layers, layers)
    lora_params = lora_layers * sum(cfg.lora_rank * (i + o) for i, o in adapted)
    adapters = lora_params * 4 * 4  # float32 weights, gradients and two AdamW moments

    tokens = cfg.batch_size * 2 * cfg.max_length  # chosen and rejected, all at max length (upper bound)
    heads = c["num_attention_heads"]
    per_token_layer = float_bytes * (6 * h + 2 * c.get("intermediate_size", 4 * h) + heads * cfg.max_length)
    kept_layers = 1 + layers / 8 if cfg.grad_checkpoint else layers
    activations = tokens * (per_token_layer * kept_layers + 4 * vocab)
    return MemoryEstimate(params, weights / GB, adapters / GB, activations / GB)


def estimate_markdown(cfg: TrainConfig) -> str:
    try:
        e = estimate_memory(cfg)
    except Exception as exc:  # unknown model, unreadable config: say so, never fail the page
        return f"**Memory estimate:** unavailable ({exc})"
    return (f"**Memory estimate (rough, {e.source}): ~{e.total_gb:.1f} GB** — "
            f"weights {e.weights_gb:.2f} GB ({e.params / 1e6:.0f}M parameters), "
            f"adapters + optimizer {e.adapters_gb:.2f} GB, activations ≤ {e.activations_gb:.1f} GB "
            f"(batch {cfg.batch_size} × 2 × {cfg.max_length} tokens).")
