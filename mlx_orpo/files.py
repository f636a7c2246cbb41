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
    except BaseException:
        remove(tmp)
        raise


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
