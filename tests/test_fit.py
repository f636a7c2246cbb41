"""Auto-fit to the memory budget (fit.fit, fit.advise): which plan it picks, what it never changes, what it says
when nothing fits, the CLI's use of it, and that a fitted run takes the same optimizer steps as the run it
replaces (tiny llama, and the real SmolLM2-135M)."""

from __future__ import annotations

import json
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from helpers import cfg_for, pairs, run

from mlx_orpo.budget import Budget, DeviceMemory, format_bytes, mac_working_set, resolve
from mlx_orpo.config import TrainConfig
from mlx_orpo.fit import DoesNotFit, fit, fit_candidates, fits_warning
from mlx_orpo.predict import KNOWN_CONFIGS, predict_peak
from mlx_orpo.rundir import read_records
from mlx_orpo.train import build_parser, explicit_settings

MISTRAL = KNOWN_CONFIGS["mistral-7b-4bit"]
GB = 10**9


def peak(cfg: TrainConfig, config=MISTRAL, gpu=True) -> int:
    return predict_peak(cfg, config, on_gpu=gpu).total


def with_(cfg: TrainConfig, **changes) -> TrainConfig:
    return TrainConfig(**{**cfg.to_dict(), **changes}).validate()


def test_a_run_that_fits_is_left_as_it_is():
    cfg = TrainConfig(model="mistral-7b-4bit").validate()
    fitted, prediction, changes = fit(cfg, 100 * GB, model_config=MISTRAL, on_gpu=True)
    assert fitted == cfg and changes == [] and prediction.total == peak(cfg)


def test_checkpointing_first_then_smaller_micro_batches_with_the_same_pairs_per_step():
    cfg = TrainConfig(model="mistral-7b-4bit").validate()  # batch 2, max length 1024: 48.5 GB in bfloat16
    checkpointed = with_(cfg, grad_checkpoint=True)
    halved = with_(cfg, grad_checkpoint=True, batch_size=1, grad_accum=2)
    assert peak(halved) < peak(checkpointed) < peak(cfg)
    fitted, _, changes = fit(cfg, peak(checkpointed), model_config=MISTRAL, on_gpu=True)
    assert fitted == checkpointed and [str(c) for c in changes] == ["--grad-checkpoint off -> on"]
    fitted, prediction, changes = fit(cfg, peak(checkpointed) - 1, model_config=MISTRAL, on_gpu=True)
    assert fitted == halved and prediction.total == peak(halved) <= peak(checkpointed) - 1
    assert {c.name: (c.before, c.after) for c in changes} == {
        "grad_checkpoint": (False, True), "batch_size": (2, 1), "grad_accum": (1, 2)}
    assert cfg.grad_checkpoint is False and cfg.batch_size == 2  # the caller's config is not changed


def test_candidates_keep_pairs_per_step_length_rank_and_layers():
    cfg = TrainConfig(batch_size=4, grad_accum=3, max_length=777, lora_rank=16, lora_layers=8).validate()
    options = fit_candidates(cfg)
    assert [(o.grad_checkpoint, o.batch_size, o.grad_accum) for o in options] == [
        (False, 4, 3), (True, 4, 3), (True, 3, 4), (True, 2, 6), (True, 1, 12)]
    for o in options:
        assert (o.max_length, o.lora_rank, o.lora_layers, o.batch_size * o.grad_accum) == (777, 16, 8, 12)


def test_explicit_settings_are_kept_and_the_error_says_what_would_fit():
    cfg = TrainConfig(model="mistral-7b-4bit").validate()
    budget = peak(with_(cfg, grad_checkpoint=True))
    assert [(o.grad_checkpoint, o.batch_size) for o in fit_candidates(cfg, {"batch_size"})] == [
        (False, 2), (True, 2)]
    with pytest.raises(DoesNotFit) as info:
        fit(cfg, budget, model_config=MISTRAL, explicit={"grad_checkpoint"}, on_gpu=True)
    message = str(info.value)
    assert "--grad-checkpoint explicitly" in message and "--grad-checkpoint off -> on" in message
    assert "--memory-budget off" in message and "\n" not in message


def test_nothing_fits_names_the_plan_and_the_choices_that_would():
    cfg = TrainConfig(model="mistral-7b-4bit").validate()
    small = peak(with_(cfg, grad_checkpoint=True, batch_size=1, grad_accum=2, max_length=512))
    with pytest.raises(DoesNotFit) as info:
        fit(cfg, small, model_config=MISTRAL, on_gpu=True)
    message = str(info.value)
    assert "batch 1 x grad-accum 2" in message and "weights 4.08 GB" in message
    assert "--max-length 512" in message and "--memory-budget off" in message
    with pytest.raises(DoesNotFit, match="the base weights alone .* exceed it"):
        fit(cfg, 3 * GB, model_config=MISTRAL, on_gpu=True)
    # A float model is offered 4-bit weights.
    phi = TrainConfig(model="phi-2", max_length=256).validate()
    four_bit = peak(with_(phi, grad_checkpoint=True, batch_size=1, grad_accum=2, bits=4), KNOWN_CONFIGS["phi-2"])
    with pytest.raises(DoesNotFit, match="--bits 4"):
        fit(phi, four_bit, model_config=KNOWN_CONFIGS["phi-2"], on_gpu=True)


def test_the_warning_the_refusal_and_the_planner_give_the_same_advice(capsys):
    """One engine: with --memory-budget off the warning offers first what the fit's refusal offers
    first, and `python -m mlx_orpo.plan` lists it first too (this machine's device in all three)."""
    from mlx_orpo.plan import main as plan_main

    cfg = TrainConfig(model="smollm2-135m").validate()  # batch 2, max length 1024
    smol = KNOWN_CONFIGS["smollm2-135m"]
    budget = peak(with_(cfg, grad_checkpoint=True, batch_size=1, grad_accum=2, max_length=512), smol, None)
    first = f"--batch-size 1 --grad-accum 2 --max-length 512 --grad-checkpoint (predicted {format_bytes(budget)})"
    with pytest.raises(DoesNotFit) as info:
        fit(cfg, budget, model_config=smol)
    assert f"these would fit: --max-length 512 ({format_bytes(budget)})" in str(info.value)
    warning = fits_warning(cfg, smol, DeviceMemory(budget, "this test's memory", 0.75))
    assert warning.startswith(f"predicted peak memory {format_bytes(peak(cfg, smol, None))} exceeds this test's "
                              f"memory ({format_bytes(budget)}); the run may swap or be killed. ")
    assert warning.endswith(f"Settings that fit: {first}.")
    assert fits_warning(cfg, smol, DeviceMemory(100 * GB, "this test's memory", 0.75)) is None
    assert plan_main(["--model", "smollm2-135m", "--budget", f"{budget}B"]) == 0
    assert capsys.readouterr().out.split("settings that fit:\n")[1].splitlines()[0] == f"  {first}"


def test_the_planner_refuses_a_bad_budget_in_one_line(capsys):
    from mlx_orpo.plan import main as plan_main

    assert plan_main(["--budget", "lots"]) == 2
    assert capsys.readouterr().err == "error: --budget: not a memory size: 'lots' (try 16GB); or auto, or off\n"


def test_the_fit_plans_for_the_batches_it_is_given():
    """Given the batch shapes each plan's settings make of the data, the fit plans for those: a run
    whose short batches fit is left as it is, where its longest possible batch would be fitted."""
    cfg = TrainConfig(model="mistral-7b-4bit").validate()  # batch 2, max length 1024
    budget = peak(with_(cfg, grad_checkpoint=True))
    short = lambda settings: [(settings.batch_size, 32, 64), (settings.batch_size, 97)]
    fitted, prediction, changes = fit(cfg, budget, model_config=MISTRAL, on_gpu=True, shapes=short)
    assert fitted == cfg and changes == []
    assert prediction.total == predict_peak(cfg, MISTRAL, on_gpu=True, shapes=short(cfg)).total < budget
    assert fit(cfg, budget, model_config=MISTRAL, on_gpu=True).changes  # planned for 1024 tokens


def test_a_budget_the_data_fits_changes_nothing_and_the_log_says_so(smollm2_dir):
    """The default run's batches (the demo set's) peak at about 1.5 GB; planned at --max-length 1024 it
    was predicted at 15 GB, so a 4 GB budget turned gradient checkpointing on for batches it never
    builds. Planned for the data, it trains as configured, and a budget its batches do not fit is fitted
    for them."""
    from mlx_orpo.api import plan_run

    cfg = TrainConfig(memory_budget="4GB").validate()
    plan = plan_run(cfg, explicit={"memory_budget"})
    assert plan.cfg == cfg and plan.memory.changes == []
    assert plan.lines[0].startswith("memory: the run fits as configured: predicted peak ")
    assert plan.lines[0].endswith("within the budget 4.00 GB (--memory-budget)")
    tight = plan_run(TrainConfig(memory_budget="1GB").validate())
    assert [str(c) for c in tight.memory.changes] == ["--grad-checkpoint off -> on"]
    assert tight.cfg.grad_checkpoint and not cfg.grad_checkpoint  # the caller's config is left as it is
    assert tight.memory.prediction.total <= GB < plan.memory.prediction.total


def test_a_step_larger_than_the_data_is_said_before_training(smollm2_dir):
    """--grad-accum 100000 started without a word, and a SIGTERM 45 s later left no checkpoint: one
    optimizer step took the whole epoch. The plan says so, with the step's size and the steps left."""
    from mlx_orpo.api import plan_run, step_span_note

    plan = plan_run(TrainConfig(grad_accum=100000).validate())
    notes = [line for line in plan.lines if "--grad-accum" in line]
    assert notes == ["warning: --grad-accum 100000 x --batch-size 2 asks for 200000 pairs per optimizer step, "
                     "more than the 76 training pairs: each step takes one epoch (76 pairs, 38 micro-batches), "
                     "which leaves 1 optimizer step; nothing is reported or saved within a step"]
    assert step_span_note(TrainConfig(grad_accum=4).validate(), 76) is None
    assert "which leaves 3 optimizer steps" in step_span_note(TrainConfig(grad_accum=50, epochs=3).validate(), 76)


def test_memory_budget_values():
    assert resolve("off", gpu=False) is None
    assert resolve("12GB", gpu=False) == Budget(12 * GB, "--memory-budget")
    auto = resolve(TrainConfig().memory_budget, gpu=False)
    assert auto.bytes > 0 and auto.source.startswith("auto")
    with pytest.raises(ValueError, match="--memory-budget: not a memory size: 'lots'"):
        TrainConfig(memory_budget="lots").validate()
    # macOS lets the GPU wire two thirds of a 16 GB Mac, three quarters of a 64 GB one.
    assert mac_working_set(16 * 2**30) == int(16 * 2**30 * 2 / 3)
    assert mac_working_set(64 * 2**30) == 48 * 2**30


def test_explicit_settings_come_from_the_command_line_and_the_yaml_file(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("batch-size: 4\nlearning_rate: 0.001\n")
    args = build_parser().parse_args(["--config", str(yaml_file), "--no-grad-checkpoint", "--iters", "3"])
    assert explicit_settings(args) == {"batch_size", "learning_rate", "grad_checkpoint", "iters"}
    assert explicit_settings(build_parser().parse_args([])) == set()


@pytest.mark.parametrize("n_pairs", [12, 10])
def test_micro_batches_weighted_to_the_step_match_one_batch_on_unequal_lengths(tmp_path, n_pairs):
    """Batch 4, batch 2 x accumulation 2 with checkpointing and batch 1 x 4: the same pairs in every
    step (feeding.step_order) and each micro-batch weighted to its share of the step's tokens and
    pairs, so the same loss per step and the same adapters up to float32 rounding. 10 pairs: the
    epoch's short step (2 pairs) is one micro-batch of 2 or two of 1, and the steps after it and
    in the next epoch stay the same."""
    data = pairs(n_pairs, seed=3)  # prompts of 4-8 tokens, answers of 5 and 6: token means differ per pair
    runs = {}
    for name, extra in {"4": dict(batch_size=4), "2x2": dict(batch_size=2, grad_accum=2, grad_checkpoint=True),
                        "1x4": dict(batch_size=1, grad_accum=4, grad_checkpoint=True)}.items():
        cfg = cfg_for(tmp_path / name, iters=5, eval_every=0, save_every=10, lora_dropout=0.0, **extra)
        run(tmp_path / name, cfg, data)
        runs[name] = ([r["loss"] for r in read_records(tmp_path / name) if r.get("kind") == "train"],
                      mx.load(str(tmp_path / name / "adapters.safetensors")))
    losses, adapters = runs["4"]
    assert len(losses) == 5
    for name in ("2x2", "1x4"):
        assert runs[name][0] == pytest.approx(losses, rel=1e-5), name
        for key, value in adapters.items():
            # lr 1e-2 over 5 AdamW steps moves a weight by up to 0.05; 1e-5 of that is float32 rounding
            assert np.allclose(np.array(runs[name][1][key]), np.array(value), atol=4e-7, rtol=1e-4), (name, key)


def test_the_cli_refuses_a_budget_nothing_fits_before_loading_the_model(tmp_path, cli_env):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "mlx_orpo.train", "--memory-budget", "200MB", "--output-dir",
                           str(out)], capture_output=True, text=True, timeout=600, env=cli_env)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not fit the memory budget 0.20 GB (--memory-budget)" in errors[0]
    assert "Traceback" not in done.stderr and "model:" not in done.stdout  # stopped before loading
    assert not (out / "config.json").exists()
    # A setting given explicitly is not overridden: the error says so and what would fit without it.
    done = subprocess.run([sys.executable, "-m", "mlx_orpo.train", "--no-grad-checkpoint", "--memory-budget", "1GB",
                           "--output-dir", str(out)], capture_output=True, text=True, timeout=600, env=cli_env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "You gave --grad-checkpoint explicitly" in done.stderr and "--grad-checkpoint off -> on" in done.stderr


@pytest.mark.slow
def test_a_fitted_smollm2_run_takes_the_same_steps_as_the_configured_one(smollm2_dir, tmp_path):
    """The real model through the API: batch 2 as configured (--memory-budget off), and the same run
    with a budget only batch 1 x --grad-accum 2 with checkpointing fits, which run_training picks.
    Same pairs per step, so the same losses per step and the same adapters up to float32 rounding."""
    from mlx_orpo.api import plan_run, run_training

    base = dict(model=str(smollm2_dir), iters=3, max_length=128, report_every=1, eval_every=0, eval_max_pairs=2,
                save_every=10, lr_schedule="constant", warmup_steps=0, learning_rate=5e-4, seed=0)
    configured = TrainConfig(**base, memory_budget="off", output_dir=str(tmp_path / "configured")).validate()
    planned = lambda cfg: plan_run(cfg).memory.prediction.total  # for the batches of the run's data
    budget = planned(with_(configured, grad_checkpoint=True, batch_size=1, grad_accum=2))
    assert planned(with_(configured, grad_checkpoint=True)) > budget
    fitted = TrainConfig(**base, memory_budget=f"{budget}B", output_dir=str(tmp_path / "fitted")).validate()
    lines = []
    for cfg in (configured, fitted):
        run_training(cfg, log=lines.append, progress=False)
    assert any("fitted: --grad-checkpoint off -> on, --batch-size 2 -> 1, --grad-accum 1 -> 2" in line
               for line in lines), lines
    saved = json.loads((tmp_path / "fitted" / "config.json").read_text())
    assert (saved["grad_checkpoint"], saved["batch_size"], saved["grad_accum"]) == (True, 1, 2)
    results = {}
    for name in ("configured", "fitted"):
        records = [r for r in read_records(tmp_path / name) if r.get("kind") == "train"]
        results[name] = ([r["loss"] for r in records], mx.load(str(tmp_path / name / "adapters.safetensors")))
    (loss_a, weights_a), (loss_b, weights_b) = results["configured"], results["fitted"]
    assert len(loss_a) == 3 and loss_b == pytest.approx(loss_a, rel=1e-5)  # measured: within 2e-7
    # AdamW moves a weight by about lr * g / |g| whatever the size of g, so an element whose gradient is
    # at the level of float32 rounding (summed in another order here) moves by +-lr either way: a few
    # elements in ten thousand. Measured: each adapter within 5.5e-4 of its size (Frobenius, median
    # 4e-6); an update that differed in substance would differ by order 1.
    for key, value in weights_a.items():
        a, b = np.array(value), np.array(weights_b[key])
        assert np.linalg.norm(a - b) <= 2e-3 * np.linalg.norm(a), key
    # A resume keeps the fitted settings and does not refit: under a budget one byte smaller, which no
    # plan fits, the resumed CLI run goes on (a resume may change the budget, not the run's steps).
    done = subprocess.run([sys.executable, "-m", "mlx_orpo.train", "--resume", str(tmp_path / "fitted"),
                           "--memory-budget", f"{budget - 1}B"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(not refitted)" in done.stdout and "fitted:" not in done.stdout and "resumed from" in done.stdout
    saved = json.loads((tmp_path / "fitted" / "config.json").read_text())
    assert (saved["grad_checkpoint"], saved["batch_size"], saved["grad_accum"], saved["iters"]) == (True, 1, 2, 3)


def test_the_app_previews_the_plan_the_run_makes(smollm2_dir):
    """The Train tab's preview is the plan of the run Start launches (api.plan_run on the demo set, with
    the settings the launch gives explicitly): its budget, what it logs, and the settings it trains with."""
    from app.estimate import explicit_fields, plan_markdown, settings_text
    from mlx_orpo.api import plan_run

    cfg = TrainConfig(memory_budget="1GB").validate()  # 1.56 GB as set on the demo set's batches
    shown = plan_markdown(cfg)
    run = plan_run(cfg, explicit=explicit_fields(cfg))
    assert "Memory budget: 1.00 GB (--memory-budget)" in shown
    assert run.memory.changes and f"fitted: {', '.join(map(str, run.memory.changes))}" in shown
    assert (f"Start trains with {settings_text(run.cfg)}**: predicted peak "
            f"~{run.memory.prediction.total / GB:.2f} GB") in shown and run.cfg.grad_checkpoint
    off = plan_markdown(TrainConfig(memory_budget="off", max_length=2048).validate())
    assert "Memory budget: off" in off and "gradient checkpointing off**" in off
    # What the app passes as flags (values off their defaults) is explicit, as on the command line.
    held = TrainConfig(model="mistral-7b-4bit", memory_budget="12GB", grad_checkpoint=False, batch_size=4).validate()
    assert explicit_fields(held) == {"model", "memory_budget", "batch_size"}
    assert "Start will stop before loading the model" in plan_markdown(TrainConfig(memory_budget="300MB").validate())
    # The Train tab's own field sets the budget as the CLI's flag does.
    from app.session import Session
    from app.train_tab import FORM, preview

    values = {name: getattr(TrainConfig(), name) for name in FORM} | {"bits": "none", "memory_budget": "1GB"}
    assert "Memory budget: 1.00 GB (--memory-budget)" in preview(Session(), "smollm2-135m", *[values[n] for n in FORM])
