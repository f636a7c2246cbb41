"""Predict a run's peak memory from the model's config.json, before loading any weights.

    python -m mlx_orpo.plan --model mistral-7b-4bit --batch-size 2 --max-length 1024 --budget 16GB

Prints the prediction's parts (`predict.predict_peak`), whether it fits the budget, what auto-fit
(--memory-budget) would train with, and the settings that fit, as the trainer's fit and its warning
say them (`fit.advise`, one engine for all of them).
"""

from __future__ import annotations

import argparse
import sys

from .budget import format_bytes, resolve
from .config import TrainConfig
from .fit import advise
from .models import on_gpu
from .predict import load_model_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlx_orpo.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=TrainConfig.model, help="alias, model directory or Hub id")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--max-length", type=int, default=TrainConfig.max_length)
    parser.add_argument("--bits", type=int, choices=(4, 8), default=None)
    parser.add_argument("--rank", type=int, default=TrainConfig.lora_rank)
    parser.add_argument("--grad-checkpoint", action="store_true")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    parser.add_argument("--device", choices=("cpu", "gpu"), default=None,
                        help="predict for this device (default: the one MLX would use here)")
    parser.add_argument("--budget", default="auto",
                        help="memory budget, e.g. 16GB; default: this machine's (as --memory-budget auto)")
    args = parser.parse_args(argv)
    try:
        cfg = TrainConfig(model=args.model, batch_size=args.batch_size, max_length=args.max_length, bits=args.bits,
                          lora_rank=args.rank, grad_checkpoint=args.grad_checkpoint, dtype=args.dtype).validate()
        budget = resolve(args.budget, gpu=on_gpu(), flag="--budget")
        if budget is None:
            raise ValueError("--budget: off plans for no budget; give a size (e.g. 16GB) or auto")
        config = load_model_config(args.model)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    advice = advise(cfg, budget, model_config=config, on_gpu=None if args.device is None else args.device == "gpu")
    print(f"{args.model}: batch {cfg.batch_size} pairs, max length {cfg.max_length}, LoRA r={cfg.lora_rank}")
    print(advice.as_given.table())
    if advice.fits_as_given:
        print(f"fits in {budget}")
        return 0
    print(f"does NOT fit in {budget}")
    if advice.fitted:
        print(f"auto-fit (--memory-budget) would train with {', '.join(map(str, advice.fitted.changes))}: "
              f"predicted {format_bytes(advice.fitted.prediction.total)}")
    else:
        print(f"auto-fit (--memory-budget): {advice.refusal()}")
    options = advice.options()
    print("settings that fit:" if options else "no tried setting fits this budget")
    for plan in options:
        print(f"  {plan.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
