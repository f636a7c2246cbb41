"""One home for every training default: the fields of `TrainConfig`.

The CLI (`train.py`) and the app build their widgets from these fields and their
help text; a YAML file uses the same keys. Precedence: CLI > YAML > defaults.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .budget import parse_budget
from .files import atomic_write_text


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    # What to train
    model: str = _opt("smollm2-135m", "Model: an alias (smollm2-135m, mistral-7b-4bit, llama-2-7b-4bit, phi-2), "
                      "a local MLX/Hugging Face directory, a .gguf file, or a Hub repo id.")
    data: str | None = _opt(None, "Preference data: .jsonl/.json/.csv/.parquet file, a directory with "
                            "train.*/valid.*, or a Hub dataset (name[:split]). Default: the shipped demo set.")
    eval_data: str | None = _opt(None, "Held-out preference data. Default: the data's validation split if it "
                                 "has one, else --eval-fraction of it carved off with --seed.")
    format: str = _opt("auto", "Data format: auto, prompt_strings, trl_conversational, ultrafeedback, "
                       "sharegpt, hh.")
    system: str | None = _opt(None, "System prompt for rows that have none.")
    skip_bad_rows: bool = _opt(False, "Skip and count malformed rows instead of stopping at the first one.")
    eval_fraction: float = _opt(0.05, "Fraction of the data held out for evaluation when it has no split.")
    output_dir: str | None = _opt(None, "Run directory (metrics, adapters, checkpoints). Default: runs/orpo-<time>.")

    # The ORPO objective
    beta: float = _opt(0.1, "λ in the paper (TRL: beta): weight of the odds-ratio term L_OR = -log σ(log odds).",
                       aliases=("--lambda",))
    prompt_in_nll: bool = _opt(False, "Include prompt tokens in the NLL (SFT) term, as TRL and the paper's code do "
                               "by default. Off: NLL on the chosen response only. ℓ for the odds ratio always "
                               "uses response tokens only.")

    # Optimisation
    learning_rate: float = _opt(1e-4, "Peak learning rate (AdamW).")
    lr_schedule: str = _opt("cosine", "Learning-rate schedule after warmup: constant, linear or cosine (decay to 0).")
    warmup_steps: int = _opt(10, "Linear warmup steps from peak/(warmup+1) up to the peak learning rate.")
    weight_decay: float = _opt(0.0, "AdamW weight decay.")
    max_grad_norm: float = _opt(1.0, "Clip the global gradient norm to this (0: no clipping).")
    iters: int | None = _opt(None, "Optimizer steps to run. Overrides --epochs.")
    epochs: float = _opt(1.0, "Passes over the training pairs (when --iters is not given).")
    batch_size: int = _opt(2, "Preference pairs per micro-batch (each pair runs chosen and rejected).")
    grad_accum: int = _opt(1, "Micro-batches accumulated per optimizer step.")
    seed: int = _opt(0, "Seed for the data order, the held-out carve, LoRA initialisation and dropout.")

    # Sequence lengths
    max_length: int = _opt(1024, "Maximum tokens of prompt + response. Longer pairs are truncated: the prompt "
                           "from the left first, then the responses from the right.")
    max_prompt_length: int | None = _opt(None, "Prompt tokens kept when a pair must be truncated "
                                         "(default: half of --max-length).")
    min_response_length: int = _opt(4, "Pairs that cannot keep this many response tokens are dropped.")
    pad_multiple: int | None = _opt(None, "Pad batch widths to a multiple of this many tokens (few shapes for the "
                                    "compiled step). Default: 128 on a CUDA GPU, whose fused attention backward "
                                    "(cuDNN's) takes only lengths in multiples of 128; 32 elsewhere.")
    pad_to: str = _opt("auto", "Batch widths: multiple (of --pad-multiple: least padding) or pow2 (--pad-multiple "
                       "times a power of two: a handful of shapes, each compiled once; seconds apiece on a GPU). "
                       "auto: pow2 on a GPU, multiple on the CPU.", choices=("auto", "multiple", "pow2"))

    # Adapters
    lora_rank: int = _opt(8, "LoRA rank r.")
    lora_alpha: float = _opt(16.0, "LoRA alpha; the update is scaled by alpha / r (PEFT's convention).")
    lora_dropout: float = _opt(0.0, "Dropout on the LoRA input.")
    lora_layers: int = _opt(-1, "Adapt the last N transformer blocks (-1: all).")
    lora_targets: list[str] = _opt(("all-linear",), "Modules to adapt, by name (q_proj v_proj ...) or all-linear.",
                                   nargs="+")
    dora: bool = _opt(False, "Use DoRA (weight-decomposed LoRA) instead of LoRA.")

    # Model precision and memory
    bits: int | None = _opt(None, "Quantise a full-precision model on load to 4 or 8 bits (QLoRA).", choices=(4, 8))
    group_size: int = _opt(64, "Quantisation group size for --bits.")
    dtype: str = _opt("auto", "Compute dtype of the base weights: auto (float32 on CPU, the checkpoint's "
                      "dtype on GPU), float32, float16, bfloat16.",
                      choices=("auto", "float32", "float16", "bfloat16"))
    memory_budget: str = _opt("auto", "Memory the run may use: auto, a size (e.g. 16GB) or off. auto: 90% of "
                               "Metal's recommended working set on a Mac, 90% of a CUDA GPU's memory, 75% of "
                               "RAM on the CPU (the rest is left to the OS and the app). Before the model loads, "
                               "a run planned over it is fitted: gradient checkpointing on, then fewer pairs per "
                               "micro-batch with more --grad-accum (same pairs per step, same data; never a "
                               "shorter --max-length or lower rank). Settings given on the command line or in "
                               "--config count as explicit and are never changed: if they cannot fit, the run "
                               "stops and says what would. The budget is also MLX's memory limit for the run "
                               "(MLX waits for queued kernels rather than pass it). off: no fitting, MLX's own "
                               "limit, a warning if the plan exceeds this machine's memory.")
    grad_checkpoint: bool = _opt(False, "Recompute each block in the backward pass: about a quarter of the "
                                 "peak memory for about 30% more time (SmolLM2-135M); what makes 7B fit.")

    # Reporting and saving
    report_every: int = _opt(10, "Write a metrics line every N steps.")
    eval_every: int = _opt(50, "Evaluate on the held-out pairs every N steps (0: only at the end).")
    eval_max_pairs: int = _opt(64, "Held-out pairs used per evaluation (0: all).")
    save_every: int = _opt(100, "Write a resumable checkpoint every N steps (and always at the end).")
    keep_checkpoints: int = _opt(2, "Checkpoints kept on disk (the newest).")
    dist_timeout: float = _opt(900.0, "Data-parallel runs (mlx.launch): stop a rank that made no progress for "
                               "this many seconds, e.g. because a peer hung (0: wait forever).")

    def validate(self) -> TrainConfig:
        _check_numbers(self)  # first: the range checks below assume real, finite numbers
        _check_kinds(self)
        parse_budget(self.memory_budget)  # a bad --memory-budget raises, naming the option
        checks = [
            (self.beta >= 0, "--beta (λ) must be >= 0"),
            (self.learning_rate > 0, "--learning-rate must be > 0"),
            (self.batch_size >= 1 and self.grad_accum >= 1, "--batch-size and --grad-accum must be >= 1"),
            (self.iters is None or self.iters >= 1, "--iters must be >= 1"),
            (self.epochs > 0, "--epochs must be > 0"),
            (self.max_length >= 2, f"--max-length must be >= 2 tokens, got {self.max_length}"),
            (self.min_response_length > 0, "--min-response-length must be >= 1"),
            (self.min_response_length < self.max_length,
             f"--max-length {self.max_length} leaves no room for a response of --min-response-length "
             f"{self.min_response_length}: raise --max-length or lower --min-response-length"),
            (self.max_prompt_length is None or 0 < self.max_prompt_length < self.max_length,
             "--max-prompt-length must be in (0, --max-length)"),
            (self.lr_schedule in ("constant", "linear", "cosine"), "--lr-schedule: constant, linear or cosine"),
            (self.lora_rank >= 1, "--lora-rank must be >= 1"),
            (0 <= self.eval_fraction < 1, "--eval-fraction must be in [0, 1)"),
            (self.pad_multiple is None or self.pad_multiple >= 1, "--pad-multiple must be >= 1"),
            (self.pad_to in ("auto", "multiple", "pow2"), "--pad-to must be auto, multiple or pow2"),
            (min(self.report_every, self.save_every) >= 1, "--report-every and --save-every must be >= 1"),
            (self.lora_alpha > 0, "--lora-alpha must be > 0"),
            (0 <= self.lora_dropout < 1, "--lora-dropout must be in [0, 1)"),
            (self.lora_layers == -1 or self.lora_layers >= 1, "--lora-layers must be -1 (all) or >= 1"),
            (min(self.warmup_steps, self.eval_every, self.eval_max_pairs, self.keep_checkpoints) >= 0,
             "--warmup-steps, --eval-every, --eval-max-pairs and --keep-checkpoints must be >= 0"),
            (self.weight_decay >= 0 and self.max_grad_norm >= 0, "--weight-decay and --max-grad-norm must be >= 0"),
            (self.group_size >= 1 and self.seed >= 0, "--group-size must be >= 1 and --seed >= 0"),
            (self.dist_timeout >= 0, "--dist-timeout must be >= 0"),
            (self.bits in (None, 4, 8), "--bits must be 4 or 8"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.lora_targets = list(self.lora_targets)
        return self

    @property
    def prompt_budget(self) -> int:
        """Prompt tokens kept when truncating (--max-prompt-length, or half of --max-length)."""
        return self.max_prompt_length or self.max_length // 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


@dataclass(frozen=True)
class FieldSpec:
    """One option as every front end needs it: the CLI's flags and the app's widgets are built from these."""
    name: str
    kind: type            # bool, int, float, str, or list (of str)
    optional: bool        # None is a value (the help text says what None means)
    default: object
    help: str
    choices: tuple | None
    nargs: str | None
    aliases: tuple

    @property
    def flag(self) -> str:
        return f"--{self.name.replace('_', '-')}"


def _spec(f: dataclasses.Field) -> FieldSpec:
    hint = _HINTS[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    inner = args[0] if optional and args else hint
    kind = list if typing.get_origin(inner) is list else inner
    return FieldSpec(f.name, kind, optional, f.default, f.metadata["help"], f.metadata.get("choices"),
                     f.metadata.get("nargs"), tuple(f.metadata.get("aliases", ())))


FIELD_SPECS = {name: _spec(f) for name, f in FIELDS.items()}


def _check_numbers(cfg: TrainConfig) -> None:
    """Every numeric option is a real, finite number of its field's type.

    Unchecked, `--learning-rate inf` trains to all-NaN adapters and exits 0, `--beta inf` and
    `--lora-alpha nan` train nothing and exit 0, `--epochs inf` overflows: inf passes
    every `>= 0` check, an unchecked field passes nan, and a YAML file can give a string.
    """
    for name, hint in _HINTS.items():
        kinds = {a for a in typing.get_args(hint) if a is not type(None)} or {hint}
        value = getattr(cfg, name)
        if value is None or not kinds & {int, float}:
            continue
        flag, integer = f"--{name.replace('_', '-')}", float not in kinds
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            raise ValueError(f"{flag} must be {'an integer' if integer else 'a number'}, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{flag} must be a finite number, got {value}")


def _check_kinds(cfg: TrainConfig) -> None:
    """Every switch is a bool, every list a list of names, every text option text (a hand-edited
    config.json or a Python caller can give anything, and `lora_targets: 5` would fail deep in the run)."""
    for name, hint in _HINTS.items():
        value, flag = getattr(cfg, name), f"--{name.replace('_', '-')}"
        if typing.get_origin(hint) is list:
            if not (isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value)):
                raise ValueError(f"{flag} must be a list of names, got {value!r}")
            continue
        kinds = {a for a in typing.get_args(hint) if a is not type(None)} or {hint}
        if value is None or kinds & {int, float}:
            continue
        if bool in kinds and not isinstance(value, bool):
            raise ValueError(f"{flag} must be true or false, got {value!r}")
        if kinds == {str} and not isinstance(value, str):
            raise ValueError(f"{flag} must be text, got {value!r}")


def from_dict(values: dict, source: str = "config") -> TrainConfig:
    if "memory_limit" in values:  # a run's config.json may name the budget memory_limit (None: off)
        values = dict(values)
        limit = values.pop("memory_limit")
        values.setdefault("memory_budget", "off" if limit is None else limit)
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown}; valid keys are the long flag names with '_'")
    return TrainConfig(**values)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ValueError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    return {k: _yaml_value(k, v, path) if k in FIELDS else v for k, v in values.items()}


_TRUE, _FALSE = ("true", "yes", "on", "y"), ("false", "no", "off", "n")
_NUMBER = re.compile(r"[+-]?(\d[\d_]*\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _yaml_value(name: str, value, path: Path):
    """A YAML value as the person who wrote it means it, by the field's type; ValueError naming the
    key when it is ambiguous. PyYAML reads YAML 1.1: `5e-5` is a string there, and `"false"` a
    string that Python takes as true."""
    hint = _HINTS[name]
    kinds = {a for a in typing.get_args(hint) if a is not type(None)} or {hint}
    where = f"{path}: {name}"
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise ValueError(f"{where} has no value; give one or leave the key out")
    if bool in kinds:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"{where} must be true or false, got {value!r}")
    if kinds & {int, float}:
        integer = float not in kinds
        number = value
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            number = float(value.strip().replace("_", ""))
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            if kinds & {str}:  # a number or a word
                return value
            raise ValueError(f"{where} must be {'an integer' if integer else 'a number'}, got {value!r}")
        if integer:
            if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
                raise ValueError(f"{where} must be an integer, got {value!r}")
            return int(number)
        return float(number)
    if typing.get_origin(hint) is list or any(typing.get_origin(k) is list for k in kinds):
        if isinstance(value, str):
            return value.split()
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return value
        raise ValueError(f"{where} must be a list of names (e.g. [q_proj, v_proj]), got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. a memory size or a model name that happens to be a number
    if value is False and name == "memory_budget":
        return "off"  # YAML 1.1 reads the documented `memory_budget: off` as false
    if not isinstance(value, str):
        raise ValueError(f"{where} must be text, got {value!r}")
    return value
