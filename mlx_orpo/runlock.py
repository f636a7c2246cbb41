"""One writer per run directory: an exclusive `flock` on RUN/.lock.

Without it, two trainers on one run both exit 0 and leave a metrics.jsonl with every step
twice, values from both seeds interleaved. The lock is an advisory `flock`, which the
kernel drops when its holder's file descriptor closes, so a process killed with -9
never leaves a run stuck locked (a pid file alone would). The holder writes its pid
into the file so the second writer can name it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .rundir import LOCK as LOCK_NAME


class RunLockedError(RuntimeError):
    """Another live process holds the run directory; `pid` names it."""

    def __init__(self, run_dir: Path, pid: str):
        super().__init__(f"{run_dir} is in use by another training process (pid {pid}); wait for it to finish "
                         "or stop it, or choose another --output-dir")
        self.pid = pid


def _lock(path: Path, flags: int) -> int:
    """An open, flock-ed descriptor of `path`, or RunLockedError naming the holder's pid."""
    fd = os.open(path, flags, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise RunLockedError(path.parent, pid) from None
    return fd


class RunLock:
    """`with RunLock(run_dir):` holds the run for this process; raises RunLockedError if taken."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = _lock(self.path, os.O_RDWR | os.O_CREAT)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (unlinking it would race)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder(run_dir: str | Path) -> str | None:
    """The pid holding `run_dir`, or None when it is free: a check for whoever starts a trainer
    (the trainer takes the lock itself; this only lets a front end refuse with a clear message)."""
    path = Path(run_dir) / LOCK_NAME
    try:
        os.close(_lock(path, os.O_RDONLY))
    except FileNotFoundError:
        return None
    except RunLockedError as exc:
        return exc.pid
    return None
