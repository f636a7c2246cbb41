"""The Python API behind the CLI, the app and the benchmarks.

    model, tokenizer, config, path = load_model("smollm2-135m")
    plan = plan_run(TrainConfig(iters=20))          # what the run will train with, and its memory
    run_dir = run_training(TrainConfig(iters=20), log=print)
    print(generate(model, tokenizer, [{"role": "user", "content": "Hi"}]))
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from . import blas, runcheck, rundir
from .batching import Widths, collate
from .budget import format_bytes, memory_limit, resolve, wired_limit
from .config import TrainConfig
from .data import data_source, load_splits
from .distributed import Cluster
from .files import atomic_write_text
from .fit import MemoryPlan, fit_to_memory
from .models import ModelNotFoundError, attach_adapters, load_model, on_gpu, resolve_model
from .predict import BatchShapes, ModelShape, data_shapes, load_model_config, predict_peak, shared_prompt
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

    @property
    def longest_pair(self) -> int:
        """Tokens of the longest pair (prompt + longer answer), training and held-out."""
        return max(p.length for p in self.train + self.eval)

    def described(self) -> str:
        return (f"{self.report.source}: {len(self.train)} training and {len(self.eval)} held-out pairs, the "
                f"longest {self.longest_pair} tokens")


def read_data(cfg: TrainConfig):
    """Read and validate the preference pairs: (train, eval, LoadReport). Fails fast, before any model loads."""
    return load_splits(data_source(cfg), eval_source=cfg.eval_data, format=cfg.format,
                       eval_fraction=cfg.eval_fraction, seed=cfg.seed, skip_bad_rows=cfg.skip_bad_rows,
                       system=cfg.system, columns=cfg.columns)


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


# What a Hub model's tokenizer needs (mlx-lm's tokenizer loader reads these), without its weights.
TOKENIZER_FILES = ["*.json", "*.model", "*.tiktoken", "*.txt", "*.jinja", "*.py"]


def load_tokenizer(spec: str | None, model_config: dict | None = None):
    """The model's tokenizer as models.load_model gives it (mlx-lm's, with the model's end-of-sequence
    ids), without loading the weights. `model_config`: its config.json when already read."""
    from mlx_lm.utils import load_config
    from mlx_lm.utils import load_tokenizer as mlx_lm_tokenizer

    path = Path(resolve_model(spec))
    if not path.exists():  # a Hub id: its tokenizer and configs alone, so the plan comes before the weights
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(str(path), allow_patterns=TOKENIZER_FILES))
        except Exception as exc:  # offline, unknown repo, gated: the Hub's own words say which
            raise ModelNotFoundError(f"{spec}: could not fetch {path}'s tokenizer from the Hugging Face Hub: "
                                     f"{exc}") from None
    if path.is_dir():
        model_config = load_config(path)  # with generation_config.json's end-of-sequence ids, as mlx-lm reads them
    return mlx_lm_tokenizer(path, eos_token_ids=(model_config or {}).get("eos_token_id"))


# A --max-length at least this many times the data's longest pair is said to be far above it.
FAR_ABOVE = 2


@dataclass
class RunPlan:
    """What a run trains with, decided before its weights load (`plan_run`)."""
    cfg: TrainConfig       # the settings the run trains with (the fit's, for a new run with a budget)
    memory: MemoryPlan     # the budget, the predicted peak on the data's batches, what the fit changed
    data: PreparedData     # the pairs, tokenized and fitted to the length limits
    tokenizer: object
    lines: list[str]       # what the run logs about it, in order

    @property
    def planned_for(self) -> str:
        """Which data the prediction is for, in words."""
        return self.data.described()


def plan_run(cfg: TrainConfig, *, explicit: frozenset[str] | set[str] = frozenset(), splits=None,
             cluster: Cluster | None = None, resume: bool = False, tokenizer=None) -> RunPlan:
    """The plan of a run from its settings and its data, before any weights load: the data read (unless
    `splits`, read_data's, are given) and tokenized with the model's tokenizer (`tokenizer`, or loaded
    alone), the memory budget resolved (rank 0's on every rank of `cluster`), and the run fitted to it
    for the batches this data makes (predict.data_shapes: the trainer's widths, padding, shared-prompt
    layout and step grouping, and its evaluation batches). The one planner behind a run's setup
    (`Run.setup`), `python -m mlx_orpo.plan --data` and the app's preview, so a preview is what Start
    runs. cfg itself is left as it is.

    `explicit`: the settings the user gave (the fit keeps them); `resume`: keep cfg's settings (a resumed
    run is not refitted). Raises DoesNotFit (a ValueError whose message says what would fit; its
    `advice` holds the rest) when nothing allowed fits, and read_data's errors for bad data."""
    cluster = cluster or Cluster()
    budget = resolve(cfg.memory_budget, gpu=on_gpu(), cluster=cluster)
    try:
        model_config = load_model_config(cfg.model)
    except (ValueError, OSError, KeyError):
        model_config = None
    tokenizer = tokenizer or load_tokenizer(cfg.model, model_config)
    lines = [] if ensure_chat_template(tokenizer) else [
        "tokenizer has no chat template; using the fallback '### Role:' template (see README)"]
    data = prepare_data(cfg, tokenizer, splits)
    shapes = None
    if model_config is not None:
        shared = shared_prompt(ModelShape.from_config(model_config), model_config)
        made = {}  # plans that batch alike (other --lora-layers or --bits) share their shapes

        def shapes(option: TrainConfig) -> BatchShapes | None:
            if (option.max_length, option.prompt_budget) != (cfg.max_length, cfg.prompt_budget):
                return None  # tokenized for other lengths: planned at the option's ceiling
            key = (option.batch_size, option.grad_accum, option.pad_to, option.pad_multiple, option.eval_max_pairs)
            if key not in made:
                made[key] = data_shapes(option, data.train, data.eval, gpu=on_gpu(), shared=shared,
                                        world=cluster.size)
            return made[key]

    memory = fit_to_memory(cfg, budget, model_config=model_config, explicit=explicit, resume=resume, shapes=shapes)
    lines += memory.lines
    if memory.prediction is not None:
        lines.append(f"memory: planned for {data.described()}")
        if cfg.max_length >= FAR_ABOVE * data.longest_pair:
            lines.append(f"memory: --max-length {cfg.max_length} is far above the data's longest pair "
                         f"({data.longest_pair} tokens); data that filled it would peak at "
                         f"{format_bytes(predict_peak(memory.cfg, model_config).total)}")
    if note := step_span_note(memory.cfg, len(data.train), cluster.size):
        lines.append(note)
    return RunPlan(memory.cfg, memory, data, tokenizer, lines)


def step_span_note(cfg: TrainConfig, train_pairs: int, world: int = 1) -> str | None:
    """A warning when one optimizer step asks for more pairs than the data holds: such a step takes
    one epoch (feeding.step_order groups a step's pairs within an epoch), so the run has few steps,
    and nothing is reported or saved within one."""
    asked = cfg.batch_size * world * cfg.grad_accum
    if asked <= train_pairs:
        return None
    steps = total_steps(cfg, train_pairs, world)
    return (f"warning: --grad-accum {cfg.grad_accum} x --batch-size {cfg.batch_size}"
            + (f" x {world} processes" if world > 1 else "")
            + f" asks for {asked} pairs per optimizer step, more than the {train_pairs} training pairs: each "
            f"step takes one epoch ({train_pairs} pairs, {math.ceil(train_pairs / (cfg.batch_size * world))} "
            f"micro-batches), which leaves {steps} optimizer step{'s' if steps != 1 else ''}; nothing is "
            "reported or saved within a step")


class Run:
    """One training run, in the order of torchtune's recipes: `setup` (the checks, the run's lock, its
    config, the tokenizer and data, the memory plan, then the weights and adapters), `train` (under the
    run's memory limits), `save` (its last status and its memory record). `run_training` and
    scripts/reproduce_paper.py run this one sequence:

        with Run(cfg, log=print) as run:
            run.setup()
            run.train()
            run.save()

    Under `mlx.launch` every rank runs it; rank 0 alone logs and writes files. A run that fails before
    writing its files removes the folders it created.
    """

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, explicit: frozenset[str] | set[str] = frozenset(),
                 allow_changed_data: bool = False, allow_changed_model: bool = False,
                 log: Callable[[str], None] = print, progress: bool = True,
                 on_record: Callable[[dict], None] | None = None, splits=None):
        self.cfg = cfg.validate()
        self.cluster = Cluster.init()
        main = self.cluster.is_main
        self.log = log if main else (lambda _: None)
        self.progress, self.on_record = progress and main, on_record if main else None
        self.resume, self.explicit, self.splits = resume, explicit, splits
        self.allow_changed_data, self.allow_changed_model = allow_changed_data, allow_changed_model
        self.run_dir = Path(cfg.output_dir) if cfg.output_dir else default_run_dir(self.cluster)
        self.plan: RunPlan | None = None
        self.model = None
        self.model_path: Path | None = None
        self.state = None
        self.measured_peak: int | None = None
        self._stack = contextlib.ExitStack()
        self._created: list[Path] = []

    def __enter__(self) -> Run:
        return self

    def __exit__(self, failed, *_) -> bool:
        self._stack.close()  # the lock
        if failed is not None and self._created and self.cluster.is_main:
            _remove_if_only_lock(self.run_dir, self._created)
        return False

    @property
    def data(self) -> PreparedData:
        return self.plan.data

    @property
    def tokenizer(self):
        return self.plan.tokenizer

    @property
    def pad_id(self) -> int:
        return pad_token_id(self.plan.tokenizer)

    def setup(self) -> Run:
        """Check the run (nothing is written before), take its lock, plan it, load the weights and attach
        the adapters, and write the run's own files (rank 0)."""
        cfg, log = self.cfg, self.log
        fingerprint = self._check()
        # The folders this run creates (the run directory and any missing parents, such as runs/).
        self._created = [p for p in [self.run_dir, *self.run_dir.parents] if not p.exists()]
        if self.cluster.is_main:  # one writer per run, from the "already a run here?" check to the end
            self._stack.enter_context(RunLock(self.run_dir))
            # Checked before the lock; what another process could have changed since is the folder.
            runcheck.check_output_dir(self.run_dir, cfg.model, resume=self.resume)
        if self.resume:
            runcheck.check_same_run(cfg, self.run_dir)
        cfg.output_dir = str(self.run_dir)
        log(f"BLAS: {blas.describe()}; MLX device: {mx.default_device()}"
            + (f"; data-parallel over {self.cluster.size} processes" if self.cluster.size > 1 else ""))
        self.plan = plan_run(cfg, explicit=self.explicit, splits=self.splits, cluster=self.cluster,
                             resume=self.resume)
        for change in self.plan.memory.changes:  # the caller's cfg is the run's: it trains with the fit's
            setattr(cfg, change.name, change.after)
        for line in self.plan.lines:
            log(line)
        self._log_data()
        mx.random.seed(cfg.seed)
        self.model, _, _, self.model_path = load_model(cfg.model, bits=cfg.bits, group_size=cfg.group_size,
                                                       dtype=cfg.dtype)
        log(f"model: {cfg.model} ({self.model_path})")
        adapter_cfg = attach_adapters(self.model, cfg)
        trainable = sum(v.size for _, v in tree_flatten(self.model.trainable_parameters()))
        log(f"adapters: {adapter_cfg['fine_tune_type']} r={cfg.lora_rank} alpha={cfg.lora_alpha} on "
            f"{len(adapter_cfg['lora_parameters']['keys'])} modules per block; {trainable / 1e6:.2f}M trainable")
        # Resolved here, so a resumed run pads (and so orders its batches) as it did, wherever it resumes.
        widths = Widths.for_config(cfg)
        cfg.pad_to, cfg.pad_multiple = ("pow2" if widths.pow2 else "multiple"), widths.multiple
        if self.cluster.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not self.resume:  # a resumed run keeps its format version (a version-1 run reads its records as such)
                rundir.write_marker(self.run_dir)
            runcheck.write_fingerprint(self.run_dir, fingerprint)
            runcheck.write_model_record(self.run_dir, cfg.model)
            cfg.save(self.run_dir / rundir.CONFIG)
            adapter_cfg["model_path"] = str(self.model_path)
            atomic_write_text(self.run_dir / rundir.ADAPTER_CONFIG, json.dumps(adapter_cfg, indent=2) + "\n")
            # Model and data are in; until the first step (which compiles) ends, the app shows this phase.
            rundir.write_status(self.run_dir, rundir.LOADING, resume=self.resume)
        return self

    def _check(self) -> dict:
        """runcheck.check_run before anything is written (the output folder, a resume's identity, its
        data); any rank's refusal stops every rank. Returns the data's fingerprint to record."""
        self.splits = self.splits or read_data(self.cfg)
        refusal, fingerprint = None, None
        try:
            fingerprint = runcheck.check_run(self.cfg, self.run_dir, self.splits, resume=self.resume,
                                             allow_changed_data=self.allow_changed_data,
                                             allow_changed_model=self.allow_changed_model, log=self.log,
                                             main=self.cluster.is_main)
        except (ValueError, OSError) as exc:
            refusal = exc
        if self.cluster.size > 1 and self.cluster.sum(mx.array(int(refusal is not None))).item() and refusal is None:
            raise runcheck.RunCheckError(f"another rank refused the run in {self.run_dir} (its error says why)")
        if refusal is not None:
            raise refusal
        return fingerprint

    def _log_data(self) -> None:
        data, cfg = self.plan.data, self.cfg
        self.log(f"data: {data.report.source} [{data.report.format}] {len(data.train)} train / {len(data.eval)} eval "
                 f"pairs; truncated {data.train_stats.truncated + data.eval_stats.truncated}, dropped "
                 f"{data.train_stats.dropped + data.eval_stats.dropped} (too long for --max-length {cfg.max_length})"
                 + (f"; skipped {len(data.report.skipped)} bad rows" if data.report.skipped else ""))
        if data.report.ignored:
            self.log(f"data: not read: {'; '.join(data.report.ignored)}")
        if data.report.duplicates:
            self.log(f"warning: {data.report.source}: {data.report.duplicates} duplicate pairs (same prompt, chosen "
                     f"and rejected), e.g. {data.report.duplicate_example}; each copy is trained on")

    def train(self, *, eval_pairs: list[EncodedPair] | None = None,
              on_record: Callable[[dict], None] | None = None):
        """Train (trainer.train) under the run's memory limits: MLX's limit at the budget, and on Metal
        the memory the run needs wired. Returns the final loop state. `eval_pairs` replaces the run's
        held-out pairs (a caller that evaluates on its own passes []); `on_record`, the run's."""
        memory = self.plan.memory
        with memory_limit(memory.budget, self.log), \
                wired_limit(memory.prediction and memory.prediction.total, memory.budget, self.log):
            mx.reset_peak_memory()  # the run's measured peak: training and evaluation, with the weights resident
            self.state = train(self.model, self.data.train, self.data.eval if eval_pairs is None else eval_pairs,
                               self.cfg, self.run_dir, pad_id=self.pad_id, resume=self.resume,
                               on_record=on_record or self.on_record, log=self.log, progress=self.progress,
                               cluster=self.cluster)
            self.measured_peak = mx.get_peak_memory()
        return self.state

    def save(self) -> None:
        """The run's closing files (rank 0): its predicted and measured peak (rundir.MEMORY, one record
        per process that trained it) and, when every step is done, the finished status."""
        if not self.cluster.is_main or self.state is None:
            return
        prediction, budget = self.plan.memory.prediction, self.plan.memory.budget
        rundir.append_memory_record(self.run_dir, rundir.MemoryRecord(
            self.state.step, prediction and prediction.total, self.measured_peak, budget and budget.bytes,
            self.plan.planned_for, str(mx.default_device())))
        steps = total_steps(self.cfg, len(self.data.train), self.cluster.size)
        if self.state.step >= steps:
            rundir.write_status(self.run_dir, rundir.FINISHED, step=self.state.step, total_steps=self.state.step)


def run_training(cfg: TrainConfig, *, resume: bool = False, on_record: Callable[[dict], None] | None = None,
                 log: Callable[[str], None] = print, progress: bool = True,
                 allow_changed_data: bool = False, allow_changed_model: bool = False,
                 explicit: frozenset[str] | set[str] = frozenset()) -> Path:
    """Set up, train and save the run cfg names (`Run`). Returns the run directory.

    A new run is planned for its data's batches and fitted to its --memory-budget (`plan_run`;
    `explicit`: the settings the user gave, which stay as given) before its weights load, and the budget
    bounds MLX's memory while it trains. A run stopped by SIGTERM/SIGINT returns too, with its status
    "stopped" (rundir.read_status): `stopped(run_dir, since)`. `allow_changed_data`, `allow_changed_model`:
    resume even though the data or the base model differs from the run's (logged).
    """
    with Run(cfg, resume=resume, explicit=explicit, allow_changed_data=allow_changed_data,
             allow_changed_model=allow_changed_model, log=log, progress=progress, on_record=on_record) as run:
        run.setup()
        run.train()
        run.save()
    return run.run_dir


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

