"""The run directory's format: what a run writes is recorded per format version (run_formats.json), so a
change to it fails here until rundir.VERSION goes up; a run of every older version resumes exactly as it
was written; a run that lacks what its version always writes is damaged, not old; every reader of a
run's files names the file it cannot read."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from helpers import cfg_for, make, pairs

import mlx_orpo.trainer as trainer_mod
from mlx_orpo import checkpoint as ckpt
from mlx_orpo import runcheck, rundir
from mlx_orpo.checkpoint import LoopState
from mlx_orpo.config import TrainConfig
from mlx_orpo.files import file_digest
from mlx_orpo.step import build_optimizer
from mlx_orpo.train import build_parser, resolve_config

RECORDED = Path(__file__).with_name("run_formats.json")


def train(run: Path, cfg: TrainConfig, data, resume: bool = False, eval_pairs=()):
    model = make(cfg)
    trainer_mod.train(model, data, list(eval_pairs), cfg, run, pad_id=0, resume=resume, log=lambda s: None,
                      progress=False)
    return model


def written_now(tmp_path: Path) -> dict:
    """What a run of this code writes: the fields of its files, by a real (tiny) training run where the
    trainer writes them, and rundir's declared names where the run's setup does."""
    run = tmp_path / "now"
    data = pairs(8)
    train(run, cfg_for(run, iters=2, eval_every=2, save_every=2), data, eval_pairs=data[:4])
    newest = ckpt.list_checkpoints(run)[-1]
    records = rundir.read_records(run)
    observed = {p.name for p in run.iterdir()}
    assert observed <= set(rundir.RUN_FILES), f"a run writes {observed - set(rundir.RUN_FILES)}: name them in rundir"
    in_checkpoint = {p.name for p in newest.iterdir()}
    assert {*rundir.VERIFIED, rundir.MANIFEST} <= in_checkpoint <= set(rundir.CHECKPOINT_FILES)
    return {
        "config.json": sorted(TrainConfig().to_dict()),  # what TrainConfig.save writes
        "state.json": sorted(json.loads((newest / rundir.STATE).read_text())),
        "checkpoint files": sorted(rundir.CHECKPOINT_FILES),
        "run files": sorted(rundir.RUN_FILES),
        "metrics.jsonl train": sorted(next(r for r in records if r["kind"] == rundir.TRAIN)),
        "metrics.jsonl eval": sorted(next(r for r in records if r["kind"] == rundir.EVAL)),
        "status.json": sorted(f.name for f in fields(rundir.Status)),
        "status phases": sorted(rundir.PHASES),
        "memory.json records": sorted(f.name for f in fields(rundir.MemoryRecord)),  # what api.Run.save writes
    }


def as_record(version: int, files: dict) -> str:
    """One version's entry for run_formats.json, a line per file."""
    lines = ",\n".join(f"    {json.dumps(what)}: {json.dumps(names)}" for what, names in files.items())
    return f'  "{version}": {{\n{lines}\n  }}'


def recorded() -> dict[int, dict]:
    return {int(version): found for version, found in json.loads(RECORDED.read_text()).items()
            if not version.startswith("_")}


def test_what_a_run_writes_is_recorded_for_its_format_version(tmp_path):
    now, versions = written_now(tmp_path), recorded()
    assert sorted(rundir.FORMATS) == sorted(versions) and max(versions) == rundir.VERSION, (
        f"{RECORDED.name} records versions {sorted(versions)} and rundir.FORMATS knows {sorted(rundir.FORMATS)}; "
        f"both must hold every version up to rundir.VERSION = {rundir.VERSION}, which records what runs write now:"
        f"\n{as_record(rundir.VERSION, now)}")
    before = versions[rundir.VERSION]
    changes = [f"{what}: {sorted(set(now.get(what, [])) - set(before.get(what, [])))} added, "
               f"{sorted(set(before.get(what, [])) - set(now.get(what, [])))} gone"
               for what in sorted(set(now) | set(before)) if sorted(before.get(what, [])) != now.get(what)]
    assert not changes, (
        f"What a run writes changed since format version {rundir.VERSION} was recorded ({'; '.join(changes)}). "
        f"Runs written before the change would be read as if written after it. To do: set rundir.VERSION = "
        f"{rundir.VERSION + 1}; add rundir.FORMATS[{rundir.VERSION + 1}] = Format() and give FORMATS"
        f"[{rundir.VERSION}] what a version-{rundir.VERSION} run lacks (the value it ran with); keep "
        f"{RECORDED.name}'s version {rundir.VERSION} as it is and add:\n{as_record(rundir.VERSION + 1, now)}")


def old_run(run: Path, version: int) -> Path:
    """Make `run` a run of `version` as its readers see it: a marker, or (version 1) none, with a
    config.json beside a metrics.jsonl."""
    run.mkdir(parents=True, exist_ok=True)
    (run / rundir.MARKER).unlink(missing_ok=True)
    if version > 1:
        (run / rundir.MARKER).write_text(json.dumps({"format": rundir.FORMAT, "version": version}))
    if not (run / rundir.CONFIG).is_file():
        TrainConfig(output_dir=str(run)).save(run / rundir.CONFIG)
    (run / rundir.METRICS).touch()
    return run


@pytest.mark.parametrize("version", sorted(set(recorded()) - {rundir.VERSION}))
def test_a_run_of_every_older_version_is_read_in_full(tmp_path, version):
    """A run of an older version holds what every run of that version holds (run_formats.json), and
    its readers give every field this code needs: those it lacks are filled in by rundir.FORMATS."""
    files = recorded()[version]
    run = old_run(tmp_path, version)
    defaults = TrainConfig().to_dict()
    (run / rundir.CONFIG).write_text(json.dumps({k: defaults.get(k) for k in files["config.json"]}))
    todo = f"give rundir.FORMATS[{version}] the value such runs ran with for each field they lack"
    try:
        assert sorted(rundir.read_config(run)) == sorted(defaults)
    except rundir.CorruptFileError as exc:
        pytest.fail(f"{exc}: {todo}")
    checkpoint = run / rundir.CHECKPOINTS / rundir.checkpoint_name(2)
    checkpoint.mkdir(parents=True)
    state = LoopState(step=2).__dict__
    (checkpoint / rundir.STATE).write_text(json.dumps({k: state[k] for k in files["state.json"]}))
    try:
        assert sorted(ckpt.read_state(checkpoint)) == sorted(state)
    except rundir.CorruptFileError as exc:
        pytest.fail(f"{exc}: {todo}")
    assert rundir.FORMATS[version].manifests == (rundir.MANIFEST in files["checkpoint files"])


# -- older runs resume exactly as they were written -----------------------------------------------

KW = dict(iters=4, batch_size=1, grad_accum=2, save_every=2, keep_checkpoints=3, eval_every=0)
DATA = pairs(10)


def written_with(run: Path, **state) -> Path:
    """A run trained with the order and weighting of a loop state holding `state` (as the code of an
    older version trained): from a checkpoint at step 0 that holds them, which the trainer carries on."""
    cfg = cfg_for(run, **KW)
    ckpt.save_checkpoint(run, 0, make(cfg), build_optimizer(cfg, KW["iters"]), LoopState(**state).__dict__, keep=3)
    train(run, cfg, DATA, resume=True)
    return run


def resumed_as(version: int, run: Path, cut: Path, strip: tuple[str, ...], manifests: bool = True) -> Path:
    """`run` cut back to its step-2 checkpoint, its states stripped of `strip` as version `version`
    wrote them, made a run of that version, and resumed."""
    shutil.copytree(run, cut)
    shutil.rmtree(cut / rundir.CHECKPOINTS / rundir.checkpoint_name(4))
    for checkpoint in ckpt.list_checkpoints(cut):
        state = json.loads((checkpoint / rundir.STATE).read_text())
        (checkpoint / rundir.STATE).write_text(json.dumps({k: v for k, v in state.items() if k not in strip}))
        manifest = {name: file_digest(checkpoint / name) for name in rundir.VERIFIED}
        (checkpoint / rundir.MANIFEST).write_text(json.dumps(manifest))
        if not manifests:
            (checkpoint / rundir.MANIFEST).unlink()
    old_run(cut, version)
    train(cut, cfg_for(cut, **KW), DATA, resume=True)
    return cut


def assert_same_run(a: Path, b: Path) -> None:
    ra, rb = rundir.read_records(a), rundir.read_records(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == [1, 2, 3, 4]
    for x, y in zip(ra, rb):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-6), (x["step"], x["loss"], y["loss"])
    wa, wb = mx.load(str(a / rundir.ADAPTERS)), mx.load(str(b / rundir.ADAPTERS))
    assert all(np.allclose(np.array(wa[k]), np.array(wb[k]), rtol=1e-6, atol=1e-7) for k in wa)


def test_a_step_0_checkpoint_trains_as_a_new_run(tmp_path):
    """What the tests below build old runs with: resuming from a step-0 checkpoint of the current loop
    state is the run started afresh."""
    fresh = tmp_path / "fresh"
    train(fresh, cfg_for(fresh, **KW), DATA)
    assert_same_run(fresh, written_with(tmp_path / "from-0"))


def test_a_version_2_run_without_step_groups_resumes_exactly(tmp_path):
    """Version-2 runs from before step groups took --grad-accum micro-batches per step, each weighted
    alone; their checkpoint states lack `step_groups`, and resume in that order and weighting."""
    written = written_with(tmp_path / "v2", step_groups=False)
    current = tmp_path / "current"
    train(current, cfg_for(current, **KW), DATA)
    assert rundir.read_records(written)[-1]["loss"] != pytest.approx(rundir.read_records(current)[-1]["loss"])
    assert_same_run(written, resumed_as(2, written, tmp_path / "cut", strip=("step_groups",)))


@pytest.mark.parametrize("largest_first", [False, True])
def test_a_version_1_run_resumes_exactly(tmp_path, largest_first):
    """Version-1 runs: no marker, no manifests, single-process states without world_size or
    largest_first, without step groups; in the shuffled epoch order, or (those whose config.json
    saves --pad-to) with the largest batch first."""
    written = written_with(tmp_path / "v1", largest_first=largest_first, step_groups=False)
    saved = TrainConfig(output_dir=str(written)).to_dict()
    if not largest_first:
        del saved["pad_to"]
    (written / rundir.CONFIG).write_text(json.dumps(saved))
    cut = resumed_as(1, written, tmp_path / "cut", strip=("world_size", "largest_first", "step_groups"),
                     manifests=False)
    assert rundir.format_version(cut) == 1
    assert_same_run(written, cut)


def test_a_report_window_that_a_version_2_checkpoint_began_has_no_gradient_norm(tmp_path):
    """Version-2 checkpoints hold no gradient norms in their report window: the window one of them began
    reports null, the windows after it their norms."""
    run = tmp_path / "run"
    kw = dict(KW, report_every=2, save_every=1, keep_checkpoints=4)
    train(run, cfg_for(run, **kw), DATA)
    first, *later = ckpt.list_checkpoints(run)
    for checkpoint in later:
        shutil.rmtree(checkpoint)
    state = json.loads((first / rundir.STATE).read_text())
    assert state["window_steps"] == 1
    del state["window"]["grad_norm"]
    (first / rundir.STATE).write_text(json.dumps(state))
    (first / rundir.MANIFEST).write_text(json.dumps({name: file_digest(first / name) for name in rundir.VERIFIED}))
    old_run(run, 2)
    train(run, cfg_for(run, **kw), DATA, resume=True)
    norms = [r["grad_norm"] for r in rundir.read_records(run) if r["kind"] == rundir.TRAIN]
    assert norms[0] is None and isinstance(norms[1], float) and norms[1] > 0


# -- a run that lacks what its version always writes is damaged -----------------------------------

def test_a_current_run_lacking_what_its_version_writes_is_damaged(tmp_path):
    data = pairs(8)
    run = tmp_path / "run"
    train(run, cfg_for(run, iters=2, eval_every=0, save_every=2), data)
    newest = ckpt.list_checkpoints(run)[-1]
    state = json.loads((newest / rundir.STATE).read_text())
    del state["step_groups"]
    (newest / rundir.STATE).write_text(json.dumps(state))
    lacks = r"corrupt checkpoint state \(it lacks \['step_groups'\], which every checkpoint of a version"
    with pytest.raises(ckpt.CorruptFileError, match=rf"{newest / rundir.STATE}: {lacks}-{rundir.VERSION} run holds"):
        ckpt.read_state(newest)
    rundir.write_marker(run)
    saved = TrainConfig(output_dir=str(run)).to_dict()
    del saved["lora_rank"]
    (run / rundir.CONFIG).write_text(json.dumps(saved))
    with pytest.raises(rundir.CorruptFileError, match=rf"{run / rundir.CONFIG}: corrupt run config, it lacks "
                                                      rf"\['lora_rank'\], which every version-{rundir.VERSION} run"):
        rundir.read_config(run)


def test_a_run_of_a_newer_version_is_refused(tmp_path):
    old_run(tmp_path, rundir.VERSION + 1)
    with pytest.raises(ValueError, match=rf"{tmp_path / rundir.MARKER}: format version {rundir.VERSION + 1}, and this "
                                         rf"mlx-orpo reads versions 1 to {rundir.VERSION}: update mlx-orpo"):
        resolve_config(build_parser().parse_args(["--resume", str(tmp_path)]))


# -- the one reader of config.json -----------------------------------------------------------------

@pytest.mark.parametrize("content, problem", [
    ('{"beta": 0.1, "lr', "corrupt run config, not JSON"),
    ("[]", "corrupt run config, not a JSON object"),
    ({"bogus_field": 1}, r"corrupt run config, unknown fields \['bogus_field'\]"),
    ({"lora_rank": -1}, r"corrupt run config \(--lora-rank must be >= 1, got -1\)"),
])
def test_the_run_config_reader_names_the_file(tmp_path, content, problem):
    """Text as it stands, or these fields changed in a whole config."""
    run = old_run(tmp_path, rundir.VERSION)
    if isinstance(content, dict):
        content = json.dumps({**TrainConfig(output_dir=str(run)).to_dict(), **content})
    (run / rundir.CONFIG).write_text(content)
    pattern = rf"{run / rundir.CONFIG}: {problem}"
    with pytest.raises(rundir.CorruptFileError, match=pattern):
        rundir.read_config(run)
    with pytest.raises(ValueError, match=pattern):
        resolve_config(build_parser().parse_args(["--resume", str(run)]))
    with pytest.raises(runcheck.RunCheckError, match=pattern):
        runcheck.check_same_run(TrainConfig(), run)


def test_memory_limit_is_read_as_the_budget_in_the_versions_that_wrote_it(tmp_path):
    for version, limit, budget in [(1, "10GB", "10GB"), (1, None, "off"), (2, "8GB", "8GB")]:
        run = old_run(tmp_path / f"v{version}-{limit}", version)
        saved = TrainConfig(output_dir=str(run)).to_dict()
        del saved["memory_budget"]
        (run / rundir.CONFIG).write_text(json.dumps({**saved, "memory_limit": limit}))
        assert rundir.read_config(run)["memory_budget"] == budget
    run = tmp_path / "v1-without"  # a version-1 run from before the memory limit: none
    saved = TrainConfig(output_dir=str(run)).to_dict()
    del saved["memory_budget"]
    old_run(run, 1)
    (run / rundir.CONFIG).write_text(json.dumps(saved))
    assert rundir.read_config(run)["memory_budget"] == "off"
    old_run(run, rundir.VERSION)
    (run / rundir.CONFIG).write_text(json.dumps({**saved, "memory_limit": "8GB"}))
    with pytest.raises(rundir.CorruptFileError, match=r"unknown fields \['memory_limit'\]"):
        rundir.read_config(run)


# -- status.json and names -------------------------------------------------------------------------

def test_status_is_written_and_read_by_its_field_names(tmp_path):
    rundir.write_status(tmp_path, rundir.TRAINING, step=3, total_steps=6, eval_pairs=4, step_seconds=None)
    status = rundir.read_status(tmp_path)
    assert (status.phase, status.step, status.total_steps, status.step_seconds) == (rundir.TRAINING, 3, 6, None)
    assert set(json.loads((tmp_path / rundir.STATUS).read_text())) == {"phase", "time", "step", "total_steps",
                                                                      "eval_pairs", "step_seconds"}
    with pytest.raises(TypeError, match="step_second"):
        rundir.write_status(tmp_path, rundir.TRAINING, step_second=1.0)
    (tmp_path / rundir.STATUS).write_text(json.dumps({"phase": "training", "time": 5, "step": "3", "new": 1}))
    assert rundir.read_status(tmp_path) == rundir.Status(rundir.TRAINING, 5)  # a wrong type reads as None
    for junk in ("[]", "{", json.dumps({"step": 3})):
        (tmp_path / rundir.STATUS).write_text(junk)
        assert rundir.read_status(tmp_path) is None


def test_checkpoint_names_and_the_run_a_folder_belongs_to(tmp_path):
    assert rundir.checkpoint_name(12) == "step-000012" and rundir.checkpoint_step("step-000012") == 12
    assert rundir.checkpoint_step(".tmp-1-step-000012") is None and rundir.checkpoint_step("step-x") is None
    run = old_run(tmp_path / "run", rundir.VERSION)
    checkpoint = run / rundir.CHECKPOINTS / rundir.checkpoint_name(2)
    checkpoint.mkdir(parents=True)
    assert rundir.run_of(run) == run and rundir.run_of(checkpoint) == run and rundir.run_of(tmp_path) is None
