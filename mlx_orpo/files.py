"""The one atomic writer: every file or folder mlx-orpo writes appears whole or not at all.

    with atomic_output(run / "adapters.safetensors") as tmp:
        mx.save_safetensors(str(tmp), weights)

The block writes to a temporary name beside the target (same folder, so the rename
cannot cross file systems). When it completes, the data is flushed to disk (fsync of
each file, then of the folder) and renamed onto the target; an existing target is
replaced only then. When it fails (disk full, a read-only mount, Ctrl-C), the
temporary is removed and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".tmp-"


def fsync_path(path: Path) -> None:
    """fsync one file or folder (a folder's fsync makes a rename in it durable)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the data files were synced
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """A hidden name beside `path` that keeps its suffix (mx.save_safetensors appends
    ".safetensors" to any name not ending with it)."""
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")


@contextlib.contextmanager
def atomic_output(path: Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s contents to (a folder, created, with directory=True);
    on success it is synced and renamed onto `path`, on failure removed."""
    path = Path(path)
    tmp = temporary_name(path)
    remove(tmp)
    if directory:
        tmp.mkdir(mode=0o755)
    try:
        yield tmp
        for file in (sorted(p for p in tmp.rglob("*") if p.is_file()) if directory else [tmp]):
            fsync_path(file)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        tmp.replace(path)
        fsync_path(path.parent)
    except RuntimeError as exc:
        # MLX's writers report a failed write as a RuntimeError without its cause ("[write] Unable to
        # write 8 bytes", "[save_safetensors] Failed to open file", "[save_gguf] gguf_create failed");
        # a full disk or a read-only folder is the user's to fix, so say which (the disk looked at
        # before the temporary is removed, which frees it again).
        error = as_write_error(path, exc)
        remove(tmp)
        if error is not None:
            raise error from None
        raise
    except BaseException:
        remove(tmp)
        raise


def as_write_error(path: Path, exc: RuntimeError) -> OSError | None:
    """The OSError behind an MLX writer's RuntimeError while writing `path` (None: not a write failure)."""
    if str(exc).startswith(("[write]", "[save_safetensors]", "[save_gguf]", "[save]")):
        return write_error(path, exc)
    return None


def write_error(path: Path, exc: Exception) -> OSError:
    """The OSError behind a writer's failure to write `path`: no space, no permission, or (failing
    both checks) an I/O error carrying the writer's message."""
    folder = Path(path).parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < 1 << 20:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    if not os.access(folder, os.W_OK):
        return OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    return OSError(errno.EIO, f"could not write it ({exc})", str(path))


def describe_os_error(exc: OSError) -> str:
    """One line for a file-system failure the user can fix: what failed, where, and what to do."""
    where = f"{exc.filename}: " if exc.filename else ""
    reason = exc.strerror or str(exc)
    hint = {errno.ENOSPC: "free some disk space (or choose a folder on another disk), then run it again",
            errno.EROFS: "choose a folder on a writable disk",
            errno.EACCES: "you may not write there; choose a folder you can write to",
            errno.EPERM: "you may not write there; choose a folder you can write to",
            errno.EDQUOT: "your disk quota is used up; free some space, then run it again"}.get(exc.errno)
    return f"{where}{reason}" + (f"; {hint}" if hint else "")


def overlap(path: Path, other: Path) -> str | None:
    """How `path` relates to `other` once both are resolved: "is", "contains", "lies inside", or None."""
    a, b = Path(path).expanduser().resolve(), Path(other).expanduser().resolve()
    if a == b:
        return "is"
    if b.is_relative_to(a):
        return "contains"
    if a.is_relative_to(b):
        return "lies inside"
    return None


def dangling_link(path: Path) -> str | None:
    """How `path` (or a folder above it) is a symbolic link to a missing path, in words; None when none
    is: creating it would fail with a bare "File exists"."""
    path = Path(path).expanduser()
    for part in [path, *path.parents]:
        if part.is_symlink() and not part.exists():
            return f"{part} is a symbolic link to {os.readlink(part)}, which does not exist"
    return None


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def remove(path: Path) -> None:
    """Remove a file or folder if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove what a killed writer left in `folder` (its temporaries); returns what was removed."""
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)]
    for p in stale:
        remove(p)
    return stale


def file_digest(path: Path) -> dict:
    """{"bytes", "sha256"} of a file, read in 1 MiB blocks: what checkpoint manifests and data
    fingerprints compare."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": Path(path).stat().st_size, "sha256": digest.hexdigest()}
