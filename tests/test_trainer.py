"""The training loop on a tiny random llama: skipping non-finite steps, resume, config precedence."""

import json

import mlx.core as mx
import numpy as np
import pytest
from helpers import cfg_for, make, pairs, run, tiny_model
from mlx.utils import tree_flatten

import mlx_orpo.trainer as trainer_mod
from mlx_orpo import rundir
from mlx_orpo.checkpoint import LoopState, list_checkpoints
from mlx_orpo.config import TrainConfig
from mlx_orpo.distributed import Cluster
from mlx_orpo.feeding import Feeder
from mlx_orpo.loss import batch_loss
from mlx_orpo.models import attach_adapters
from mlx_orpo.rundir import read_records
from mlx_orpo.step import OrpoStep, build_optimizer
from mlx_orpo.tokenize import EncodedPair
from mlx_orpo.train import build_parser, resolve_config

POISON = 49  # a token id that makes the fake loss below NaN


def test_non_finite_steps_are_skipped_and_weights_stay_finite(tmp_path, monkeypatch):
    def poisoned(model, batch, prompt_in_nll=False):
        parts = batch_loss(model, batch, prompt_in_nll)
        prompts = batch.get("prompt_tokens", batch.get("tokens"))  # the compiled step gets one or the other
        nan_if_poisoned = mx.where((prompts == POISON).any(), mx.array(float("nan")), mx.array(1.0))
        return parts._replace(nll_sum=parts.nll_sum * nan_if_poisoned)

    monkeypatch.setattr(trainer_mod, "batch_loss", poisoned)
    data = pairs(8)
    data[3] = EncodedPair((1, POISON, 5), (6, 2), (7, 2))
    cfg = cfg_for(tmp_path, iters=8, eval_every=0)
    model = run(tmp_path, cfg, data)
    records = [r for r in read_records(tmp_path) if r["kind"] == "train"]
    assert records[-1]["skipped_steps"] >= 1
    # A report window whose steps were all skipped logs null; none logs NaN.
    assert all(r["loss"] is None or np.isfinite(r["loss"]) for r in records)
    assert sum(r["loss"] is not None for r in records) >= 4
    assert all(np.isfinite(np.array(v)).all() for _, v in tree_flatten(model.trainable_parameters()))


def test_train_records_carry_the_gradient_norm_before_clipping(tmp_path):
    """grad_norm: the global norm of the step's gradients before --max-grad-norm clips them (the first
    step's, from the gradients computed here), a mean over the report window's steps."""
    data = pairs(8)
    kw = dict(iters=4, eval_every=0, max_grad_norm=1e-3)
    each, window = tmp_path / "each", tmp_path / "window"
    run(each, cfg_for(each, report_every=1, **kw), data)
    run(window, cfg_for(window, report_every=2, **kw), data)
    norms = [r["grad_norm"] for r in read_records(each) if r["kind"] == rundir.TRAIN]
    cfg = cfg_for(each, report_every=1, **kw)
    model = make(cfg)
    step = OrpoStep(model, cfg, build_optimizer(cfg, 4))
    feed = Feeder(data, cfg, LoopState(), pad_id=0, shared_prompt=step.shared_prompt, cluster=Cluster())
    _, grads = step.gradients(next(feed.next_step()))
    by_hand = np.sqrt(sum(float((np.array(g, dtype=np.float64) ** 2).sum()) for _, g in tree_flatten(grads)))
    assert norms[0] == pytest.approx(by_hand, rel=1e-5)
    assert min(norms) > 1e-3  # before clipping
    assert [r["grad_norm"] for r in read_records(window) if r["kind"] == rundir.TRAIN] == pytest.approx(
        [(norms[0] + norms[1]) / 2, (norms[2] + norms[3]) / 2], rel=1e-6)


def test_resume_gives_the_same_metrics_as_an_uninterrupted_run(tmp_path):
    data = pairs(12)
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    run(full_dir, cfg_for(full_dir, lora_dropout=0.2), data)
    # Stop after step 4 (as if killed after the checkpoint at step 4), then resume to step 6.
    run(cut_dir, cfg_for(cut_dir, lora_dropout=0.2), data)
    for extra in list_checkpoints(cut_dir)[-1:]:
        import shutil
        shutil.rmtree(extra)  # the newest (step 6) never happened
    run(cut_dir, cfg_for(cut_dir, lora_dropout=0.2), data, resume=True)
    full = read_records(full_dir)
    cut = read_records(cut_dir)
    assert [r["step"] for r in full] == [r["step"] for r in cut]
    for a, b in zip(full, cut):
        for key in a:
            if key not in ("tokens_per_sec", "peak_memory_gb"):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)
    wa = mx.load(str(full_dir / "adapters.safetensors"))
    wb = mx.load(str(cut_dir / "adapters.safetensors"))
    assert all(np.allclose(np.array(wa[k]), np.array(wb[k]), atol=1e-6) for k in wa)


def test_gradient_accumulation_matches_a_bigger_batch_on_equal_lengths(tmp_path):
    """Two micro-batches of 1 pair == one batch of 2 pairs when every sequence has the same length
    (the NLL is a token mean, so equal lengths make the means agree): the same losses at every step
    and the same adapters after three updates (step 1's loss alone is taken before any update)."""
    # Two pairs: every step of either run sees both (an epoch per step), whatever the order.
    data = [EncodedPair((1, 5, 6), (7, 8, 2), (9, 10, 2)), EncodedPair((1, 11, 12), (13, 14, 2), (15, 16, 2))]
    a = run(tmp_path / "a", cfg_for(tmp_path / "a", iters=3, batch_size=2, eval_every=0, seed=1), data)
    b = run(tmp_path / "b", cfg_for(tmp_path / "b", iters=3, batch_size=1, grad_accum=2, eval_every=0, seed=1), data)
    losses_a = [r["loss"] for r in read_records(tmp_path / "a") if r["kind"] == "train"]
    losses_b = [r["loss"] for r in read_records(tmp_path / "b") if r["kind"] == "train"]
    assert len(losses_a) == 3 and losses_a == pytest.approx(losses_b, rel=1e-5)
    wa, wb = dict(tree_flatten(a.trainable_parameters())), dict(tree_flatten(b.trainable_parameters()))
    assert any(np.abs(np.array(v)).max() > 0 for k, v in wa.items() if "lora_b" in k)  # the updates moved B
    for k in wa:
        assert np.allclose(np.array(wa[k]), np.array(wb[k]), rtol=1e-4, atol=1e-6), k


def test_checkpoints_are_complete_and_pruned(tmp_path):
    run(tmp_path, cfg_for(tmp_path, iters=6, save_every=2, keep_checkpoints=2), pairs(8))
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step-000004", "step-000006"]
    state = json.loads((tmp_path / "checkpoints" / "step-000006" / "state.json").read_text())
    assert state["step"] == 6 and state["epoch"] == 1 and (tmp_path / "adapters.safetensors").is_file()
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]


def test_config_precedence_cli_over_yaml_over_defaults(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("learning_rate: 0.003\nbatch_size: 4\nlora-rank: 16\n")
    args = build_parser().parse_args(["--config", str(yaml_file), "--batch-size", "8", "--lambda", "0.25"])
    cfg = resolve_config(args)
    assert (cfg.learning_rate, cfg.batch_size, cfg.lora_rank, cfg.beta) == (0.003, 8, 16, 0.25)
    assert cfg.max_length == TrainConfig().max_length


def test_unknown_yaml_key_is_a_clear_error(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("learning_rat: 0.003\n")
    with pytest.raises(ValueError, match="unknown keys.*learning_rat"):
        resolve_config(build_parser().parse_args(["--config", str(yaml_file)]))


@pytest.mark.parametrize("variant", ["qlora-4bit", "dora"])
def test_quantized_base_and_dora_train_and_leave_the_base_untouched(tmp_path, variant):
    import mlx.nn as nn

    cfg = cfg_for(tmp_path, iters=3, eval_every=0, dora=variant == "dora")
    model = tiny_model(seed=0)
    if variant == "qlora-4bit":
        nn.quantize(model, group_size=32, bits=4)
    base = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    mx.random.seed(0)
    attach_adapters(model, cfg)
    before = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}
    trainer_mod.train(model, pairs(8), [], cfg, tmp_path, pad_id=0, log=lambda s: None, progress=False)
    after = dict(tree_flatten(model.trainable_parameters()))
    assert any(not np.allclose(before[k], np.array(after[k])) for k in before)
    if variant == "dora":
        assert any(k.endswith(".m") for k in after)
    frozen = {k.replace(".linear.", "."): np.array(v) for k, v in tree_flatten(model.parameters())
              if not k.endswith((".lora_a", ".lora_b", ".m"))}
    assert all(np.array_equal(base[k], frozen[k]) for k in base)
    records = read_records(tmp_path)
    assert all(np.isfinite(r["loss"]) for r in records if r["kind"] == "train")


def test_a_version_1_run_without_pad_to_resumes_with_plain_multiples(tmp_path):
    """A version-1 run (no run.json marker) read by its version: its config lacks pad_to, which was
    plain multiples then."""
    saved = TrainConfig(output_dir=str(tmp_path)).to_dict()
    del saved["pad_to"]
    saved["pad_multiple"] = 32
    (tmp_path / "config.json").write_text(json.dumps(saved))
    (tmp_path / "metrics.jsonl").write_text("")
    assert rundir.format_version(tmp_path) == 1
    cfg = resolve_config(build_parser().parse_args(["--resume", str(tmp_path)]))
    assert (cfg.pad_to, cfg.pad_multiple) == ("multiple", 32)
    assert rundir.missing_fields(tmp_path, rundir.STATE) == {"world_size": 1, "largest_first": False,
                                                             "step_groups": False}
    rundir.write_marker(tmp_path)  # a current run writes every field: nothing is filled in
    assert rundir.missing_fields(tmp_path, rundir.CONFIG) == {}
