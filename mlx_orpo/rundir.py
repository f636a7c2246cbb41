"""The run directory, in one place: its layout, its format version and what each version holds, its
settings (config.json), its metrics records and its status.

    RUN/
      run.json                  marker: {"format": "mlx-orpo-run", "version": N}
      config.json               the resolved TrainConfig (read_config)
      adapter_config.json       what `mlx_lm.load(..., adapter_path=RUN)` reads
      adapters.safetensors      the newest adapters
      metrics.jsonl             one record per report ("kind": "train") and per evaluation ("kind": "eval")
      checkpoints/step-NNNNNN/  adapters.safetensors, optimizer.safetensors, state.json (a LoopState),
                                adapter_config.json, manifest.json (sizes and SHA-256 of the first three)
      data.json                 the data's fingerprint (file sizes and SHA-256), checked on resume
      model.json                what identifies the base model (model_identity.py), checked on resume and export
      status.json               what the trainer is doing now (Status), for the app
      memory.json               predicted and measured peak memory, a record per process that trained it
      .lock                     held by the one trainer writing here (runlock.py)
      train.log                 the trainer's output, when the app launched it
      launch.yaml               the resolved config the app launched the trainer with (--config)

The trainer, the checkpoints, the app and the scripts read and write a run through this module. A run
is read by its format version (FORMATS): what a run of an older version lacks is filled in with the
value it ran with, and a run of any version that lacks what its version always writes is damaged.
When what a run writes changes, VERSION goes up: tests/run_formats.json records what each version
writes, and tests/test_rundir.py fails until the record, VERSION and FORMATS agree with the code.
"""

from __future__ import annotations

import dataclasses
import json
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .config import FIELDS, TrainConfig
from .files import atomic_write_text

FORMAT = "mlx-orpo-run"
VERSION = 3

MARKER = "run.json"
CONFIG = "config.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTERS = "adapters.safetensors"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
DATA = "data.json"
MODEL = "model.json"
STATUS = "status.json"
LOCK = ".lock"
LOG = "train.log"
LAUNCH = "launch.yaml"
MEMORY = "memory.json"
RUN_FILES = (MARKER, CONFIG, ADAPTER_CONFIG, ADAPTERS, METRICS, CHECKPOINTS, DATA, MODEL, STATUS, LOCK, LOG, LAUNCH,
             MEMORY)

# A checkpoint: CHECKPOINTS/step-NNNNNN/. The manifest holds the size and SHA-256 of each VERIFIED file.
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
MANIFEST = "manifest.json"
VERIFIED = (ADAPTERS, OPTIMIZER, STATE)
CHECKPOINT_FILES = (*VERIFIED, ADAPTER_CONFIG, MANIFEST)
_STEP_PREFIX = "step-"

TRAIN, EVAL = "train", "eval"  # a metrics record's "kind"

# status.json's "phase": what the trainer is doing now. LOADING is written once the model and data are
# in (the first step, which compiles, is under way); STOPPED and FINISHED are its last words.
LOADING, TRAINING, EVALUATING, SAVING, STOPPED, FINISHED = PHASES = (
    "loading", "training", "evaluating", "saving", "stopped", "finished")


class CorruptFileError(ValueError):
    """A run or checkpoint file that is missing, cut short, altered or of an unknown version; the
    message names it."""


# -- format versions --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Format:
    """What every run of one format version holds, as its readers need it."""
    config: dict = field(default_factory=dict)  # config.json fields it may lack -> the value it ran with
    state: dict = field(default_factory=dict)   # checkpoint state fields it may lack -> the value it ran with
    memory_limit: bool = False  # config.json may name the memory budget `memory_limit` (null: off)
    manifests: bool = True      # every checkpoint has its manifest
    data_record: bool = True    # data.json is written before the first step
    model_record: bool = True   # model.json is written before the first step
    record_kinds: bool = True   # every metrics record says its kind


FORMATS = {
    # No marker. An evaluation record is told from a report by its `eval_` keys. Single-process runs
    # with plain multiples of --pad-multiple, epochs in their shuffled order and --grad-accum
    # micro-batches per step, each weighted alone; no MLX memory limit unless memory_limit gave one;
    # the data's own column names (no --columns, in versions 1 and 2).
    1: Format(config={"pad_to": "multiple", "memory_budget": "off", "dist_timeout": 0.0, "columns": None},
              state={"world_size": 1, "largest_first": False, "step_groups": False},
              memory_limit=True, manifests=False, data_record=False, model_record=False, record_kinds=False),
    # Some version-2 runs train without step groups (their steps are version 1's) and have no data.json;
    # none records its base model.
    2: Format(config={"memory_budget": "off", "columns": None}, state={"step_groups": False}, memory_limit=True,
              data_record=False, model_record=False),
    3: Format(),
}
# Version-1 runs whose config.json saves --pad-to came with the largest batch first in each epoch,
# which their checkpoint states do not say.
_V1_LARGEST_FIRST = dataclasses.replace(FORMATS[1], state={**FORMATS[1].state, "largest_first": True})


def format_version(run: Path) -> int | None:
    """The run's format version: its marker's, 1 for a run without a marker (a config.json beside a
    metrics.jsonl), None for a folder that is not a run of ours."""
    run = Path(run)
    if (run / MARKER).is_file():
        found = _json_object(run / MARKER)
        version = found.get("version") if found.get("format") == FORMAT else None
        return version if isinstance(version, int) and not isinstance(version, bool) else None
    if (run / CONFIG).is_file() and (run / METRICS).exists():
        return 1
    return None


def run_format(run: Path) -> tuple[int, Format]:
    """(version, Format) of a run; a folder that is not a run (a trainer's bare output) is read as the
    current version. CorruptFileError for a version this program does not know."""
    version = format_version(run) or VERSION
    if version not in FORMATS:
        raise CorruptFileError(f"{Path(run) / MARKER}: format version {version}, and this mlx-orpo reads versions "
                               f"{min(FORMATS)} to {VERSION}" + (": update mlx-orpo to read it" if version > VERSION
                                                                 else ""))
    if version == 1 and "pad_to" in _json_object(Path(run) / CONFIG):
        return version, _V1_LARGEST_FIRST
    return version, FORMATS[version]


def _json_object(path: Path) -> dict:
    """The JSON object in `path`; {} where it holds none."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return found if isinstance(found, dict) else {}


def missing_fields(run: Path, what: str) -> dict:
    """Values for the fields that a run's config.json (`what` = CONFIG) or checkpoint state (STATE)
    may lack by its format version: the values the run was written with."""
    _, fmt = run_format(run)
    return dict(fmt.config if what == CONFIG else fmt.state)


def write_marker(run: Path) -> None:
    atomic_write_text(Path(run) / MARKER, json.dumps({"format": FORMAT, "version": VERSION}) + "\n")


# -- config.json ------------------------------------------------------------------------------------

def read_config(run: Path) -> dict:
    """The run's settings, every TrainConfig field: its config.json, with what its format version lacks
    filled in. CorruptFileError naming the file when it is missing, not a JSON object, or holds a field
    this program does not know, lacks one its version always writes, or a value out of range."""
    run = Path(run)
    path = run / CONFIG
    if format_version(run) is None:
        raise CorruptFileError(f"{run}: not a run directory of mlx-orpo (no {MARKER}, or no {CONFIG} beside "
                               f"{METRICS}); give the folder a run was started in")
    version, fmt = run_format(run)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise CorruptFileError(f"{path}: missing; the run has no settings") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise CorruptFileError(f"{path}: corrupt run config, not JSON ({exc})") from None
    if not isinstance(values, dict):
        raise CorruptFileError(f"{path}: corrupt run config, not a JSON object")
    if fmt.memory_limit and "memory_limit" in values:
        limit = values.pop("memory_limit")
        values.setdefault("memory_budget", "off" if limit is None else limit)
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise CorruptFileError(f"{path}: corrupt run config, unknown fields {unknown} (a version-{version} run's "
                               "fields are the options' long names with '_')")
    values = {**fmt.config, **values}
    lacking = sorted(set(FIELDS) - set(values))
    if lacking:
        raise CorruptFileError(f"{path}: corrupt run config, it lacks {lacking}, which every version-{version} "
                               "run writes")
    try:
        TrainConfig(**values).validate()
    except ValueError as exc:
        raise CorruptFileError(f"{path}: corrupt run config ({exc})") from None
    return values


# -- checkpoints ------------------------------------------------------------------------------------

def checkpoint_name(step: int) -> str:
    return f"{_STEP_PREFIX}{step:06d}"


def checkpoint_step(name: str) -> int | None:
    """The step of a checkpoint folder's name (step-NNNNNN), None for any other name."""
    digits = name[len(_STEP_PREFIX):] if name.startswith(_STEP_PREFIX) else ""
    return int(digits) if digits.isdigit() else None


def run_of(path: Path) -> Path | None:
    """The run that `path` is, or that `path` is a checkpoint of; None when it is neither."""
    path = Path(path)
    if format_version(path) is not None:
        return path
    if path.parent.name == CHECKPOINTS and format_version(path.parent.parent) is not None:
        return path.parent.parent
    return None


# -- metrics.jsonl ----------------------------------------------------------------------------------

def record_kind(record: dict, fmt: Format = FORMATS[VERSION]) -> str:
    """TRAIN or EVAL: the record says so, or (version 1) an evaluation has `eval_loss`."""
    if fmt.record_kinds:
        return record.get("kind", TRAIN)
    return EVAL if "eval_loss" in record else TRAIN


def append_record(run: Path, kind: str, record: dict) -> dict:
    """Append one metrics record (`kind` first) and return it as written."""
    entry = {"kind": kind, **record}
    with open(Path(run) / METRICS, "a") as f:
        f.write(json.dumps(entry) + "\n")
    return entry


def read_records(run: Path) -> list[dict]:
    """The run's metrics records, each with its "kind", whatever the run's version. A torn last line
    (a trainer killed mid-write) and lines that are not records are passed over."""
    path = Path(run) / METRICS
    fmt = FORMATS.get(format_version(run) or VERSION, FORMATS[VERSION])
    records = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append({**record, "kind": record_kind(record, fmt)})
    return records


def truncate_records(run: Path, step: int) -> None:
    """Keep only the records up to `step`, before a resumed run appends its own."""
    path = Path(run) / METRICS
    kept = [line for line in (path.read_text(errors="replace").splitlines() if path.is_file() else [])
            if _step_of(line) is not None and _step_of(line) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _step_of(line: str) -> int | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record.get("step") if isinstance(record, dict) and isinstance(record.get("step"), int) else None


@dataclass(frozen=True)
class MemoryRecord:
    """One process's run, as memory.json records it: each run is a calibration point of the planner."""
    steps: int                           # optimizer steps done when it ended
    predicted_peak_bytes: int | None     # the plan's (predict.py), for the data's batches; None: not planned
    measured_peak_bytes: int             # mx.get_peak_memory() over its training and evaluations
    budget_bytes: int | None             # the --memory-budget it ran under (None: off)
    planned_for: str                     # the data the prediction was made for
    device: str                          # where MLX computed


def append_memory_record(run: Path, record: MemoryRecord) -> None:
    """Add one process's record to the run's memory.json ({"records": [...]}); records that cannot be
    read back are replaced (the calibration they held is lost anyway)."""
    atomic_write_text(Path(run) / MEMORY, json.dumps({"records": [*read_memory_records(run),
                                                                   dataclasses.asdict(record)]}, indent=2) + "\n")


def read_memory_records(run: Path) -> list[dict]:
    """The run's memory.json records (MemoryRecord's fields); [] when there are none."""
    records = _json_object(Path(run) / MEMORY).get("records")
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []


def eval_due(step: int, total: int | None, eval_every: int) -> bool:
    """Whether the trainer evaluates after optimizer step `step` of `total`: every `eval_every`
    steps (0: never in between) and after the last."""
    return bool((eval_every and step % eval_every == 0) or step == total)


# -- status.json ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Status:
    """status.json: what the trainer is doing now. A field the phase does not give is None."""
    phase: str                          # one of PHASES
    time: float                         # time.time() when written
    step: int | None = None             # optimizer steps done
    total_steps: int | None = None      # optimizer steps of the run
    eval_pairs: int | None = None       # held-out pairs each evaluation scores
    step_seconds: float | None = None   # TRAINING: the step just done (None: it compiled, or a save came after)
    eval_done: int | None = None        # EVALUATING: held-out pairs scored so far, of eval_total
    eval_total: int | None = None
    eval_seconds: float | None = None   # EVALUATING: seconds since the evaluation began
    resume: bool | None = None          # LOADING: whether the run resumes


def _kinds(hint) -> tuple:
    """The types a Status field's value may have (a float field takes an int too)."""
    kinds = tuple(k for k in typing.get_args(hint) or (hint,) if k is not type(None))
    return (*kinds, int) if float in kinds else kinds


_STATUS_KINDS = {name: _kinds(hint) for name, hint in typing.get_type_hints(Status).items()}


def write_status(run: Path, phase: str, **details) -> None:
    """Say what the trainer is doing now (rewritten whole at each change; readers never see half).
    `details`: Status fields (TypeError for any other name)."""
    now = time.time()
    Status(phase, now, **details)  # the names are Status's
    atomic_write_text(Path(run) / STATUS, json.dumps({"phase": phase, "time": now, **details}) + "\n")


def read_status(run: Path) -> Status | None:
    """The trainer's last status (None when there is none or it cannot be read); a field of the wrong
    type reads as None, a field this program does not know is passed over."""
    found = _json_object(Path(run) / STATUS)
    values = {name: found[name] for name, kinds in _STATUS_KINDS.items()
              if isinstance(found.get(name), kinds) and (bool in kinds or not isinstance(found[name], bool))}
    if "phase" not in values or "time" not in values:
        return None
    return Status(**values)

