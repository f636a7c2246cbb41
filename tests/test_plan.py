"""The memory planner against measured peaks of real training steps on tiny llama configs.

Each case builds a small llama model, attaches LoRA to every linear layer and runs
one training step of the trainer's own `step.OrpoStep`, then compares
mx.get_peak_memory() with predict.predict_peak for the same batch. `python tests/test_plan.py` prints
the table that docs/performance.md quotes.
"""

from __future__ import annotations

import subprocess
from functools import partial
from pathlib import Path

import pytest
from helpers import cli

import mlx_orpo  # noqa: F401  (fast BLAS first)
from mlx_orpo.budget import format_bytes
from mlx_orpo.config import TrainConfig
from mlx_orpo.measure import TINY, WIDER, case_config, case_shape, measure_step_peak
from mlx_orpo.predict import (
    KNOWN_CONFIGS,
    LAYOUTS,
    ModelShape,
    ceiling_shapes,
    predict_peak,
    shared_prompt,
    weight_bytes,
)

TOLERANCE = 0.15

# (name, model config, batch pairs, prompt tokens, answer tokens, layout, extra TrainConfig fields)
CASES = [
    ("tiny, shared prompt", TINY, 2, 64, 64, "shared prompt", {}),
    ("wider untied, shared prompt", WIDER, 1, 96, 160, "shared prompt", {}),
    ("wider untied, full rows", WIDER, 2, 64, 96, "full rows", {}),
    ("tiny, prompt in NLL", TINY, 2, 96, 64, "shared prompt", {"prompt_in_nll": True}),
    ("tiny, grad checkpoint", dict(TINY, num_hidden_layers=4), 2, 64, 128, "full rows",
     {"grad_checkpoint": True}),
    ("8 blocks, shared prompt, grad checkpoint", dict(TINY, num_hidden_layers=8, vocab_size=8000), 2, 64, 192,
     "shared prompt", {"grad_checkpoint": True}),
    ("tiny 4-bit", TINY, 2, 64, 64, "shared prompt", {"bits": 4}),
]


def measured_in_fresh_process(index: int) -> int:
    """The measured peak of CASES[index], in a new interpreter: MLX's allocator state left by
    earlier tests in the same process moved the peak by several percent."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, __file__, "--measure", str(index)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


def case_result(case, measure=None) -> tuple[int, int]:
    _, config, _, prompt_len, answer_len, layout, _ = case
    cfg = case_config(case)
    predicted = predict_peak(cfg, config, on_gpu=False, shapes=[case_shape(case)]).total
    measured = measure() if measure else measure_step_peak(config, cfg, prompt_len, answer_len, layout)
    return predicted, measured


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_prediction_within_15_percent_of_measured_peak(case):
    predicted, measured = case_result(case, partial(measured_in_fresh_process, CASES.index(case)))
    error = predicted / measured - 1
    assert abs(error) <= TOLERANCE, (f"{case[0]}: predicted {format_bytes(predicted)}, measured "
                                     f"{format_bytes(measured)} ({error:+.1%})")


def test_weight_bytes_are_counted_exactly():
    """SmolLM2-135M: 134,515,008 parameters (tied head); float32 = 4 bytes each."""
    shape = ModelShape.from_config(KNOWN_CONFIGS["smollm2-135m"])
    assert weight_bytes(shape, 4, None, 64) == 134_515_008 * 4
    # 4-bit, group 64, float16 scales and biases: 0.5 + 4/64 bytes per matrix parameter.
    matrices = 134_515_008 - (2 * 30 + 1) * 576
    assert weight_bytes(shape, 2, 4, 64) == int(matrices * (0.5 + 4 / 64) + (2 * 30 + 1) * 576 * 2)


def test_mistral_7b_4bit_is_planned_offline():
    cfg = TrainConfig(model="mistral-7b-4bit", batch_size=1, max_length=1024)
    prediction = predict_peak(cfg, KNOWN_CONFIGS["mistral-7b-4bit"], on_gpu=True)
    weights = prediction.breakdown["weights"]
    assert 3.5e9 < weights < 4.5e9  # mlx-community's 4-bit Mistral-7B is about 4.1 GB on disk
    assert prediction.total > weights
    # Checkpointing keeps each block's input instead of its activations: several times less.
    checkpointed = predict_peak(TrainConfig(**{**cfg.to_dict(), "grad_checkpoint": True}),
                                KNOWN_CONFIGS["mistral-7b-4bit"], on_gpu=True)
    assert checkpointed.breakdown["activations"] < prediction.breakdown["activations"] / 4


def test_the_peak_is_the_largest_of_the_batches_given():
    """By default the longest batch cfg allows, in both layouts; given the batch shapes a run's data
    makes (batching.batch_shape tuples), the largest of those."""
    cfg = TrainConfig(model="smollm2-135m", max_length=1024).validate()
    smol = KNOWN_CONFIGS["smollm2-135m"]
    ceiling = ceiling_shapes(cfg, gpu=False, shared=shared_prompt(ModelShape.from_config(smol), smol))
    assert [LAYOUTS[len(shape)] for shape in ceiling] == ["full rows", "shared prompt"]
    default = predict_peak(cfg, smol, on_gpu=False)
    assert predict_peak(cfg, smol, on_gpu=False, shapes=ceiling).total == default.total
    short = [(2, 64, 96), (2, 160)]
    alone = [predict_peak(cfg, smol, on_gpu=False, shapes=[shape]).total for shape in short]
    assert predict_peak(cfg, smol, on_gpu=False, shapes=short).total == max(alone) < default.total / 4



def test_a_run_plans_for_the_batches_its_data_makes(smollm2_dir):
    """api.plan_run reads and tokenizes the data before any weights load and predicts for the batches the
    trainer builds of it: the demo set's longest pair is about a tenth of --max-length 1024, and its plan
    is far below the ceiling's (the planner used to predict 15.18 GB for a run that peaks at 1.45 GB)."""
    from mlx_orpo.api import plan_run

    cfg = TrainConfig().validate()  # the README's default run: demo data, batch 2, max length 1024
    plan = plan_run(cfg)
    ceiling = predict_peak(cfg, KNOWN_CONFIGS["smollm2-135m"])
    assert plan.memory.prediction.total < ceiling.total / 5
    assert plan.memory.changes == [] and plan.cfg == cfg
    assert plan.data.longest_pair < cfg.max_length / 2
    far = [line for line in plan.lines if "far above the data's longest pair" in line]
    assert len(far) == 1 and format_bytes(ceiling.total) in far[0]
    assert any(line.startswith("memory: planned for ") and "76 training and 4 held-out pairs" in line
               for line in plan.lines)


def test_the_planner_plans_for_the_data_it_is_given(capsys, smollm2_dir):
    """python -m mlx_orpo.plan --data: the plan a run on that data makes, where it planned for the
    longest batch the settings allow (and so advised checkpointing for the demo set under 4 GB)."""
    from mlx_orpo.demo_data import DEMO_DATA_PATH
    from mlx_orpo.plan import main as plan_main

    assert plan_main(["--budget", "4GB"]) == 0
    assert "does NOT fit in 4.00 GB" in capsys.readouterr().out
    assert plan_main(["--data", str(DEMO_DATA_PATH), "--budget", "4GB"]) == 0
    out = capsys.readouterr().out
    assert "planned for " in out and "76 training and 4 held-out pairs" in out and "fits in 4.00 GB" in out
    assert plan_main(["--data", str(DEMO_DATA_PATH), "--budget", "0.6GB"]) == 0
    assert "does NOT fit in 0.60 GB" in capsys.readouterr().out


def long_pairs(path, n: int = 2, words: int = 300) -> str:
    """n preference pairs whose answers run to about 3 x `words` tokens, as a JSONL file."""
    import json

    text = " ".join(["river stone light"] * words)
    path.write_text("".join(json.dumps({"prompt": f"Question {i}: describe it.", "chosen": text,
                                        "rejected": text + " again"}) + "\n" for i in range(n)))
    return str(path)


def test_evaluation_batches_count(tmp_path, smollm2_dir):
    """Held-out pairs longer than the training pairs are planned for: their evaluation batches run
    forward only, but hold their logits, and can be the run's peak."""
    from mlx_orpo.api import plan_run

    cfg = TrainConfig(eval_data=long_pairs(tmp_path / "long.jsonl"), grad_checkpoint=True).validate()
    plan = plan_run(cfg)
    assert plan.memory.prediction.layout.endswith("evaluation")
    shorter = plan_run(TrainConfig(grad_checkpoint=True).validate())
    assert plan.memory.prediction.total > shorter.memory.prediction.total * 1.5



@pytest.mark.slow
def test_the_prediction_bounds_the_measured_peak_within_1_3x(tmp_path, smollm2_dir):
    """One real step of SmolLM2-135M on the demo set with checkpointing, and an evaluation of held-out
    pairs eight times longer, which peaks the run: the plan, made before the weights loaded, is at least
    the measured MLX peak and at most 1.3 times it, as the run's memory.json records them. The run has a
    process of its own, as a user's does: MLX's peak counts every array a process holds, and other tests'
    models would count in this one's."""
    from mlx_orpo import rundir
    from mlx_orpo.api import plan_run

    cfg = TrainConfig(model=str(smollm2_dir), eval_data=long_pairs(tmp_path / "long.jsonl"), grad_checkpoint=True,
                      iters=1, eval_every=0, save_every=10, output_dir=str(tmp_path / "run")).validate()
    plan = plan_run(cfg)
    assert plan.memory.prediction.layout.endswith("evaluation")
    done = subprocess.run(cli("--model", cfg.model, "--eval-data", cfg.eval_data, "--grad-checkpoint", "--iters", "1",
                              "--eval-every", "0", "--save-every", "10", "--output-dir", cfg.output_dir),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    record = rundir.read_memory_records(Path(cfg.output_dir))[-1]
    assert record["predicted_peak_bytes"] == plan.memory.prediction.total and record["steps"] == 1
    assert 1.0 <= record["predicted_peak_bytes"] / record["measured_peak_bytes"] <= 1.3, record


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--measure"]:
        case = CASES[int(sys.argv[2])]
        print(measure_step_peak(case[1], case_config(case), case[3], case[4], case[5]))
        raise SystemExit
    print("| case | predicted | measured | error |\n|---|---|---|---|")
    for i, case in enumerate(CASES):
        predicted, measured = case_result(case, partial(measured_in_fresh_process, i))
        print(f"| {case[0]} | {format_bytes(predicted)} | {format_bytes(measured)} | {predicted / measured - 1:+.1%} |",
              flush=True)
