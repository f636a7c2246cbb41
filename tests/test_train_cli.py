"""The real CLI on the real SmolLM2-135M-Instruct and the shipped demo set."""

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from helpers import assert_same_metrics, cli, train_records, wait_for
from mlx.utils import tree_flatten

from mlx_orpo import rundir
from mlx_orpo.files import file_digest
from mlx_orpo.rundir import read_records

pytestmark = pytest.mark.slow

ARGS = ["--iters", "8", "--max-length", "192", "--report-every", "1", "--save-every", "2", "--eval-every", "4",
        "--eval-max-pairs", "4", "--lr-schedule", "constant", "--warmup-steps", "0", "--learning-rate", "5e-4"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, smollm2_dir):
    run_dir = tmp_path_factory.mktemp("cli") / "reference"
    done = subprocess.run(cli(*ARGS, "--output-dir", str(run_dir)), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir, done


def test_default_run_learns_and_writes_a_complete_run_dir(reference_run, smollm2_dir):
    run_dir, done = reference_run
    assert "BLAS: " in done.stdout and "train step 8/8" in done.stdout
    records = train_records(run_dir)
    assert [r["step"] for r in records] == list(range(1, 9))
    for r in records:
        assert all(np.isfinite(r[k]) for k in ("loss", "nll_loss", "log_odds_chosen", "tokens_per_sec"))
        assert r["skipped_steps"] == 0 and r["peak_memory_gb"] > 0
    first, last = np.mean([r["loss"] for r in records[:3]]), np.mean([r["loss"] for r in records[-3:]])
    assert last < first, (first, last)
    evals = [r for r in read_records(run_dir) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [4, 8]
    for name in ("config.json", "adapter_config.json", "adapters.safetensors", "checkpoints/step-000008/state.json"):
        assert (run_dir / name).is_file(), name
    # Only the files rundir names (tests/test_rundir.py records them per format version), each read back whole.
    assert {p.name for p in run_dir.iterdir()} <= set(rundir.RUN_FILES)
    assert {p.name for p in (run_dir / "checkpoints" / "step-000008").iterdir()} == set(rundir.CHECKPOINT_FILES)
    assert rundir.format_version(run_dir) == rundir.VERSION and rundir.read_config(run_dir)["iters"] == 8
    assert rundir.read_status(run_dir).phase == rundir.FINISHED
    # The base model it trained on, identified by its files' hashes (checked on resume and export).
    recorded = json.loads((run_dir / rundir.MODEL).read_text())["files"]["model.safetensors"]
    assert recorded["sha256"] == file_digest(smollm2_dir / "model.safetensors")["sha256"]
    # The memory plan, made for the data's batches before the weights loaded, bounds the measured peak closely.
    memory = rundir.read_memory_records(run_dir)[-1]
    assert 1.0 <= memory["predicted_peak_bytes"] / memory["measured_peak_bytes"] <= 1.3, memory


def test_adapters_load_in_mlx_lm(reference_run, smollm2_dir):
    from mlx_lm import load
    from mlx_lm.generate import generate

    run_dir, _ = reference_run
    model, tokenizer = load(str(smollm2_dir), adapter_path=str(run_dir))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "How do I boil an egg?"}],
                                           add_generation_prompt=True, tokenize=False)
    saved = mx.load(str(run_dir / "adapters.safetensors"))
    params = dict(tree_flatten(model.parameters()))
    assert saved and all(mx.array_equal(params[k], v).item() for k, v in saved.items())  # the run's adapters
    assert len(tokenizer.encode(generate(model, tokenizer, prompt, max_tokens=8))) >= 1


def interrupt_after(run_dir: Path, step: int, sig, args) -> str:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(run_dir / "checkpoints" / f"step-{step:06d}" / "state.json", proc)
    os.kill(proc.pid, sig)
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def test_stop_kill_and_resume_match_the_uninterrupted_run(reference_run, tmp_path):
    """SIGTERM after the step-2 checkpoint (the app's Stop: checkpoint and exit cleanly),
    resume, SIGKILL after the step-4 checkpoint (no warning, possibly mid-step or mid-write),
    resume again: every step's metrics equal the reference run's."""
    reference_dir, _ = reference_run
    run_dir = tmp_path / "run"
    code, out = interrupt_after(run_dir, 2, signal.SIGTERM, cli(*ARGS, "--output-dir", str(run_dir)))
    # A stopped run exits 4 (resumable), not 0: `train && export` must not export it.
    assert code == 4 and f"adapters: {run_dir / 'adapters.safetensors'}" not in out, out[-2000:]
    assert re.search(rf"stopped at step [2-7]/8; checkpoint saved\. Continue with: python -m mlx_orpo\.train "
                     rf"--resume {re.escape(str(run_dir))}\n", out), out[-2000:]
    code, out = interrupt_after(run_dir, 4, signal.SIGKILL, cli("--resume", str(run_dir)))
    assert code == -signal.SIGKILL  # (its buffered output may be lost with it; the last resume checks the log)
    done = subprocess.run(cli("--resume", str(run_dir)), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout
    assert_same_metrics(train_records(reference_dir), train_records(run_dir))
    saved = json.loads((run_dir / "config.json").read_text())
    # --pad-to auto is saved resolved (multiples here, on the CPU): a resume pads and orders as the run did.
    assert saved["iters"] == 8 and saved["pad_to"] == "multiple"


def test_bad_data_is_a_clear_error_not_a_traceback(tmp_path):
    data = tmp_path / "prefs.jsonl"
    data.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}) + "\n"
                    + json.dumps({"prompt": "Hi", "chosen": "Hello!"}) + "\n")
    done = subprocess.run(cli("--data", str(data), "--output-dir", str(tmp_path / "run")), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    assert "prefs.jsonl" in done.stderr and "line 2" in done.stderr and "rejected" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_mapped_run_saves_its_columns_and_a_resume_keeps_them(tmp_path):
    rows = [{"question": f"What is {i} + {i}?", "good": f"{2 * i}.", "bad": "No idea, sorry."} for i in range(6)]
    data = tmp_path / "other names.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    missing = subprocess.run(cli("--data", str(data), "--columns", "prompt=question,chosen=best,rejected=bad",
                                 "--output-dir", str(run)), capture_output=True, text=True, timeout=300)
    errors = [line for line in missing.stderr.splitlines() if line.startswith("error:")]
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr[-2000:]
    assert errors == [f"error: {data}: --columns chosen=best names a column it does not have "
                      "(its columns: question, good, bad)"], missing.stderr[-2000:]
    columns = "prompt=question,chosen=good,rejected=bad"
    done = subprocess.run(cli("--data", str(data), "--columns", columns, "--iters", "1", "--max-length", "64",
                              "--batch-size", "1", "--eval-every", "0", "--output-dir", str(run)),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert rundir.read_config(run)["columns"] == {"prompt": "question", "chosen": "good", "rejected": "bad"}
    other = subprocess.run(cli("--resume", str(run), "--columns", "prompt=question,chosen=bad,rejected=good"),
                           capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and f"--columns {columns} (given: prompt=question,chosen=bad,rejected=good)" \
        in other.stderr, other.stderr[-2000:]
