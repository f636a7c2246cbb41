"""Data-parallel ORPO with `mlx.launch -n 2 --backend ring` on one machine (loopback)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from helpers import assert_same_metrics, cli, train_records, wait_for

from mlx_orpo.rundir import read_records

pytestmark = pytest.mark.slow

ARGS = ["--iters", "4", "--max-length", "96", "--report-every", "1", "--eval-every", "4", "--eval-max-pairs", "4",
        "--save-every", "2", "--lr-schedule", "constant", "--warmup-steps", "0", "--learning-rate", "5e-4"]


def launch(*args):
    if shutil.which("mlx.launch") is None:
        pytest.skip("mlx.launch is not on PATH")
    return ["mlx.launch", "-n", "2", "--backend", "ring", sys.executable, "-m", "mlx_orpo.train", *args]


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory, smollm2_dir):
    run_dir = tmp_path_factory.mktemp("dist") / "single"
    done = subprocess.run(cli(*ARGS, "--batch-size", "2", "--output-dir", str(run_dir)), capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def assert_same_adapters(a: Path, b: Path, learning_rate=5e-4):
    """Adam moves a weight by about the learning rate per step whatever the size of its gradient,
    so where a gradient is near zero, float noise from a different summation order (two ranks'
    partial gradients vs one batch) can flip a step's direction: a handful of the 2.4M weights
    (seen: 1) then differ by up to about one step's update. Require the typical difference to be
    tiny, 99.9% of weights within 1% of one step's update, and the weights to have moved far more
    than that."""
    wa, wb = mx.load(str(a / "adapters.safetensors")), mx.load(str(b / "adapters.safetensors"))
    assert wa.keys() == wb.keys()
    diffs = np.concatenate([np.abs(np.array(wa[k]) - np.array(wb[k])).ravel() for k in wa])
    assert diffs.mean() <= 1e-4 * learning_rate
    assert np.quantile(diffs, 0.999) <= 0.01 * learning_rate
    moved = [np.abs(np.array(wa[k])).max() for k in wa if k.endswith("lora_b")]
    assert min(moved) > learning_rate


def test_two_ranks_of_batch_1_equal_one_process_of_batch_2(single_process_run, tmp_path):
    run_dir = tmp_path / "ranks"
    done = subprocess.run(launch(*ARGS, "--batch-size", "1", "--output-dir", str(run_dir)), capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "data-parallel over 2 processes" in done.stdout
    assert done.stdout.count("train step 4/4") == 1  # rank 0 alone reports
    assert_same_metrics(train_records(single_process_run), train_records(run_dir))
    evals = [[r for r in read_records(d) if r["kind"] == "eval"] for d in (single_process_run, run_dir)]
    assert_same_metrics(*evals)
    assert_same_adapters(single_process_run, run_dir)


def rank_pids(run_dir: Path) -> dict[int, int]:
    """pid of each rank's training process, read from /proc (the launcher sets MLX_RANK)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mlx_orpo.train" in cmdline and str(run_dir).encode() in cmdline:
            for var in environ:
                if var.startswith(b"MLX_RANK="):
                    found[int(var.split(b"=")[1])] = int(entry.name)
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks' processes in /proc, which macOS lacks")
def test_a_dead_rank_stops_the_other_cleanly_and_the_run_resumes(single_process_run, tmp_path):
    run_dir = tmp_path / "ranks"
    proc = subprocess.Popen(launch(*ARGS, "--batch-size", "1", "--output-dir", str(run_dir)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(run_dir / "checkpoints" / "step-000002" / "state.json", proc)
    pids = rank_pids(run_dir)
    assert set(pids) == {0, 1}, pids
    os.kill(pids[1], signal.SIGKILL)
    start = time.time()
    out, _ = proc.communicate(timeout=600)
    assert time.time() - start < 600
    assert "lost a peer" in out and "--resume" in out, out[-3000:]
    done = subprocess.run(launch("--resume", str(run_dir)), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert_same_metrics(train_records(single_process_run), train_records(run_dir))
