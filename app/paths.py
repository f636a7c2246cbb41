"""Everything the app reads or writes lives under one runs directory.

Names that arrive from the browser (run names, checkpoint names, upload file
names) are checked here; nothing else in `app/` joins user text onto a path.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from pathlib import Path

from mlx_orpo.files import file_digest

UPLOADS = "uploads"
EXPORTS = "exports"
UPLOAD_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class PathError(ValueError):
    """A name or path that would leave the runs directory, or is not allowed."""


def sanitise(name: str, fallback: str = "file") -> str:
    """A safe single path component: letters, digits, '.', '_' and '-' only."""
    stem = Path(str(name).replace("\\", "/")).name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[:100]
    return cleaned or fallback


def child(root: Path, name: str, *, must_exist: bool = True) -> Path:
    """root/name for a single, safe component; refuses '..', slashes and links out of root."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise PathError(f"{name!r} is not a valid name (letters, digits, '.', '_' and '-' only)")
    root = root.resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise PathError(f"{name!r} is outside {root}")
    if must_exist and not path.exists():
        raise PathError(f"{name!r} does not exist in {root}")
    return path


def new_run_dir(runs_dir: Path, name: str | None) -> Path:
    """A fresh run directory named `name` (sanitised) or orpo-<time>; never reuses one."""
    base = sanitise(name, "") if name and name.strip() else time.strftime("orpo-%Y%m%d-%H%M%S")
    candidate, n = base, 1
    while (runs_dir / candidate).exists() or candidate in (UPLOADS, EXPORTS):
        n += 1
        candidate = f"{base}-{n}"
    path = child(runs_dir, candidate, must_exist=False)
    path.mkdir(parents=True)
    return path


def received_upload(path: str, uploaded: set[str]) -> Path:
    """The file Gradio stored for an upload to this app; any other path is refused.

    A request names its file by path. Gradio 6.31 refuses a path outside its upload folder,
    but accepts any file inside it, and that folder is shared by every Gradio app and session
    on the machine. So only the paths that this app's upload route handed out
    (`Blocks.upload_file_set`, passed here as `uploaded`) are read.
    """
    resolved = Path(path).resolve()
    if not resolved.is_file() or resolved not in {Path(p).resolve() for p in list(uploaded)}:
        raise PathError("that file was not uploaded to this app (only files sent with the upload button "
                        "are read); upload it again")
    return resolved


def discard(*files: Path) -> None:
    """Delete refused uploads, so that rejected files do not pile up on disk."""
    for file in files:
        with contextlib.suppress(OSError):
            file.unlink(missing_ok=True)


def store_upload(runs_dir: Path, temp_path: str, original_name: str, max_bytes: int) -> Path:
    """Copy an uploaded file into runs_dir/uploads/ under a sanitised, unique name; the same content
    uploaded again (under any name with the same extension) is the file already stored."""
    source = Path(temp_path)
    name = sanitise(original_name or source.name, "upload.jsonl")
    if Path(name).suffix.lower() not in UPLOAD_EXTENSIONS:
        raise PathError(f"{name}: unsupported file type (expected {', '.join(UPLOAD_EXTENSIONS)})")
    size = source.stat().st_size
    if size > max_bytes:
        raise PathError(f"{name}: {size / 1e6:.1f} MB is over the upload limit of {max_bytes / 1e6:.0f} MB")
    folder = runs_dir / UPLOADS
    folder.mkdir(parents=True, exist_ok=True)
    stem, suffix = Path(name).stem, Path(name).suffix
    same_size = [p for p in sorted(folder.iterdir()) if p.suffix.lower() == suffix.lower() and p.is_file()
                 and not p.is_symlink() and p.stat().st_size == size]
    if same_size:
        digest = file_digest(source)["sha256"]
        if (found := next((p for p in same_size if file_digest(p)["sha256"] == digest), None)) is not None:
            return found
    target, n = folder / name, 1
    while target.exists():
        n += 1
        target = folder / f"{stem}-{n}{suffix}"
    shutil.copyfile(source, target)
    return target


def relative(runs_dir: Path, path: Path | str) -> str:
    """A path shown to the user: relative to the runs directory when inside it."""
    try:
        return str(Path(path).resolve().relative_to(runs_dir.resolve()))
    except ValueError:
        return str(path)
