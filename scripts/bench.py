"""Side-by-side ORPO training benchmark: mlx-orpo vs mlx-lm-lora vs TRL (PyTorch CPU).

    python scripts/bench.py --quick          # a few minutes
    python scripts/bench.py                  # 3 alternating rounds
    python scripts/bench.py --whole-run      # no warm-up: tokens/s over all steps, compilation included

Same model (by default SmolLM2-135M-Instruct from the offline package; --model
any other) in the same dtype (models.compute_dtype: float32 on the CPU, the
checkpoint's own dtype on a GPU; TRL runs PyTorch on the CPU in float32), same
pairs (the shared set's single-turn rows, or the demo set, tokenized once by
our tokenizer so every system sees the same token ids), LoRA r=8, alpha=16 on
every linear layer of every block, the same batch size and max length. Each
system runs in its own process (peak memory is per process), a warm-up then N
timed steps, and the systems alternate over rounds so load drift on the
machine hits all of them alike.

- mlx-orpo: the trainer's own step, `step.OrpoStep` (compiled value_and_grad of
  `loss.batch_loss`, gradient clipping, the finite check, AdamW), on the batches of
  `batching.epoch_batches` + `collate`, by default twice: with the shared
  prompt (`split`) and with gradient checkpointing as well (`split+ckpt`);
  `--orpo-layouts split,full` runs the full-row layout (no shared prompt) instead.
- mlx-lm-lora: its own `train_orpo` loop and batch iterator. On non-Metal
  backends it calls `mx.set_wired_limit(mx.device_info()["max_recommended_working_set_size"])`,
  which only Metal provides: the worker process gives `mx.device_info` that key
  (total RAM) and makes `mx.set_wired_limit` a no-op, inside this script only.
- TRL: `ORPOTrainer.get_batch_loss_metrics` (its concatenated forward and loss)
  + backward + gradient clipping + AdamW on the PEFT LoRA parameters, on the
  same batches as mlx-orpo (the HF Trainer loop around it is left out).

Tokens are non-pad prompt + response tokens of both sequences of each pair.
Each step's time includes compiling it where its shape is new, so the
first steps are slow: the default reports the steps after --warmup (median and
all together), --whole-run the whole run from its first step. The fraction of
peak compares with a large matmul in the run's dtype (8192^3 on a GPU, 2048^3
on the CPU). Writes a markdown table to stdout and the raw numbers to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from importlib.util import find_spec
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ("mlx-orpo", "mlx-lm-lora", "trl")
# The module each peer needs; they install with `pip install -e ".[peers]"`.
PEER_MODULES = {"mlx-lm-lora": "mlx_lm_lora", "trl": "trl"}
START = time.perf_counter()


# ----------------------------------------------------------------------------- workers
# Each runs in a fresh process: `bench.py --worker NAME --spec FILE`, and prints one JSON line.

def _rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _load_spec(path: str) -> dict:
    spec = json.loads(Path(path).read_text())
    from mlx_orpo.tokenize import EncodedPair
    spec["pairs"] = [EncodedPair(tuple(p), tuple(c), tuple(r)) for p, c, r in spec["pairs"]]
    return spec


def _mlx_orpo_setup(spec: dict, grad_checkpoint: bool):
    """(step, cfg): the model loaded and adapted as the trainer does, inside `step.OrpoStep`, the
    step the trainer runs (compiled value-and-grad, gradients evaluated first, clipping, the
    finite check, AdamW)."""
    import mlx_orpo  # noqa: F401  (fast BLAS before mlx)
    from mlx_orpo.config import TrainConfig
    from mlx_orpo.models import attach_adapters, load_model
    from mlx_orpo.step import OrpoStep, build_optimizer

    layout = spec.get("layout") or ""
    pad_to = next((w for w in ("pow2", "multiple") if f"+{w}" in layout), "auto")
    cfg = TrainConfig(lora_rank=spec["rank"], lora_alpha=2.0 * spec["rank"], batch_size=spec["batch_size"],
                      max_length=spec["max_length"], grad_checkpoint=grad_checkpoint, beta=0.1, pad_to=pad_to,
                      learning_rate=1e-5, lr_schedule="constant", warmup_steps=0, max_grad_norm=1.0)
    model, _, _, _ = load_model(spec["model_dir"], dtype="auto")  # the trainer's default: models.compute_dtype
    dtype = _float_dtype(model)
    attach_adapters(model, cfg)
    step = OrpoStep(model, cfg, build_optimizer(cfg, len(spec["batches"])))
    model.train()
    return step, cfg, dtype


def _float_dtype(model) -> str:
    """The dtype the base model computes in: that of its first floating-point parameter (a quantised
    model's scales)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    floats = (mx.float32, mx.float16, mx.bfloat16)
    return next(str(v.dtype).split(".")[-1] for _, v in tree_flatten(model.parameters()) if v.dtype in floats)


FULL_ROW_KEYS = ("tokens", "lengths", "prompt_lengths")


def worker_mlx_orpo(spec: dict) -> dict:
    import mlx.core as mx

    from mlx_orpo.batching import Widths, collate
    from mlx_orpo.step import MicroBatch

    step, cfg, dtype = _mlx_orpo_setup(spec, grad_checkpoint="+ckpt" in spec["layout"])
    pairs, steps = spec["pairs"], []
    for indices in spec["batches"]:
        chunk = [pairs[i] for i in indices]
        start = time.perf_counter()
        batch = collate(chunk, spec["pad_id"], Widths.for_config(cfg))
        if spec["layout"].startswith("full"):
            batch = {k: batch[k] for k in FULL_ROW_KEYS}
        metrics = step([MicroBatch(batch)]).metrics
        steps.append({"s": time.perf_counter() - start, "tokens": sum(p.tokens for p in chunk),
                      "loss": metrics["loss"].item(), "shared_prompt": "response_tokens" in batch,
                      "shape": [list(v.shape) for k, v in sorted(step.inputs(batch).items()) if k.endswith("tokens")]})
    return {"steps": steps, "mlx_peak": mx.get_peak_memory(), "dtype": dtype}


def worker_layouts(spec: dict) -> dict:
    """mlx-orpo's two batch layouts step by step on the same batches, interleaved in one process
    (split, full, split, full, ...), so load drift hits both alike: what the shared prompt buys."""
    import mlx.core as mx

    from mlx_orpo.batching import Widths, collate
    from mlx_orpo.step import MicroBatch

    step, cfg, dtype = _mlx_orpo_setup(spec, grad_checkpoint=False)
    steps = {"split": [], "full": []}
    for indices in spec["batches"]:
        chunk = [spec["pairs"][i] for i in indices]
        for layout in ("split", "full"):
            batch = collate(chunk, spec["pad_id"], Widths.for_config(cfg))
            if layout == "full":
                batch = {k: batch[k] for k in FULL_ROW_KEYS}
            mx.synchronize()
            mx.reset_peak_memory()
            start = time.perf_counter()
            metrics = step([MicroBatch(batch)]).metrics
            steps[layout].append({"s": time.perf_counter() - start, "tokens": sum(p.tokens for p in chunk),
                                  "loss": metrics["loss"].item(), "peak": mx.get_peak_memory(),
                                  "shared_prompt": "response_tokens" in batch})
    return {"layouts": steps, "dtype": dtype}


class _Recording(list):
    """A dataset list that remembers which rows a batch iterator read."""

    def __init__(self, rows):
        super().__init__(rows)
        self.read = []

    def __getitem__(self, i):
        if isinstance(i, int):
            self.read.append(i)
        return super().__getitem__(i)


def worker_mlx_lm_lora(spec: dict) -> dict:
    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np

    import mlx_orpo  # noqa: F401

    # The shim: Metal-only calls made harmless on other backends (this process only).
    if mx.default_device() == mx.cpu or "max_recommended_working_set_size" not in mx.device_info():
        real_info = mx.device_info
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        mx.device_info = lambda: {"max_recommended_working_set_size": total, **real_info()}
        mx.set_wired_limit = lambda *a, **k: 0
    from mlx_lm import load
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm_lora.trainer.orpo_trainer import ORPOTrainingArgs, train_orpo

    from mlx_orpo.models import compute_dtype, lora_keys

    np.random.seed(0)
    model, _ = load(spec["model_dir"])
    if (target := compute_dtype("auto")) is not None:  # as mlx-orpo: float32 on the CPU, else the checkpoint's
        model.set_dtype(getattr(mx, target))
    dtype = _float_dtype(model)
    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": spec["rank"], "scale": 2.0, "dropout": 0.0,
                                                     "keys": lora_keys(model, None)})
    mx.eval(model.parameters())
    pairs = spec["pairs"]
    dataset = _Recording([{"chosen": list(p.prompt + p.chosen), "rejected": list(p.prompt + p.rejected),
                           "chosen_prompt_length": len(p.prompt), "rejected_prompt_length": len(p.prompt)}
                          for p in pairs])
    steps, clock = [], {"t": None}

    class Timer(TrainingCallback):
        def on_train_loss_report(self, info):
            now = time.perf_counter()
            # Its iterator reads every row once to sort by length, then batch_size rows per step.
            tokens = sum(pairs[i].tokens for i in dataset.read[-spec["batch_size"]:])
            dataset.read.clear()
            steps.append({"s": now - clock["t"], "tokens": tokens, "loss": info["train_loss"],
                          "reported_tok_s": info["tokens_per_second"]})
            clock["t"] = time.perf_counter()

    n = len(spec["batches"])
    with tempfile.TemporaryDirectory() as tmp:
        args = ORPOTrainingArgs(batch_size=spec["batch_size"], iters=n, max_seq_length=spec["max_length"],
                                steps_per_report=1, steps_per_eval=10**9, steps_per_save=10**9,
                                adapter_file=str(Path(tmp) / "adapters.safetensors"), beta=0.1)
        clock["t"] = time.perf_counter()
        train_orpo(model, optim.AdamW(learning_rate=1e-5), dataset, None, args=args, training_callback=Timer())
    return {"steps": steps, "mlx_peak": mx.get_peak_memory(), "dtype": dtype}


def worker_trl(spec: dict) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import trl_reference as ref
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    base = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(base, LoraConfig(r=spec["rank"], lora_alpha=2 * spec["rank"], target_modules=targets,
                                            lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = ref.orpo_trainer(model, tokenizer, 0.1, tmp)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    model.train()
    pairs, steps = spec["pairs"], []
    for indices in spec["batches"]:
        chunk = [pairs[i] for i in indices]
        start = time.perf_counter()
        batch = ref.trl_batch(chunk, spec["pad_id"])
        loss, _ = trainer.get_batch_loss_metrics(model, batch, train_eval="train")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps.append({"s": time.perf_counter() - start, "tokens": sum(p.tokens for p in chunk),
                      "loss": loss.item()})
    return {"steps": steps, "dtype": "float32"}


def worker_matmul(spec: dict) -> dict:
    """The backend's large-matmul rate in the run's dtype: (n, n) @ (n, n), n = 8192 on a GPU and
    2048 on the CPU, best of several."""
    import mlx.core as mx

    import mlx_orpo  # noqa: F401
    from mlx_orpo.models import on_gpu

    n, dtype, rates = (8192 if on_gpu() else 2048), getattr(mx, spec["dtype"]), []
    a, b = mx.random.normal((n, n)).astype(dtype), mx.random.normal((n, n)).astype(dtype)
    mx.eval(a, b, a @ b)
    for _ in range(8):
        start = time.perf_counter()
        mx.eval(a @ b)
        rates.append(2 * n**3 / (time.perf_counter() - start))
    return {"gflops_best": max(rates) / 1e9, "gflops_median": statistics.median(rates) / 1e9, "n": n,
            "dtype": spec["dtype"]}


WORKERS = {"mlx-orpo": worker_mlx_orpo, "layouts": worker_layouts, "mlx-lm-lora": worker_mlx_lm_lora, "trl": worker_trl,
           "matmul": worker_matmul}


def run_worker(name: str, spec_path: str) -> None:
    spec = _load_spec(spec_path)
    if spec.get("memory_limit") and name != "trl":
        import mlx.core as mx  # after _load_spec imported mlx_orpo (fast BLAS first)
        mx.set_memory_limit(spec["memory_limit"])
    result = WORKERS[name](spec)
    if result.get("steps"):
        result["first_step_s"] = time.perf_counter() - START - sum(s["s"] for s in result["steps"][1:])
    result["rss_peak"] = _rss_peak()
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- driver

def prepare(args) -> dict:
    """Tokenize the pairs once (our tokenizer), choose the batches every system runs."""
    from transformers import AutoTokenizer

    import mlx_orpo  # noqa: F401
    from mlx_orpo.api import pad_token_id
    from mlx_orpo.batching import epoch_batches
    from mlx_orpo.budget import parse_bytes
    from mlx_orpo.data import load_pairs
    from mlx_orpo.measure import SHARED_DATA
    from mlx_orpo.models import compute_dtype, resolve_model
    from mlx_orpo.predict import ModelShape
    from mlx_orpo.tokenize import encode_pairs, ensure_chat_template

    model_dir = resolve_model(args.model)
    if SHARED_DATA.is_file():
        source, (pairs, _) = str(SHARED_DATA), load_pairs(str(SHARED_DATA), format="sharegpt")
        pairs = [p for p in pairs if sum(m["role"] == "user" for m in p.prompt) == 1]  # single-turn rows
    else:
        from mlx_orpo.demo_data import DEMO_DATA_PATH
        source, (pairs, _) = str(DEMO_DATA_PATH), load_pairs(str(DEMO_DATA_PATH))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ensure_chat_template(tokenizer)
    encoded, _ = encode_pairs(tokenizer, pairs, max_length=args.max_length, max_prompt_length=args.max_length // 2,
                              min_response_length=4)
    batches = epoch_batches(encoded, args.batch_size, seed=0, epoch=0)
    needed = args.warmup + args.steps
    batches = (batches * (needed // len(batches) + 1))[:needed]
    # The run's dtype, as load_model(dtype="auto") chooses it: float32 on the CPU, else the checkpoint's.
    config = json.loads((Path(model_dir) / "config.json").read_text())
    checkpoint_dtype = ModelShape.from_config(config).checkpoint_dtype
    return {"model": args.model, "model_dir": str(model_dir), "dtype": compute_dtype("auto") or checkpoint_dtype,
            "source": source, "rank": args.rank, "batch_size": args.batch_size,
            "max_length": args.max_length, "pad_id": pad_token_id(tokenizer), "warmup": args.warmup,
            "memory_limit": parse_bytes(args.memory_budget) if args.memory_budget else None,
            "pairs": [[list(p.prompt), list(p.chosen), list(p.rejected)] for p in encoded], "batches": batches}


def launch(name: str, spec: dict, tmp: Path, timeout: float) -> dict:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(spec))
    worker = name.split(":")[0]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--spec", str(path)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-3000:]
        return {"error": f"exit {proc.returncode}: {tail}"}
    result = json.loads(lines[-1][len("RESULT "):])
    result["wall_s"] = time.perf_counter() - started
    return result


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def summarize(runs: list[dict], warmup: int) -> dict:
    timed = [s for r in runs for s in r["steps"][warmup:]]
    every = [s for r in runs for s in r["steps"]]
    rates = [s["tokens"] / s["s"] for s in timed]
    return {
        "timed_steps": len(timed),
        "tok_s_median": statistics.median(rates) if rates else None,
        "tok_s_overall": sum(s["tokens"] for s in timed) / sum(s["s"] for s in timed) if timed else None,
        # From each run's first step, compiling included (each step's time covers compiling a new shape).
        "tok_s_whole_run": sum(s["tokens"] for s in every) / sum(s["s"] for s in every) if every else None,
        "dtype": runs[-1].get("dtype"),
        "step_s_median": statistics.median(s["s"] for s in timed) if timed else None,
        "mlx_peak_gb": max((r.get("mlx_peak", 0) for r in runs), default=0) / 1e9 or None,
        "rss_peak_gb": max(r["rss_peak"] for r in runs) / 1e9,
        "first_step_s": statistics.median(r["first_step_s"] for r in runs),
        "final_loss": runs[-1]["steps"][-1]["loss"],
        "shared_prompt_steps": sum(bool(s.get("shared_prompt")) for s in timed),
        "batch_shapes": len({json.dumps(s["shape"]) for s in every}) if every and "shape" in every[0] else None,
    }


def flops_per_token(model_dir: str, mean_context: float) -> float:
    """LoRA training FLOPs per token: forward 2N + backward 2N (the frozen base needs no weight
    gradients, only input gradients), N = every matmul parameter incl. the (tied) vocabulary head;
    plus causal attention, 2 matmuls x (forward + 2 backward) = 12 x layers x heads x head_dim x context/2."""
    from mlx_orpo.predict import ModelShape
    shape = ModelShape.from_config(json.loads((Path(model_dir) / "config.json").read_text()))
    matmul_params = shape.layers * sum(i * o for i, o in shape.block_linears().values()) + shape.vocab * shape.hidden
    attention = 12 * shape.layers * shape.heads * shape.head_dim * mean_context / 2
    return 4 * matmul_params + attention


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 1 warm-up + 3 timed steps")
    parser.add_argument("--whole-run", action="store_true",
                        help="time whole runs: no warm-up, tokens/s over all --steps from the first, compiling "
                             "included (the ratios then compare whole runs, not median steps)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per system per round")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--orpo-layouts", default="split,split+ckpt",
                        help="mlx-orpo variants: split (shared prompt) or full (rows), each optionally "
                             "+ckpt (gradient checkpointing) and +pow2 or +multiple (batch widths, train "
                             "--pad-to; default auto); comma-separated, e.g. split,split+pow2")
    parser.add_argument("--memory-budget", default=None,
                        help="MLX memory limit in every MLX worker, e.g. 10GB (as train --memory-budget): on a big "
                             "GPU, the peak a machine of that size would see")
    parser.add_argument("--out", default="bench.json")
    parser.add_argument("--parallel", action="store_true",
                        help="run the systems of a round at the same time (needs memory for all of them)")
    parser.add_argument("--timeout", type=float, default=3600, help="per worker process, seconds")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.spec)
        return 0
    if args.quick:
        args.rounds, args.warmup, args.steps = 1, 1, 3
    unknown = [n for n in args.systems.split(",") if n not in SYSTEMS]
    missing = [n for n in args.systems.split(",") if n in PEER_MODULES and find_spec(PEER_MODULES[n]) is None]
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    if missing:
        parser.error(f"{', '.join(missing)} requested but not installed: pip install -e \".[peers]\" "
                     f"(or leave it out with --systems)")
    if args.whole_run:
        args.warmup = 0

    spec = prepare(args)
    systems = []
    for name in args.systems.split(","):
        if name == "mlx-orpo":
            systems += [f"mlx-orpo:{layout}" for layout in args.orpo_layouts.split(",")]
        else:
            systems.append(name)
    results = {name: [] for name in systems}
    loads = [load_average()]
    with tempfile.TemporaryDirectory() as tmp:
        matmul = launch("matmul", spec, Path(tmp), args.timeout)
        def run_one(r, name):
            worker_spec = dict(spec, layout=name.split(":")[1] if ":" in name else None)
            result = launch(name, worker_spec, Path(tmp), args.timeout)
            loads.append(load_average())
            print(f"round {r + 1} {name}: " + (result["error"][-400:] if "error" in result else
                  f"{len(result['steps'])} steps, {result['wall_s']:.0f} s, load {loads[-1]}"),
                  file=sys.stderr, flush=True)
            if "error" not in result:
                results[name].append(result)
            # partial results survive an interrupted run
            Path(args.out).with_suffix(".partial.json").write_text(json.dumps(results) + "\n")

        for r in range(args.rounds):
            order = systems[r % len(systems):] + systems[: r % len(systems)]  # rotate: drift hits all alike
            if args.parallel:  # all systems at once: the same load at the same time, memory permitting
                from concurrent.futures import ThreadPoolExecutor
                with ThreadPoolExecutor(len(order)) as pool:
                    list(pool.map(partial(run_one, r), order))
            else:
                for name in order:
                    run_one(r, name)
        matmul_after = launch("matmul", spec, Path(tmp), args.timeout)

    summary = {name: summarize(runs, args.warmup) for name, runs in results.items() if runs}
    pairs = spec["pairs"]
    mean_context = statistics.mean(len(p) + (len(c) + len(r)) / 2 for p, c, r in pairs)
    fpt = flops_per_token(spec["model_dir"], mean_context)
    peak = max(matmul.get("gflops_best", 0), matmul_after.get("gflops_best", 0)) * 1e9
    report = {"settings": {k: spec[k] for k in ("model", "model_dir", "dtype", "source", "rank", "batch_size",
                                                "max_length", "warmup", "memory_limit")}, "whole_run": args.whole_run,
              "pairs": len(pairs), "rounds": args.rounds, "timed_steps_per_round": args.steps,
              "load_average": loads, "cpu_count": os.cpu_count(), "matmul": [matmul, matmul_after],
              "flops_per_token": fpt, "systems": summary, "raw": results}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report, peak))
    return 0


def markdown(report: dict, peak_flops: float) -> str:
    systems = report["systems"]
    s = report["settings"]
    whole = report.get("whole_run", False)
    rate_key = "tok_s_whole_run" if whole else "tok_s_median"
    rate_name = "tokens/s over the whole run" if whole else "tokens/s by median step"
    timing = (f"{report['rounds']} round(s) x {report['timed_steps_per_round']} steps, each run timed whole "
              f"from its first step (compiling included)" if whole else
              f"{report['rounds']} round(s) x {report['timed_steps_per_round']} timed steps after {s['warmup']} "
              f"warm-up")
    lines = [f"{s['model']} ({Path(s['model_dir']).name if s.get('model_dir') else s['model']}) {s['dtype']}, "
             f"LoRA r={s['rank']} all linear layers, batch {s['batch_size']} pairs, max length {s['max_length']}, "
             f"{report['pairs']} pairs ({Path(s['source']).name}); {timing}; load average during the run: "
             f"{', '.join(report['load_average'])} on {report['cpu_count']} CPUs.", "",
             "| system | dtype | tokens/s (median step) | tokens/s (all timed steps) | tokens/s (whole run, "
             "compiling included) | step s (median) | MLX peak GB | RSS peak GB | time to first step s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, m in systems.items():
        mlx_peak = f"{m['mlx_peak_gb']:.2f}" if m["mlx_peak_gb"] else "n/a"
        lines.append(f"| {name} | {m.get('dtype') or 'n/a'} | {m['tok_s_median']:.1f} | {m['tok_s_overall']:.1f} "
                     f"| {m['tok_s_whole_run']:.1f} | {m['step_s_median']:.2f} | {mlx_peak} "
                     f"| {m['rss_peak_gb']:.2f} | {m['first_step_s']:.1f} |")
    ours = [n for n in systems if n.startswith("mlx-orpo")]
    peers = [n for n in systems if not n.startswith("mlx-orpo")]
    if ours:
        lines += ["", "Distinct batch shapes (the compiled step traces each once): "
                  + ", ".join(f"{n} {systems[n]['batch_shapes']}" for n in ours) + "."]
    if s.get("memory_limit"):
        lines += ["", f"Every MLX worker ran under mx.set_memory_limit({s['memory_limit'] / 1e9:.2f} GB)."]
    if ours and peers:
        lines += ["", f"Ratios mlx-orpo / peer ({rate_name}; memory by MLX peak where both have one, else RSS):",
                  "", "| mlx-orpo | peer | speed x | memory x |", "|---|---|---|---|"]
        for mine in ours:
            o = systems[mine]
            for name in peers:
                m = systems[name]
                key = "mlx_peak_gb" if (m["mlx_peak_gb"] and o["mlx_peak_gb"]) else "rss_peak_gb"
                lines.append(f"| {mine} | {name} | {o[rate_key] / m[rate_key]:.2f} | {o[key] / m[key]:.2f} |")
    if ours:
        fpt = report["flops_per_token"]
        matmul = report["matmul"][0]
        rates = ", ".join(f"{m.get('gflops_best', 0):.0f}" for m in report["matmul"])
        reach = ", ".join(f"{n} {systems[n][rate_key] * fpt / peak_flops:.1%}" for n in ours)
        lines += ["", f"Matmul peak (MLX {matmul.get('dtype', s['dtype'])} {matmul.get('n', '?')}^3, best of 8, "
                  f"before/after): {rates} GFLOP/s. FLOPs per token {fpt / 1e9:.2f} G (4 x matmul parameters + "
                  f"causal attention, LoRA: no base weight gradients). Fraction of that peak reached ({rate_name}): "
                  f"{reach} (effective: the shared prompt is counted twice, as for the peers; a checkpointed "
                  f"run's recomputed forward is not counted)."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
