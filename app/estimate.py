"""What the run Start launches will do about memory, shown before it starts: the plan the run's setup makes
(`api.prepare_run`), made by the same call from the same settings, and its predicted peak's breakdown
(`mlx_orpo.predict`), read from the model's config.json without loading its weights."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from mlx_orpo.budget import Budget
from mlx_orpo.config import FIELD_SPECS, TrainConfig

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


def explicit_fields(cfg: TrainConfig) -> set[str]:
    """The settings the app's run gives the trainer explicitly: the ones that differ from TrainConfig's
    defaults, which `jobs.write_launch_config` writes (auto-fit keeps those as given)."""
    return {name for name, spec in FIELD_SPECS.items()
            if name not in ("data", "output_dir") and not spec.is_default(getattr(cfg, name))}


@dataclass
class RunPlan:
    """The memory plan of a run before its model loads."""
    cfg: TrainConfig            # the settings it trains with: fitted to the budget where they had to be
    budget: Budget | None       # None: --memory-budget off (or the run stops, see refusal)
    said: list[str]             # what the run's setup logs about memory
    refusal: str | None = None  # why the run stops before loading its model: nothing allowed fits


def plan_run(cfg: TrainConfig) -> RunPlan:
    """The memory plan of the run that Start launches with `cfg`: the call the run's setup makes
    (`fit.fit_to_memory`), on a copy, with the settings the launch gives explicitly, so that the
    preview and the run cannot differ. The one place the app plans a run."""
    from mlx_orpo.fit import DoesNotFit, fit_to_memory

    planned, said = copy.deepcopy(cfg), []
    try:
        budget = fit_to_memory(planned, explicit=explicit_fields(cfg), log=said.append)
    except DoesNotFit as exc:
        return RunPlan(cfg, None, said, str(exc))
    return RunPlan(planned, budget, said)


def settings_text(cfg: TrainConfig) -> str:
    """The settings a memory plan may change, as the preview says them (the browser test reads them)."""
    return (f"batch {cfg.batch_size} × grad-accum {cfg.grad_accum}, max length {cfg.max_length}, "
            f"gradient checkpointing {'on' if cfg.grad_checkpoint else 'off'}")


def plan_markdown(cfg: TrainConfig) -> str:
    """The preview: the budget, what the run's setup will log about memory, and the settings Start
    trains with (last, so a reader finds them in one place) with their predicted peak's breakdown."""
    try:
        plan = plan_run(cfg)
        e = None if plan.refusal else estimate_memory(plan.cfg)
    except Exception as exc:  # unknown model, unreadable config: say so, never fail the page
        return f"**Memory estimate:** unavailable ({exc})"
    said = [line.removeprefix("memory: ").replace("warning: ", "⚠️ ", 1) for line in plan.said]
    if plan.refusal:
        return "\n\n".join([*said, f"⚠️ **Start will stop before loading the model:** {plan.refusal}"])
    budget = (f"**Memory budget: {plan.budget}.**" if plan.budget is not None
              else "**Memory budget: off**: the run trains as set, whatever its peak.")
    return "\n\n".join([budget, *said, f"**Start trains with {settings_text(plan.cfg)}**: predicted peak "
                        f"~{e.total_gb:.2f} GB (weights {e.weights_gb:.2f} GB, adapters + optimizer "
                        f"{e.adapters_gb:.2f} GB, activations and logits {e.activations_gb:.2f} GB; "
                        f"`python -m mlx_orpo.plan` for the settings that fit)."])
