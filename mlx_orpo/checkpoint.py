"""Atomic, resumable checkpoints of a run directory.

Layout of a run directory:
    config.json                 resolved TrainConfig
    adapter_config.json         what mlx_lm.load(..., adapter_path=run_dir) reads
    adapters.safetensors        newest adapter weights
    metrics.jsonl               one JSON record per report / eval
    checkpoints/step-000100/    adapters.safetensors, optimizer.safetensors, state.json,
                                adapter_config.json

Every file is written to a temporary name and renamed into place, and a
checkpoint directory is renamed into place whole, so a crash (even SIGKILL)
leaves either the old or the new version, never a torn one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

CHECKPOINTS = "checkpoints"
_PREFIX = "step-"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_save_safetensors(path: Path, arrays: dict, metadata: dict | None = None) -> None:
    # mx.save_safetensors appends ".safetensors" unless the name ends with it.
    tmp = path.with_name(f".tmp-{path.name}")
    mx.save_safetensors(str(tmp), arrays, metadata=metadata or {})
    os.replace(tmp, path)


def adapter_weights(model) -> dict:
    return dict(tree_flatten(model.trainable_parameters()))


def save_adapters(run_dir: Path, model) -> None:
    atomic_save_safetensors(run_dir / "adapters.safetensors", adapter_weights(model))


def save_checkpoint(run_dir: Path, step: int, model, optimizer, state: dict, keep: int) -> Path:
    """Write checkpoints/step-NNNNNN atomically, update adapters.safetensors, prune old ones."""
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    mx.save_safetensors(str(tmp / "adapters.safetensors"), adapter_weights(model))
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
    state = dict(state, step=step)
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    if (run_dir / "adapter_config.json").is_file():  # so a checkpoint loads like a run directory
        shutil.copy(run_dir / "adapter_config.json", tmp / "adapter_config.json")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    final = root / f"{_PREFIX}{step:06d}"
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync_dir(root)
    save_adapters(run_dir, model)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Restore adapters and optimizer state; return the saved loop state.

    (No RNG state is saved: the trainer reseeds from (seed, step) every step.)
    """
    model.load_weights(list(mx.load(str(path / "adapters.safetensors")).items()), strict=False)
    optimizer.state = tree_unflatten(list(mx.load(str(path / "optimizer.safetensors")).items()))
    state = json.loads((path / "state.json").read_text())
    mx.eval(model.parameters(), optimizer.state)
    return state


def read_metrics(path: Path) -> list[dict]:
    """Records of a metrics.jsonl; a torn last line (killed mid-write) is ignored."""
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only records up to `step`, before a resumed run appends its own."""
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
