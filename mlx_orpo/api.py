"""The Python API behind the CLI, the app and the benchmarks.

    model, tokenizer, config, path = load_model("smollm2-135m")
    run_dir = run_training(TrainConfig(iters=20), log=print)
    print(generate(model, tokenizer, [{"role": "user", "content": "Hi"}]))
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from . import blas, runcheck, rundir
from .batching import Widths, collate
from .budget import Budget, memory_limit
from .config import TrainConfig
from .data import data_source, load_splits
from .distributed import Cluster
from .files import atomic_write_text
from .fit import fit_to_memory
from .models import attach_adapters, load_model
from .runlock import RunLock
from .tokenize import EncodedPair, EncodeStats, encode_pairs, ensure_chat_template, render_prompt
from .trainer import total_steps, train


@dataclass
class PreparedData:
    train: list[EncodedPair]
    eval: list[EncodedPair]
    train_stats: EncodeStats
    eval_stats: EncodeStats
    report: object  # data.LoadReport


def read_data(cfg: TrainConfig):
    """Read and validate the preference pairs: (train, eval, LoadReport). Fails fast, before any model loads."""
    return load_splits(data_source(cfg), eval_source=cfg.eval_data, format=cfg.format,
                       eval_fraction=cfg.eval_fraction, seed=cfg.seed, skip_bad_rows=cfg.skip_bad_rows,
                       system=cfg.system)


def prepare_data(cfg: TrainConfig, tokenizer, splits=None) -> PreparedData:
    """Read (unless `splits` were read already), tokenize and fit the pairs to the length limits."""
    train_pairs, eval_pairs, report = splits or read_data(cfg)
    lengths = dict(max_length=cfg.max_length, max_prompt_length=cfg.prompt_budget,
                   min_response_length=cfg.min_response_length)
    train_enc, train_stats = encode_pairs(tokenizer, train_pairs, **lengths)
    eval_enc, eval_stats = encode_pairs(tokenizer, eval_pairs, **lengths)
    if not train_enc:
        raise ValueError(f"{report.source}: no training pairs left after truncation to --max-length {cfg.max_length}")
    return PreparedData(train_enc, eval_enc, train_stats, eval_stats, report)


def pad_token_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)


def default_run_dir(cluster: Cluster) -> Path:
    # Every rank must name the same directory: take rank 0's clock.
    return Path("runs") / time.strftime("orpo-%Y%m%d-%H%M%S", time.localtime(cluster.agree_on(int(time.time()))))


@dataclass
class PreparedRun:
    """A run ready to train: the model with adapters attached, its tokenized data and the run directory
    (config.json, adapter_config.json and the marker written). `run_training` and the scripts share it."""
    cfg: TrainConfig
    run_dir: Path
    cluster: Cluster
    model: object
    tokenizer: object
    data: PreparedData
    model_path: Path
    budget: Budget | None = None  # fit.fit_to_memory's: MLX's memory limit while it trains (None: off)

    @property
    def pad_id(self) -> int:
        return pad_token_id(self.tokenizer)


def run_training(cfg: TrainConfig, *, resume: bool = False, on_record: Callable[[dict], None] | None = None,
                 log: Callable[[str], None] = print, progress: bool = True,
                 allow_changed_data: bool = False, allow_changed_model: bool = False,
                 explicit: frozenset[str] | set[str] = frozenset()) -> Path:
    """Load the model and data named by cfg, attach adapters and train. Returns the run directory.

    The run's --memory-budget is resolved once (`fit.fit_to_memory`): a new run is first fitted to it
    (`explicit`: the settings the user gave, which stay as given), and it bounds MLX's memory while the
    run trains (`budget.memory_limit`).
    Under `mlx.launch` every rank calls this; rank 0 alone logs and writes files. A run stopped by
    SIGTERM/SIGINT returns too, with its status "stopped" (rundir.read_status): `stopped(run_dir, since)`.
    `allow_changed_data`, `allow_changed_model`: resume even though the data or the base model differs
    from the run's (logged).
    """
    cfg.validate()
    cluster = Cluster.init()
    if not cluster.is_main:
        log, progress, on_record = (lambda _: None), False, None
    run_dir = Path(cfg.output_dir) if cfg.output_dir else default_run_dir(cluster)
    # Checked before the lock creates the folder: a refused run leaves nothing behind.
    splits = read_data(cfg)
    refusal, fingerprint = None, None
    try:
        fingerprint = runcheck.check_run(cfg, run_dir, splits, resume=resume, allow_changed_data=allow_changed_data,
                                         allow_changed_model=allow_changed_model, log=log, main=cluster.is_main)
    except (ValueError, OSError) as exc:
        refusal = exc
    # Data-parallel: every rank stops when any rank refuses.
    if cluster.size > 1 and cluster.sum(mx.array(int(refusal is not None))).item() and refusal is None:
        raise runcheck.RunCheckError(f"another rank refused the run in {run_dir} (its error says why)")
    if refusal is not None:
        raise refusal
    # The folders this run creates (the run directory and any missing parents, such as runs/).
    created = [p for p in [run_dir, *run_dir.parents] if not p.exists()]
    try:
        # One writer per run (rank 0 writes): held from before the "already a run here?" check to the end.
        with RunLock(run_dir) if cluster.is_main else contextlib.nullcontext():
            run = prepare_run(cfg, run_dir, cluster, resume=resume, log=log, splits=splits,
                              allow_changed_data=allow_changed_data, explicit=explicit, fingerprint=fingerprint)
            with memory_limit(run.budget, log):
                state = train(run.model, run.data.train, run.data.eval, cfg, run_dir, pad_id=run.pad_id,
                              resume=resume, on_record=on_record, log=log, progress=progress, cluster=cluster)
            if cluster.is_main and state.step >= total_steps(cfg, len(run.data.train), cluster.size):
                rundir.write_status(run_dir, rundir.FINISHED, step=state.step, total_steps=state.step)
    except BaseException:
        if created and cluster.is_main:
            _remove_if_only_lock(run_dir, created)
        raise
    return run_dir


def stopped(run_dir: Path, since: float = 0.0) -> bool:
    """Whether the run's trainer stopped on a stop request (resumable) rather than finishing, by a
    status written at `since` (time.time()) or later: an earlier stop of the run does not count."""
    status = rundir.read_status(run_dir)
    return status is not None and status.phase == rundir.STOPPED and status.time >= since


def _remove_if_only_lock(run_dir: Path, created: list[Path]) -> None:
    """Remove the run folder, and the parents this run created, when it holds nothing but the lock
    (the run failed before writing any of its files)."""
    with contextlib.suppress(OSError):
        if {p.name for p in run_dir.iterdir()} <= {rundir.LOCK}:
            (run_dir / rundir.LOCK).unlink(missing_ok=True)
            for folder in created:  # innermost first; rmdir leaves a folder that is not empty
                folder.rmdir()


def prepare_run(cfg: TrainConfig, run_dir: Path, cluster: Cluster | None = None, *, resume: bool = False,
                log: Callable[[str], None] = print, splits=None, allow_changed_data: bool = False,
                explicit: frozenset[str] | set[str] = frozenset(), fingerprint: dict | None = None) -> PreparedRun:
    """Check the run, read its data, fit a new run to its memory budget (cfg changed in place; a resumed
    run keeps the settings its config.json saved), load the model, attach adapters and write the run's
    own files (rank 0). `splits`: read_data's result when the caller read the data already; `explicit`:
    the settings the user gave (the fit keeps them); `fingerprint`: runcheck.check_run's, when the
    caller ran the checks already (before taking the run's lock)."""
    cluster = cluster or Cluster()
    splits = splits or read_data(cfg)
    # runcheck.py: the output folder, a resume's identity and its data; nothing is written before.
    if fingerprint is None:
        fingerprint = runcheck.check_run(cfg, run_dir, splits, resume=resume,
                                         allow_changed_data=allow_changed_data, log=log, main=cluster.is_main)
    else:  # checked before the lock; what another process could have changed since is the folder
        if cluster.is_main:
            runcheck.check_output_dir(run_dir, cfg.model, resume=resume)
        if resume:
            runcheck.check_same_run(cfg, run_dir)
    cfg.output_dir = str(run_dir)
    budget = fit_to_memory(cfg, explicit=explicit, log=log, cluster=cluster, resume=resume)
    log(f"BLAS: {blas.describe()}; MLX device: {mx.default_device()}"
        + (f"; data-parallel over {cluster.size} processes" if cluster.size > 1 else ""))
    mx.random.seed(cfg.seed)
    model, tokenizer, _, path = load_model(cfg.model, bits=cfg.bits, group_size=cfg.group_size, dtype=cfg.dtype)
    log(f"model: {cfg.model} ({path})")
    if not ensure_chat_template(tokenizer):
        log("tokenizer has no chat template; using the fallback '### Role:' template (see README)")
    data = prepare_data(cfg, tokenizer, splits)
    log(f"data: {data.report.source} [{data.report.format}] {len(data.train)} train / {len(data.eval)} eval pairs; "
        f"truncated {data.train_stats.truncated + data.eval_stats.truncated}, "
        f"dropped {data.train_stats.dropped + data.eval_stats.dropped} (too long for --max-length {cfg.max_length})"
        + (f"; skipped {len(data.report.skipped)} bad rows" if data.report.skipped else ""))
    if data.report.ignored:
        log(f"data: not read: {'; '.join(data.report.ignored)}")
    if data.report.duplicates:
        log(f"warning: {data.report.source}: {data.report.duplicates} duplicate pairs (same prompt, chosen and "
            f"rejected), e.g. {data.report.duplicate_example}; each copy is trained on")
    adapter_cfg = attach_adapters(model, cfg)
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    log(f"adapters: {adapter_cfg['fine_tune_type']} r={cfg.lora_rank} alpha={cfg.lora_alpha} on "
        f"{len(adapter_cfg['lora_parameters']['keys'])} modules per block; {trainable / 1e6:.2f}M trainable")
    # Resolved here, so a resumed run pads (and so orders its batches) as it did, wherever it resumes.
    widths = Widths.for_config(cfg)
    cfg.pad_to, cfg.pad_multiple = ("pow2" if widths.pow2 else "multiple"), widths.multiple
    if cluster.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:  # a resumed run keeps its format version (a version-1 run reads its records as such)
            rundir.write_marker(run_dir)
        runcheck.write_fingerprint(run_dir, fingerprint)
        runcheck.write_model_record(run_dir, cfg.model)
        cfg.save(run_dir / rundir.CONFIG)
        adapter_cfg["model_path"] = str(path)
        atomic_write_text(run_dir / rundir.ADAPTER_CONFIG, json.dumps(adapter_cfg, indent=2) + "\n")
        # Model and data are in; until the first step (which compiles) ends, the app shows this phase.
        rundir.write_status(run_dir, rundir.LOADING, resume=resume)
    return PreparedRun(cfg, run_dir, cluster, model, tokenizer, data, path, budget)


def load_with_adapters(model_spec: str | None, adapter_path: str | Path | None = None, dtype: str = "auto"):
    """Base model, optionally with a run's (or checkpoint's) adapters applied, ready for generation."""
    from mlx_lm.tuner.utils import load_adapters

    from .fuse import check_adapter_dir

    if adapter_path is not None:
        check_adapter_dir(adapter_path)  # a damaged or mismatched adapter named, before mlx-lm reads it
    model, tokenizer, _, _ = load_model(model_spec, dtype=dtype)
    if adapter_path is not None:
        load_adapters(model, str(adapter_path))
    model.eval()
    return model, tokenizer


def generate(model, tokenizer, messages, *, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0, stream: bool = False):
    """Chat completion for `messages` with mlx-lm's generator (greedy when temperature is 0).

    With stream=True, yields the text generated so far after each token. The text ends on a whole
    character: a multi-byte character cut by max_tokens is left out rather than shown as \ufffd.
    """
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    ensure_chat_template(tokenizer)
    prompt = render_prompt(tokenizer, messages)
    sampler = make_sampler(temp=temperature, top_p=top_p)
    mx.random.seed(seed)

    def pieces():
        text = ""
        for response in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens, sampler=sampler):
            text += response.text
            # Only whole characters: when max_tokens cuts a multi-byte character, mlx-lm's detokenizer
            # flushes its first bytes as "\ufffd" (�); the streaming segments before never end in one.
            yield text.rstrip("\ufffd")

    if stream:
        return pieces()
    text = ""
    for text in pieces():  # noqa: B007  (the last value is the whole answer)
        pass
    return text


@dataclass
class PairScore:
    """How a model ranks one preference pair: the numbers ORPO's odds-ratio term moves."""
    chosen_logps: float    # ℓ_w: mean log-probability per token of the chosen answer
    rejected_logps: float  # ℓ_l: the same for the rejected answer
    log_odds: float        # log(odds(y_w) / odds(y_l)); > 0: the model prefers the chosen answer


def score_pair(model, tokenizer, pair, cfg: TrainConfig | None = None) -> PairScore:
    """ℓ_w, ℓ_l and the log odds ratio of one `data.PreferencePair` under `model`, computed as
    the trainer's evaluation does (same template, truncation to cfg's lengths, same loss code)."""
    from .loss import batch_loss, orpo_loss

    cfg = cfg or TrainConfig()
    ensure_chat_template(tokenizer)
    encoded, _ = encode_pairs(tokenizer, [pair], max_length=cfg.max_length, max_prompt_length=cfg.prompt_budget,
                              min_response_length=cfg.min_response_length)
    if not encoded:
        raise ValueError(f"the pair does not fit --max-length {cfg.max_length}")
    parts = batch_loss(model, collate(encoded, pad_token_id(tokenizer), Widths.for_config(cfg)), cfg.prompt_in_nll)
    _, metrics = orpo_loss(parts, cfg.beta)
    mx.eval(metrics)
    return PairScore(metrics["logps/chosen"].item(), metrics["logps/rejected"].item(),
                     metrics["log_odds_chosen"].item())

