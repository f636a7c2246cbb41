"""Issue 20's five classes: a run writes only into its own directory; a resume is the same run or is
refused; a stop is prompt, honest and resumable; every file read is checked first; a user's mistake
ends in one `error:` line (exit 2), never a traceback."""

import contextlib
import errno
import json
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
from helpers import (
    APP_MAX_LEN,
    APP_MODEL,
    assert_one_error_line,
    cfg_for,
    fake_model,
    file_data,
    make,
    pairs,
    tiny_model,
    upload_raw,
)

import mlx_orpo.trainer as trainer_mod
from mlx_orpo import checkpoint as ckpt
from mlx_orpo import feeding, report, runcheck, rundir
from mlx_orpo.config import TrainConfig, load_yaml
from mlx_orpo.data import DataError, load_splits
from mlx_orpo.files import file_digest
from mlx_orpo.runlock import RunLock


def cli(*args, module="mlx_orpo.train", cwd=None, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env)


def write_data(path: Path, n=6, start=0) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": f"Good answer {i}.",
                                        "rejected": f"Bad answer {i}."}) + "\n" for i in range(start, start + n)))
    return path


# -- 1. a run writes only into its own directory --------------------------------------------------------------

def test_output_dir_must_be_new_empty_or_a_run_and_never_the_model(tmp_path):
    """`--output-dir` the model, inside it, a folder of other files or a file: refused before anything
    is written (the model's config.json is as it was, no folder or .lock is left behind)."""
    model = fake_model(tmp_path / "m")
    config_before = (model / "config.json").read_bytes()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    (tmp_path / "a-file").write_text("x")
    cases = {"m": "is the model", "m/sub": "lies inside the model", "foreign": "not a run directory",
             "a-file": "is a file"}
    for out, words in cases.items():
        done = cli("--model", "./m", "--output-dir", out, "--iters", "1", cwd=tmp_path)
        assert_one_error_line(done, words)
    assert (model / "config.json").read_bytes() == config_before
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in foreign.iterdir()) == ["config.json"]


def test_a_missing_model_path_is_named_and_leaves_no_run_folder(tmp_path):
    done = cli("--model", "./nonexistent", "--output-dir", "new-run", "--iters", "1", cwd=tmp_path)
    assert_one_error_line(done, "nonexistent", "no such model directory")
    assert not (tmp_path / "new-run").exists()
    # A model that fails only when it loads (after the lock made the default runs/orpo-<time>/): the
    # folders the run created go again, a runs/ that was there stays.
    done = cli("--model", "nobody-xyz/no-such-repo", "--iters", "1", cwd=tmp_path)
    assert_one_error_line(done, "nobody-xyz/no-such-repo")
    assert not (tmp_path / "runs").exists()
    (tmp_path / "runs").mkdir()
    assert cli("--model", "nobody-xyz/no-such-repo", "--iters", "1", cwd=tmp_path).returncode == 2
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_folder_holding_only_what_the_app_writes_first_is_empty_enough(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.LOG).write_text("starting\n")
    runcheck.check_output_dir(run, "smollm2-135m", resume=False)
    rundir.write_marker(run)
    with pytest.raises(runcheck.RunCheckError, match="already holds a run; use --resume"):
        runcheck.check_output_dir(run, "smollm2-135m", resume=False)


# -- 2. a resume is the same run, or it is refused ------------------------------------------------------------

def started_run(tmp_path: Path, data: Path) -> Path:
    """The files a run has once its checks passed (config.json, marker, data and model records)."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = TrainConfig(data=str(data), output_dir=str(run), iters=4, pad_to="multiple", pad_multiple=32).validate()
    cfg.save(run / rundir.CONFIG)
    rundir.write_marker(run)
    runcheck.write_fingerprint(run, runcheck.data_fingerprint(cfg, load_splits(str(data))))
    runcheck.write_model_record(run, cfg.model)
    return run


def test_resume_refuses_options_that_change_the_run_naming_its_values(tmp_path):
    run = started_run(tmp_path, write_data(tmp_path / "prefs.jsonl"))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    other = fake_model(tmp_path / "other")
    done = cli("--resume", str(run), "--model", str(other), "--lora-rank", "4")
    line = assert_one_error_line(done, "--model smollm2-135m", f"(given: {other})", "--lora-rank 8 (given: 4)")
    assert "--resume" in line
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing in RUN was written
    # How the run is watched and saved may change.
    cfg = TrainConfig(**{**json.loads((run / rundir.CONFIG).read_text()), "report_every": 3, "save_every": 7})
    runcheck.check_same_run(cfg, run)


def test_resume_on_changed_data_stops_unless_allowed_and_logged(tmp_path):
    data = write_data(tmp_path / "prefs.jsonl")
    run = started_run(tmp_path, data)
    cfg = TrainConfig(**json.loads((run / rundir.CONFIG).read_text()))
    runcheck.check_run(cfg, run, load_splits(str(data)), resume=True)  # unchanged: passes
    write_data(data, n=3, start=3)  # half of the pairs removed
    with pytest.raises(runcheck.RunCheckError, match=r"data of .* changed .*prefs.jsonl changed .*--allow-changed"):
        runcheck.check_run(cfg, run, load_splits(str(data)), resume=True)
    logged = []
    runcheck.check_run(cfg, run, load_splits(str(data)), resume=True, allow_changed_data=True, log=logged.append)
    assert any("--allow-changed-data" in line and "prefs.jsonl changed" in line for line in logged)
    done = cli("--resume", str(run))
    assert_one_error_line(done, "changed since the run started", "--allow-changed-data")


def test_hub_data_is_fingerprinted_by_its_pairs():
    now = {"data": {"source": "o/n", "hub": True, "pairs": 3, "pairs_sha256": "b"}}
    assert runcheck.data_changes({"data": {**now["data"], "pairs_sha256": "a", "pairs": 4}}, now) == \
        ["the pairs read from o/n differ (4 pairs then, 3 now)"]
    assert runcheck.data_changes(now, now) == []


# -- 3. stopping is prompt, honest and always resumable ---------------------------------------------------------

def sigterm_at_collate(monkeypatch, n: int):
    """Send this process SIGTERM as the trainer collates its n-th batch (micro-batch or evaluation)."""
    calls = []
    real = feeding.collate

    def collate(*args, **kw):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kw)

    collate_in_the_loop(monkeypatch, collate)
    return calls


def collate_in_the_loop(monkeypatch, collate):
    """Make `collate` what the loop collates its micro-batches and evaluation batches with."""
    monkeypatch.setattr(feeding, "collate", collate)
    monkeypatch.setattr(trainer_mod, "collate", collate)


def train(run, cfg, data, resume=False, log=None):
    model = make(cfg)
    return trainer_mod.train(model, data, data[:4], cfg, run, pad_id=0, resume=resume,
                             log=log or (lambda s: None), progress=False)


def test_a_stop_between_micro_batches_drops_the_partial_step_saves_and_resumes_exactly(tmp_path, monkeypatch):
    data = pairs(16)
    kw = dict(iters=3, grad_accum=4, batch_size=1, eval_every=0, save_every=10)
    full = tmp_path / "full"
    train(full, cfg_for(full, **kw), data)
    cut = tmp_path / "cut"
    calls = sigterm_at_collate(monkeypatch, 6)  # step 2's second micro-batch
    logged = []
    state = train(cut, cfg_for(cut, **kw), data, log=logged.append)
    assert len(calls) == 6  # it did not wait for the step's other two micro-batches
    assert (state.step, state.epoch, state.batch_in_epoch) == (1, 0, 4)  # step 2's data not consumed
    assert [p.name for p in ckpt.list_checkpoints(cut)] == ["step-000001"]
    assert (rundir.read_status(cut).phase, rundir.read_status(cut).step) == (rundir.STOPPED, 1)
    assert logged[-1] == f"stopped at step 1/3; checkpoint saved. Continue with: python -m mlx_orpo.train " \
                         f"--resume {cut}"
    monkeypatch.undo()
    train(cut, cfg_for(cut, **kw), data, resume=True)
    a, b = read_train(full), read_train(cut)
    assert [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)


def read_train(run):
    return [r for r in rundir.read_records(run) if r["kind"] == rundir.TRAIN]


def test_a_stop_during_evaluation_drops_it_and_a_second_signal_is_no_traceback(tmp_path, monkeypatch):
    data = pairs(16)
    cfg = cfg_for(tmp_path, iters=4, batch_size=1, eval_every=2, eval_max_pairs=4, save_every=10)
    calls = []
    real = feeding.collate

    def collate(*args, **kw):
        calls.append(1)
        if len(calls) == 4:  # step 2's evaluation, its second batch: two signals, as an impatient user sends
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kw)

    collate_in_the_loop(monkeypatch, collate)
    state = train(tmp_path, cfg, data)
    assert state.step == 2 and len(calls) == 4
    assert [r for r in rundir.read_records(tmp_path) if r["kind"] == rundir.EVAL] == []  # partial: not recorded
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000002"]


def test_a_stop_during_the_last_step_still_gets_the_final_evaluation(tmp_path, monkeypatch):
    data = pairs(16)
    cfg = cfg_for(tmp_path, iters=2, batch_size=1, eval_every=0, eval_max_pairs=4, save_every=10)
    calls = sigterm_at_collate(monkeypatch, 2)  # the last step's only micro-batch
    state = train(tmp_path, cfg, data)
    assert state.step == 2 and len(calls) == 2 + 4  # the step, then all four evaluation batches
    evals = [r for r in rundir.read_records(tmp_path) if r["kind"] == rundir.EVAL]
    assert [r["step"] for r in evals] == [2]  # a complete run, with the evaluation a resume would never run
    assert rundir.read_status(tmp_path).phase != rundir.STOPPED


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_step_0(tmp_path, monkeypatch):
    data = pairs(8)
    cfg = cfg_for(tmp_path, iters=3, eval_every=0, save_every=10, grad_accum=2, batch_size=1)
    sigterm_at_collate(monkeypatch, 2)
    logged = []
    state = train(tmp_path, cfg, data, log=logged.append)
    assert state.step == 0 and ckpt.list_checkpoints(tmp_path) == []
    assert "nothing to save; it starts again from step 0" in logged[-1]
    monkeypatch.undo()
    logged = []
    state = train(tmp_path, cfg, data, resume=True, log=logged.append)
    assert state.step == 3 and any("starting from step 0" in line for line in logged)


def test_a_long_step_is_warned_about_with_its_estimated_time(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "SLOW_STEP_SECONDS", 0)
    logged = []
    train(tmp_path, cfg_for(tmp_path, iters=1, grad_accum=3, batch_size=1, eval_every=0), pairs(8),
          log=logged.append)
    warnings = [line for line in logged if line.startswith("warning: --grad-accum 3: one optimizer step takes")]
    assert len(warnings) == 1 and "per micro-batch" in warnings[0]


# -- 4. every file we read is checked before it can hurt us ---------------------------------------------------

def test_a_crafted_or_false_gguf_is_refused_before_mlx_reads_it(tmp_path):
    from mlx_orpo.gguf_import import GGUFImportError, check_gguf
    from mlx_orpo.models import offline_smollm2_gguf

    text = tmp_path / "notes.gguf"
    text.write_text("this is a text file\n" * 4)
    crafted = tmp_path / "crafted.gguf"
    crafted.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**40, 0) + bytes(64))
    with pytest.raises(GGUFImportError, match="not a GGUF file"):
        check_gguf(text)
    with pytest.raises(GGUFImportError, match="claims 1099511627776 tensors"):
        check_gguf(crafted)
    done = cli("--model", str(crafted), "--output-dir", str(tmp_path / "run"))
    assert_one_error_line(done, "crafted.gguf", "damaged or not a GGUF file")
    assert not (tmp_path / "run").exists()
    if (real := offline_smollm2_gguf()) is not None:
        check_gguf(real)
        cut = tmp_path / "cut.gguf"
        cut.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
        with pytest.raises(GGUFImportError, match="lies outside the"):
            check_gguf(cut)


def gguf_file(path: Path, *, version=3, metadata=(), tensors=(("w", (8,), 0, 0),), data=32, counts=None) -> Path:
    """A GGUF file: `metadata` as (key, type, raw value bytes), `tensors` as (name, dims, type, offset),
    then `data` bytes of tensor data after the header padded to 32 (None: the header alone); `counts`
    replaces the header's."""
    def string(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()

    header = b"GGUF" + struct.pack("<IQQ", version, *(counts or (len(tensors), len(metadata))))
    header += b"".join(string(key) + struct.pack("<I", kind) + value for key, kind, value in metadata)
    for name, dims, kind, offset in tensors:
        header += string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, kind, offset)
    path.write_bytes(header if data is None else header + bytes(-len(header) % 32 + data))
    return path


@pytest.mark.parametrize("layout, problem", [
    (dict(version=4), "GGUF version 4; versions 2 and 3 are read"),
    (dict(tensors=(), metadata=[("k", 9, b"")], data=None), "the header runs past the end of the 37-byte file"),
    (dict(counts=(4, 0)), "it claims 4 tensors and 0 metadata entries, more than 96 bytes can hold"),
    (dict(metadata=[("k", 8, struct.pack("<Q", 10**6))]), "a metadata string of 1000000 bytes runs past"),
    (dict(metadata=[("general.alignment", 4, struct.pack("<I", 24))]), "general.alignment 24 is not a power of two"),
    (dict(metadata=[("k", 9, struct.pack("<IQ", 8, 2**40))]), "k: 1099511627776 strings cannot fit the file"),
    (dict(metadata=[("k", 9, struct.pack("<IQ", 10, 2**40))]), "k: an array of 8796093022208 bytes runs past"),
    (dict(metadata=[("k", 9, struct.pack("<IQ", 9, 1))]), "k: unknown array element type 9"),
    (dict(metadata=[("k", 13, b"")]), "k: unknown metadata type 13"),
    (dict(tensors=[("w", (1, 1, 1, 1, 8), 0, 0)]), "tensor 'w' has 5 dimensions"),
    (dict(tensors=[("w", (256,), 16, 0)]), "tensor 'w' has unknown type 16"),
    (dict(tensors=[("w", (31,), 2, 0)]), "tensor 'w' has shape [31], not whole blocks of 32"),
    (dict(tensors=[("w", (0,), 0, 0)]), "tensor 'w' has shape [0], not whole blocks of 1"),
    (dict(tensors=[("w", (8,), 0, 4)]), "tensor 'w' (32 bytes at offset 4) lies outside"),
    (dict(tensors=[("w", (16,), 0, 0)]), "tensor 'w' (64 bytes at offset 0) lies outside the"),
])
def test_each_bound_of_a_gguf_header_refuses_a_crafted_file(tmp_path, layout, problem):
    from mlx_orpo.gguf_import import GGUFImportError, check_gguf

    check_gguf(gguf_file(tmp_path / "fine.gguf"))
    crafted = gguf_file(tmp_path / "crafted.gguf", **layout)
    with pytest.raises(GGUFImportError, match=rf"crafted.gguf: damaged or not a GGUF file \({re.escape(problem)}"):
        check_gguf(crafted)


def adapter_dir(tmp_path: Path, rank=8, **config) -> Path:
    folder = tmp_path / "adapters"
    folder.mkdir()
    key = "model.layers.0.self_attn.q_proj"
    mx.save_safetensors(str(folder / "adapters.safetensors"),
                        {f"{key}.lora_a": mx.zeros((16, rank)), f"{key}.lora_b": mx.zeros((rank, 16))})
    cfg = {"fine_tune_type": "lora", "num_layers": -1, "model": "smollm2-135m",
           "lora_parameters": {"rank": rank, "scale": 2.0, "dropout": 0.0, "keys": ["self_attn.q_proj"]}}
    cfg["lora_parameters"].update(config)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def test_an_adapter_config_that_does_not_match_its_tensors_is_refused(tmp_path):
    from mlx_orpo.fuse import check_adapter_dir

    folder = adapter_dir(tmp_path, rank=8)
    check_adapter_dir(folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["lora_parameters"]["rank"] = -5
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    done = cli("--adapters", str(folder), "--format", "peft", "--out", str(tmp_path / "peft"),
               module="mlx_orpo.export")
    assert_one_error_line(done, "adapter_config.json", "rank -5")
    assert not (tmp_path / "peft").exists()
    cfg["lora_parameters"]["rank"] = 4
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="rank 4, but the adapters' tensors have rank 8"):
        check_adapter_dir(folder)


def test_a_checkpoint_state_with_junk_is_damaged_and_passed_over(tmp_path):
    data = pairs(8)
    cfg = cfg_for(tmp_path, iters=4, save_every=2, eval_every=0)
    train(tmp_path, cfg, data)
    newest = ckpt.list_checkpoints(tmp_path)[-1]
    state = json.loads((newest / "state.json").read_text())
    for junk in ({"window_steps": "x" * 100}, {"junk": list(range(10))}, {"step": -1}):
        (newest / "state.json").write_text(json.dumps({**state, **junk}))
        manifest = json.loads((newest / rundir.MANIFEST).read_text())  # the manifest matching it
        manifest["state.json"] = file_digest(newest / "state.json")
        (newest / rundir.MANIFEST).write_text(json.dumps(manifest))
        warned = []
        assert ckpt.intact_checkpoints(tmp_path, warn=warned.append)[-1].name == "step-000002"
        assert "corrupt checkpoint state" in warned[0] and "falling back to step-000002" in warned[0]
    (newest / "state.json").write_text(json.dumps(state) + " " * (2 << 20))
    with pytest.raises(ckpt.CorruptFileError, match="a loop state takes a few hundred"):
        ckpt.verify_checkpoint(newest)


def test_a_deeply_nested_row_is_a_bad_row_named_by_line(tmp_path):
    data = write_data(tmp_path / "prefs.jsonl")
    with open(data, "a") as f:
        f.write("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DataError, match=r"prefs.jsonl, line 7: JSON nested too deeply"):
        load_splits(str(data))
    train_pairs, valid, report = load_splits(str(data), skip_bad_rows=True)
    assert len(report.skipped) == 1 and len(train_pairs) + len(valid) == 6


def test_the_app_deletes_a_refused_deeply_nested_upload(served, tmp_path, monkeypatch):
    from gradio_client import Client
    from gradio_client.client import Endpoint
    monkeypatch.setattr(Endpoint, "_upload_file", lambda self, f, data_index: f)
    url, runs = served
    nested = tmp_path / "nested.jsonl"
    nested.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    stored_by_gradio = upload_raw(url, nested)
    report = Client(url, verbose=False).predict(file_data(stored_by_gradio, "nested.jsonl"), APP_MODEL, APP_MAX_LEN,
                                                api_name="/upload_data")[0]
    assert "nested too deeply" in report and "The file was not kept." in report, report
    assert not (runs / "uploads" / "nested.jsonl").exists() and not Path(stored_by_gradio).exists()


# -- 5. no traceback for a user's mistake ------------------------------------------------------------------------

@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    """A 64 KB tmpfs mounted on a new `folder` with mount `options` (the test is skipped where this
    machine cannot mount one), unmounted afterwards."""
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"{options}size=64k", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip(f"cannot mount a {options}tmpfs here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KB file system."""
    with tmpfs(tmp_path / "disk", "") as folder:
        yield folder


def test_a_full_disk_while_checkpointing_is_an_os_error_and_leaves_no_temporary(tiny_disk):
    from mlx_orpo.step import build_optimizer

    cfg = cfg_for(tiny_disk, iters=1, lora_rank=64)
    model = make(cfg)
    with pytest.raises(OSError) as caught:
        ckpt.save_checkpoint(tiny_disk, 1, model, build_optimizer(cfg, 1), {"step": 1}, keep=2)
    assert caught.value.errno == errno.ENOSPC
    assert [p.name for p in (tiny_disk / rundir.CHECKPOINTS).iterdir()] == []
    # What a killed writer leaves is removed when the run resumes.
    stale = tiny_disk / rundir.CHECKPOINTS / ".tmp-123-step-000001"
    stale.mkdir()
    logged = []
    trainer_mod._resume(tiny_disk, model, build_optimizer(cfg, 1), trainer_mod.Cluster(), logged.append)
    assert not stale.exists() and any(".tmp-123-step-000001" in line for line in logged)


@pytest.mark.parametrize("fmt, out", [("hf", "hf"), ("gguf", "model.gguf")])
def test_a_disk_filling_up_during_an_export_is_one_error_line(tiny_disk, smollm2_dir, monkeypatch, capsys, fmt, out):
    """The free-space check passes (the disk fills while writing): one error line naming the disk, the
    space the export needs and the space that was free, as the check does; no partial output."""
    import mlx_orpo.output as output
    from mlx_orpo import export

    monkeypatch.setattr(output, "check_free_space", lambda *a: None)
    assert export.main(["--model", str(smollm2_dir), "--format", fmt, "--out", str(tiny_disk / out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "No space left on device" in err, err
    assert f"the disk mounted at {tiny_disk}" in err and "the export needs about" in err, err
    assert "64.0 KB was free" in err and "free some disk space" in err, err
    assert list(tiny_disk.iterdir()) == []


def test_a_read_only_output_dir_is_one_error_line(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,") as folder:
        done = cli("--output-dir", str(folder / "run"), "--iters", "1")
        assert_one_error_line(done, str(folder / "run"), "Read-only file system", "writable")


@pytest.mark.parametrize("text, expected", [
    ("learning_rate: 5e-5", {"learning_rate": 5e-5}),
    ('dora: "false"\nskip_bad_rows: "no"', {"dora": False, "skip_bad_rows": False}),
    ("iters: 1e3\nlora_targets: q_proj v_proj", {"iters": 1000, "lora_targets": ["q_proj", "v_proj"]}),
    ("memory_budget: off", {"memory_budget": "off"}),  # YAML 1.1's false, the documented word
    ("memory_budget: 12GB", {"memory_budget": "12GB"}),
])
def test_yaml_numbers_and_booleans_are_read_as_meant(tmp_path, text, expected):
    (tmp_path / "run.yaml").write_text(text)
    assert load_yaml(tmp_path / "run.yaml") == expected


@pytest.mark.parametrize("text, words", [
    ("lora_targets: 5", ["lora_targets must be a list of names", "5"]),
    ("dora: maybe", ["dora must be true or false", "maybe"]),
    ("iters: 2.5", ["iters must be an integer", "2.5"]),
])
def test_ambiguous_yaml_values_are_refused_by_name(tmp_path, text, words):
    (tmp_path / "run.yaml").write_text(text)
    done = cli("--config", str(tmp_path / "run.yaml"), "--output-dir", str(tmp_path / "run"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert all(w in done.stderr for w in words), done.stderr
    assert not (tmp_path / "run").exists()


def test_smaller_mistakes_are_named(tmp_path):
    from mlx_orpo.models import ModelNotFoundError, attach_adapters, resolve_model

    with pytest.raises(ValueError, match="--lora-layers 1000: the model has 2 transformer blocks"):
        attach_adapters(tiny_model(), TrainConfig(lora_layers=1000))
    with pytest.raises(ValueError, match="--max-length 1 leaves no room|--max-length must be >= 2"):
        TrainConfig(max_length=1).validate()
    with pytest.raises(ValueError, match="--max-length 4 leaves no room for a response"):
        TrainConfig(max_length=4).validate()
    with pytest.raises(ModelNotFoundError, match="no such model directory"):
        resolve_model(str(tmp_path / "deleted-base"))
    data = write_data(tmp_path / "prefs.jsonl")
    with open(data, "a") as f:
        f.write(data.read_text().splitlines()[0] + "\n")
    assert load_splits(str(data)).__getitem__(2).duplicates == 1


def test_exporting_a_run_still_training_says_so(tmp_path):
    folder = adapter_dir(tmp_path)
    with RunLock(folder):
        done = cli("--adapters", str(folder), "--format", "peft", "--out", str(tmp_path / "peft"),
                   module="mlx_orpo.export")
    assert_one_error_line(done, "still being trained", "checkpoints/step-N")
    assert not (tmp_path / "peft").exists()


def test_exporting_a_run_whose_base_was_deleted_names_the_missing_path(tmp_path):
    folder = adapter_dir(tmp_path)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["model"] = str(tmp_path / "gone-model")
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    done = cli("--adapters", str(folder), "--format", "hf", "--out", str(tmp_path / "hf"), module="mlx_orpo.export")
    assert_one_error_line(done, "gone-model", "no such model directory")


def test_the_stop_exit_code_is_documented():
    from mlx_orpo.train import EXIT_STOPPED

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"exits with code {EXIT_STOPPED}" in readme
