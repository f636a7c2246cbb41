"""What the run Start launches will do about memory, shown before it starts: the plan the run's setup
makes (`api.plan_run`, which `api.Run.setup` calls), made by the same call from the same settings, and
its predicted peak's breakdown (`mlx_orpo.predict`), read from the model's config.json without loading
its weights."""

from __future__ import annotations

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

    @classmethod
    def of(cls, prediction) -> MemoryEstimate:
        """A predict.Prediction in the three parts the app shows."""
        parts = dict(prediction.breakdown)
        weights = parts.pop("weights", 0)
        adapters = parts.pop("adapters + optimizer", 0)
        return cls(weights / GB, adapters / GB, sum(parts.values()) / GB, prediction.layout)


def estimate_memory(cfg: TrainConfig, config: dict | None = None) -> MemoryEstimate:
    """The predicted peak of cfg's longest batch (every sequence at --max-length), without data."""
    from mlx_orpo.predict import load_model_config, predict_peak

    return MemoryEstimate.of(predict_peak(cfg, config if config is not None else load_model_config(cfg.model)))


def explicit_fields(cfg: TrainConfig) -> set[str]:
    """The settings the app's run gives the trainer explicitly: the ones that differ from TrainConfig's
    defaults, which `jobs.write_launch_config` writes (auto-fit keeps those as given)."""
    return {name for name, spec in FIELD_SPECS.items()
            if name not in ("data", "output_dir") and not spec.is_default(getattr(cfg, name))}


@dataclass
class Preview:
    """What the app shows of a run's plan before it starts."""
    cfg: TrainConfig              # the settings it trains with: fitted to the budget where they had to be
    budget: Budget | None         # None: --memory-budget off (or the run stops, see refusal)
    said: list[str]               # what the run logs about its plan
    peak: MemoryEstimate | None   # its predicted peak for its data's batches (None: not planned)
    refusal: str | None = None    # why the run stops before loading its model: nothing allowed fits


def plan_run(cfg: TrainConfig, splits=None, tokenizer=None) -> Preview:
    """The plan of the run that Start launches with `cfg`: the call the run's setup makes
    (`api.plan_run`, for the batches its data makes), with the settings the launch gives explicitly, so
    that the preview and the run cannot differ. The one place the app plans a run. `splits` and
    `tokenizer`: api.plan_run's (read once, for cfg's data and model)."""
    from mlx_orpo.api import plan_run as plan
    from mlx_orpo.fit import DoesNotFit

    try:
        planned = plan(cfg, explicit=explicit_fields(cfg), splits=splits, tokenizer=tokenizer)
    except DoesNotFit as exc:
        return Preview(cfg, None, [], None, str(exc))
    memory = planned.memory
    return Preview(planned.cfg, memory.budget, planned.lines,
                   None if memory.prediction is None else MemoryEstimate.of(memory.prediction))


def settings_text(cfg: TrainConfig) -> str:
    """The settings a memory plan may change, as the preview says them (the browser test reads them)."""
    return (f"batch {cfg.batch_size} × grad-accum {cfg.grad_accum}, max length {cfg.max_length}, "
            f"gradient checkpointing {'on' if cfg.grad_checkpoint else 'off'}")


def plan_markdown(cfg: TrainConfig, splits=None, tokenizer=None) -> str:
    """The preview: the budget, what the run will log about its plan, and the settings Start trains
    with (last, so a reader finds them in one place) with their predicted peak's breakdown."""
    try:
        plan = plan_run(cfg, splits, tokenizer)
    except Exception as exc:  # unknown model, unreadable data: say so, never fail the page
        return f"**Memory estimate:** unavailable ({exc})"
    said = [line.removeprefix("memory: ").replace("warning: ", "⚠️ ", 1) for line in plan.said]
    if plan.refusal:
        return f"⚠️ **Start will stop before loading the model:** {plan.refusal}"
    budget = (f"**Memory budget: {plan.budget}.**" if plan.budget is not None
              else "**Memory budget: off**: the run trains as set, whatever its peak.")
    e = plan.peak
    peak = "" if e is None else (
        f": predicted peak ~{e.total_gb:.2f} GB (weights {e.weights_gb:.2f} GB, adapters + optimizer "
        f"{e.adapters_gb:.2f} GB, activations and logits {e.activations_gb:.2f} GB; `python -m mlx_orpo.plan "
        f"--data` for the settings that fit)")
    return "\n\n".join([budget, *said, f"**Start trains with {settings_text(plan.cfg)}**{peak}."])
