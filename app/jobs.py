"""Training runs as `python -m mlx_orpo.train` subprocesses, so the UI never blocks.

The job belongs to the server, not to a browser tab: `Jobs` (one per app, in `Context`) holds
the one training process, so every tab and every reload shows it, and a second Start is refused
while it runs. A trainer this server did not start (the CLI, or an app that was restarted) is
found by the lock it holds on its run directory (runlock.py) and shown the same way.

SIGTERM asks the trainer to stop at the next micro-batch, write a checkpoint and exit with code 4
(resumable with --resume).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from mlx_orpo import rundir
from mlx_orpo.config import FIELD_SPECS, TrainConfig
from mlx_orpo.files import atomic_write_text
from mlx_orpo.runlock import holder

from .estimate import explicit_fields
from .runfiles import Rate


def write_launch_config(run_dir: Path, data: str | None, cfg: TrainConfig) -> Path:
    """The YAML file `train.py --config` reads: the settings the form changed from their defaults (the
    trainer's auto-fit keeps every setting a YAML file names, as the app's memory preview does), the output
    dir and the data. The trainer then saves the whole resolved config in config.json."""
    values = {name: getattr(cfg, name) for name in explicit_fields(cfg)} | {"output_dir": str(run_dir),
                                                                            "data": data}
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    path = run_dir / rundir.LAUNCH
    atomic_write_text(path, yaml.safe_dump(values, sort_keys=False, allow_unicode=True))
    return path


def command_line(cfg: TrainConfig, output_dir: str | Path | None = None) -> str:
    """The terminal command that runs what Start launches with `cfg`: the settings the launch YAML gives
    (explicit_fields, so auto-fit treats them alike), its data and output folder, each by its field's flag
    (`FieldSpec.args`). Without an output folder the CLI makes one under ./runs."""
    values = {name: getattr(cfg, name) for name in FIELD_SPECS if name in explicit_fields(cfg)}
    values |= {name: value for name, value in (("data", cfg.data), ("output_dir", output_dir)) if value}
    words = [word for name, value in values.items() for word in FIELD_SPECS[name].args(
        str(value) if isinstance(value, Path) else value)]
    return shlex.join(["python", "-m", "mlx_orpo.train", *words])


def _stop_at_exit(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)  # the trainer checkpoints before exiting
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclasses.dataclass
class Job:
    """One training process: started by this server (`proc`), or found by its run's lock (`pid` only)."""
    run_dir: Path
    pid: int
    started: float
    proc: subprocess.Popen | None = None
    resume: bool = False
    data_label: str = ""
    stop_requested: float | None = None   # when Stop was clicked
    stopped_seen: float | None = None     # when the app first saw the trainer stopped
    rate: Rate = dataclasses.field(default_factory=Rate)

    @property
    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return holder(self.run_dir) is not None

    @property
    def returncode(self) -> int | None:
        """The exit code (None while running, or for a trainer this server did not start)."""
        return self.proc.poll() if self.proc is not None else None

    def stop(self) -> None:
        if self.running and self.stop_requested is None:
            self.stop_requested = time.time()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)


WATCH_S = 0.5  # how often the server reads its job's status.json


class Jobs:
    """The server's one training job: the last one started here, or a trainer found holding a run's lock."""

    def __init__(self, runs_dir: Path):
        self.runs_dir = runs_dir
        self.job: Job | None = None
        self._lock = threading.Lock()  # two Starts from two tabs at once: one wins, the other is refused
        self._watching = False

    def watch(self) -> None:
        """Keep the server's own record of its job's step and evaluation times (`Job.rate`, which the
        ETA reads) from now on, whether or not a browser tab is open: a thread reads the job's status.json
        every WATCH_S seconds. It also finds a trainer started elsewhere as soon as it holds its run."""
        if not self._watching:
            self._watching = True
            threading.Thread(target=self._watch, name="orpo-job-watch", daemon=True).start()

    def _watch(self) -> None:
        while True:
            job = self.current()
            if job is not None and job.running:
                status = rundir.read_status(job.run_dir)
                if status is not None and status.time >= job.started:
                    job.rate.observe(status)
            time.sleep(WATCH_S)

    def current(self) -> Job | None:
        """The running job, else the last one this server started (its outcome stays on show)."""
        if self.job is not None and self.job.running:
            return self.job
        found = self._find_running()
        if found is not None:
            self.job = found
        return self.job

    def running(self) -> Job | None:
        job = self.current()
        return job if job is not None and job.running else None

    def _find_running(self) -> Job | None:
        """A trainer holding the lock of a run under runs_dir (started before this server, or by the CLI)."""
        if not self.runs_dir.is_dir():
            return None
        for run in self.runs_dir.iterdir():
            if (run / rundir.LOCK).is_file() and (pid := holder(run)) is not None and pid.isdigit():
                status = rundir.read_status(run)
                started = status.time if status is not None else time.time()
                return Job(run, int(pid), started, data_label="(started elsewhere)")
        return None

    def launch(self, run_dir: Path, data: str | None, cfg: TrainConfig | None, *, resume: bool = False,
               data_label: str = "") -> Job:
        """Start the CLI on run_dir (stdout and stderr to run_dir/train.log); RuntimeError naming the
        running job if there is one."""
        with self._lock:
            if (busy := self.running()) is not None:
                raise RuntimeError(f"{busy.run_dir.name} is training (pid {busy.pid}); stop it first")
            cmd = [sys.executable, "-m", "mlx_orpo.train"]
            if resume:
                cmd += ["--resume", str(run_dir)]
            else:
                cmd += ["--config", str(write_launch_config(run_dir, data, cfg))]
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            with open(run_dir / rundir.LOG, "a") as log:
                log.write(("resuming" if resume else "starting") + ": " + " ".join(cmd[1:]) + "\n")
                log.flush()
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, cwd=run_dir.parent)
            atexit.register(_stop_at_exit, proc)
            job = Job(run_dir, proc.pid, time.time(), proc, resume=resume, data_label=data_label)
            if resume and self.job is not None and self.job.run_dir == run_dir:
                job.rate = self.job.rate.carried()  # the same run's steps: the ETA needs no new measurement
            self.job = job
            return job
