"""Atomic, resumable checkpoints of a run directory (rundir.py has the whole layout and its file names).

    checkpoints/step-000100/    adapters.safetensors, optimizer.safetensors, state.json,
                                adapter_config.json, manifest.json (sizes and SHA-256 of the first three)

state.json holds a `LoopState`: everything besides weights and optimizer state that a resume needs.
It is read by the run's format version (rundir.FORMATS): what an older version's state lacks is
filled in with the value it ran with.

Every file is written through files.atomic_output, and a checkpoint directory is
renamed into place whole, so a crash (even SIGKILL)
leaves either the old or the new version, never a torn one. A disk can still lose
or cut a file later, so each checkpoint is verified against its manifest on load
and a damaged one is named and passed over for the newest intact one.
"""

from __future__ import annotations

import json
import shutil
import typing
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from . import rundir
from .files import atomic_output, file_digest
from .rundir import ADAPTER_CONFIG, ADAPTERS, CHECKPOINTS, MANIFEST, OPTIMIZER, STATE, VERIFIED, CorruptFileError


@dataclass
class LoopState:
    """Everything besides weights and optimizer state that a resume needs."""
    step: int = 0              # optimizer steps done
    epoch: int = 0             # epoch of the next micro-batch
    batch_in_epoch: int = 0    # micro-batches of that epoch already consumed
    skipped_steps: int = 0
    window: dict = field(default_factory=dict)  # metric sums since the last report
    window_steps: int = 0
    window_tokens: int = 0
    world_size: int = 1        # processes of the run (a global batch is batch_size x world_size pairs)
    largest_first: bool = True  # epoch order: the largest batch first (epoch_batches)
    step_groups: bool = True    # pairs grouped per optimizer step (feeding.step_order)


def adapter_weights(model) -> dict:
    return dict(tree_flatten(model.trainable_parameters()))


def save_adapters(run_dir: Path, model) -> None:
    with atomic_output(run_dir / ADAPTERS) as tmp:
        mx.save_safetensors(str(tmp), adapter_weights(model))


def save_checkpoint(run_dir: Path, step: int, model, optimizer, state: dict, keep: int) -> Path:
    """Write checkpoints/step-NNNNNN atomically, update adapters.safetensors, prune old ones."""
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / rundir.checkpoint_name(step)
    with atomic_output(final, directory=True) as tmp:
        mx.save_safetensors(str(tmp / ADAPTERS), adapter_weights(model))
        mx.save_safetensors(str(tmp / OPTIMIZER), dict(tree_flatten(optimizer.state)))
        (tmp / STATE).write_text(json.dumps(dict(state, step=step), indent=2))
        (tmp / MANIFEST).write_text(json.dumps({name: file_digest(tmp / name) for name in VERIFIED}, indent=2))
        if (run_dir / ADAPTER_CONFIG).is_file():  # so a checkpoint loads like a run directory
            shutil.copy(run_dir / ADAPTER_CONFIG, tmp / ADAPTER_CONFIG)
    save_adapters(run_dir, model)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if rundir.checkpoint_step(p.name) is not None and (p / STATE).is_file()]
    return sorted(found, key=lambda p: p.name)


def check_safetensors(path: Path) -> dict:
    """Raise CorruptFileError unless `path` is a whole safetensors file: its header parses and
    the file is exactly as long as the header says (cheap: no tensor data is read). Returns the
    header (tensor name -> dtype, shape, offsets)."""
    def corrupt(detail: str) -> CorruptFileError:
        return CorruptFileError(f"{path}: corrupt or truncated safetensors file ({detail})")

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if length < 2 or 8 + length > size:
                raise corrupt(f"{size} bytes, the header is cut off")
            header = json.loads(f.read(length))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except CorruptFileError:
        raise
    except FileNotFoundError:
        raise CorruptFileError(f"{path}: missing") from None
    except OSError as exc:
        raise CorruptFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise corrupt("the header is not valid") from None
    if size != 8 + length + end:
        raise corrupt(f"{size} bytes, the header describes {8 + length + end}")
    return header


def verify_checkpoint(path: Path) -> None:
    """Raise CorruptFileError naming the first missing or damaged file of a checkpoint.

    Checked against manifest.json (sizes and SHA-256). A version-1 run's checkpoint may have no
    manifest: it gets the structural checks only.
    """
    manifest_path = path / MANIFEST
    version, fmt = rundir.run_format(path.parent.parent)
    if not manifest_path.is_file():
        if fmt.manifests:
            raise CorruptFileError(f"{manifest_path}: missing (every checkpoint of a version-{version} run has one)")
        for name in (ADAPTERS, OPTIMIZER):
            check_safetensors(path / name)
        read_state(path)
        return
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise CorruptFileError(f"{manifest_path}: unreadable checkpoint manifest ({exc})") from None
    read_state(path)  # first: a junk state of gigabytes is refused by its size, not hashed
    for name in VERIFIED:
        file = path / name
        if not file.is_file():
            raise CorruptFileError(f"{file}: missing")
        expected, found = manifest.get(name, {}), file_digest(file)
        if found["bytes"] != expected.get("bytes"):
            raise CorruptFileError(f"{file}: corrupt or truncated ({found['bytes']} bytes, "
                                   f"{expected.get('bytes')} were written)")
        if found["sha256"] != expected.get("sha256"):
            raise CorruptFileError(f"{file}: corrupt (its checksum differs from the one written with it)")


def intact_checkpoints(run_dir: Path, warn=print) -> list[Path]:
    """Checkpoints oldest first, up to the newest one that verifies; each damaged newer one
    is passed over with a warning naming the bad file (a resume then continues from an
    older step rather than stopping on a traceback)."""
    found = list_checkpoints(run_dir)
    while found:
        try:
            verify_checkpoint(found[-1])
            return found
        except CorruptFileError as exc:
            older = f"falling back to {found[-2].name}" if len(found) > 1 else "no older checkpoint is left"
            warn(f"warning: checkpoint {found[-1].name} is unusable: {exc}; {older}")
            found.pop()
    return found


# A loop state is a few hundred bytes; anything far larger is not one (and is not read into memory).
_MAX_STATE_BYTES = 1 << 20


def read_state(path: Path) -> dict:
    """The loop state of the checkpoint at `path` (RUN/checkpoints/step-N), every LoopState field:
    checked against their names and types, with what the run's format version lacks filled in."""
    file = path / STATE
    try:
        if file.stat().st_size > _MAX_STATE_BYTES:
            raise CorruptFileError(f"{file}: corrupt checkpoint state ({file.stat().st_size} bytes; a loop state "
                                   "takes a few hundred)")
        state = json.loads(file.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        if isinstance(exc, CorruptFileError):
            raise
        raise CorruptFileError(f"{file}: corrupt checkpoint state ({exc})") from None
    if not isinstance(state, dict):
        raise CorruptFileError(f"{file}: corrupt checkpoint state (not a JSON object)")
    hints = typing.get_type_hints(LoopState)
    for key, value in state.items():
        if key not in hints:
            raise CorruptFileError(f"{file}: corrupt checkpoint state (unknown field {key!r})")
        kind = hints[key]
        ok = (isinstance(value, bool) if kind is bool
              else isinstance(value, int) and not isinstance(value, bool) and value >= 0 if kind is int
              else isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, (int, float))
                                                   and not isinstance(v, bool) for k, v in value.items()))
        if not ok:
            raise CorruptFileError(f"{file}: corrupt checkpoint state ({key} = {str(value)[:40]!r} is not "
                                   f"a valid {kind.__name__})")
    version, fmt = rundir.run_format(path.parent.parent)
    state = {**fmt.state, **state}
    if lacking := sorted(set(hints) - set(state)):
        raise CorruptFileError(f"{file}: corrupt checkpoint state (it lacks {lacking}, which every checkpoint of a "
                               f"version-{version} run holds)")
    if state["world_size"] < 1:
        raise CorruptFileError(f"{file}: corrupt checkpoint state (a world size below 1)")
    return state


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Restore adapters and optimizer state; return the saved loop state (read_state: every LoopState
    field, as the run was written).

    (No RNG state is saved: the trainer reseeds from (seed, step) every step.)
    """
    state = read_state(path)
    arrays = {}
    for name in (ADAPTERS, OPTIMIZER):
        try:
            arrays[name] = mx.load(str(path / name))
        except (OSError, RuntimeError, ValueError) as exc:  # mx.load raises RuntimeError on a torn file
            raise CorruptFileError(f"{path / name}: cannot be loaded ({exc})") from None
    model.load_weights(list(arrays[ADAPTERS].items()), strict=False)
    optimizer.state = tree_unflatten(list(arrays[OPTIMIZER].items()))
    mx.eval(model.parameters(), optimizer.state)
    return state
