"""Reproduce the ORPO paper's SFT-versus-ORPO behaviour at small scale.

    python scripts/reproduce_paper.py            # ~35-40 min on a quiet 2-core CPU, a few on a Mac
    python scripts/reproduce_paper.py --smoke    # the whole pipeline in a couple of minutes

Hong et al. (2024), Section 3 and Figure 3: under plain SFT on the chosen answers the
log-probabilities of the rejected answers rise together with the chosen ones; with ORPO the
odds-ratio term pushes the rejected answers down and widens the margin, more so for larger λ.

This script trains LoRA adapters for SmolLM2-135M-Instruct under λ = 0 (SFT only), 0.1, 0.5 and
1.0 with the same seed, data order, LoRA initialisation and steps, and evaluates every
`--eval-every` steps on the same held-out pairs: mean ℓ(chosen), mean ℓ(rejected), their margin,
the fraction of pairs with ℓ(chosen) > ℓ(rejected), and the mean log odds ratio. ℓ is the mean
per-token log-probability of a response (the paper's length-normalised log P). Step 0 is the base
model (LoRA's B matrices start at zero), evaluated once and shared by every λ.

Outputs (in --out, default docs/reproduce/): sft_vs_orpo.png, results.md (summary, final table,
greedy samples of the base model, the SFT adapter and the ORPO adapter on held-out prompts) and
results.json (settings, curves, samples). Run directories (adapters, metrics.jsonl) go to
--work-dir (default runs/reproduce/); a finished λ whose settings match is reused, so an
interrupted run continues where it stopped (--fresh retrains everything).

The held-out metrics are scored here as the trainer's evaluation scores them (trainer.score_pairs and
loss.orpo_loss), at this script's steps and with the per-pair ℓ its paired comparisons need.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import itertools
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import mlx_orpo  # noqa: E402,F401  (loads the fast BLAS before mlx is imported)

# isort: split
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from mlx_orpo import blas, rundir  # noqa: E402
from mlx_orpo.api import Run, generate, load_tokenizer, load_with_adapters, prepare_data, read_data  # noqa: E402
from mlx_orpo.config import TrainConfig  # noqa: E402
from mlx_orpo.files import atomic_write_text  # noqa: E402
from mlx_orpo.loss import orpo_loss  # noqa: E402
from mlx_orpo.measure import SHARED_DATA  # noqa: E402
from mlx_orpo.trainer import score_pairs  # noqa: E402

CURVE = "reproduce_curve.json"  # in each λ's run directory: its curve, once the λ has finished

# Rough throughput of SmolLM2-135M (fp32, OpenBLAS) on a quiet 2-core x86 CPU, for the up-front
# estimate only (a 4 x 512-token LoRA step takes ~21 s there; shorter rows spend less on attention).
CPU_TRAIN_TOKENS_PER_S = 150.0
CPU_EVAL_TOKENS_PER_S = 400.0
CPU_GENERATE_TOKENS_PER_S = 25.0

# Defaults sized for ~35-40 minutes on a quiet 2-core CPU; --smoke overrides them.
FULL = dict(lambdas=[0.0, 0.1, 0.5, 1.0], iters=60, eval_every=20, eval_pairs=16, batch_size=2,
            max_length=128, max_prompt_length=48, learning_rate=3e-4, warmup_steps=5, lora_rank=8,
            samples=3, sample_tokens=80)
SMOKE = dict(lambdas=[0.0, 1.0], iters=4, eval_every=2, eval_pairs=4, batch_size=2, max_length=96,
             max_prompt_length=32, learning_rate=3e-4, warmup_steps=1, lora_rank=4, samples=1, sample_tokens=12)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny settings: check the pipeline in a couple of minutes")
    p.add_argument("--data", help=f"preference data (default: {SHARED_DATA}, else the shipped demo set)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", default=str(REPO / "docs" / "reproduce"), help="where the figure, table, JSON go")
    p.add_argument("--work-dir", default=str(REPO / "runs" / "reproduce"), help="run directories (adapters)")
    p.add_argument("--fresh", action="store_true", help="retrain every λ even if a matching run exists")
    p.add_argument("--train-only", action="store_true",
                   help="only train the given λs into --work-dir (e.g. several processes or machines in parallel); "
                        "a later run with the same settings reuses them and writes the outputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-fraction", type=float, default=0.1, help="held-out fraction carved with --seed")
    p.add_argument("--lambdas", type=float, nargs="+", help="λ values (0 = SFT only)")
    p.add_argument("--orpo-lambda", type=float, help="adapter shown in the samples (default: the largest λ)")
    for name in ("iters", "eval_every", "eval_pairs", "batch_size", "max_length", "max_prompt_length",
                 "warmup_steps", "lora_rank", "samples", "sample_tokens"):
        p.add_argument("--" + name.replace("_", "-"), type=int)
    p.add_argument("--learning-rate", type=float)
    args = p.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.orpo_lambda is None:
        args.orpo_lambda = max(args.lambdas)
    if not args.train_only and (0.0 not in args.lambdas or args.orpo_lambda not in args.lambdas
                                or args.orpo_lambda == 0):
        p.error("--lambdas must include 0 (SFT) and --orpo-lambda (> 0)")
    return args


def data_path(args) -> tuple[str, str]:
    """(path, note): the shared real set, or the shipped demo set when it is absent."""
    if args.data:
        return args.data, "given with --data"
    if SHARED_DATA.is_file():
        return str(SHARED_DATA), "the shared real preference set (LLaMA-Factory dpo_en_demo, 300 pairs)"
    from mlx_orpo.demo_data import DEMO_DATA_PATH
    return str(DEMO_DATA_PATH), (f"FALLBACK: {SHARED_DATA} not found, using the project's synthetic demo set; "
                                 "numbers are not comparable with the committed results")


def train_config(args, beta: float, data: str, run_dir: Path) -> TrainConfig:
    return TrainConfig(
        model=args.model, data=data, beta=beta, learning_rate=args.learning_rate, lr_schedule="constant",
        warmup_steps=args.warmup_steps, iters=args.iters, batch_size=args.batch_size, max_length=args.max_length,
        max_prompt_length=args.max_prompt_length, lora_rank=args.lora_rank, lora_alpha=2.0 * args.lora_rank,
        seed=args.seed, eval_fraction=args.eval_fraction, report_every=1, eval_every=0, eval_max_pairs=0,
        save_every=10**9, keep_checkpoints=1, output_dir=str(run_dir),
    ).validate()


# --------------------------------------------------------------------------- held-out metrics

def evaluate_heldout(model, pairs, pad_id, cfg) -> dict:
    """The held-out numbers as the trainer's evaluation scores them (trainer.score_pairs, loss.orpo_loss),
    with the per-pair ℓ that the paired comparisons need."""
    parts = score_pairs(model, pairs, cfg, pad_id)
    _, metrics = orpo_loss(parts, cfg.beta)
    mx.eval(metrics)
    chosen, rejected = np.array(parts.chosen_logps), np.array(parts.rejected_logps)
    diff = chosen - rejected
    return {
        "logps_chosen": metrics["logps/chosen"].item(),
        "logps_rejected": metrics["logps/rejected"].item(),
        "margin": float(diff.mean()),                          # mean ℓ_w - ℓ_l (λ·ℓ's margin is 0 under SFT)
        "margin_se": float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0,
        "accuracy": metrics["rewards/accuracies"].item(),      # pairs with ℓ_w > ℓ_l
        "log_odds_chosen": metrics["log_odds_chosen"].item(),  # mean log(odds_w / odds_l)
        "log_odds_ratio": metrics["log_odds_ratio"].item(),    # mean log σ(log odds) = -L_OR
        "nll_chosen": metrics["nll_loss"].item(),              # token-mean NLL of the chosen responses
        "per_pair": {"chosen": [round(float(x), 5) for x in chosen],
                     "rejected": [round(float(x), 5) for x in rejected]},
    }


# --------------------------------------------------------------------------- progress

class Progress:
    """One text bar for the whole script, with an ETA from the planned work (in estimated seconds)."""

    def __init__(self, planned_s: float):
        self.planned, self.done, self.start = max(planned_s, 1e-9), 0.0, time.perf_counter()

    def advance(self, estimated_s: float, label: str) -> None:
        self.done = min(self.done + estimated_s, self.planned)
        frac = self.done / self.planned
        elapsed = time.perf_counter() - self.start
        eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        print(f"[{bar}] {100 * frac:5.1f}% | {label} | elapsed {_clock(elapsed)} | ETA {_clock(eta)}", flush=True)


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


# --------------------------------------------------------------------------- one λ

def settings_key(args, data: str, beta: float) -> str:
    keys = ("model", "seed", "eval_fraction", "iters", "eval_every", "eval_pairs", "batch_size", "max_length",
            "max_prompt_length", "learning_rate", "warmup_steps", "lora_rank")
    blob = json.dumps({k: getattr(args, k) for k in keys} | {"data": data, "beta": beta}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_lambda(args, beta: float, data: str, splits, eval_pairs_n: int, progress: Progress, est: dict,
               base_eval: dict | None) -> tuple[dict, dict]:
    """Train one λ (or reuse a finished matching run); return (its curve record, the step-0 eval)."""
    run_dir = Path(args.work_dir) / f"lambda-{beta:g}"
    key = settings_key(args, data, beta)
    cached = run_dir / CURVE
    if not args.fresh and cached.is_file() and (run_dir / rundir.ADAPTERS).is_file():
        record = json.loads(cached.read_text())
        if record.get("key") == key and (base_eval is not None or record.get("base_eval")):
            print(f"λ={beta:g}: reusing the finished run in {run_dir} (same settings; --fresh retrains)")
            progress.advance(est["per_lambda"] + (0 if base_eval is not None else est["eval"]), f"λ={beta:g} reused")
            base_eval = base_eval or record["base_eval"]
            if record["curve"][0]["step"] != 0:  # trained by a --train-only worker that skipped step 0
                record["curve"].insert(0, {"step": 0, **base_eval})
            return record, base_eval
    if run_dir.exists():
        shutil.rmtree(run_dir)  # ours: a stale or unfinished run of this script
    return train_lambda(args, beta, data, run_dir, key, splits, eval_pairs_n, progress, est, base_eval)


def train_lambda(args, beta: float, data: str, run_dir: Path, key: str, splits, eval_pairs_n: int,
                 progress: Progress, est: dict, base_eval: dict | None) -> tuple[dict, dict]:
    """Train one λ afresh in run_dir, by the CLI's own sequence (api.Run: set up, seeded before the
    weights load so every λ starts from the same LoRA initialisation; trained under the run's memory
    limits; saved)."""
    cfg = train_config(args, beta, data, run_dir)
    with Run(cfg, splits=splits, log=lambda line: None, progress=False) as run:  # our bar replaces its lines
        run.setup()
        t0 = time.perf_counter()
        state, curve, train_log, base_eval = train_and_evaluate(run, args, beta, eval_pairs_n, progress, est,
                                                                base_eval)
        seconds = time.perf_counter() - t0
        run.save()
    if state.step < cfg.iters:  # Ctrl-C / SIGTERM: the trainer saved a checkpoint; do not mark the run finished
        raise SystemExit(f"λ={beta:g} stopped at step {state.step}/{cfg.iters}; rerun to retrain it")
    prepared = run.data
    record = {"key": key, "lambda": beta, "run_dir": str(run_dir), "seconds": seconds,
              "curve": curve, "train": train_log, "base_eval": base_eval,
              "data": {"train_pairs": len(prepared.train), "eval_pairs": len(prepared.eval[:eval_pairs_n]),
                       "truncated": prepared.train_stats.truncated + prepared.eval_stats.truncated,
                       "dropped": prepared.train_stats.dropped + prepared.eval_stats.dropped}}
    atomic_write_text(run_dir / CURVE, json.dumps(record) + "\n")
    run = None  # frees the weights
    gc.collect()
    return record, base_eval


def train_and_evaluate(run, args, beta: float, eval_pairs_n: int, progress: Progress, est: dict,
                       base_eval: dict | None):
    """The set-up run trained, its held-out curve taken by this script (the trainer evaluates nothing):
    (loop state, curve, train log, the step-0 eval)."""
    cfg, model, pad_id = run.cfg, run.model, run.pad_id
    eval_pairs = run.data.eval[:eval_pairs_n]

    # Step 0: LoRA B = 0, so the freshly adapted model is the base model, the same for every λ. A
    # --train-only worker for λ > 0 leaves it to the run that assembles the outputs (λ = 0 has it).
    if base_eval is None and not (args.train_only and beta != 0):
        t = time.perf_counter()
        base_eval = evaluate_heldout(model, eval_pairs, pad_id, cfg)
        progress.advance(est["eval"], f"step-0 (base model) eval in {time.perf_counter() - t:.0f}s")
    curve = [{"step": 0, **base_eval}] if base_eval is not None else []
    train_log = []

    def on_record(entry: dict) -> None:
        if entry["kind"] != rundir.TRAIN:
            return
        train_log.append({k: entry[k] for k in ("step", "loss", "nll_loss", "log_odds_chosen",
                                                "logps/chosen", "logps/rejected", "tokens_per_sec")})
        step = entry["step"]
        progress.advance(est["step"], f"λ={beta:g} step {step}/{cfg.iters} loss {entry['loss']:.3f}")
        if step % args.eval_every == 0 or step == cfg.iters:
            t = time.perf_counter()
            m = evaluate_heldout(model, eval_pairs, pad_id, cfg)
            curve.append({"step": step, **m})
            progress.advance(est["eval"], f"λ={beta:g} eval @ {step}: ℓ_w {m['logps_chosen']:.3f} "
                             f"ℓ_l {m['logps_rejected']:.3f} margin {m['margin']:+.3f} acc {m['accuracy']:.2f} "
                             f"({time.perf_counter() - t:.0f}s)")

    state = run.train(eval_pairs=[], on_record=on_record)
    return state, curve, train_log, base_eval


# --------------------------------------------------------------------------- samples

def pick_prompts(eval_pairs, n: int) -> list:
    """Short single-turn held-out prompts first (readable in the docs), in held-out order."""
    single = [p for p in eval_pairs if len(p.prompt) == 1 and len(p.prompt[0]["content"]) <= 400]
    rest = [p for p in eval_pairs if p not in single]
    return (single + sorted(rest, key=lambda p: sum(len(m["content"]) for m in p.prompt)))[:n]


def greedy_samples(args, pairs, adapters: dict, progress: Progress, est_each: float) -> list[dict]:
    samples = [{"prompt": list(p.prompt), "chosen": p.chosen, "rejected": p.rejected, "answers": {}} for p in pairs]
    for name, adapter in adapters.items():
        model, tokenizer = load_with_adapters(args.model, adapter)
        for s in samples:
            s["answers"][name] = generate(model, tokenizer, s["prompt"], max_tokens=args.sample_tokens,
                                          temperature=0.0)
            progress.advance(est_each, f"greedy sample ({name})")
        del model
        gc.collect()
    return samples


# --------------------------------------------------------------------------- outputs

def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    fig = plt.figure(figsize=(4 * len(runs), 7.5), constrained_layout=True)
    grid = fig.add_gridspec(2, 3 * len(runs))
    lows = [min(r["curve"][i][k] for i in range(len(r["curve"])) for k in ("logps_chosen", "logps_rejected"))
            for r in runs]
    highs = [max(r["curve"][i][k] for i in range(len(r["curve"])) for k in ("logps_chosen", "logps_rejected"))
             for r in runs]
    pad = 0.05 * (max(highs) - min(lows) + 1e-9)
    first = None
    for j, r in enumerate(runs):
        ax = fig.add_subplot(grid[0, 3 * j:3 * j + 3], sharey=first)
        first = first or ax
        steps = [c["step"] for c in r["curve"]]
        ax.plot(steps, [c["logps_chosen"] for c in r["curve"]], "o-", color="tab:blue", label="ℓ chosen (y_w)")
        ax.plot(steps, [c["logps_rejected"] for c in r["curve"]], "s-", color="tab:red", label="ℓ rejected (y_l)")
        ax.axhline(r["curve"][0]["logps_rejected"], color="tab:red", lw=0.8, ls=":")
        ax.axhline(r["curve"][0]["logps_chosen"], color="tab:blue", lw=0.8, ls=":")
        ax.set_title("λ = 0 (SFT only)" if r["lambda"] == 0 else f"ORPO λ = {r['lambda']:g}")
        ax.set_xlabel("step")
        ax.set_ylim(min(lows) - pad, max(highs) + pad)
        ax.grid(alpha=0.3)
        if j == 0:
            ax.set_ylabel("held-out mean per-token log-prob ℓ")
            ax.legend(loc="best", fontsize=8)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(runs)))
    panels = [("margin", "margin ℓ_w − ℓ_l"), ("log_odds_chosen", "mean log odds ratio log(odds_w / odds_l)"),
              ("accuracy", "pairs with ℓ_w > ℓ_l")]
    width = 3 * len(runs) // len(panels)
    for k, (key, title) in enumerate(panels):
        ax = fig.add_subplot(grid[1, k * width:(k + 1) * width])
        for color, r in zip(colors, runs):
            ax.plot([c["step"] for c in r["curve"]], [c[key] for c in r["curve"]], "o-", color=color,
                    label=f"λ = {r['lambda']:g}")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=8)
    s = results["settings"]
    fig.suptitle(f"SFT vs ORPO on {s['model']}: {s['train_pairs']} train / {s['eval_pairs']} held-out pairs\n"
                 f"{s['iters']} LoRA steps (r {s['lora_rank']}, lr {s['learning_rate']:g}, batch {s['batch_size']}, "
                 f"max length {s['max_length']}), seed {s['seed']}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _paired(a: dict, b: dict, key: str) -> tuple[float, float]:
    """Mean and standard error over pairs of b - a for "chosen", "rejected" or "margin" (same held-out pairs)."""
    def values(m):
        chosen, rejected = np.array(m["per_pair"]["chosen"]), np.array(m["per_pair"]["rejected"])
        return {"chosen": chosen, "rejected": rejected, "margin": chosen - rejected}[key]
    diff = values(b) - values(a)
    return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0


def pattern_checks(runs: list[dict]) -> list[tuple[str, bool, str, bool]]:
    """The paper's claims, checked on the final held-out numbers: (claim, holds, numbers, beyond 2 SE).

    Differences are paired (same held-out pairs), with their standard error over pairs; no thresholds
    are tuned: "holds" is the sign of the mean difference, "beyond 2 SE" whether |mean| > 2 SE.
    """
    by = {r["lambda"]: r for r in runs}
    base = runs[0]["curve"][0]
    final = {lam: r["curve"][-1] for lam, r in by.items()}
    sft = final[0.0]
    checks = []

    def check(name, a, b, key, sign):
        mean, se = _paired(a, b, key)
        checks.append((name, sign * mean > 0, f"{mean:+.4f} ± {se:.4f}", abs(mean) > 2 * se))

    check("SFT (λ=0) raises ℓ(chosen) above the base model", base, sft, "chosen", +1)
    check("SFT (λ=0) also raises ℓ(rejected) above the base model", base, sft, "rejected", +1)
    for lam in sorted(lam for lam in by if lam > 0):
        check(f"λ={lam:g} raises ℓ(chosen) above the base model", base, final[lam], "chosen", +1)
        check(f"λ={lam:g} pushes ℓ(rejected) below the base model", base, final[lam], "rejected", -1)
        check(f"λ={lam:g} ends with lower ℓ(rejected) than SFT", sft, final[lam], "rejected", -1)
        check(f"λ={lam:g} ends with a wider margin than SFT", sft, final[lam], "margin", +1)
    margins = [final[lam]["margin"] for lam in sorted(by)]
    checks.append(("final margin grows with λ (monotone over " + ", ".join(f"{lam:g}" for lam in sorted(by)) + ")",
                   all(a < b for a, b in itertools.pairwise(margins)), ", ".join(f"{m:+.4f}" for m in margins), None))
    return checks


def write_markdown(results: dict, path: Path) -> None:
    s, runs = results["settings"], results["runs"]
    base = runs[0]["curve"][0]
    checks = pattern_checks(runs)
    sft = runs[0]["curve"][-1]
    top = max(runs, key=lambda r: r["lambda"])
    tf = top["curve"][-1]
    lambdas = ", ".join(format(r["lambda"], "g") for r in runs)
    yes = lambda ok: "yes" if ok else "**no**"
    lines = [
        "# SFT versus ORPO at small scale",
        "",
        *([f"**PARTIAL RESULTS**: the run stopped or is still going; done so far: λ = {lambdas} of "
           f"{', '.join(format(b, 'g') for b in s['lambdas'])}; no samples yet.", ""]
          if not results["complete"] else []),
        "Generated by `python scripts/reproduce_paper.py`"
        + (" --smoke (tiny pipeline check, not a result)" if s["smoke"] else "")
        + f"; wall time {_clock(results['wall_seconds'])}"
        f" on {s['device']}. Figure: [sft_vs_orpo.png](sft_vs_orpo.png); curves: [results.json](results.json).",
        "",
        "## Summary for the README",
        "",
        f"On {s['train_pairs']} real preference pairs ({s['data_note']}), {s['iters']} LoRA steps of "
        f"SmolLM2-135M-Instruct, evaluated on the same {s['eval_pairs']} held-out pairs: plain SFT (λ = 0) moved the "
        f"mean per-token log-probability ℓ of the chosen answers by {sft['logps_chosen'] - base['logps_chosen']:+.3f} "
        f"and of the rejected answers by {sft['logps_rejected'] - base['logps_rejected']:+.3f} "
        f"(margin ℓ_w − ℓ_l {base['margin']:+.3f} → {sft['margin']:+.3f}). "
        f"ORPO with λ = {top['lambda']:g} moved them by {tf['logps_chosen'] - base['logps_chosen']:+.3f} and "
        f"{tf['logps_rejected'] - base['logps_rejected']:+.3f} (margin → {tf['margin']:+.3f}, "
        f"{100 * tf['accuracy']:.0f}% of pairs with ℓ_w > ℓ_l vs {100 * sft['accuracy']:.0f}% under SFT).",
        "",
        "The paper's claims, checked mechanically on the final held-out numbers (one seed; differences are "
        f"paired over the same {s['eval_pairs']} held-out pairs, mean ± standard error; a difference within "
        "2 SE is not distinguishable from noise here):",
        "",
        "| claim | holds here | paired difference | beyond 2 SE |",
        "|---|---|---|---|",
    ] + [f"| {name} | {yes(ok)} | {detail} | {'—' if sig is None else 'yes' if sig else 'no'} |"
         for name, ok, detail, sig in checks] + [
        "",
        "## Final held-out numbers",
        "",
        f"Step {s['iters']}; step 0 is the base model. ℓ = mean per-token log-probability of the response; "
        "margin = mean ℓ_w − ℓ_l (± standard error over pairs); accuracy = pairs with ℓ_w > ℓ_l; log odds = mean "
        "log(odds(y_w)/odds(y_l)); −L_OR = mean log σ(log odds); NLL = token-mean NLL of the chosen answers.",
        "",
        "| model | ℓ chosen | ℓ rejected | margin | accuracy | log odds | −L_OR | NLL chosen |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def row(name, m):
        return (f"| {name} | {m['logps_chosen']:.4f} | {m['logps_rejected']:.4f} | {m['margin']:+.4f} ± "
                f"{m['margin_se']:.4f} | {m['accuracy']:.3f} | {m['log_odds_chosen']:+.4f} "
                f"| {m['log_odds_ratio']:.4f} | "
                f"{m['nll_chosen']:.4f} |")

    lines.append(row("base (step 0)", base))
    for r in runs:
        lines.append(row("SFT only, λ = 0" if r["lambda"] == 0 else f"ORPO, λ = {r['lambda']:g}", r["curve"][-1]))
    lines += [
        "",
        "## Settings",
        "",
        f"- model `{s['model']}`; data `{s['data']}` ({s['data_note']}); held-out: {s['eval_fraction']:g} of it carved "
        f"with seed {s['seed']}, first {s['eval_pairs']} pairs evaluated; {s['truncated']} pairs truncated, "
        f"{s['dropped']} dropped at max length {s['max_length']} (prompt kept to {s['max_prompt_length']} tokens "
        "when a pair is too long, responses cut from the right)",
        f"- LoRA r {s['lora_rank']}, alpha {2 * s['lora_rank']} on all linear layers; AdamW lr {s['learning_rate']:g}, "
        f"{s['warmup_steps']} warmup steps then constant; batch {s['batch_size']} pairs; {s['iters']} steps per λ; "
        f"NLL on the response only; seed {s['seed']} (same data order and LoRA init for every λ)",
        f"- held-out evaluation every {s['eval_every']} steps; λ values {lambdas}",
        "- time per λ (training and its evaluations; a reused run keeps the time it took when trained): "
        + ", ".join(f"λ = {r['lambda']:g} {_clock(r['seconds'])}" for r in runs),
        "",
        "## Greedy samples on held-out prompts",
        "",
        f"Greedy decoding, at most {s['sample_tokens']} new tokens; the data's chosen/rejected answers are shown "
        "(shortened) for reference. SFT = the λ = 0 adapter, ORPO = the λ = "
        f"{s['orpo_lambda']:g} adapter.",
    ]
    for i, sample in enumerate(results["samples"], 1):
        lines += ["", f"### Prompt {i}", ""]
        for m in sample["prompt"]:
            lines.append(_quote(f"**{m['role']}**: {m['content']}"))
        lines += ["", "<details><summary>data's chosen / rejected answers</summary>", "",
                  _quote("**chosen**: " + _shorten(sample["chosen"])), "",
                  _quote("**rejected**: " + _shorten(sample["rejected"])), "", "</details>"]
        for name, text in sample["answers"].items():
            lines += ["", f"**{name}**:", "", _quote(text.strip() or "(empty)")]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _shorten(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + " …"


def _quote(text: str) -> str:
    return "\n".join("> " + line if line.strip() else ">" for line in text.splitlines())


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    data, data_note = data_path(args)
    probe = train_config(args, 0.0, data, Path(args.work_dir))
    splits = read_data(probe)
    eval_n = min(args.eval_pairs, len(splits[1])) or len(splits[1])
    if not splits[1]:
        raise SystemExit("no held-out pairs: raise --eval-fraction")

    # Up-front estimate from the data's token counts (a tokenizer only, no model).
    tokenizer = load_tokenizer(args.model)
    prepared = prepare_data(probe, tokenizer, splits)
    per_pair = float(np.mean([p.tokens for p in prepared.train]))
    eval_tokens = sum(p.tokens for p in prepared.eval[:eval_n])
    n_evals = math.ceil(args.iters / args.eval_every)
    est = {"step": args.batch_size * per_pair / CPU_TRAIN_TOKENS_PER_S, "eval": eval_tokens / CPU_EVAL_TOKENS_PER_S,
           "sample": args.sample_tokens / CPU_GENERATE_TOKENS_PER_S + 2.0}
    est["per_lambda"] = args.iters * est["step"] + n_evals * est["eval"] + 5.0
    samples_n = min(args.samples, len(prepared.eval))
    planned = len(args.lambdas) * est["per_lambda"] + est["eval"] + 3 * samples_n * est["sample"]
    print(f"BLAS: {blas.describe()}; MLX device: {mx.default_device()}")
    print(f"data: {data} ({data_note}); {len(prepared.train)} train pairs, {eval_n} held-out pairs evaluated "
          f"(~{per_pair:.0f} tokens per pair after truncation to {args.max_length})")
    print(f"plan: λ ∈ {{{', '.join(f'{b:g}' for b in args.lambdas)}}} × {args.iters} steps (batch {args.batch_size}, "
          f"lr {args.learning_rate:g}, LoRA r {args.lora_rank}), held-out eval every {args.eval_every} steps, "
          f"{samples_n} prompts × 3 models of greedy samples")
    print(f"expected time on a quiet 2-core CPU: ~{_clock(planned)} (much less on Apple silicon; "
          "more if the CPU is shared)", flush=True)

    settings = {k: getattr(args, k) for k in ("model", "seed", "eval_fraction", "iters", "eval_every",
                                              "batch_size", "max_length", "max_prompt_length", "learning_rate",
                                              "warmup_steps", "lora_rank", "sample_tokens", "orpo_lambda", "smoke")}
    settings.update(data=os.path.relpath(data, REPO) if Path(data).is_absolute() else data,
                    data_note=data_note, eval_pairs=eval_n, lambdas=sorted(args.lambdas),
                    device=f"{mx.default_device()} ({blas.describe()})")
    out = Path(args.out)

    # SFT and the largest λ first: if the run is cut short, the key comparison is already written.
    order = [0.0, max(args.lambdas)] + sorted(set(args.lambdas) - {0.0, max(args.lambdas)}, reverse=True)
    if args.train_only:
        order = list(dict.fromkeys(args.lambdas))
    progress = Progress(planned)
    runs, base_eval = [], None
    for beta in order:
        record, base_eval = run_lambda(args, beta, data, splits, eval_n, progress, est, base_eval)
        runs.append(record)
        runs.sort(key=lambda r: r["lambda"])
        settings.update(train_pairs=runs[0]["data"]["train_pairs"], truncated=runs[0]["data"]["truncated"],
                        dropped=runs[0]["data"]["dropped"])
        print(f"λ={beta:g} done in {_clock(record['seconds'])}: {record['run_dir']}", flush=True)
        if args.train_only:
            continue
        if len(runs) < len(order) and len(runs) >= 2:  # partial outputs, overwritten at the end
            write_outputs(out, settings, runs, [], time.perf_counter() - started)

    if args.train_only:
        return 0
    by = {r["lambda"]: r for r in runs}
    prompts = pick_prompts(splits[1][:eval_n], samples_n)
    adapters = {"base": None, "SFT (λ=0)": by[0.0]["run_dir"],
                f"ORPO (λ={args.orpo_lambda:g})": by[args.orpo_lambda]["run_dir"]}
    samples = greedy_samples(args, prompts, adapters, progress, est["sample"])
    results = write_outputs(out, settings, runs, samples, time.perf_counter() - started)
    print(f"wrote {out / 'sft_vs_orpo.png'}, {out / 'results.md'}, {out / 'results.json'} "
          f"in {_clock(results['wall_seconds'])}")
    for name, ok, detail, sig in pattern_checks(runs):
        print(f"  {'yes' if ok else 'NO '}  {name}: {detail}{' (within 2 SE)' if sig is False else ''}")
    return 0


def write_outputs(out: Path, settings: dict, runs: list, samples: list, wall_seconds: float) -> dict:
    results = {"settings": settings, "wall_seconds": wall_seconds, "complete": bool(samples) and
               len(runs) == len(settings["lambdas"]),
               "runs": [{"lambda": r["lambda"], "seconds": r["seconds"], "train": r["train"],
                         # per-pair ℓ only at step 0 and the final step, to keep the file small
                         "curve": [c if i in (0, len(r["curve"]) - 1)
                                   else {k: v for k, v in c.items() if k != "per_pair"}
                                   for i, c in enumerate(r["curve"])]} for r in runs],
               "samples": samples}
    out.mkdir(parents=True, exist_ok=True)
    plot(results, out / "sft_vs_orpo.png")
    write_markdown(results, out / "results.md")
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    return results


if __name__ == "__main__":
    sys.exit(main())
