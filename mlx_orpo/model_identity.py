"""What identifies a run's base model (rundir.MODEL), so that a resume and an export use the model the
run was trained on, not other weights put under the same name.

    record = identify("./base")                                   # when the run starts
    changes = model_changes(record, identify("./base", previous=record))   # [] when it is the same

A model on this machine (a directory, or the folder a .gguf or the offline default was imported to) is
identified by the files that decide what a run computes: its config.json, tokenizer and chat template,
and weights (*.safetensors): their sizes, modification times and SHA-256. The hashes are taken once,
when the run starts; later, a file whose size and modification time are those recorded keeps its
recorded hash (a 4 GB model is not read again), and only a file that differs is hashed to tell new
contents from a mere touch. A Hub model is identified by the revision (commit) of its snapshot in the
local cache, or where none is known by the same files of the snapshot.
"""

from __future__ import annotations

from pathlib import Path

from .files import file_digest

# What decides what a run computes: the architecture, the token ids and prompt template, the weights.
IDENTIFYING = ("config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "chat_template.jinja",
               "*.safetensors")


def model_folder(spec: str | None) -> tuple[Path | None, str | None]:
    """(the local folder `spec` loads from, the Hub revision it holds): (folder, None) for a model on
    this machine, (snapshot, commit) for a Hub model in the local cache, (None, None) for one not in it.
    ModelNotFoundError for a path that is gone."""
    from .models import resolve_model

    resolved = resolve_model(spec)
    if Path(resolved).is_dir():
        return Path(resolved), None
    try:
        from mlx_lm.utils import hf_repo_to_path

        snapshot = hf_repo_to_path(resolved)  # the local cache only, never the network
    except Exception:  # not downloaded (yet), or an incomplete snapshot: nothing to identify it by
        return None, None
    return snapshot, (snapshot.name if snapshot.parent.name == "snapshots" else None)


def identify(spec: str | None, previous: dict | None = None) -> dict:
    """The record of the base model `spec` names, as it is now. `previous`: an earlier record, whose
    hashes are kept for the files whose size and modification time it holds."""
    folder, revision = model_folder(spec)
    record = {"model": spec, "path": str(folder.absolute()) if folder else None, "revision": revision, "files": {}}
    if folder is None or revision is not None:  # a Hub revision names its files' contents
        return record
    known = (previous or {}).get("files", {})
    for path in sorted({path for pattern in IDENTIFYING for path in folder.glob(pattern) if path.is_file()}):
        stat = path.stat()
        seen = known.get(path.name, {})
        if seen.get("bytes") == stat.st_size and seen.get("mtime_ns") == stat.st_mtime_ns and seen.get("sha256"):
            record["files"][path.name] = dict(seen)
        else:
            record["files"][path.name] = {**file_digest(path), "mtime_ns": stat.st_mtime_ns}
    return record


def is_record(found) -> bool:
    """Whether `found` (model.json's contents) has the shape identify() writes."""
    if not isinstance(found, dict) or not isinstance(found.get("files"), dict):
        return False
    if not all(isinstance(found.get(key), (str, type(None))) for key in ("model", "path", "revision")):
        return False
    return all(isinstance(entry, dict) and isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)
               for entry in found["files"].values())


def model_changes(recorded: dict, now: dict) -> list[str]:
    """How the base model differs from its record, one phrase per change naming the file ([] if the same)."""
    if recorded.get("revision") or now.get("revision"):
        if recorded.get("revision") == now.get("revision"):
            return []
        return [f"{now.get('model')} was revision {recorded.get('revision') or '(none)'}, now "
                f"{now.get('revision') or '(not in the local cache)'}"]
    folder = Path(now.get("path") or recorded.get("path") or ".")
    old_files, new_files = recorded["files"], now["files"]
    changes = []
    for name in sorted(set(old_files) | set(new_files)):
        old, new = old_files.get(name), new_files.get(name)
        if old is None or new is None:
            changes.append(f"{folder / name} was {'added' if old is None else 'removed'}")
        elif old["sha256"] != new["sha256"]:
            changes.append(f"{folder / name} changed ({old['bytes']} bytes then, {new['bytes']} now"
                           + (", same size, other contents)" if old["bytes"] == new["bytes"] else ")"))
    if changes and recorded.get("path") and recorded.get("path") != now.get("path"):
        changes.insert(0, f"the model is read from {now.get('path')}, the run's was {recorded['path']}")
    return changes
