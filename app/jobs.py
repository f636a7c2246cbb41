"""Training runs as `python -m mlx_orpo.train` subprocesses, so the UI never blocks.

SIGTERM asks the trainer to write a checkpoint and exit (resumable with --resume).
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlx_orpo.config import FIELDS, TrainConfig

from .runfiles import LOG_NAME


def cli_args(cfg: TrainConfig) -> list[str]:
    """Flags for the options that differ from TrainConfig's defaults (data and output dir excluded)."""
    args = []
    for name, f in FIELDS.items():
        value = getattr(cfg, name)
        if isinstance(value, (list, tuple)) and list(value) == list(f.default):
            continue
        if name in ("data", "output_dir") or value == f.default or value is None:
            continue
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{name.replace('_', '-')}")
        elif isinstance(value, (list, tuple)):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    return args


def _stop_at_exit(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)  # the trainer checkpoints before exiting
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclasses.dataclass
class Job:
    """One training subprocess of this session."""
    run_dir: Path
    proc: subprocess.Popen
    started: float
    stop_requested: bool = False

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        if self.running:
            self.stop_requested = True
            self.proc.send_signal(signal.SIGTERM)


def launch(run_dir: Path, data: str | None, cfg: TrainConfig, *, resume: bool = False) -> Job:
    """Start the CLI on run_dir; stdout and stderr go to run_dir/train.log."""
    cmd = [sys.executable, "-m", "mlx_orpo.train"]
    if resume:
        cmd += ["--resume", str(run_dir)]
    else:
        cmd += ["--output-dir", str(run_dir)] + (["--data", data] if data else []) + cli_args(cfg)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(run_dir / LOG_NAME, "a") as log:
        log.write(("resuming" if resume else "starting") + ": " + " ".join(cmd[1:]) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=run_dir.parent)
    atexit.register(_stop_at_exit, proc)
    return Job(run_dir, proc, time.time())
