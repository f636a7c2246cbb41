"""The memory estimate the Train tab shows before a run starts: the library's planner
(`mlx_orpo.plan`), read from the model's config.json without loading its weights."""

from __future__ import annotations

from dataclasses import dataclass

from mlx_orpo.config import TrainConfig

GB = 1e9


@dataclass
class MemoryEstimate:
    weights_gb: float
    adapters_gb: float     # LoRA weights, gradients and AdamW moments
    activations_gb: float  # activations kept for the backward pass, logits and overhead
    layout: str

    @property
    def total_gb(self) -> float:
        return self.weights_gb + self.adapters_gb + self.activations_gb


def estimate_memory(cfg: TrainConfig, config: dict | None = None) -> MemoryEstimate:
    from mlx_orpo.plan import load_model_config, predict_peak

    prediction = predict_peak(cfg, config if config is not None else load_model_config(cfg.model))
    parts = dict(prediction.breakdown)
    weights = parts.pop("weights", 0)
    adapters = parts.pop("adapters + optimizer", 0)
    return MemoryEstimate(weights / GB, adapters / GB, sum(parts.values()) / GB, prediction.layout)


def estimate_markdown(cfg: TrainConfig) -> str:
    try:
        e = estimate_memory(cfg)
    except Exception as exc:  # unknown model, unreadable config: say so, never fail the page
        return f"**Memory estimate:** unavailable ({exc})"
    return (f"**Predicted peak memory: ~{e.total_gb:.1f} GB** — weights {e.weights_gb:.2f} GB, "
            f"adapters + optimizer {e.adapters_gb:.2f} GB, activations and logits {e.activations_gb:.2f} GB "
            f"(batch {cfg.batch_size} pairs, max length {cfg.max_length}; `python -m mlx_orpo.plan` "
            f"for the breakdown and settings that fit).")
