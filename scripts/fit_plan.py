"""Measure training-step peaks on llama configs and fit the memory planner's multiples.

    python scripts/fit_plan.py                  # measure the grid (fresh process per case), fit, print
    python scripts/fit_plan.py --out fit.json   # also keep the measured peaks
    python scripts/fit_plan.py --peaks fit.json # refit kept peaks (measures only missing cases)

Each case is one step of the trainer's own `step.OrpoStep` (`measure.measure_step_peak`, as tests/test_plan.py).
The fit is a least squares on relative error over the parts of `mlx_orpo.predict` that are measured, not counted:
per-token and per-score activation multiples, the per-token residue of a checkpointed block,
and the copies of a logit chunk (ACT_MLP and CKPT_BLOCKS are set, not fitted). Paste the printed
constants into mlx_orpo/predict.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlx_orpo import predict  # noqa: E402
from mlx_orpo.forward import logit_chunk  # noqa: E402
from mlx_orpo.measure import TINY, WIDER, case_config, case_shape, measure_step_peak  # noqa: E402

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
    ("tiny 4 blocks full ckpt", dict(TINY, num_hidden_layers=4), 2, 64, 128, "full rows", {"grad_checkpoint": True}),
]
# Not fitted, only checked: Mistral-7B's shapes with 1 and 2 blocks (float32), whose per-block
# slope extrapolates to the 32-block model.
MISTRAL = dict(model_type="llama", vocab_size=32768, hidden_size=4096, intermediate_size=14336,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False)
VALIDATE = [
    ("mistral-shaped 1 block", dict(MISTRAL, num_hidden_layers=1), 1, 128, 128, "shared prompt", {}),
    ("mistral-shaped 2 blocks", dict(MISTRAL, num_hidden_layers=2), 1, 128, 128, "shared prompt", {}),
    ("mistral-shaped 2 blocks ckpt", dict(MISTRAL, num_hidden_layers=2), 1, 128, 128, "shared prompt",
     {"grad_checkpoint": True}),
]
CASES = GRID + VALIDATE
# Collinear with ACT_HIDDEN on these configs (the MLP is 2-2.7x the hidden width in all of them), so
# set from the block's structure rather than fitted: gate, up, silu(gate) and their product.
ACT_MLP = predict.ACT_MLP
CKPT_BLOCKS = predict.CKPT_BLOCKS  # set, not fitted: one block's recomputed activations and their gradients
ACT_SCORES_BACKWARD = predict.ACT_SCORES_BACKWARD  # set, not fitted: see predict.py


def parts(case) -> dict:
    """The bytes of one case's prediction that are counted, and the shapes the fitted multiples scale."""
    config, cfg, batch = case[1], case_config(case), case_shape(case)
    shape = predict.ModelShape.from_config(config)
    tokens, scores, rows = predict.batch_work(batch, cfg.prompt_in_nll)
    prediction = predict.predict_peak(cfg, config, on_gpu=False, shapes=[batch])
    return {"counted": prediction.breakdown["weights"] + prediction.breakdown["adapters + optimizer"],
            "hidden": 4 * shape.hidden * tokens, "mlp": 4 * ACT_MLP * shape.intermediate * tokens,
            "scores": 4 * shape.heads * scores, "layers": shape.layers, "checkpointed": cfg.grad_checkpoint,
            "logits": min(rows, logit_chunk(gpu=False)) * shape.vocab * 4}


def predicted(p: dict, fit: dict) -> float:
    block = fit["ACT_HIDDEN"] * p["hidden"] + p["mlp"] + fit["ACT_SCORES"] * p["scores"]
    if p["checkpointed"]:
        activations = fit["CKPT_HIDDEN"] * p["hidden"] * p["layers"] + CKPT_BLOCKS * block
    else:
        activations = block * p["layers"]
    activations += ACT_SCORES_BACKWARD * p["scores"]
    return p["counted"] + activations + fit["LOGIT_COPIES"] * p["logits"] + fit["OVERHEAD_BYTES"]


def fit_multiples(peaks: dict) -> dict:
    """One least-squares fit on relative error over every case in GRID."""
    import numpy as np

    rows, targets, scale = [], [], []
    for case in GRID:
        p = parts(case)
        blocks = CKPT_BLOCKS if p["checkpointed"] else p["layers"]
        rows.append([blocks * p["hidden"], blocks * p["scores"],
                     p["hidden"] * p["layers"] if p["checkpointed"] else 0.0, p["logits"], 1.0])
        targets.append(peaks[case[0]] - p["counted"] - blocks * p["mlp"] - ACT_SCORES_BACKWARD * p["scores"])
        scale.append(peaks[case[0]])
    scale = np.array(scale)
    solution, *_ = np.linalg.lstsq(np.array(rows) / scale[:, None], np.array(targets) / scale, rcond=None)
    return dict(zip(["ACT_HIDDEN", "ACT_SCORES", "CKPT_HIDDEN", "LOGIT_COPIES", "OVERHEAD_BYTES"],
                    solution.tolist()))


def measure(index: int) -> int:
    done = subprocess.run([sys.executable, __file__, "--measure", str(index)], capture_output=True, text=True,
                          timeout=1200, cwd=REPO)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return int(done.stdout.split()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help="write the measured peaks here (JSON)")
    parser.add_argument("--peaks", help="fit these measured peaks (an --out file) instead of measuring")
    args = parser.parse_args()
    if args.measure is not None:
        case = CASES[args.measure]
        print(measure_step_peak(case[1], case_config(case), case[3], case[4], case[5]))
        return 0

    peaks = json.loads(Path(args.peaks).read_text()) if args.peaks else {}
    for i, case in enumerate(CASES):
        if case[0] not in peaks:
            peaks[case[0]] = measure(i)
            print(f"measured {case[0]}: {peaks[case[0]] / 1e6:.1f} MB", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(peaks, indent=1) + "\n")
    fit = fit_multiples(peaks)
    print(f"ACT_MLP = {ACT_MLP} (set)\nCKPT_BLOCKS = {CKPT_BLOCKS} (set)")
    print("\n".join(f"{k} = {v:.4g}" for k, v in fit.items()))
    print("| case | measured | fitted | error |\n|---|---|---|---|")
    for case in CASES:
        peak, fitted = peaks[case[0]], predicted(parts(case), fit)
        tag = " (not in the fit)" if case in VALIDATE else ""
        print(f"| {case[0]}{tag} | {peak / 1e6:.1f} MB | {fitted / 1e6:.1f} MB | {fitted / peak - 1:+.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
