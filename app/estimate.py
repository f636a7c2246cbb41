"""The memory estimate the Train tab shows before a run starts: the library's prediction
(`mlx_orpo.predict`) and fit (`mlx_orpo.fit`), read from the model's config.json without loading its weights."""

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
    from mlx_orpo.predict import load_model_config, predict_peak

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


def explicit_fields(cfg: TrainConfig) -> set[str]:
    """The settings the app's run gives the trainer explicitly: the ones that differ from TrainConfig's
    defaults, which `jobs.write_launch_config` writes (auto-fit keeps those as given)."""
    from mlx_orpo.config import FIELD_SPECS

    return {name for name, spec in FIELD_SPECS.items()
            if name not in ("data", "output_dir") and not spec.is_default(getattr(cfg, name))}


def _settings(cfg: TrainConfig) -> str:
    return (f"batch {cfg.batch_size} × grad-accum {cfg.grad_accum}, max length {cfg.max_length}, "
            f"gradient checkpointing {'on' if cfg.grad_checkpoint else 'off'}")


def fit_markdown(cfg: TrainConfig, fit_to_memory: bool = True) -> str:
    """What Start will do about memory: the budget, the plan for the settings as typed, and (with
    "Fit to memory" on) the settings auto-fit picks and their plan, by the engine the trainer uses
    (`mlx_orpo.fit.advise`)."""
    from mlx_orpo.budget import OFF, format_bytes, resolve
    from mlx_orpo.fit import advise
    from mlx_orpo.models import on_gpu
    from mlx_orpo.predict import load_model_config

    try:
        spec = "auto" if str(cfg.memory_budget).strip().lower() == OFF else cfg.memory_budget
        budget = resolve(spec, gpu=on_gpu())
        advice = advise(cfg, budget, model_config=load_model_config(cfg.model), explicit=explicit_fields(cfg))
    except Exception as exc:  # unknown model, unreadable config: say so, never fail the page
        return f"**Memory estimate:** unavailable ({exc})"
    typed = advice.as_given
    lines = [f"**Memory budget: {budget}.** As typed ({_settings(cfg)}): predicted peak "
             f"**{format_bytes(typed.total)}**."]
    if not fit_to_memory:
        verdict = "fits" if typed.total <= budget.bytes else "⚠️ exceeds the budget; the run may swap or be killed"
        return "\n\n".join(lines + [f"Fit to memory is off: the run trains as typed ({verdict})."])
    fitted = advice.fitted
    if fitted is None:
        return "\n\n".join(lines + [f"⚠️ **Does not fit; Start will stop before loading the model:** "
                                     f"{advice.refusal()}"])
    if not fitted.changes:
        return "\n\n".join(lines + ["Fits: the run trains as typed."])
    return "\n\n".join(lines + [f"**Fitted:** {', '.join(map(str, fitted.changes))} ({_settings(fitted.cfg)}): "
                                f"predicted peak **{format_bytes(fitted.prediction.total)}**. Same pairs per "
                                f"optimizer step."])
