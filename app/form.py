"""The Train tab's settings form, made from the field table (`mlx_orpo.config.FIELD_SPECS`).

A field's kind picks its widget (a switch, a dropdown of its choices, a number box bounded as the field
is, or a text box), its help text is the widget's info, and a widget's value is read back by the field's
own reader, as a YAML file's value is (`FieldSpec.read`); `TrainConfig.validate()` has the last word.
Only the labels, and the words shown for a choice, are the app's.
"""

from __future__ import annotations

import gradio as gr

from mlx_orpo.config import FIELD_SPECS, TrainConfig

# The fields the form shows, in order, with their labels.
LABELS = {
    "beta": "λ (beta): odds-ratio weight", "learning_rate": "Learning rate",
    "epochs": "Epochs", "iters": "Iterations",
    "batch_size": "Batch size (pairs)", "grad_accum": "Gradient accumulation",
    "max_length": "Max length (tokens)", "lora_rank": "LoRA rank r", "lora_alpha": "LoRA alpha",
    "warmup_steps": "Warmup steps", "report_every": "Report every (steps)",
    "eval_every": "Evaluate every (steps)", "save_every": "Checkpoint every (steps)", "seed": "Seed",
    "bits": "Quantise base (bits)", "grad_checkpoint": "Gradient checkpointing",
    "memory_budget": "Memory budget (auto, a size such as 16GB, or off)",
}
FORM = list(LABELS)
# A dropdown's value for None (an optional field with choices); the words shown for a choice.
NONE_CHOICE = "none"
CHOICE_WORDS = {"bits": {None: "none (full precision)", 4: "4-bit (QLoRA)", 8: "8-bit (QLoRA)"}}


def help_text(name: str) -> str:
    spec = FIELD_SPECS[name]
    blank = spec.optional and spec.kind in (int, float) and not spec.choices
    return spec.help + (" Blank: the default (None)." if blank else "")


def choice_options(name: str) -> list[tuple[str, str]]:
    """A dropdown's (shown, value) pairs: "none" first for an optional field, then the field's choices."""
    spec, words = FIELD_SPECS[name], CHOICE_WORDS.get(name, {})
    options = [(words.get(c, str(c)), str(c)) for c in spec.choices]
    return ([(words.get(None, NONE_CHOICE), NONE_CHOICE)] if spec.optional else []) + options


def widget_value(name: str, value):
    """A field's value as its widget shows it."""
    spec = FIELD_SPECS[name]
    if spec.choices:
        return NONE_CHOICE if value is None else str(value)
    if spec.kind is list:
        return " ".join(value)
    return value


def field_value(name: str, value):
    """A widget's value -> the field's value, read as a YAML file's value is. A blank box is None: the
    default where the field is optional, else a ValueError naming the flag."""
    blank = value is None or (isinstance(value, str) and not value.strip()) or value == NONE_CHOICE
    return FIELD_SPECS[name].read(None if blank else value, FIELD_SPECS[name].flag)


def config_from_form(model: str, values: list) -> TrainConfig:
    """TrainConfig from the widgets' values (in FORM order); TrainConfig.validate() has the last word."""
    kwargs = {"model": (model or "").strip() or FIELD_SPECS["model"].default}
    kwargs.update({name: field_value(name, value) for name, value in zip(FORM, values)})
    return TrainConfig(**kwargs).validate()


def form_values(cfg: dict) -> list:
    """The widgets' values for a saved config (config.json), in FORM order."""
    return [widget_value(name, cfg.get(name, FIELD_SPECS[name].default)) for name in FORM]


def widget(name: str, value, interactive: bool = True) -> gr.components.Component:
    """The widget for one field, showing `value`: its kind picks the widget, its bounds limit a number."""
    spec = FIELD_SPECS[name]
    common = dict(label=LABELS[name], info=help_text(name), elem_id=f"train-{name}", interactive=interactive)
    if spec.kind is bool:
        return gr.Checkbox(value, **common)
    if spec.choices:
        return gr.Dropdown(choice_options(name), value=widget_value(name, value), **common)
    if spec.kind in (int, float):
        integer, bounds = spec.kind is int, spec.bounds
        return gr.Number(value, minimum=bounds and bounds.lowest, maximum=bounds and bounds.highest,
                         precision=0 if integer else None, step=1 if integer else None, **common)
    return gr.Textbox(widget_value(name, value), **common)
