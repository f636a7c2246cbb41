"""The GPU measurements of the speed-and-memory work in one run: whole-run speed against mlx-lm-lora,
the peak of the largest batch, and the memory planner's error per case.

    python scripts/gpu_check.py --model DIR [--out gpu-check] [--steps 12] [--iters 3]
    python scripts/gpu_check.py --model smollm2-135m --quick      # a dry run on the CPU (minutes)

DIR is the model, on a GPU the random Mistral-7B-shaped 4-bit model of ../shared/gpu/make_model.py. The
data is the shared set (../shared/data) where it is beside the repo, else the bundled demo set, for the
bench and the training runs alike.
A short training run first warms MLX's kernel cache (CUDA compiles kernels on first use), then:

1. speed: `bench.py --whole-run` on the same batches: mlx-orpo with --pad-to multiple, with pow2,
   with pow2 and gradient checkpointing, and mlx-lm-lora; tokens/s from the first step, compiling
   included, and the number of distinct batch shapes each compiled;
2. memory: `mlx_orpo.train` at --max-length 1024 x 1 pair with --grad-checkpoint (the largest batch of
   the data runs first), three ways: MLX's defaults; MLX_MAX_OPS_PER_BUFFER=40 and
   MLX_MAX_MB_PER_BUFFER=40, Metal's queue depth on Apple silicon (on an H100 MLX queues up to 100
   ops or 1,000 MB per graph, ten graphs ahead); and --memory-budget 10GB (MLX's limit). Then 1024 x 2
   pairs fitted to --memory-budget 12GB (auto-fit turns checkpointing on). Then batch 2 x 512 with and
   without checkpointing;
3. the planner's prediction for each memory case (the run's own, for its data's batches, from its
   memory.json), and its error against the measured peak.

Writes OUT/report.md (printed too) and OUT/report.json (after each case, so a cut-off run keeps what
it measured); each run's files stay under OUT/. Ten of its processes load the model; with the 7B-shaped
model on an H100, the estimate is ten minutes plus the cold kernel cache's first two.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]
from mlx_orpo import rundir  # noqa: E402
from mlx_orpo.files import atomic_write_text  # noqa: E402
from mlx_orpo.measure import SHARED_DATA  # noqa: E402  (the data bench.py runs on, when it is there)

METAL_QUEUE = {"MLX_MAX_OPS_PER_BUFFER": "40", "MLX_MAX_MB_PER_BUFFER": "40"}
# (label, max length, pairs per batch, gradient checkpointing, extra environment, extra train options)
MEMORY_CASES = [
    ("ckpt", 1024, 1, True, {}, []),
    ("ckpt, Metal's queue depth", 1024, 1, True, METAL_QUEUE, []),
    ("ckpt, --memory-budget 10GB", 1024, 1, True, {}, ["--memory-budget", "10GB"]),
    # auto-fit: batch 2 (given) without checkpointing is planned far over 12 GB; the fit turns it on
    ("fitted to --memory-budget 12GB", 1024, 2, False, {}, ["--memory-budget", "12GB"]),
    ("", 512, 2, False, {}, []),
    ("ckpt", 512, 2, True, {}, []),
]


def run(cmd: list[str], log: Path, env: dict | None = None, stdout: Path | None = None, timeout: float = 3600) -> float:
    """Run cmd from the repo root, its output in `log` (stdout in `stdout` if given); return the wall time.
    Raises on failure."""
    start = time.perf_counter()
    with open(log, "w") as err, open(stdout or os.devnull, "w") as out:
        done = subprocess.run(cmd, cwd=REPO, stdout=out if stdout else err, stderr=err, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}); see {log}:\n{log.read_text()[-2000:]}")
    return time.perf_counter() - start


def train_cmd(model: str, out: Path, length: int, pairs: int, ckpt: bool, iters: int, extra=()) -> list[str]:
    shutil.rmtree(out, ignore_errors=True)  # a rerun into the same --out starts these runs afresh
    data = ["--data", str(SHARED_DATA)] if SHARED_DATA.is_file() else []  # else the demo set, as bench.py
    return [sys.executable, "-m", "mlx_orpo.train", "--model", model, *data,
            "--max-length", str(length), "--batch-size", str(pairs), "--iters", str(iters), "--report-every", "1",
            "--eval-every", "0", "--eval-max-pairs", "1", "--save-every", "100000", "--output-dir", str(out),
            *(["--grad-checkpoint"] if ckpt else []), *extra]


def measured(run_dir: Path) -> dict:
    """The run's measured and predicted peak (its memory.json: the planner's prediction for the batches
    of its data, made before the weights loaded) and its last step's speed."""
    train = [r for r in rundir.read_records(run_dir) if r["kind"] == rundir.TRAIN]
    memory = rundir.read_memory_records(run_dir)[-1]
    return {"peak_gb": memory["measured_peak_bytes"] / 1e9, "planner_gb": memory["predicted_peak_bytes"] / 1e9,
            "tok_s_last": train[-1]["tokens_per_sec"]}


def device() -> str:
    import mlx.core as mx

    import mlx_orpo  # noqa: F401  (fast BLAS before mlx on the CPU)
    info = mx.device_info()
    return f"MLX {mx.__version__} on {mx.default_device()}: {info.get('device_name', '?')}, " \
           f"{info.get('memory_size', 0) / 1e9:.1f} GB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory or alias")
    parser.add_argument("--out", default="gpu-check")
    parser.add_argument("--steps", type=int, default=12, help="steps per whole-run bench system (the issue's 2 + 10)")
    parser.add_argument("--iters", type=int, default=3, help="training steps per memory case (the largest first)")
    parser.add_argument("--quick", action="store_true", help="a dry run: lengths / 4, 2 steps everywhere")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    if Path(args.model).exists():  # the runs start in the repo root
        args.model = str(Path(args.model).resolve())
    out.mkdir(parents=True, exist_ok=True)
    scale = 4 if args.quick else 1
    steps, iters = (2, 2) if args.quick else (args.steps, args.iters)
    report = {"device": device(), "model": args.model,
              "data": str(SHARED_DATA) if SHARED_DATA.is_file() else "the bundled demo set"}
    lines = [f"# GPU check: {args.model}", "", report["device"]
             + (" (--quick: every length divided by 4, 2 steps)" if args.quick else "")
             + f"; data: {report['data']}", ""]

    warm = run(train_cmd(args.model, out / "warm-up", 256 // scale, 1, False, 2), out / "warm-up.log")
    lines += [f"Warm-up run (kernel cache): {warm:.0f} s.", ""]

    bench_json = out / "bench.json"
    run([sys.executable, "scripts/bench.py", "--model", args.model, "--systems", "mlx-orpo,mlx-lm-lora",
         "--orpo-layouts", "split+multiple,split+pow2,split+pow2+ckpt", "--whole-run", "--rounds", "1",
         "--steps", str(steps), "--max-length", str(512 // scale), "--out", str(bench_json)], out / "bench.log",
        stdout=out / "bench.md")
    report["bench"] = json.loads(bench_json.read_text())["systems"]
    lines += ["## Speed (bench.py --whole-run)", "", (out / "bench.md").read_text().strip(), ""]

    lines += ["## Memory: measured peak (largest batch first) and the planner", "",
              "| case | measured peak GB | planner GB | planner error | tokens/s (last step) | wall s |",
              "|---|---|---|---|---|---|"]
    report["memory"] = []
    for label, length, pairs, ckpt, env, extra in MEMORY_CASES:
        length //= scale
        name = f"{length} x {pairs}" + (f", {label}" if label else "")
        run_dir = out / "runs" / "".join(c if c.isalnum() else "_" for c in name)
        wall = run(train_cmd(args.model, run_dir, length, pairs, ckpt, iters, extra), out / f"{run_dir.name}.log",
                   env)
        case = {"case": name, **measured(run_dir), "wall_s": wall}
        report["memory"].append(case)
        error = case["planner_gb"] / case["peak_gb"] - 1
        lines.append(f"| {name} | {case['peak_gb']:.2f} | {case['planner_gb']:.2f} | {error:+.1%} | "
                     f"{case['tok_s_last']:.0f} | {wall:.0f} |")
        atomic_write_text(out / "report.json", json.dumps(report, indent=1) + "\n")  # partial results survive
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "report.md", text)
    atomic_write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
