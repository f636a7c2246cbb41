"""One writer per run directory (mlx_orpo.runlock): a second trainer stops naming the holder's
pid, and a holder killed with -9 leaves the run free (the kernel drops a flock with its owner)."""

import os
import signal
import subprocess
import sys

import pytest

from mlx_orpo.runlock import RunLock, RunLockedError, holder

ROW = '{"prompt": "Hi?", "chosen": "Hello there, friend.", "rejected": "Go away."}\n'


def test_a_second_lock_names_the_holder(tmp_path):
    assert holder(tmp_path) is None
    with RunLock(tmp_path):
        assert holder(tmp_path) == str(os.getpid())
        with pytest.raises(RunLockedError, match=rf"in use by another training process \(pid {os.getpid()}\)"):
            RunLock(tmp_path).acquire()
    assert holder(tmp_path) is None
    with RunLock(tmp_path):  # released: free again
        pass


def test_a_killed_holder_leaves_the_run_free(tmp_path):
    code = "import sys, time; from mlx_orpo.runlock import RunLock; RunLock(sys.argv[1]).acquire(); " \
           "print('held', flush=True); time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert holder(tmp_path) == str(proc.pid)
        with pytest.raises(RunLockedError, match=rf"\(pid {proc.pid}\)"):
            RunLock(tmp_path).acquire()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert holder(tmp_path) is None
    with RunLock(tmp_path):
        assert holder(tmp_path) == str(os.getpid())


def test_second_trainer_on_a_run_stops_naming_the_first(tmp_path):
    """Two `python -m mlx_orpo.train --output-dir runs/dup` once both exited 0 and wrote every
    step twice into one metrics.jsonl."""
    data = tmp_path / "prefs.jsonl"
    data.write_text(ROW * 8)
    run = tmp_path / "dup"
    with RunLock(run):  # the first writer, still training
        done = subprocess.run([sys.executable, "-m", "mlx_orpo.train", "--data", str(data), "--output-dir", str(run),
                               "--iters", "1", "--max-length", "64"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"{run} is in use by another training process (pid {os.getpid()})" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (run / "metrics.jsonl").exists() and not (run / "config.json").exists()
