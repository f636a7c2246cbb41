"""Predict a run's peak memory from the model's config.json, before loading any weights.

    python -m mlx_orpo.plan --model mistral-7b-4bit --batch-size 2 --max-length 1024 --budget 16GB
    python -m mlx_orpo.plan --data prefs.jsonl --budget 16GB     # for the batches this data makes

Prints the prediction's parts (`predict.predict_peak`), whether it fits the budget, what auto-fit
(--memory-budget) would train with, and the settings that fit, as the trainer's fit and its warning
say them (`fit.advise`, one engine for all of them). With --data, the data is read and tokenized (the
model's weights are not loaded) and the plan is the one a run on it makes (`api.plan_run`); without,
it is for the longest batch the settings allow.
"""

from __future__ import annotations

import argparse
import sys

from .budget import format_bytes, resolve
from .config import TrainConfig
from .fit import DoesNotFit, advise
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
    parser.add_argument("--data", help="plan for the batches this preference data makes, as the trainer's "
                                       "--data reads it (default: the longest batch the settings allow)")
    args = parser.parse_args(argv)
    if args.data and args.device:
        parser.error("--device: a plan for --data is made for this machine's device; leave --device out")
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
    try:
        advice, planned_for = (data_advice(cfg, args) if args.data else
                               (advise(cfg, budget, model_config=config,
                                       on_gpu=None if args.device is None else args.device == "gpu"), None))
    except (ValueError, OSError) as exc:  # the data's errors name the file and row
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.model}: batch {cfg.batch_size} pairs, max length {cfg.max_length}, LoRA r={cfg.lora_rank}"
          + (f"; planned for {planned_for}" if planned_for else "; planned for the longest batch they allow"))
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


def data_advice(cfg: TrainConfig, args):
    """The fit's advice for the batches args.data makes, as a run on it plans them (api.plan_run), and
    which data that is."""
    from .api import plan_run

    cfg = TrainConfig(**{**cfg.to_dict(), "data": args.data, "memory_budget": args.budget})
    try:
        plan = plan_run(cfg)
    except DoesNotFit as exc:
        return exc.advice, f"{args.data} (read and tokenized)"
    return plan.memory.advice, plan.planned_for


if __name__ == "__main__":
    sys.exit(main())
