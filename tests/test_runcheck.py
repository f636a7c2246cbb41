"""The checks that make a resume (and an export) the run it names fail closed: a run's record of its data
and of its base model must be readable where its format version writes them, a changed base model is
noticed by name, and a run of a newer format version is refused on every path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_one_error_line, fake_model

from mlx_orpo import model_identity, runcheck, rundir
from mlx_orpo.config import TrainConfig
from mlx_orpo.data import load_splits


def cli(*args, module="mlx_orpo.train"):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          env=env)


def started_run(tmp_path: Path, version: int = rundir.VERSION) -> tuple[Path, TrainConfig, tuple]:
    """A run of `version` once its checks passed: config.json, its marker, data.json and model.json."""
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q{i}?", "chosen": f"Good {i}.", "rejected": f"Bad {i}."}) + "\n"
                            for i in range(6)))
    run = tmp_path / "run"
    run.mkdir()
    cfg = TrainConfig(model=str(fake_model(tmp_path / "base")), data=str(data), output_dir=str(run), iters=4,
                      pad_to="multiple", pad_multiple=32).validate()
    cfg.save(run / rundir.CONFIG)
    (run / rundir.MARKER).write_text(json.dumps({"format": rundir.FORMAT, "version": version}))
    splits = load_splits(str(data))
    runcheck.write_fingerprint(run, runcheck.data_fingerprint(cfg, splits))
    runcheck.write_model_record(run, cfg.model)
    return run, cfg, splits


# -- data.json ------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [None, "garbage{", '{"data": 5}', "[]", '{"data": {"source": "x"}}'])
@pytest.mark.parametrize("version", [2, rundir.VERSION])
def test_a_missing_or_damaged_data_record_refuses_the_resume(tmp_path, content, version):
    """A data.json that is there but damaged refuses a resume in any version; a missing one where the
    run's version always writes it. The refusal names the file and --allow-changed-data, which logs."""
    run, cfg, splits = started_run(tmp_path, version)
    path = run / rundir.DATA
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    logged = []
    if content is None and not rundir.FORMATS[version].data_record:
        runcheck.check_run(cfg, run, splits, resume=True, log=logged.append)
        assert logged == [f"{run} is a version-{version} run and has no record of its data ({rundir.DATA}); "
                          "recording the data it resumes with"]
        return
    with pytest.raises(runcheck.RunCheckError, match=rf"^{path} is (missing|damaged).*--allow-changed-data"):
        runcheck.check_run(cfg, run, splits, resume=True)
    runcheck.check_run(cfg, run, splits, resume=True, allow_changed_data=True, log=logged.append)
    assert len(logged) == 1 and logged[0].startswith(f"warning: --allow-changed-data: {path} is")


def test_a_data_record_of_the_wrong_shape_is_one_error_line(tmp_path):
    run, _, _ = started_run(tmp_path)
    (run / rundir.DATA).write_text('{"data": 5}')
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    line = assert_one_error_line(cli("--resume", str(run)))
    assert str(run / rundir.DATA) in line and "--allow-changed-data" in line
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # the damaged record is not written over


# -- model.json -----------------------------------------------------------------------------------

def test_the_base_model_is_hashed_once_and_a_change_is_named(tmp_path, monkeypatch):
    base = fake_model(tmp_path / "base")
    record = model_identity.identify(str(base))
    assert record["files"]["model.safetensors"]["sha256"] == runcheck.file_digest(base / "model.safetensors")["sha256"]
    # Unchanged sizes and modification times: nothing is read again.
    monkeypatch.setattr(model_identity, "file_digest", lambda path: pytest.fail(f"{path} hashed again"))
    assert model_identity.model_changes(record, model_identity.identify(str(base), previous=record)) == []
    monkeypatch.undo()
    os.utime(base / "model.safetensors", ns=(1, 1))  # touched: hashed again, and the same
    assert model_identity.model_changes(record, model_identity.identify(str(base), previous=record)) == []
    (base / "model.safetensors").write_bytes(b"Weights")
    assert model_identity.model_changes(record, model_identity.identify(str(base), previous=record)) == [
        f"{base / 'model.safetensors'} changed (7 bytes then, 7 now, same size, other contents)"]
    (base / "chat_template.jinja").write_text("{{ messages }}")  # the prompts a run renders: part of the model
    assert f"{base / 'chat_template.jinja'} was added" in model_identity.model_changes(
        record, model_identity.identify(str(base), previous=record))
    other = fake_model(tmp_path / "other")  # another model named (an export's --model): said first
    (other / "model.safetensors").write_bytes(b"other weights")
    assert model_identity.model_changes(record, model_identity.identify(str(other)))[0] == \
        f"the model is read from {other}, the run's was {base}"


def test_a_changed_base_model_refuses_the_resume_unless_allowed(tmp_path):
    run, cfg, splits = started_run(tmp_path)
    runcheck.check_run(cfg, run, splits, resume=True)  # unchanged: passes
    (Path(cfg.model) / "model.safetensors").write_bytes(b"Weights")
    pattern = rf"base model of {run} changed .*{Path(cfg.model) / 'model.safetensors'} changed .*--allow-changed-model"
    with pytest.raises(runcheck.RunCheckError, match=pattern):
        runcheck.check_run(cfg, run, splits, resume=True)
    logged = []
    runcheck.check_run(cfg, run, splits, resume=True, allow_changed_model=True, log=logged.append)
    assert len(logged) == 1 and logged[0].startswith("warning: --allow-changed-model:")
    line = assert_one_error_line(cli("--resume", str(run)))
    assert "model.safetensors changed" in line and "--allow-changed-model" in line


@pytest.mark.parametrize("version", [1, 2, rundir.VERSION])
def test_a_run_without_its_model_record(tmp_path, version):
    """Versions 1 and 2 never recorded their base model: said once, not refused. A version-3 run always
    does: a missing or damaged model.json refuses the resume."""
    run, cfg, splits = started_run(tmp_path, version)
    if version == 1:
        (run / rundir.MARKER).unlink()
        (run / rundir.METRICS).touch()
    (run / rundir.MODEL).unlink()
    logged = []
    if not rundir.FORMATS[version].model_record:
        runcheck.check_run(cfg, run, splits, resume=True, log=logged.append)
        assert logged == [f"{run} is a version-{version} run and has no record of its base model "
                          f"({rundir.MODEL}); recording the base model it resumes with"]
        return
    with pytest.raises(runcheck.RunCheckError, match=rf"{run / rundir.MODEL} is missing.*--allow-changed-model"):
        runcheck.check_run(cfg, run, splits, resume=True)
    (run / rundir.MODEL).write_text('{"files": 3}')
    with pytest.raises(runcheck.RunCheckError, match=rf"{run / rundir.MODEL} is damaged"):
        runcheck.check_run(cfg, run, splits, resume=True)


def exportable_run(tmp_path: Path) -> tuple[Path, Path]:
    """A version-3 run with adapters, trained (as its model.json says) on a base at tmp_path/base."""
    import mlx.core as mx

    run, cfg, _ = started_run(tmp_path)
    key = "model.layers.0.self_attn.q_proj"
    mx.save_safetensors(str(run / rundir.ADAPTERS),
                        {f"{key}.lora_a": mx.zeros((16, 8)), f"{key}.lora_b": mx.zeros((8, 16))})
    adapter_cfg = {"fine_tune_type": "lora", "num_layers": -1, "model": cfg.model, "model_path": cfg.model,
                   "lora_parameters": {"rank": 8, "scale": 2.0, "dropout": 0.0, "keys": ["self_attn.q_proj"]}}
    (run / rundir.ADAPTER_CONFIG).write_text(json.dumps(adapter_cfg))
    return run, Path(cfg.model)


def test_an_export_on_a_changed_base_model_is_refused_by_name(tmp_path):
    run, base = exportable_run(tmp_path)
    (base / "model.safetensors").write_bytes(b"Weights")
    for fmt in ("hf", "gguf"):  # mlx goes through the same fuse.load_fused
        out = tmp_path / f"out.{fmt}" if fmt == "gguf" else tmp_path / fmt
        line = assert_one_error_line(cli("--adapters", str(run), "--format", fmt, "--out", str(out),
                                         module="mlx_orpo.export"))
        assert f"{base / 'model.safetensors'} changed" in line and "--allow-changed-model" in line, line
        assert not out.exists()
    logged = []
    runcheck.check_base_model(run, str(base), allowed=True, log=logged.append, doing="export")
    assert logged[0].startswith("warning: --allow-changed-model: the export of")


def test_a_run_of_a_newer_format_version_is_refused_on_resume_and_export(tmp_path):
    run, cfg, splits = started_run(tmp_path)
    (tmp_path / "e").mkdir()
    exportable_run(tmp_path / "e")
    for folder in (run, tmp_path / "e" / "run"):
        (folder / rundir.MARKER).write_text(json.dumps({"format": rundir.FORMAT, "version": 99}))
    both = rf"format version 99, and this mlx-orpo reads versions 1 to {rundir.VERSION}"
    with pytest.raises(ValueError, match=both):
        runcheck.check_run(cfg, run, splits, resume=True)
    assert "version 99" in assert_one_error_line(cli("--resume", str(run)))
    for fmt in ("hf", "peft"):
        line = assert_one_error_line(cli("--adapters", str(tmp_path / "e" / "run"), "--format", fmt, "--out",
                                  str(tmp_path / fmt), module="mlx_orpo.export"))
        assert "format version 99" in line and f"1 to {rundir.VERSION}" in line, line


def test_a_gguf_rewritten_in_place_is_converted_again(tmp_path, monkeypatch):
    """A .gguf base is trained on as its conversion in the cache: a file rewritten after it was
    converted is converted again (its run's model.json then tells the two apart), and two files of one
    name in two folders are two models."""
    import mlx_orpo.gguf_import as gguf_import
    from mlx_orpo.models import resolve_model

    converted = []

    def import_gguf(gguf, out):
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.safetensors").write_bytes(gguf.read_bytes())
        converted.append(gguf)

    monkeypatch.setenv("MLX_ORPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf_import, "import_gguf", import_gguf)
    (tmp_path / "a").mkdir()
    gguf = tmp_path / "a" / "model.gguf"
    gguf.write_bytes(b"weights")
    first = resolve_model(str(gguf))
    assert resolve_model(str(gguf)) == first and converted == [gguf]
    gguf.write_bytes(b"Weights")
    os.utime(gguf, ns=(time_ns := os.stat(Path(first) / "model.safetensors").st_mtime_ns + 10**9, time_ns))
    assert resolve_model(str(gguf)) == first and converted == [gguf, gguf]
    assert (Path(first) / "model.safetensors").read_bytes() == b"Weights"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.gguf").write_bytes(b"other")
    assert resolve_model(str(tmp_path / "b" / "model.gguf")) != first


def test_a_hub_model_is_identified_by_its_revision(tmp_path, monkeypatch):
    """A Hub model is its snapshot's commit in the local cache (the cache only: no download here)."""
    import mlx_lm.utils

    snapshot = tmp_path / "hub" / "models--o--m" / "snapshots" / "abc123"
    monkeypatch.setattr(mlx_lm.utils, "hf_repo_to_path", lambda repo: snapshot)
    record = model_identity.identify("o/m")
    assert (record["revision"], record["files"]) == ("abc123", {})
    monkeypatch.setattr(mlx_lm.utils, "hf_repo_to_path", lambda repo: snapshot.with_name("def456"))
    assert model_identity.model_changes(record, model_identity.identify("o/m")) == [
        "o/m was revision abc123, now def456"]
    assert model_identity.model_changes(record, record) == []
