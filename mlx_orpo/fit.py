"""What fits a memory budget: one engine for the fit, its refusal, the warning, the planner and the app.

    advice = advise(cfg, budget, model_config=load_model_config(cfg.model))
    advice.fitted     # the plan the fit picks (None: none fits)
    advice.options()  # what fits, in the engine's one order

The engine looks for settings that fit in one order, and its advice is the first group that finds any:
1. the run as given, then the plans the fit may choose, fastest first (`fit_candidates`): gradient
   checkpointing on, then fewer pairs per micro-batch with --grad-accum raised to keep them. Every
   optimizer step still sees the same pairs of the same data;
2. when settings the user gave explicitly kept those from fitting: the plan the fit picks without them;
3. changes to the run itself, on top of the smallest plan of 1 (the longest shorter --max-length, fewer
   --lora-layers, 4-bit weights), which are offered and never applied.

Before the model's weights load, `fit_to_memory` fits a new run to its budget (the plan of 1), or
stops it with the advice (DoesNotFit); with --memory-budget off it warns (`fits_warning`) when the run
is predicted not to fit this machine's memory. A run plans for the batches its data makes
(`api.plan_run` reads and tokenizes the data first: predict.data_shapes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from . import models
from .budget import Budget, DeviceMemory, device_memory, format_bytes
from .config import TrainConfig
from .fields import flag
from .predict import ModelShape, Prediction, adapted_layers, load_model_config, predict_peak

# What the fit may change, and the settings that, given explicitly, hold each one.
FIT_SETTINGS = ("grad_checkpoint", "batch_size", "grad_accum")
# What the advice may also change: the run itself (offered, never applied).
RUN_SETTINGS = ("max_length", "max_prompt_length", "lora_layers", "bits")
# The order a plan's flags are shown in.
FLAG_ORDER = ("batch_size", "grad_accum", "max_length", "max_prompt_length", "grad_checkpoint", "lora_layers", "bits")


def _shown(value) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class Change:
    """One setting a plan changes."""
    name: str
    before: object
    after: object

    def __str__(self) -> str:
        return f"{flag(self.name)} {_shown(self.before)} -> {_shown(self.after)}"

    def flag(self) -> str:
        """The command-line setting that makes the change."""
        if isinstance(self.after, bool):
            return flag(self.name) if self.after else f"--no-{flag(self.name)[2:]}"
        return f"{flag(self.name)} {self.after}"


class Plan(NamedTuple):
    """Settings for a run, their predicted peak, and how they differ from the run as given."""
    cfg: TrainConfig
    prediction: Prediction
    changes: list[Change]

    def flags(self, names=FLAG_ORDER) -> str:
        """The command-line settings that make the plan (those among `names`)."""
        return " ".join(c.flag() for c in sorted(self.changes, key=lambda c: FLAG_ORDER.index(c.name))
                        if c.name in names)

    def describe(self) -> str:
        return f"{self.flags() or 'as given'} (predicted {format_bytes(self.prediction.total)})"


class DoesNotFit(ValueError):
    """No plan the fit may choose is predicted to fit the budget; the message says what would, and
    `advice` (when given) holds the whole advice."""

    def __init__(self, message: str, advice: Advice | None = None):
        super().__init__(message)
        self.advice = advice


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
    return [Change(n, getattr(before, n), getattr(after, n)) for n in FIT_SETTINGS + RUN_SETTINGS
            if getattr(before, n) != getattr(after, n)]


@dataclass
class Advice:
    """What fits `budget` for `cfg`, found in the engine's order (see the module's docstring)."""
    cfg: TrainConfig
    budget: Budget
    explicit: frozenset[str]
    plans: list[Plan]  # 1: cfg as given, then the fit's candidates, each predicted
    unheld: Plan | None = None  # 2: the fit's plan without the explicit settings, when they stopped it
    trade_offs: list[Plan] = field(default_factory=list)  # 3: changes to the run, when nothing else fits

    @property
    def as_given(self) -> Prediction:
        return self.plans[0].prediction

    def fits(self, plan: Plan) -> bool:
        return plan.prediction.total <= self.budget.bytes

    @property
    def fits_as_given(self) -> bool:
        return self.fits(self.plans[0])

    @property
    def fitted(self) -> Plan | None:
        """The fastest plan the fit may choose that fits: what a run with this budget trains with."""
        return next((plan for plan in self.plans if self.fits(plan)), None)

    def options(self) -> list[Plan]:
        """Everything that fits from the first group of the engine's order that has any."""
        same_steps = [plan for plan in self.plans if self.fits(plan)]
        return same_steps or ([self.unheld] if self.unheld else self.trade_offs)

    def fit_line(self) -> str:
        """The one log line that says what the fit did: what changed, from what, to what, and the
        predicted peak against the budget."""
        fitted, budget = self.fitted, self.budget
        if not fitted.changes:
            return (f"memory: the run fits as configured: predicted peak {format_bytes(fitted.prediction.total)} "
                    f"within the budget {budget}")
        return (f"memory: the run as configured is predicted to peak at {format_bytes(self.as_given.total)}, "
                f"over the budget {budget}; fitted: {', '.join(map(str, fitted.changes))} "
                f"(same {self.cfg.batch_size * self.cfg.grad_accum} pairs per optimizer step): "
                f"predicted peak {format_bytes(fitted.prediction.total)} <= {format_bytes(budget.bytes)}")

    def refusal(self) -> str:
        """Why no plan the fit may choose fits, and what would (DoesNotFit's message, one line)."""
        cfg, smallest = self.cfg, self.plans[-1]
        several = len(self.plans) > 1
        settings = (f"batch {smallest.cfg.batch_size} x grad-accum {smallest.cfg.grad_accum}, gradient "
                    f"checkpointing {_shown(smallest.cfg.grad_checkpoint)}")
        parts = ", ".join(f"{name} {format_bytes(value)}" for name, value in smallest.prediction.breakdown.items())
        text = (f"{cfg.model} at --max-length {cfg.max_length} does not fit the memory budget {self.budget}: "
                f"{f'the smallest plan fit may choose ({settings})' if several else 'the run as given'} is "
                f"predicted to peak at {format_bytes(smallest.prediction.total)} ({parts})")
        if self.unheld:
            held = ", ".join(flag(n) for n in FIT_SETTINGS if n in self.explicit)
            return (f"{text}. You gave {held} explicitly, so they were kept; without them it would fit with "
                    f"{', '.join(map(str, self.unheld.changes))} (predicted "
                    f"{format_bytes(self.unheld.prediction.total)}). Or run as given with --memory-budget off")
        weights = smallest.prediction.breakdown["weights"]
        if weights > self.budget.bytes:
            text += f"; the base weights alone ({format_bytes(weights)}) exceed it"
        if self.trade_offs:
            trades = [f"{plan.flags(RUN_SETTINGS)} "
                      f"({format_bytes(plan.prediction.total)})" for plan in self.trade_offs]
            choices = f"; with {settings + ', ' if several else ''}these would fit: {', '.join(trades)}"
        else:
            choices = "; no shorter --max-length, fewer --lora-layers or 4-bit weights tried fits"
        return f"{text}{choices}. A smaller model, or --memory-budget off to try anyway"


def advise(cfg: TrainConfig, budget: int | Budget, *, model_config: dict | None = None,
           explicit: frozenset[str] | set[str] = frozenset(), on_gpu: bool | None = None,
           shapes: Callable[[TrainConfig], Iterable[tuple[int, ...]]] | None = None) -> Advice:
    """What fits `budget` for cfg on the model `model_config` describes (default: cfg.model's config.json):
    the one engine behind the fit, its refusal, the warning, `python -m mlx_orpo.plan` and the app.
    Settings in `explicit` (those the user gave) are never changed. cfg itself is left as it is.
    `shapes`: the batch shapes each plan's settings make of the run's data (predict.predict_peak's
    `shapes`; default: the longest batch the settings allow)."""
    budget = budget if isinstance(budget, Budget) else Budget(int(budget), "budget")
    model_config = load_model_config(cfg.model) if model_config is None else model_config

    def plan(option: TrainConfig) -> Plan:
        batches = None if shapes is None else shapes(option)
        prediction = predict_peak(option, model_config, on_gpu=on_gpu, shapes=batches)
        return Plan(option, prediction, changes_between(cfg, option))

    explicit = frozenset(explicit)
    advice = Advice(cfg, budget, explicit, [plan(option) for option in fit_candidates(cfg, explicit)])
    if advice.fitted is not None:
        return advice
    if explicit & set(FIT_SETTINGS):
        advice.unheld = advise(cfg, budget, model_config=model_config, on_gpu=on_gpu, shapes=shapes).fitted
    if advice.unheld is None:
        for kind in _trade_offs(cfg, advice.plans[-1].cfg, model_config):
            advice.trade_offs += [p for p in map(plan, kind) if advice.fits(p)][:1]
    return advice


def _trade_offs(cfg: TrainConfig, smallest: TrainConfig, model_config: dict) -> list[list[TrainConfig]]:
    """Changes to the run on top of its smallest plan, by kind, each kind's most generous first: a
    shorter --max-length, --lora-layers on a half, a quarter or an eighth of the blocks, 4-bit weights."""
    lengths = [_with(smallest, max_length=n, max_prompt_length=None if cfg.max_prompt_length is None
                     else min(cfg.max_prompt_length, n // 2))
               for n in (4096, 2048, 1024, 512, 256, 128) if cfg.min_response_length < n < cfg.max_length]
    shape = ModelShape.from_config(model_config)
    layers = adapted_layers(cfg, shape)
    fewer = [_with(smallest, lora_layers=n) for n in (layers // 2, layers // 4, layers // 8) if 1 <= n < layers]
    four_bit = [] if cfg.bits or shape.quant_bits else [_with(smallest, bits=4)]
    return [lengths, fewer, four_bit]


def fit(cfg: TrainConfig, budget: int | Budget, *, model_config: dict | None = None,
        explicit: frozenset[str] | set[str] = frozenset(), on_gpu: bool | None = None,
        shapes: Callable[[TrainConfig], Iterable[tuple[int, ...]]] | None = None) -> Plan:
    """The fastest plan for cfg whose predicted peak is within `budget`: (fitted config, its prediction,
    what changed). --max-length, the pairs and the LoRA rank are never changed; settings named in
    `explicit` are kept. Raises DoesNotFit, whose message gives the plan and the changes that would
    fit, when none of the plans fits. cfg itself is left as it is. `shapes`: as advise's."""
    advice = advise(cfg, budget, model_config=model_config, explicit=explicit, on_gpu=on_gpu, shapes=shapes)
    if advice.fitted is None:
        raise DoesNotFit(advice.refusal(), advice)
    return advice.fitted


def fits_warning(cfg: TrainConfig, model_config: dict, memory: DeviceMemory | None = None, *,
                 shapes: Callable[[TrainConfig], Iterable[tuple[int, ...]]] | None = None) -> str | None:
    """A one-paragraph warning when the run's predicted peak exceeds what MLX may use here (`memory`,
    default: device_memory()), with the engine's first advice; None when it fits. `shapes`: as advise's."""
    memory = memory or device_memory(models.on_gpu())
    advice = advise(cfg, Budget(memory.bytes, memory.what), model_config=model_config, shapes=shapes)
    if advice.fits_as_given:
        return None
    options = advice.options()
    return (f"predicted peak memory {format_bytes(advice.as_given.total)} exceeds {memory}; the run may swap "
            f"or be killed. " + (f"Settings that fit: {options[0].describe()}." if options
                                 else "No setting tried fits; try a smaller model."))


@dataclass
class MemoryPlan:
    """What the memory policy decided for a run, before its weights load (`fit_to_memory`)."""
    cfg: TrainConfig                # the settings the run trains with (fitted: a copy; else cfg itself)
    budget: Budget | None           # MLX's memory limit for the run (None: --memory-budget off)
    prediction: Prediction | None   # cfg's predicted peak (None: the model's config.json was unreadable)
    lines: list[str]                # what the run logs about it, in order
    advice: Advice | None = None    # the fit's whole advice (a new run with a budget)

    @property
    def changes(self) -> list[Change]:
        """What the fit changed."""
        return self.advice.fitted.changes if self.advice else []


def fit_to_memory(cfg: TrainConfig, budget: Budget | None, *, model_config: dict | None,
                  explicit: frozenset[str] | set[str] = frozenset(), resume: bool = False,
                  shapes: Callable[[TrainConfig], Iterable[tuple[int, ...]]] | None = None) -> MemoryPlan:
    """The run's memory policy before its weights load, for the budget `budget.resolve` gave (rank 0's
    on every rank): a new run is fitted to it (the fastest plan of `advise`; explicit settings kept), a
    resumed run keeps the settings its config.json saved, and with --memory-budget off the run is only
    warned when it does not fit this machine (`fits_warning`). `shapes`: the batches each plan's
    settings make of the run's data (advise's). cfg itself is left as it is.

    Raises DoesNotFit (a ValueError) when nothing allowed fits. Not planned (and said so) when
    `model_config` is None: the model's config.json could not be read without loading the model."""
    if model_config is None:
        return MemoryPlan(cfg, budget, None, ["memory: not planned, the model's config.json could not be read "
                                              "before loading"])
    if resume or budget is None:
        prediction = predict_peak(cfg, model_config, shapes=None if shapes is None else shapes(cfg))
        if resume:
            line = (f"memory: resumed with the settings its config.json saved (not refitted): predicted peak "
                    f"{format_bytes(prediction.total)}")
        else:
            warning = fits_warning(cfg, model_config, shapes=shapes)
            line = (f"warning: {warning}" if warning else
                    f"memory: predicted peak {format_bytes(prediction.total)} (--memory-budget off)")
        return MemoryPlan(cfg, budget, prediction, [line])
    advice = advise(cfg, budget, model_config=model_config, explicit=explicit, shapes=shapes)
    if advice.fitted is None:
        raise DoesNotFit(advice.refusal(), advice)
    return MemoryPlan(advice.fitted.cfg, budget, advice.fitted.prediction, [advice.fit_line()], advice)
