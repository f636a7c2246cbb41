"""Measure training-step peaks on llama configs and fit the memory planner's multiples.

    python scripts/fit_plan.py                  # measure the grid (fresh process per case), fit, print
    python scripts/fit_plan.py --out fit.json   # also keep the measurements

Each case is one trainer-like step (tests/test_plan.py `measure_step_peak`). The fit is a least
squares on relative error over the parts of `mlx_orpo.plan` that are measured, not counted:
per-token and per-score activation multiples, the per-token residue of a checkpointed block,
and the copies of a logit chunk. Paste the printed constants into mlx_orpo/plan.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

TINY = dict(model_type="llama", hidden_size=256, num_hidden_layers=2, intermediate_size=512,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=True)
WIDER = dict(TINY, hidden_size=384, num_hidden_layers=3, intermediate_size=1024, num_attention_heads=6,
             vocab_size=2000, tie_word_embeddings=False)
DEEP = dict(TINY, num_hidden_layers=8, vocab_size=8000)
SMOL = dict(model_type="llama", vocab_size=49152, hidden_size=576, num_hidden_layers=30, intermediate_size=1536,
            num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
# (name, config, pairs, prompt tokens, answer tokens, layout, extra TrainConfig fields)
GRID = [
    ("tiny shared", TINY, 2, 64, 64, "shared prompt", {}),
    ("tiny full", TINY, 2, 64, 64, "full rows", {}),
    ("tiny shared long", TINY, 2, 128, 256, "shared prompt", {}),
    ("wider shared", WIDER, 1, 96, 160, "shared prompt", {}),
    ("wider full", WIDER, 2, 64, 96, "full rows", {}),
    ("deep shared", DEEP, 2, 64, 192, "shared prompt", {}),
    ("deep full", DEEP, 2, 96, 96, "full rows", {}),
    ("deep shared ckpt", DEEP, 2, 64, 192, "shared prompt", {"grad_checkpoint": True}),
    ("deep full ckpt", DEEP, 2, 96, 96, "full rows", {"grad_checkpoint": True}),
    ("tiny prompt in NLL", TINY, 2, 96, 64, "shared prompt", {"prompt_in_nll": True}),
    ("smol shared", SMOL, 1, 64, 128, "shared prompt", {}),
    ("smol full", SMOL, 1, 64, 128, "full rows", {}),
    ("smol shared ckpt", SMOL, 2, 128, 256, "shared prompt", {"grad_checkpoint": True}),
    ("smol full ckpt", SMOL, 1, 96, 160, "full rows", {"grad_checkpoint": True}),
]


def features(case) -> tuple[list[float], float]:
    """(coefficients of the fitted multiples, the counted bytes) of one case's prediction."""
    from mlx_orpo import plan
    from test_plan import case_config

    _, config, _, prompt_len, answer_len, layout, _ = case
    cfg = case_config(case)
    shape = plan.ModelShape.from_config(config)
    tokens, scores, rows = plan.batch_layouts(cfg, shape, prompt_len, answer_len)[layout]
    act = 4 * (shape.layers if not cfg.grad_checkpoint else 1)
    per_block = [act * shape.hidden * tokens, act * shape.intermediate * tokens, act * shape.heads * scores]
    saved_inputs = 4 * shape.layers * shape.hidden * tokens if cfg.grad_checkpoint else 0
    logit_rows = min(rows, plan.LOGIT_CHUNK) * shape.vocab * 4
    prediction = plan.predict_peak(cfg, config, on_gpu=False, layout=layout, prompt_len=prompt_len,
                                   answer_len=answer_len)
    counted = prediction.breakdown["weights"] + prediction.breakdown["adapters + optimizer"]
    return per_block + [saved_inputs, logit_rows, 1.0], counted


def measure(index: int) -> int:
    done = subprocess.run([sys.executable, __file__, "--measure", str(index)], capture_output=True, text=True,
                          timeout=1200, cwd=REPO)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return int(done.stdout.split()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.measure is not None:
        from test_plan import case_config, measure_step_peak
        case = GRID[args.measure]
        print(measure_step_peak(case[1], case_config(case), case[3], case[4], case[5]))
        return 0

    import numpy as np

    rows, targets, names = [], [], []
    for i, case in enumerate(GRID):
        peak = measure(i)
        coefficients, counted = features(case)
        rows.append([c / peak for c in coefficients])
        targets.append(1 - counted / peak)
        names.append((case[0], peak, coefficients, counted))
        print(f"measured {case[0]}: {peak / 1e6:.1f} MB", flush=True)
    fit, *_ = np.linalg.lstsq(np.array(rows), np.array(targets), rcond=None)
    labels = ["ACT_HIDDEN", "ACT_MLP", "ACT_SCORES", "CKPT_HIDDEN", "LOGIT_COPIES", "OVERHEAD_BYTES"]
    print("\n".join(f"{k} = {v:.4g}" for k, v in zip(labels, fit)))
    print("| case | measured | fitted | error |\n|---|---|---|---|")
    for name, peak, coefficients, counted in names:
        fitted = counted + float(np.dot(coefficients, fit))
        print(f"| {name} | {peak / 1e6:.1f} MB | {fitted / 1e6:.1f} MB | {fitted / peak - 1:+.1%} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"fit": dict(zip(labels, fit.tolist())),
                                              "cases": [(n, p) for n, p, _, _ in names]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
