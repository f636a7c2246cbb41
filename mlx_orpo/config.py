"""One home for every training default: the fields of `TrainConfig`.

Each field carries its help text and, where it has them, its choices and bounds; `FIELD_SPECS`
reads them once (see fields.py), and the CLI's flags (`train.py`), YAML reading, `validate()` and
the app's form are made from it. A YAML file uses the same keys. Precedence: CLI > YAML > defaults.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .budget import parse_budget
from .data_formats import check_columns
from .fields import spec_of
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
    columns: dict[str, str] | None = _opt(None, "Map the data's own column names to the roles a format reads: "
                                          "prompt=question,chosen=good,rejected=bad (roles: prompt, chosen, "
                                          "rejected, system, conversations). label=COLUMN names a column saying "
                                          "which answer is preferred: 1 (or the chosen column's name) keeps "
                                          "them, 2 (or the rejected column's name) swaps them. Default: the "
                                          "standard names.")
    system: str | None = _opt(None, "System prompt for rows that have none.")
    skip_bad_rows: bool = _opt(False, "Skip and count malformed rows instead of stopping at the first one.")
    eval_fraction: float = _opt(0.05, "Fraction of the data held out for evaluation when it has no split.",
                                bounds="in [0, 1)")
    output_dir: str | None = _opt(None, "Run directory (metrics, adapters, checkpoints). Default: runs/orpo-<time>.")

    # The ORPO objective
    beta: float = _opt(0.1, "λ in the paper (TRL: beta): weight of the odds-ratio term L_OR = -log σ(log odds).",
                       aliases=("--lambda",), bounds=">= 0")
    prompt_in_nll: bool = _opt(False, "Include prompt tokens in the NLL (SFT) term, as TRL and the paper's code do "
                               "by default. Off: NLL on the chosen response only. ℓ for the odds ratio always "
                               "uses response tokens only.")

    # Optimisation
    learning_rate: float = _opt(1e-4, "Peak learning rate (AdamW).", bounds="> 0")
    lr_schedule: str = _opt("cosine", "Learning-rate schedule after warmup: constant, linear or cosine (decay to 0).",
                            choices=("constant", "linear", "cosine"))
    warmup_steps: int = _opt(10, "Linear warmup steps from peak/(warmup+1) up to the peak learning rate.",
                             bounds=">= 0")
    weight_decay: float = _opt(0.0, "AdamW weight decay.", bounds=">= 0")
    max_grad_norm: float = _opt(1.0, "Clip the global gradient norm to this (0: no clipping).", bounds=">= 0")
    iters: int | None = _opt(None, "Optimizer steps to run. Overrides --epochs.", bounds=">= 1")
    epochs: float = _opt(1.0, "Passes over the training pairs (when --iters is not given).", bounds="> 0")
    batch_size: int = _opt(2, "Preference pairs per micro-batch (each pair runs chosen and rejected).",
                           bounds=">= 1")
    grad_accum: int = _opt(1, "Micro-batches accumulated per optimizer step.", bounds=">= 1")
    seed: int = _opt(0, "Seed for the data order, the held-out carve, LoRA initialisation and dropout.",
                     bounds=">= 0")

    # Sequence lengths
    max_length: int = _opt(1024, "Maximum tokens of prompt + response. Longer pairs are truncated: the prompt "
                           "from the left first, then the responses from the right.", bounds=">= 2")
    max_prompt_length: int | None = _opt(None, "Prompt tokens kept when a pair must be truncated "
                                         "(default: half of --max-length).", bounds=">= 1")
    min_response_length: int = _opt(4, "Pairs that cannot keep this many response tokens are dropped.",
                                    bounds=">= 1")
    pad_multiple: int | None = _opt(None, "Pad batch widths to a multiple of this many tokens (few shapes for the "
                                    "compiled step). Default: 128 on a CUDA GPU, whose fused attention backward "
                                    "(cuDNN's) takes only lengths in multiples of 128; 32 elsewhere.",
                                    bounds=">= 1")
    pad_to: str = _opt("auto", "Batch widths: multiple (of --pad-multiple: least padding) or pow2 (--pad-multiple "
                       "times a power of two: a handful of shapes, each compiled once; seconds apiece on a GPU). "
                       "auto: pow2 on a GPU, multiple on the CPU.", choices=("auto", "multiple", "pow2"))

    # Adapters
    lora_rank: int = _opt(8, "LoRA rank r.", bounds=">= 1")
    lora_alpha: float = _opt(16.0, "LoRA alpha; the update is scaled by alpha / r (PEFT's convention).",
                             bounds="> 0")
    lora_dropout: float = _opt(0.0, "Dropout on the LoRA input.", bounds="in [0, 1)")
    lora_layers: int = _opt(-1, "Adapt the last N transformer blocks (-1: all).", bounds="-1 (all) or >= 1")
    lora_targets: list[str] = _opt(("all-linear",), "Modules to adapt, by name (q_proj v_proj ...) or all-linear.")
    dora: bool = _opt(False, "Use DoRA (weight-decomposed LoRA) instead of LoRA.")

    # Model precision and memory
    bits: int | None = _opt(None, "Quantise a full-precision model on load to 4 or 8 bits (QLoRA).", choices=(4, 8))
    group_size: int = _opt(64, "Quantisation group size for --bits.", bounds=">= 1")
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
                               "limit, a warning if the plan exceeds this machine's memory.",
                               words=("auto", "off"))
    grad_checkpoint: bool = _opt(False, "Recompute each block in the backward pass: about a quarter of the "
                                 "peak memory for about 30% more time (SmolLM2-135M); what makes 7B fit.")

    # Reporting and saving
    report_every: int = _opt(10, "Write a metrics line every N steps.", bounds=">= 1")
    eval_every: int = _opt(50, "Evaluate on the held-out pairs every N steps (0: only at the end).", bounds=">= 0")
    eval_max_pairs: int = _opt(64, "Held-out pairs used per evaluation (0: all).", bounds=">= 0")
    save_every: int = _opt(100, "Write a resumable checkpoint every N steps (and always at the end).",
                           bounds=">= 1")
    keep_checkpoints: int = _opt(2, "Checkpoints kept on disk (the newest).", bounds=">= 0")
    dist_timeout: float = _opt(900.0, "Data-parallel runs (mlx.launch): stop a rank that made no progress for "
                               "this many seconds, e.g. because a peer hung (0: wait forever).", bounds=">= 0")

    def validate(self) -> TrainConfig:
        """Each option against its spec (kind, finite, choices, bounds: see FIELD_SPECS), then the
        rules between options. ValueError naming the flag."""
        for name, spec in FIELD_SPECS.items():
            spec.check(getattr(self, name))
        parse_budget(self.memory_budget)  # a bad --memory-budget raises, naming the option
        check_columns(self.columns)
        checks = [
            (self.min_response_length < self.max_length,
             f"--max-length {self.max_length} leaves no room for a response of --min-response-length "
             f"{self.min_response_length}: raise --max-length or lower --min-response-length"),
            (self.max_prompt_length is None or self.max_prompt_length < self.max_length,
             f"--max-prompt-length must be below --max-length ({self.max_length}), got {self.max_prompt_length}"),
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
# What each option is (kind, flag, choices, bounds): validate(), load_yaml, the CLI and the app read this.
FIELD_SPECS = {name: spec_of(f, _HINTS[name]) for name, f in FIELDS.items()}




def from_dict(values: dict, source: str = "config") -> TrainConfig:
    """A TrainConfig of `values` (a run's own config.json is read by rundir.read_config, by its version)."""
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
    # Read by the option's type, as the person who wrote it means it; unknown keys are from_dict's to refuse.
    return {k: FIELD_SPECS[k].read(v, f"{path}: {k}") if k in FIELD_SPECS else v for k, v in values.items()}
