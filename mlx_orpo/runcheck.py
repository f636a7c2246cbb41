"""The checks a run passes before anything is written to its directory.

    check_run(cfg, run_dir, splits, resume=...)   # raises RunCheckError naming the problem

1. The run writes only into its own directory: `--output-dir` is new, empty, or a run of
   ours (rundir.format_version), and never the model or inside it: a run writes its own
   config.json, which would replace a model's.
2. A resume is the same run: the options that shape it are the run's own (config.json), its
   base model is the one it started on (rundir.MODEL, model_identity.py), and its data is the data
   it started with (rundir.DATA: sizes and SHA-256 of the files, or of the pairs read from the
   Hub). A change stops the resume unless the caller allows it (`--allow-changed-model`,
   `--allow-changed-data`), which is logged and recorded; so does a damaged record, or a missing
   one in a run whose format version writes it from the start (rundir.FORMATS). An export checks
   the base model the same way (check_base_model).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import rundir
from .config import FIELDS, TrainConfig
from .fields import flag, shown
from .files import atomic_write_text, dangling_link, file_digest, overlap
from .model_identity import identify, is_record, model_changes

# Files a front end may put in a run directory before the trainer starts (the app's log and the
# config it launches the trainer with).
_BEFORE_START = {rundir.LOCK, rundir.LOG, rundir.STATUS, rundir.LAUNCH}
# Options a resume may change: how the run is watched, saved and fitted into memory, never what it
# computes (a changed grad_checkpoint recomputes the same values).
RESUMABLE_CHANGES = {"output_dir", "report_every", "save_every", "keep_checkpoints", "dist_timeout",
                     "memory_budget", "grad_checkpoint"}


class RunCheckError(ValueError):
    """A run that must not start; the message names the option and what to do."""


def check_output_dir(run_dir: Path, model: str | None, *, resume: bool) -> None:
    """Refuse a run directory that is not new, empty or a run of ours, or that is or holds the model."""
    from .models import resolve_model

    run_dir = Path(run_dir)
    flag = "--resume" if resume else "--output-dir"
    for source in {model, resolve_model(model)} - {None}:  # resolve_model: a missing --model path named
        problem = overlap(run_dir, source) if Path(source).expanduser().exists() else None
        if problem in ("is", "lies inside"):
            raise RunCheckError(f"{flag} {run_dir} {problem} the model {source}; the run would overwrite the "
                                "model's files: choose a run directory outside it")
        if problem == "contains":
            raise RunCheckError(f"{flag} {run_dir} contains the model {source}; choose a new folder for the run")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunCheckError(f"{flag} {run_dir} is a file, not a folder; choose a new folder for the run")
    if (link := dangling_link(run_dir)) is not None:
        raise RunCheckError(f"{flag} {run_dir}: {link}; create what it points to, remove the link, or choose "
                            "another folder for the run")
    is_run = run_dir.is_dir() and rundir.format_version(run_dir) is not None
    if resume:
        if not is_run:
            raise RunCheckError(f"--resume {run_dir}: not a run directory of mlx-orpo (no {rundir.MARKER} or "
                                f"{rundir.CONFIG}); give the folder a run was started in")
        return
    if is_run or (run_dir / rundir.METRICS).exists():
        raise RunCheckError(f"{run_dir} already holds a run; use --resume {run_dir} (a run stopped before its "
                            "first checkpoint starts again from step 0) or another --output-dir")
    if run_dir.is_dir():
        others = sorted(p.name for p in run_dir.iterdir() if p.name not in _BEFORE_START)
        if others:
            shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            raise RunCheckError(f"--output-dir {run_dir} is not empty and not a run directory of mlx-orpo (it "
                                f"holds {shown}); a run writes config.json and more there: choose a new or "
                                "empty folder")


def check_same_run(cfg: TrainConfig, run_dir: Path) -> None:
    """Refuse options that differ from the resumed run's own (config.json), naming the run's values."""
    try:
        saved = rundir.read_config(run_dir)
    except rundir.CorruptFileError as exc:
        raise RunCheckError(str(exc)) from None
    changed = []
    for name in sorted(set(FIELDS) - RESUMABLE_CHANGES):
        ours, theirs = _comparable(getattr(cfg, name)), _comparable(saved[name])
        if ours != theirs:
            changed.append(f"{flag(name)} {shown(theirs)} (given: {shown(ours)})")
    if changed:
        raise RunCheckError(f"--resume continues {run_dir} as it was started; it was run with "
                            f"{'; '.join(changed)}. Leave those options out, or start a new run with "
                            "--output-dir")


def _comparable(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def data_fingerprint(cfg: TrainConfig, splits) -> dict:
    """What identifies the run's data: per local source its files' sizes and SHA-256; for a Hub
    dataset the SHA-256 of the pairs read from it (whatever revision they came from)."""
    from .data import EXTENSIONS, data_source

    train, valid, _ = splits
    found = {}
    for key, source in (("data", data_source(cfg)), ("eval_data", cfg.eval_data)):
        if source is None:
            continue
        path = Path(source).expanduser()
        if path.is_file() or path.is_dir():
            files = [path] if path.is_file() else sorted(p for p in path.iterdir()
                                                         if p.is_file() and p.suffix.lower() in EXTENSIONS)
            # By name: the run's config holds the path, and the shipped demo set moves with the package.
            found[key] = {"source": str(getattr(cfg, key) or "the shipped demo set"),
                          "files": {p.name: file_digest(p) for p in files}}
        else:
            digest = hashlib.sha256()
            for pair in [*train, *valid]:
                digest.update(json.dumps(dataclasses.asdict(pair), sort_keys=True, default=str).encode())
            found[key] = {"source": str(getattr(cfg, key)), "hub": True, "pairs": len(train) + len(valid),
                          "pairs_sha256": digest.hexdigest()}
    return found


def is_fingerprint(found) -> bool:
    """Whether `found` (data.json's contents) has the shape data_fingerprint() writes."""
    if not isinstance(found, dict):
        return False
    for source in found.values():
        if not isinstance(source, dict) or not isinstance(source.get("source"), str):
            return False
        if source.get("hub"):
            if not isinstance(source.get("pairs"), int) or not isinstance(source.get("pairs_sha256"), str):
                return False
        elif not isinstance(source.get("files"), dict) or not all(
                isinstance(entry, dict) and isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)
                for entry in source["files"].values()):
            return False
    return True


def write_fingerprint(run_dir: Path, fingerprint: dict) -> None:
    atomic_write_text(Path(run_dir) / rundir.DATA, json.dumps(fingerprint, indent=2) + "\n")


def write_model_record(run_dir: Path, spec: str | None) -> None:
    """Record what identifies the base model `spec` names (model_identity.py); the hashes of an earlier
    record are kept for the files whose size and modification time it holds."""
    previous = _read_json(Path(run_dir) / rundir.MODEL)
    record = identify(spec, previous=previous if is_record(previous) else None)
    atomic_write_text(Path(run_dir) / rundir.MODEL, json.dumps(record, indent=2) + "\n")


@dataclass(frozen=True)
class _Record:
    """One of a run's records of what it was started on, and how a resume or an export treats it."""
    name: str                              # its file in the run
    what: str                              # what it records, for messages
    allow: str                             # the flag that lets a run go on without it
    kept: Callable[[rundir.Format], bool]  # whether every run of a format version writes it
    valid: Callable[[object], bool]        # whether a file's contents have the record's shape


DATA_RECORD = _Record(rundir.DATA, "data", "--allow-changed-data", lambda fmt: fmt.data_record, is_fingerprint)
MODEL_RECORD = _Record(rundir.MODEL, "base model", "--allow-changed-model", lambda fmt: fmt.model_record, is_record)
_MISSING = object()


def _read_json(path: Path):
    """The JSON in `path`: _MISSING when there is no file, None when it cannot be read as JSON."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return _MISSING
    except (OSError, ValueError, RecursionError):
        return None


def read_record(run_dir: Path, record: _Record, *, allowed: bool, log: Callable[[str], None],
                doing: str = "resume") -> dict | None:
    """A run's record (`record`), or None where it has none that can be trusted: a run of a version
    that does not always write it (said once in the log), or one let go on by `record.allow`
    (`allowed`, logged). A record that is missing where the run's version always writes one, or that
    is damaged, refuses the `doing` ("resume", "export") with a RunCheckError naming the file."""
    run_dir = Path(run_dir)
    path, (version, fmt) = run_dir / record.name, rundir.run_format(run_dir)
    found = _read_json(path)
    if found is not _MISSING and record.valid(found):
        return found
    if found is _MISSING and not record.kept(fmt):
        log(f"{run_dir} is a version-{version} run and has no record of its {record.what} ({record.name}); "
            + (f"recording the {record.what} it resumes with" if doing == "resume" else
               f"the {record.what} is not checked"))
        return None
    problem = ("is missing, and a version-{version} run writes it before its first step" if found is _MISSING
               else "is damaged (not JSON, or not the record a run writes)").format(version=version)
    anew = " (recorded anew)" if doing == "resume" else ""
    if allowed:
        log(f"warning: {record.allow}: {path} {problem}; the {doing} goes on with the {record.what} given now{anew}")
        return None
    raise RunCheckError(f"{path} {problem}, so this {doing} cannot show that its {record.what} is the run's: put "
                        f"the file back, or pass {record.allow} to go on with the {record.what} given now{anew}")


def data_changes(recorded: dict, now: dict) -> list[str]:
    """How the data differs from the recorded fingerprint, one phrase per change ([] if the same)."""
    changes = []
    for key in sorted(set(recorded) | set(now)):
        before, after = recorded.get(key, {}), now.get(key, {})
        if before.get("source") != after.get("source"):
            changes.append(f"{flag(key)} was {before.get('source')}, now {after.get('source')}")
            continue
        if before.get("hub") or after.get("hub"):
            if before.get("pairs_sha256") != after.get("pairs_sha256"):
                changes.append(f"the pairs read from {after.get('source')} differ ({before.get('pairs')} pairs "
                               f"then, {after.get('pairs')} now)")
            continue
        old_files, new_files = before.get("files", {}), after.get("files", {})
        for name in sorted(set(old_files) | set(new_files)):
            old, new = old_files.get(name), new_files.get(name)
            if old is None or new is None:
                changes.append(f"{name} was {'added' if old is None else 'removed'}")
            elif old != new:
                changes.append(f"{name} changed ({old['bytes']} bytes then, {new['bytes']} now"
                               + (", same size, other contents)" if old["bytes"] == new["bytes"] else ")"))
    return changes


def check_base_model(run_dir: Path, spec: str | None, *, allowed: bool, log: Callable[[str], None],
                     doing: str = "resume") -> None:
    """Refuse a base model (`spec`) that differs from the one the run recorded (rundir.MODEL), naming
    the files that changed, unless `allowed` (--allow-changed-model), which is logged."""
    recorded = read_record(run_dir, MODEL_RECORD, allowed=allowed, log=log, doing=doing)
    if recorded is None:
        return
    changes = model_changes(recorded, identify(spec, previous=recorded))
    if changes and not allowed:
        raise RunCheckError(f"the base model of {run_dir} changed since the run started ({rundir.MODEL}): "
                            f"{'; '.join(changes)}. Put the model the run trained on back, or pass "
                            f"--allow-changed-model to {doing} on this one anyway")
    if changes:
        log(f"warning: --allow-changed-model: the {doing} of {run_dir} goes on with a changed base model "
            f"({'; '.join(changes)})")


def check_run(cfg: TrainConfig, run_dir: Path, splits, *, resume: bool, allow_changed_data: bool = False,
              allow_changed_model: bool = False, log: Callable[[str], None] = print, main: bool = True) -> dict:
    """Every check before a run (or a resume) writes anything; returns the data's fingerprint to record.
    `main`: this process writes the run (data-parallel: rank 0). The others leave the folder's checks
    to it, as it may already have written the run's first files when they look."""
    if main:
        check_output_dir(run_dir, cfg.model, resume=resume)
    fingerprint = data_fingerprint(cfg, splits)
    if not resume:
        return fingerprint
    check_same_run(cfg, run_dir)
    check_base_model(run_dir, cfg.model, allowed=allow_changed_model, log=log)
    recorded = read_record(run_dir, DATA_RECORD, allowed=allow_changed_data, log=log)
    if recorded is None:
        return fingerprint
    changes = data_changes(recorded, fingerprint)
    if changes and not allow_changed_data:
        raise RunCheckError(f"the data of {run_dir} changed since the run started: {'; '.join(changes)}. A resume "
                            "continues the same run; put the data back, start a new run, or pass "
                            "--allow-changed-data to continue on the changed data anyway")
    if changes:
        log(f"warning: --allow-changed-data: resuming {run_dir} on changed data ({'; '.join(changes)}); the steps "
            "from here are not those of the run as started, and the new data is recorded")
    return fingerprint
