"""Checkpoints are verified on load: a damaged newest one is named and passed over for the
newest intact one; nothing ends in a loader traceback (tiny random llama, a few steps)."""

import json
import re

import pytest
from helpers import cfg_for, make, pairs

import mlx_orpo.trainer as trainer_mod
from mlx_orpo import checkpoint as ckpt
from mlx_orpo import rundir
from mlx_orpo.checkpoint import list_checkpoints
from mlx_orpo.config import TrainConfig

DATA = pairs(8)


def train(run_dir, resume=False, iters=6):
    cfg = cfg_for(run_dir, iters=iters, eval_every=0, save_every=2, keep_checkpoints=3)
    lines = []
    state = trainer_mod.train(make(cfg), DATA, [], cfg, run_dir, pad_id=0, resume=resume, log=lines.append,
                              progress=False)
    return state, lines


@pytest.fixture
def run(tmp_path):
    train(tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002", "step-000004", "step-000006"]
    return tmp_path


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_fresh_checkpoint_carries_a_manifest_and_verifies(run):
    newest = list_checkpoints(run)[-1]
    manifest = json.loads((newest / rundir.MANIFEST).read_text())
    assert set(manifest) == {"adapters.safetensors", "optimizer.safetensors", "state.json"}
    assert manifest["state.json"]["bytes"] == (newest / "state.json").stat().st_size
    ckpt.verify_checkpoint(newest)


@pytest.mark.parametrize("damage", ["truncated adapters", "truncated optimizer", "missing optimizer",
                                    "corrupt state", "flipped byte"])
def test_resume_falls_back_to_the_newest_intact_checkpoint_naming_the_bad_file(run, damage):
    newest = run / "checkpoints" / "step-000006"
    bad = {"truncated adapters": "adapters.safetensors", "truncated optimizer": "optimizer.safetensors",
           "missing optimizer": "optimizer.safetensors", "corrupt state": "state.json",
           "flipped byte": "adapters.safetensors"}[damage]
    if damage.startswith("truncated"):
        truncate(newest / bad)
    elif damage == "missing optimizer":
        (newest / bad).unlink()
    elif damage == "corrupt state":
        (newest / bad).write_text('{"step": 6, "epo')
    else:
        data = bytearray((newest / bad).read_bytes())
        data[-3] ^= 0xFF  # same size, different contents: only the checksum sees it
        (newest / bad).write_bytes(bytes(data))
    state, lines = train(run, resume=True)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and str(newest / bad) in warnings[0], lines
    assert "falling back to step-000004" in warnings[0]
    assert any("resumed from" in line and "step-000004" in line for line in lines)
    assert state.step == 6
    ckpt.verify_checkpoint(newest)  # rewritten whole by the resumed run


def test_every_checkpoint_damaged_is_a_clear_error(run):
    for path in list_checkpoints(run):
        truncate(path / "adapters.safetensors")
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        train(run, resume=True)


def test_a_version_1_checkpoint_without_manifest_gets_structural_checks(run):
    """A version-1 run (config.json beside metrics.jsonl, no marker) may predate manifests: a cut
    safetensors file or a broken state.json is still named."""
    TrainConfig(output_dir=str(run)).save(run / rundir.CONFIG)
    assert rundir.format_version(run) == 1
    newest = list_checkpoints(run)[-1]
    (newest / rundir.MANIFEST).unlink()
    ckpt.verify_checkpoint(newest)
    (newest / rundir.STATE).write_text("{")
    with pytest.raises(ckpt.CorruptFileError, match=re.escape(f"{newest / rundir.STATE}: corrupt checkpoint state")):
        ckpt.verify_checkpoint(newest)
    truncate(newest / rundir.OPTIMIZER, 0.9)
    cut = newest / rundir.OPTIMIZER
    with pytest.raises(ckpt.CorruptFileError, match=re.escape(f"{cut}: corrupt or truncated")):
        ckpt.verify_checkpoint(newest)


def test_a_current_checkpoint_without_manifest_is_damaged_and_passed_over(run):
    """Every checkpoint of a version-2 or later run has a manifest: one without is damaged, not old."""
    newest = list_checkpoints(run)[-1]
    (newest / rundir.MANIFEST).unlink()
    with pytest.raises(ckpt.CorruptFileError, match=re.escape(f"{newest / rundir.MANIFEST}: missing (every "
                                                              f"checkpoint of a version-{rundir.VERSION} run")):
        ckpt.verify_checkpoint(newest)
    state, lines = train(run, resume=True)
    assert any("resumed from" in line and "step-000004" in line for line in lines) and state.step == 6


def test_check_safetensors_names_cut_and_garbage_files(tmp_path):
    for content, detail in [(b"", "header is cut off"), (b"\x10\x00\x00\x00\x00\x00\x00\x00{no", "header is cut off"),
                            (b"\x04\x00\x00\x00\x00\x00\x00\x00{no}", "header is not valid")]:
        path = tmp_path / "x.safetensors"
        path.write_bytes(content)
        with pytest.raises(ckpt.CorruptFileError, match=re.escape(detail)):
            ckpt.check_safetensors(path)
    with pytest.raises(ckpt.CorruptFileError, match="missing"):
        ckpt.check_safetensors(tmp_path / "absent.safetensors")
