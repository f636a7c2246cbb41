"""What the app reads to follow a run: the trainer's status.json, and a trainer found by its lock."""

from __future__ import annotations

import os

import pytest
from helpers import cfg_for, make, pairs

import mlx_orpo.trainer as trainer_mod
from mlx_orpo import rundir
from mlx_orpo.runlock import RunLock


def test_the_trainer_writes_its_phase_steps_and_evaluation_progress(tmp_path, monkeypatch):
    written = []
    real = rundir.write_status

    def keep(run, phase, **details):  # the real write, and a copy of each one in order
        written.append({"phase": phase, **details})
        real(run, phase, **details)

    monkeypatch.setattr(rundir, "write_status", keep)
    cfg = cfg_for(tmp_path, iters=4, eval_every=2, save_every=3, batch_size=2)
    data = pairs()
    trainer_mod.train(make(cfg), data, data[:3], cfg, tmp_path, pad_id=0, log=lambda s: None, progress=False)

    # After each step its time; None for the first (it compiles) and after a save (not a step's time).
    training = [(s["step"], s["step_seconds"] is None) for s in written if s["phase"] == "training"]
    assert training == [(1, True), (2, False), (3, False), (3, True), (4, False)], training
    assert all(s["step_seconds"] > 0 for s in written if s.get("step_seconds") is not None)
    assert all(s["total_steps"] == 4 and s["eval_pairs"] == 3 for s in written)
    # Evaluations at steps 2 and 4, each 0, 2, 3 of 3 pairs (batches of 2), with their time so far.
    evals = [(s["step"], s["eval_done"], s["eval_total"]) for s in written if s["phase"] == "evaluating"]
    assert evals == [(2, 0, 3), (2, 2, 3), (2, 3, 3), (4, 0, 3), (4, 2, 3), (4, 3, 3)]
    assert [s["step"] for s in written if s["phase"] == "saving"] == [3, 4]
    last = rundir.read_status(tmp_path)
    assert (last.phase, last.step, last.total_steps, last.eval_pairs) == (rundir.SAVING, 4, 4, 3)


def test_a_trainer_holding_a_run_is_the_servers_job(tmp_path):
    pytest.importorskip("gradio")
    from app.jobs import Jobs

    jobs = Jobs(tmp_path)
    run = tmp_path / "elsewhere"
    assert jobs.running() is None
    with RunLock(run):  # as a trainer started by the CLI (here: this test process) holds it
        found = jobs.running()
        assert found is not None and found.run_dir == run and found.pid == os.getpid()
        with pytest.raises(RuntimeError, match=f"elsewhere is training \\(pid {os.getpid()}\\)"):
            jobs.launch(tmp_path / "second", None, None)
    assert jobs.running() is None and not (tmp_path / "second").exists()
