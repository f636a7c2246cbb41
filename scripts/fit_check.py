"""The memory planner and auto-fit (--memory-budget) measured on this machine, in one rerunnable script.

    python scripts/fit_check.py [--out fit-check] [--only-data-plan] [--skip-mistral] [--skip-times]

1. The planner's prediction for the batches of each run's data (api.plan_run, before the weights load)
   against the run's measured MLX peak, both from the run's memory.json: the default run (the demo
   set, batch 2, max length 1024), long real pairs (the shared set beside the repo) at batch 2 x 1024
   with and without --grad-checkpoint, and a run whose held-out pairs (the shared set's longest) are
   longer than its training pairs (the demo set). A table of predicted / measured: the planner is an
   upper bound when every ratio is at least 1.
2. SmolLM2-135M with its default settings (batch 2, max length 1024) on long real data (the shared
   set, else the demo set), under a --memory-budget of half its unfitted plan for that data: the CLI
   fits it, the run completes, and the measured MLX peak is set against the budget.
3. The planner's prediction for the fitted settings against the measured peak, per model: SmolLM2-135M
   at 1024 and at 512 tokens (a budget that takes batch 1 x --grad-accum 2), and a Mistral-7B-shaped 4-bit
   model (../shared/gpu/make_model.py) with 1 and 2 blocks, extrapolated per block to 32.
4. The relative time of an optimizer step of each plan auto-fit can pick (as configured; checkpointing;
   batch 1 x accumulation 2 with checkpointing), SmolLM2-135M at max length 128 on real pairs.
5. What auto-fit picks for mistral-7b-4bit and llama-2-7b-4bit on 8 to 64 GB Macs: the README's table.
   Metal figures are the planner's predictions (no Mac here).

Every training run is the real CLI in a subprocess, one at a time (2-core machines: about 15 minutes for
1, half an hour for the rest; --skip-mistral saves most of it). Prints a report and writes OUT/report.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import mlx_orpo  # noqa: E402,F401  (fast BLAS before mlx)
from mlx_orpo.budget import AUTO_GPU_SHARE, Budget, format_bytes, mac_working_set  # noqa: E402
from mlx_orpo.config import TrainConfig  # noqa: E402
from mlx_orpo.fit import advise, fit, fit_candidates  # noqa: E402
from mlx_orpo.measure import SHARED_DATA  # noqa: E402
from mlx_orpo.predict import KNOWN_CONFIGS, predict_peak  # noqa: E402

MAKE_MODEL = REPO.parent / "shared" / "gpu" / "make_model.py"  # the random Mistral-shaped model builder
MACS_GB = (8, 16, 24, 36, 64)
# Short runs: the peak is the first step's (the largest batch runs first); no held-out set.
RUN = ["--iters", "2", "--report-every", "1", "--save-every", "100"]
NO_EVAL = ["--eval-fraction", "0", "--eval-every", "0"]


def data_path() -> str:
    if SHARED_DATA.is_file():
        return str(SHARED_DATA)
    from mlx_orpo.demo_data import DEMO_DATA_PATH
    return str(DEMO_DATA_PATH)


REUSE = False  # --reuse: a run whose command, output and records are already under --out is not rerun


def train(out: Path, model: str | None, *flags: str, data: str | None = None) -> dict:
    """Run the CLI; return its fit line, its predicted and measured peak (memory.json) and wall time.
    `data`: --data (default: the shared set, else the demo set; "" for the CLI's default)."""
    from mlx_orpo.rundir import read_memory_records, read_records

    data = data_path() if data is None else data
    cmd = [sys.executable, "-m", "mlx_orpo.train", *(["--model", model] if model else []),
           *(["--data", data] if data else []), "--output-dir", str(out), *RUN, *flags]
    saved_run = out.with_name(out.name + ".run.json")
    if REUSE and saved_run.is_file() and json.loads(saved_run.read_text())["cmd"] == cmd[1:]:
        stdout, seconds = (json.loads(saved_run.read_text())[k] for k in ("stdout", "seconds"))
    else:
        if out.exists():
            import shutil
            shutil.rmtree(out)
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600,
                              env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode:
            raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
        stdout, seconds = done.stdout, round(time.perf_counter() - start, 1)
        saved_run.write_text(json.dumps({"cmd": cmd[1:], "stdout": stdout, "seconds": seconds}))
    records = [r for r in read_records(out) if r.get("kind") == "train"]
    memory = read_memory_records(out)[-1]
    fit_line = next((line for line in stdout.splitlines() if line.startswith("memory:")), "")
    saved = json.loads((out / "config.json").read_text())
    return {"fit_line": fit_line, "peak": memory["measured_peak_bytes"], "predicted": memory["predicted_peak_bytes"],
            "planned_for": memory["planned_for"], "seconds": seconds, "losses": [r["loss"] for r in records],
            "settings": {k: saved[k] for k in ("batch_size", "grad_accum", "grad_checkpoint", "max_length")}}


def longest_pairs(out: Path, n: int = 4) -> str:
    """The shared set's n longest pairs (by characters), in its own format: held-out pairs longer than
    the demo set's."""
    rows = json.loads(SHARED_DATA.read_text())
    path = out / "longest-pairs.json"
    path.write_text(json.dumps(sorted(rows, key=lambda r: -len(json.dumps(r)))[:n]))
    return str(path)


def data_plan_runs(out: Path) -> list[dict]:
    """Item 1: each case's predicted (for its data's batches) and measured peak. Two steps each (the
    largest batch runs first), and the held-out evaluation at the end (4 pairs)."""
    shared = str(SHARED_DATA) if SHARED_DATA.is_file() else None
    cases = [("default run: demo set, batch 2, max length 1024", "", [])]
    if shared:
        cases += [("long real pairs, batch 2 x 1024", shared, []),
                  ("long real pairs, batch 2 x 1024, --grad-checkpoint", shared, ["--grad-checkpoint"]),
                  ("held-out pairs longer than training pairs, --grad-checkpoint", "",
                   ["--eval-data", longest_pairs(out), "--grad-checkpoint"])]
    rows = []
    for name, data, flags in cases:
        run_dir = out / ("plan-" + "".join(c if c.isalnum() else "-" for c in name)[:60])
        rows.append({"case": name, **train(run_dir, None, "--eval-every", "0", "--eval-max-pairs", "4", *flags,
                                           data=data)})
        r = rows[-1]
        print(f"   {name}: predicted {format_bytes(r['predicted'])}, measured {format_bytes(r['peak'])} "
              f"({r['predicted'] / r['peak']:.2f}x)", flush=True)
    return rows


def plan_of(cfg: TrainConfig, config: dict) -> int:
    return predict_peak(cfg, config, on_gpu=False).total


def settings(cfg: TrainConfig) -> list[str]:
    return ["--batch-size", str(cfg.batch_size), "--grad-accum", str(cfg.grad_accum), "--max-length",
            str(cfg.max_length), "--grad-checkpoint" if cfg.grad_checkpoint else "--no-grad-checkpoint"]


def data_plan(cfg: TrainConfig) -> int:
    """cfg's predicted peak for the batches of its data (api.plan_run, as the run plans it), unfitted."""
    from mlx_orpo.api import plan_run

    return plan_run(TrainConfig(**{**cfg.to_dict(), "memory_budget": "off"})).memory.prediction.total


def budget_run(out: Path, smol: str) -> dict:
    """Item 2: SmolLM2's defaults under half their unfitted plan for the data."""
    cfg = TrainConfig(model=smol, data=data_path(), eval_fraction=0.0).validate()
    planned = data_plan(cfg)
    budget = planned // 2
    result = train(out / "smollm2-1024", smol, *NO_EVAL, "--memory-budget", f"{budget}B")
    return {"case": "SmolLM2-135M, defaults, 1024", "planned_unfitted": planned, "budget": budget, **result}


def smol_512_run(out: Path, smol: str) -> dict:
    """A budget only batch 1 x --grad-accum 2 with checkpointing fits, at max length 512."""
    cfg = TrainConfig(model=smol, data=data_path(), eval_fraction=0.0, max_length=512).validate()
    budget = int(data_plan(fit_candidates(cfg)[-1]) * 1.01)
    result = train(out / "smollm2-512", smol, *NO_EVAL, "--max-length", "512", "--memory-budget", f"{budget}B")
    return {"case": "SmolLM2-135M, 512", "planned_unfitted": data_plan(cfg), "budget": budget, **result}


def mistral_runs(out: Path, smol: str) -> tuple[list[dict], dict]:
    """Mistral-7B-shaped 4-bit models with 1 and 2 blocks, trained one step (the largest batch) with the
    settings auto-fit picks for the 32-block model under half its unfitted plan (max length 64, on this
    CPU: 4-bit layers do not use BLAS here, and one step of 2 pairs at 128 tokens took over 13 minutes on
    a shared 2-core machine); extrapolated per block."""
    length = 64
    full = {**load_model_config_from_builder(32)}
    cfg = TrainConfig(model="mistral-7b-shaped", max_length=length).validate()
    # Half its unfitted plan is less than its weights on this CPU (float32 scales): the budget is the
    # checkpointed plan's, the first change auto-fit makes.
    budget = plan_of(fit_candidates(cfg)[1], full)
    fitted, predicted_full, changes = fit(cfg, budget, model_config=full, on_gpu=False)
    rows, measured = [], {}
    for layers in (1, 2):
        model_dir = out / f"mistral-shaped-{layers}"
        if not (model_dir / "config.json").is_file():
            subprocess.run([sys.executable, str(MAKE_MODEL), "--out", str(model_dir), "--tok",
                            str(tokenizer_dir(out, smol)), "--layers", str(layers)], check=True, cwd=REPO,
                           capture_output=True)
        result = train(out / f"run-mistral-{layers}", str(model_dir), *NO_EVAL, *settings(fitted),
                       "--memory-budget", "off", "--iters", "1")
        measured[layers] = result["peak"]
        rows.append({"case": f"Mistral-7B-shaped 4-bit, {layers} block{'s' if layers > 1 else ''}, {length}",
                     **result})
    per_block = measured[2] - measured[1]
    extrapolated = {"fitted": [str(c) for c in changes], "per_block": per_block,
                    "measured_32": measured[1] + 31 * per_block, "predicted_32": predicted_full.total}
    return rows, extrapolated


def tokenizer_dir(out: Path, smol: str) -> Path:
    """SmolLM2's tokenizer files alone (make_model.py copies every file of --tok but config.json)."""
    import shutil

    tok = out / "smollm2-tokenizer"
    tok.mkdir(exist_ok=True)
    for f in Path(smol).iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy(f, tok / f.name)
    return tok


def load_model_config_from_builder(layers: int) -> dict:
    """The config.json make_model.py writes, without building the model."""
    return dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=49152,
                tie_word_embeddings=False, torch_dtype="bfloat16", quantization={"group_size": 64, "bits": 4})


def step_times(smol: str, rounds: int = 4, length: int = 128) -> dict:
    """Seconds per optimizer step of each plan auto-fit can pick (same 2 pairs per step), SmolLM2-135M at
    max length `length` on the two longest real pairs: the median of `rounds` rounds after a compiling
    one. Each round times every plan once, in turn, so the load of a shared machine falls on all alike."""
    import mlx.core as mx

    from mlx_orpo.api import prepare_data
    from mlx_orpo.batching import Widths, collate
    from mlx_orpo.models import attach_adapters, load_model
    from mlx_orpo.step import MicroBatch, OrpoStep, build_optimizer
    from mlx_orpo.tokenize import ensure_chat_template

    base = TrainConfig(model=smol, data=data_path(), max_length=length, eval_fraction=0.0).validate()
    plans = {"as configured": (False, 2), "checkpointing": (True, 2),
             "batch 1 x accumulation 2, checkpointing": (True, 1)}
    built = {}
    for name, (checkpoint, batch) in plans.items():
        cfg = TrainConfig(**{**base.to_dict(), "grad_checkpoint": checkpoint, "batch_size": batch,
                             "grad_accum": 2 // batch})
        mx.random.seed(0)
        model, tokenizer, _, _ = load_model(smol, dtype="auto")
        ensure_chat_template(tokenizer)
        pairs = sorted(prepare_data(cfg, tokenizer).train, key=lambda p: -p.length)[:2]
        attach_adapters(model, cfg)
        widths = Widths.for_config(cfg)
        micro = [MicroBatch(collate(pairs[i:i + batch], 0, widths), *_weights(pairs, pairs[i:i + batch]))
                 for i in range(0, 2, batch)]
        built[name] = (OrpoStep(model, cfg, build_optimizer(cfg, steps=rounds + 1)), micro)
    seconds = {name: [] for name in plans}
    for _ in range(rounds + 1):
        for name, (step, micro) in built.items():
            start = time.perf_counter()
            step(micro)
            seconds[name].append(time.perf_counter() - start)
    times = {name: statistics.median(s[1:]) for name, s in seconds.items()}
    base_time = times["as configured"]
    return {name: {"seconds": round(t, 2), "relative": round(t / base_time, 2), "max_length": length}
            for name, t in times.items()}


def _weights(step_pairs, micro_pairs):
    """The counts a micro-batch divides its sums by, as the trainer weights a step's micro-batches."""
    from mlx_orpo.feeding import shard_counts
    return shard_counts(step_pairs, TrainConfig(), len(step_pairs) // len(micro_pairs))


def mac_table(relative: dict | None) -> list[dict]:
    """What auto-fit picks on Macs (predictions: Metal, bfloat16/float16 compute, the checkpoint's dtype)."""
    rows = []
    names = {(False, 2): "as configured", (True, 2): "checkpointing",
             (True, 1): "batch 1 x accumulation 2, checkpointing"}
    for model in ("mistral-7b-4bit", "llama-2-7b-4bit"):
        cfg = TrainConfig(model=model).validate()
        for ram_gb in MACS_GB:
            working_set = mac_working_set(ram_gb * 2**30)
            budget = Budget(int(AUTO_GPU_SHARE * working_set), f"{AUTO_GPU_SHARE:.0%} of {format_bytes(working_set)}")
            advice = advise(cfg, budget, model_config=KNOWN_CONFIGS[model], on_gpu=True)
            fitted, choice = advice.fitted, ""
            if fitted is None:  # at the shorter --max-length the advice offers, what auto-fit picks
                choice = "does not fit at 1024 tokens"
                shorter = next((p.cfg for p in advice.trade_offs if p.cfg.max_length < cfg.max_length), None)
                if shorter is not None:
                    fitted = fit(TrainConfig(**{**cfg.to_dict(), "max_length": shorter.max_length,
                                                "max_prompt_length": shorter.max_prompt_length}),
                                 budget, model_config=KNOWN_CONFIGS[model], on_gpu=True)
                    choice += f"; --max-length {shorter.max_length}: "
            plan = names[(fitted.cfg.grad_checkpoint, fitted.cfg.batch_size)] if fitted else None
            choice += plan or ""
            predicted = fitted.prediction.total if fitted else None
            rel = relative.get(plan, {}).get("relative") if relative and plan else None
            rows.append({"model": model, "mac_gb": ram_gb, "budget": budget.bytes, "choice": choice,
                         "predicted": predicted, "relative_step_time": rel})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="fit-check")
    parser.add_argument("--skip-mistral", action="store_true", help="leave out the Mistral-7B-shaped runs")
    parser.add_argument("--skip-times", action="store_true", help="leave out the step-time measurement")
    parser.add_argument("--reuse", action="store_true", help="keep the runs already under --out (same commands)")
    parser.add_argument("--times", help="read the step times from this JSON file (step_times' result) instead")
    parser.add_argument("--only-data-plan", action="store_true", help="item 1 alone: predicted / measured peaks")
    args = parser.parse_args(argv)
    global REUSE
    REUSE = args.reuse
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from mlx_orpo.models import resolve_model
    smol = resolve_model("smollm2-135m")
    report = {"data": data_path()}

    def save():
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")

    print("1. predicted (for the data's batches, before the weights load) and measured peak, each run's memory.json")
    report["data_plan"] = data_plan_runs(out)
    save()
    print("\n".join(ratio_table(report["data_plan"])), flush=True)
    if args.only_data_plan:
        return 0
    first = budget_run(out, smol)
    print(f"\n2. {first['case']}: unfitted plan {format_bytes(first['planned_unfitted'])}, budget "
          f"{format_bytes(first['budget'])}\n   {first['fit_line']}\n   completed {len(first['losses'])} steps in "
          f"{first['seconds']} s; measured MLX peak {format_bytes(first['peak'])} "
          f"({'within' if first['peak'] <= first['budget'] else 'OVER'} the budget)", flush=True)
    report["budget_run"] = first
    save()
    rows = [first, smol_512_run(out, smol)]
    report["planner"] = rows
    save()
    if not args.skip_mistral:
        mistral, extrapolated = mistral_runs(out, smol)
        rows += mistral
        report["mistral_extrapolated"] = extrapolated
        save()
    print("\n3. planner prediction for the fitted settings against the measured peak")
    print("| case | fitted | predicted | measured | measured / predicted |\n|---|---|---|---|---|")
    for r in rows:
        s = r["settings"]
        print(f"| {r['case']} | batch {s['batch_size']} x {s['grad_accum']}"
              f"{', ckpt' if s['grad_checkpoint'] else ''} | {format_bytes(r['predicted'])} | "
              f"{format_bytes(r['peak'])} | {r['peak'] / r['predicted']:.2f} |")
    over = [r for r in rows if r["peak"] > r["predicted"]]
    print(f"measured over predicted in {len(over)} of {len(rows)} cases"
          + (f", by up to {max(r['peak'] / r['predicted'] - 1 for r in over):+.1%}" if over else ""))
    if not args.skip_mistral:
        e = report["mistral_extrapolated"]
        print(f"Mistral-7B-shaped, 32 blocks at 64 tokens ({', '.join(e['fitted']) or 'as configured'}): "
              f"measured per block {format_bytes(e['per_block'])}, extrapolated {format_bytes(e['measured_32'])}, "
              f"predicted {format_bytes(e['predicted_32'])} (measured / predicted "
              f"{e['measured_32'] / e['predicted_32']:.2f})")
    relative = None
    if args.times or not args.skip_times:
        relative = json.loads(Path(args.times).read_text()) if args.times else step_times(smol)
        report["step_times"] = relative
        save()
        print("\n4. seconds per optimizer step (2 pairs), SmolLM2-135M, max length 128, this CPU")
        for name, t in relative.items():
            print(f"   {name}: {t['seconds']} s ({t['relative']:.2f}x)")
    report["macs"] = mac_table(relative)
    save()
    print("\n".join(mac_lines(report["macs"])))
    return 0


def ratio_table(rows: list[dict]) -> list[str]:
    """Item 1 as a markdown table (docs/performance.md's)."""
    lines = ["| case | data planned for | settings | predicted | measured | predicted / measured |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        s = r["settings"]
        lines.append(f"| {r['case']} | {r['planned_for'].split(': ', 1)[-1]} | batch {s['batch_size']} x "
                     f"{s['grad_accum']}, max length {s['max_length']}{', ckpt' if s['grad_checkpoint'] else ''} | "
                     f"{format_bytes(r['predicted'])} | {format_bytes(r['peak'])} | {r['predicted'] / r['peak']:.2f} |")
    return lines


def mac_lines(table: list[dict]) -> list[str]:
    """Item 5 as a markdown table (the README's)."""
    lines = ["", "5. auto-fit on Macs (Metal: predictions)",
             "| model | Mac | budget | auto-fit picks | predicted peak | relative step time (CPU) |",
             "|---|---|---|---|---|---|"]
    for r in table:
        predicted = format_bytes(r["predicted"]) if r["predicted"] else "-"
        relative = f"{r['relative_step_time']}x" if r["relative_step_time"] else "-"
        lines.append(f"| {r['model']} | {r['mac_gb']} GB | {format_bytes(r['budget'])} | {r['choice']} | "
                     f"{predicted} | {relative} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
