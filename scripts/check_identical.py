"""Train four small configurations with the mlx_orpo found in TREE and write what they produced, to
check that a refactoring leaves training bit-identical:

    git archive BASE_COMMIT | tar -x -C /tmp/base
    python scripts/check_identical.py /tmp/base /tmp/out-base
    python scripts/check_identical.py . /tmp/out-new
    python scripts/check_identical.py --compare /tmp/out-base /tmp/out-new

Configurations (a tiny random llama, float32, CPU):
  shared   shared-prompt layout, batch 2
  full     full rows (the model reports no split support), prompt_in_nll, batch 3, dropout
  accum    grad_accum 2, batch 3, cosine schedule
  eval     held-out evaluation every 2 steps over 5 pairs in batches of 2
OUT/NAME/ holds metrics.jsonl (without the timing fields) and adapters + checkpoints copied.
"""
import filecmp
import json
import shutil
import sys
import tempfile
from pathlib import Path

if sys.argv[1] == "--compare":
    a, b = Path(sys.argv[2]), Path(sys.argv[3])
    for name in sorted(p.name for p in a.iterdir()):
        files = sorted(p.name for p in (a / name).iterdir() if p.suffix == ".safetensors")
        _, differ, missing = filecmp.cmpfiles(a / name, b / name, files, shallow=False)
        ra, rb = (json.loads((d / name / "metrics.json").read_text()) for d in (a, b))
        train = [r for r in ra if r["kind"] == "train"] == [r for r in rb if r["kind"] == "train"]
        evals = [abs(x[k] - y[k]) / max(abs(x[k]), 1e-12) for x, y in zip(ra, rb) if x["kind"] == "eval"
                 for k in x if k.startswith("eval_")]
        print(f"{name}: adapters and optimizer states {'identical' if not differ and not missing else 'DIFFER'} "
              f"({len(files)} files); train records {'identical' if train else 'DIFFER'}; eval records: "
              f"largest relative difference {max(evals, default=0):.1e}")
    sys.exit(0)

tree, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
sys.path.insert(0, str(tree))

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

import mlx_orpo  # noqa: E402
from mlx_orpo import trainer  # noqa: E402
from mlx_orpo.config import TrainConfig  # noqa: E402
from mlx_orpo.measure import tiny_model  # noqa: E402  (TREE must be as new as this script)
from mlx_orpo.models import attach_adapters  # noqa: E402
from mlx_orpo.tokenize import EncodedPair  # noqa: E402

assert Path(mlx_orpo.__file__).resolve().is_relative_to(tree), mlx_orpo.__file__


def pairs(n, seed=0):
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(n):
        prompt = tuple(int(t) for t in rng.integers(3, 40, rng.integers(3, 12)))
        result.append(EncodedPair((1,) + prompt, tuple(int(t) for t in rng.integers(3, 40, rng.integers(2, 9))) + (2,),
                                  tuple(int(t) for t in rng.integers(3, 40, rng.integers(2, 9))) + (2,)))
    return result


BASE = dict(iters=6, batch_size=2, report_every=1, eval_every=0, save_every=3, pad_multiple=8, learning_rate=1e-2,
            warmup_steps=2, lora_rank=4, eval_max_pairs=0, seed=3)
CONFIGS = {
    "shared": (dict(), False),
    "full": (dict(batch_size=3, prompt_in_nll=True, lora_dropout=0.1), True),
    "accum": (dict(batch_size=3, grad_accum=2, lr_schedule="cosine"), False),
    "eval": (dict(eval_every=2, eval_max_pairs=5), False),
}
TIMING = ("tokens_per_sec", "peak_memory_gb")

for name, (overrides, full_rows) in CONFIGS.items():
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cfg = TrainConfig(**{**BASE, **overrides, "output_dir": str(run)}).validate()
        model = tiny_model(cfg.seed)
        if full_rows:
            model.model_type = "no-split"
        mx.random.seed(cfg.seed)
        attach_adapters(model, cfg)
        data = pairs(14)
        trainer.train(model, data, pairs(5, seed=9), cfg, run, pad_id=0, log=lambda s: None, progress=False)
        dest = out / name
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        records = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
                   for line in (run / "metrics.jsonl").read_text().splitlines()]
        (dest / "metrics.json").write_text(json.dumps(records, indent=1) + "\n")
        shutil.copy(run / "adapters.safetensors", dest / "adapters.safetensors")
        for ckpt in sorted((run / "checkpoints").iterdir()):
            for f in ckpt.glob("*.safetensors"):
                shutil.copy(f, dest / f"{ckpt.name}-{f.name}")
        print(name, len(records), "records", flush=True)
