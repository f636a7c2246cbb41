"""What several test modules share (pytest fixtures live in conftest.py): a tiny trained run's pieces,
the CLI's command line and its metrics comparison, the app's test rows and upload helpers."""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import mlx_orpo.trainer as trainer_mod
from mlx_orpo.config import TrainConfig
from mlx_orpo.measure import tiny_model
from mlx_orpo.models import attach_adapters
from mlx_orpo.rundir import read_records
from mlx_orpo.tokenize import EncodedPair

__all__ = ["tiny_model"]  # re-exported: the tests' model is the scripts' (mlx_orpo.measure)


# -- the training loop on the tiny llama ----------------------------------------------------------

def pairs(n=12, seed=0):
    """Random encoded pairs over the tiny llama's vocabulary: prompts of 4-8 tokens, answers of 5 and 6."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt = tuple(int(t) for t in rng.integers(3, 40, rng.integers(3, 8)))
        out.append(EncodedPair((1,) + prompt, tuple(int(t) for t in rng.integers(3, 40, 4)) + (2,),
                               tuple(int(t) for t in rng.integers(3, 40, 5)) + (2,)))
    return out


def make(cfg):
    model = tiny_model(seed=cfg.seed)
    mx.random.seed(cfg.seed)
    attach_adapters(model, cfg)
    return model


def cfg_for(tmp_path, **kw):
    base = dict(iters=6, batch_size=2, report_every=1, eval_every=3, save_every=2, pad_multiple=8,
                learning_rate=1e-2, warmup_steps=2, lora_rank=4, output_dir=str(tmp_path), eval_max_pairs=4)
    base.update(kw)
    return TrainConfig(**base).validate()


def run(tmp_path, cfg, data, resume=False):
    model = make(cfg)
    trainer_mod.train(model, data, data[:4], cfg, tmp_path, pad_id=0, resume=resume, log=lambda s: None,
                      progress=False)
    return model


# -- the CLI, and comparing two runs' metrics -----------------------------------------------------

def cli(*args):
    return [sys.executable, "-m", "mlx_orpo.train", *args]


def train_records(run_dir: Path):
    return [r for r in read_records(run_dir) if r["kind"] == "train"]


def comparable(records):
    return [{k: v for k, v in r.items() if k not in ("tokens_per_sec", "peak_memory_gb")} for r in records]


REL = 1e-4  # float32 runs whose sums are taken in another order (two ranks, or a resumed process)


def tolerance(record: dict, key: str) -> float:
    """Absolute tolerance of one metric: REL of the size of what it is computed from.

    Most metrics are compared relative to themselves. Two are differences of near-equal
    log-probabilities: log_odds_chosen = log odds(ℓ_w) - log odds(ℓ_l) and rewards/margins =
    β(ℓ_w - ℓ_l). Their own size says nothing about their rounding (-0.0008 computed from
    ℓ ≈ -2.5 moved by 1.4e-6 between two ranks and one process: 0.2% of itself, 5e-7 of ℓ).
    They get REL of their inputs: log odds(ℓ) moves by δℓ / (1 - e^ℓ), β·ℓ by β·δℓ.
    """
    prefix = "eval_" if key.startswith("eval_") else ""
    if key == prefix + "log_odds_chosen":
        return REL * max(abs(ell) / -math.expm1(ell) for ell in (record[prefix + "logps/chosen"],
                                                                 record[prefix + "logps/rejected"]))
    if key == prefix + "rewards/margins":
        return REL * max(abs(record[prefix + "rewards/chosen"]), abs(record[prefix + "rewards/rejected"]))
    return 1e-6


def assert_same_metrics(a, b):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(comparable(a), comparable(b)):
        assert ra.keys() == rb.keys()
        for key in ra:
            assert ra[key] == pytest.approx(rb[key], rel=REL, abs=tolerance(ra, key)), (ra["step"], key)


def wait_for(path: Path, proc, timeout=600):
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - start < timeout
        time.sleep(0.2)


# -- a mistake's one error line ------------------------------------------------------------------

def assert_one_error_line(done, *words) -> str:
    """A finished CLI process (subprocess.run's result) stopped with exit 2 and one `error:` line holding
    each of `words`: no traceback, no usage text. Returns the line."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and "usage:" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


def fake_model(folder: Path) -> Path:
    """A model directory as the checks see it (they refuse before anything loads it)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


# -- a run directory with known adapters, for export ----------------------------------------------

def make_run(run_dir: Path, base: Path, *, dora: bool = False, bits: int | None = None, seed: int = 0,
             targets=("all-linear",), layers: int = -1):
    """A run directory with a random (seeded) adapter that visibly changes the model."""
    from mlx_orpo.checkpoint import save_adapters
    from mlx_orpo.models import load_model

    model, tokenizer, _, path = load_model(str(base), dtype="float32", bits=bits)
    cfg = TrainConfig(model=str(base), lora_rank=4, lora_alpha=8.0, dora=dora, lora_layers=layers,
                      lora_targets=list(targets))
    mx.random.seed(seed)  # before attaching: lora_a is drawn there
    adapter_cfg = attach_adapters(model, cfg)
    for _, module in model.named_modules():
        if hasattr(module, "lora_b"):
            module.lora_b = 0.05 * mx.random.normal(module.lora_b.shape)
            if dora:
                module.m = module.m * (1 + 0.05 * mx.random.normal(module.m.shape))
    mx.eval(model.parameters())
    run_dir.mkdir(parents=True, exist_ok=True)
    save_adapters(run_dir, model)
    adapter_cfg["model_path"] = str(path)
    (run_dir / "adapter_config.json").write_text(json.dumps(adapter_cfg, indent=2))
    cfg.save(run_dir / "config.json")
    model.eval()
    return model, tokenizer


# -- the app --------------------------------------------------------------------------------------

GOOD_ROWS = [
    {"prompt": "What is 2+2?", "chosen": "4.\n- Two plus two.\nHope that helps!", "rejected": "five"},
    {"prompt": "Capital of France?", "chosen": "Paris.\n- On the Seine.\nHope that helps!", "rejected": "Lyon"},
    {"prompt": "Colour of the sky?", "chosen": "Blue.\n- Rayleigh scattering.\nHope that helps!", "rejected": "Green"},
    {"prompt": "Largest ocean?", "chosen": "The Pacific.\n- A third of Earth.\nHope that helps!", "rejected": "Big"},
]
APP_MODEL, APP_MAX_LEN = "smollm2-135m", 128  # what the app's data checks are asked with


def form(**overrides) -> list:
    """The Train tab's widget values in FORM order, as its API takes them: TrainConfig defaults plus overrides."""
    from app.form import FORM

    cfg = TrainConfig()
    values = {name: getattr(cfg, name) for name in FORM}
    values.update(bits="none")
    values.update(overrides)
    return [values[name] for name in FORM]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_jsonl(path: Path, rows: list, extra_lines: list[str] = ()) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(line + "\n" for line in extra_lines))
    return path


def file_data(path: Path | str, name: str = "a.jsonl") -> dict:
    """A FileData as a client may send it, naming a server-side path."""
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}, "orig_name": name}


def upload_raw(url: str, path: Path) -> str:
    """Upload as the browser does; returns Gradio's stored path (to check that it is deleted)."""
    import httpx

    with open(path, "rb") as f:
        response = httpx.post(f"{url}gradio_api/upload", files={"files": (path.name, f)})
    response.raise_for_status()
    return response.json()[0]


# -- the app in a real browser (fixtures app_url, browser and page are in conftest.py) ---------------------

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("ORPO_SHOTS") or Path(__file__).resolve().parents[1] / "test-artifacts")


def new_page(browser):
    """A page in a fresh context: its own browser session, as a second tab or another person would be."""
    return browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"app-{name}.png"), full_page=True)


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input").first
    box.fill(str(value))
    box.press("Tab")


def text(page, sel: str) -> str:
    return page.locator(sel).inner_text()


def enabled(page, elem_id: str) -> bool:
    return page.locator(f"#{elem_id}").is_enabled()


def written_run(runs: Path, name: str, records: list[dict], *, config=None, status: dict | None = None,
                mtime: float | None = None) -> Path:
    """A run directory as the trainer leaves it (marker, config.json, metrics.jsonl, status.json), with
    these records (NaN written as JSON's NaN) and `config` (default: TrainConfig's, as saved); `mtime`
    orders it among the runs (the newest is shown first)."""
    from mlx_orpo import rundir

    run = runs / name
    run.mkdir(parents=True)
    rundir.write_marker(run)
    config = {**TrainConfig().validate().to_dict(), "output_dir": str(run)} if config is None else config
    (run / rundir.CONFIG).write_text(json.dumps(config))
    (run / rundir.METRICS).write_text("".join(json.dumps(r) + "\n" for r in records))
    if status is not None:
        (run / rundir.STATUS).write_text(json.dumps(status))
    if mtime is not None:
        os.utime(run, (mtime, mtime))
    return run


TRAIN_RECORD = {"kind": "train", "step": 1, "total_steps": 4, "epoch": 0.1, "loss": 2.5, "nll_loss": 2.4,
                "log_odds_ratio": -0.3, "log_odds_chosen": 0.5, "rewards/chosen": -0.2, "rewards/rejected": -0.4,
                "rewards/accuracies": 0.5, "rewards/margins": 0.2, "learning_rate": 1e-4, "tokens_per_sec": 50.0,
                "peak_memory_gb": 1.0, "skipped_steps": 0}
EVAL_RECORD = {"kind": "eval", "step": 1, "eval_loss": 2.6, "eval_nll_loss": 2.5, "eval_log_odds_ratio": -0.3,
               "eval_log_odds_chosen": 0.4, "eval_rewards/accuracies": 0.75}
METRIC_KEYS = ("loss", "nll_loss", "log_odds_ratio", "log_odds_chosen", "rewards/chosen", "rewards/rejected",
               "rewards/accuracies", "rewards/margins")


def odd_runs(runs: Path) -> dict[str, str]:
    """Runs that the trainer can write, and two it cannot (damaged files), which every view must render:
    {name: what its summary must say}. "null-loss" is the newest (a Runs tab opens on it)."""
    now = time.time()
    skipped = {**TRAIN_RECORD, "step": 2, **dict.fromkeys(METRIC_KEYS), "skipped_steps": 2}  # all skipped
    without_log_odds = {k: v for k, v in TRAIN_RECORD.items() if k != "log_odds_chosen"}
    written_run(runs, "nan-loss", [{**TRAIN_RECORD, "loss": math.nan}, {**EVAL_RECORD, "eval_loss": math.nan}],
                mtime=now - 50)
    written_run(runs, "one-record", [TRAIN_RECORD], mtime=now - 40)
    written_run(runs, "no-steps", [], status={"phase": "stopped", "time": now, "step": 0, "total_steps": 4},
                mtime=now - 30)
    written_run(runs, "config-a-list", [TRAIN_RECORD], config=[], mtime=now - 20)
    written_run(runs, "no-log-odds", [without_log_odds], mtime=now - 10)
    written_run(runs, "null-loss", [TRAIN_RECORD, skipped], mtime=now + 60)
    return {"null-loss": "last train loss —, log odds ratio —", "nan-loss": "last eval loss nan",
            "one-record": "last train loss 2.5000", "no-steps": "stopped before its first step",
            "config-a-list": "config.json is damaged", "no-log-odds": "log odds ratio —, accuracy 0.50"}
