"""The run directory, in one place: its layout, its format version and its metrics records.

    RUN/
      run.json                  marker: {"format": "mlx-orpo-run", "version": N}
      config.json               the resolved TrainConfig
      adapter_config.json       what `mlx_lm.load(..., adapter_path=RUN)` reads
      adapters.safetensors      the newest adapters
      metrics.jsonl             one record per report ("kind": "train") and per evaluation ("kind": "eval")
      checkpoints/step-NNNNNN/  see checkpoint.py
      data.json                 the data's fingerprint (file sizes and SHA-256), checked on resume
      status.json               what the trainer is doing now (phase, evaluation progress), for the app
      .lock                     held by the one trainer writing here (runlock.py)
      train.log                 the trainer's output, when the app launched it
      launch.yaml               the resolved config the app launched the trainer with (--config)

The trainer, the checkpoints, the app and the scripts read and write a run through
this module. Runs are read by their format version: version 1 (before run.json)
has no marker and tells an evaluation record from a report by its `eval_` keys.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .files import atomic_write_text

FORMAT = "mlx-orpo-run"
VERSION = 2

MARKER = "run.json"
CONFIG = "config.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTERS = "adapters.safetensors"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
DATA = "data.json"
STATUS = "status.json"
LOCK = ".lock"
LOG = "train.log"
LAUNCH = "launch.yaml"

TRAIN, EVAL = "train", "eval"  # a metrics record's "kind"

# status.json's "phase": what the trainer is doing now. LOADING is written once the model and data are
# in (the first step, which compiles, is under way); STOPPED and FINISHED are its last words.
LOADING, TRAINING, EVALUATING, SAVING, STOPPED, FINISHED = (
    "loading", "training", "evaluating", "saving", "stopped", "finished")


def format_version(run: Path) -> int | None:
    """The run's format version: its marker's, 1 for a run from before markers (a config.json or
    metrics.jsonl without run.json), None for a folder that is not a run of ours."""
    run = Path(run)
    marker = run / MARKER
    if marker.is_file():
        try:
            found = json.loads(marker.read_text())
        except (OSError, ValueError):
            return None
        if isinstance(found, dict) and found.get("format") == FORMAT and isinstance(found.get("version"), int):
            return found["version"]
        return None
    if (run / CONFIG).is_file() and (run / METRICS).exists():
        return 1
    return None


# What a version-1 run's files may lack, read as the behaviour they were written with; a run of the
# current version writes every field, so nothing is filled in for it.
_V1_MISSING = {
    CONFIG: {"pad_to": "multiple"},                        # plain multiples of --pad-multiple
    "state": {"largest_first": False, "step_groups": False},  # a checkpoint's epoch order and step weighting
}


def missing_fields(run: Path, what: str) -> dict:
    """Values for the fields a run's config.json (`what` = CONFIG) or checkpoint state ("state")
    lacks, by the run's format version."""
    return dict(_V1_MISSING[what]) if format_version(run) == 1 else {}


def write_marker(run: Path) -> None:
    atomic_write_text(Path(run) / MARKER, json.dumps({"format": FORMAT, "version": VERSION}) + "\n")


def record_kind(record: dict, version: int = VERSION) -> str:
    """TRAIN or EVAL: a version-2 record says so; a version-1 evaluation has `eval_loss`."""
    if version >= 2:
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
    version = format_version(run) or VERSION
    records = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append({**record, "kind": record_kind(record, version)})
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


def eval_due(step: int, total: int | None, eval_every: int) -> bool:
    """Whether the trainer evaluates after optimizer step `step` of `total`: every `eval_every`
    steps (0: never in between) and after the last."""
    return bool((eval_every and step % eval_every == 0) or step == total)


def write_status(run: Path, phase: str, **details) -> None:
    """Say what the trainer is doing now (rewritten whole at each change; readers never see half)."""
    atomic_write_text(Path(run) / STATUS, json.dumps({"phase": phase, "time": time.time(), **details}) + "\n")


def read_status(run: Path) -> dict:
    """The trainer's last status ({} when there is none or it cannot be read)."""
    try:
        found = json.loads((Path(run) / STATUS).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
