"""Export a trained run: fused Hugging Face or MLX weights, a GGUF for llama.cpp / Ollama, or a PEFT adapter.

    python -m mlx_orpo.export --adapters runs/orpo-X --format hf --out exports/hf
    python -m mlx_orpo.export --adapters runs/orpo-X --format gguf --gguf-type q8_0 --out exports/model.gguf
    python -m mlx_orpo.export --adapters runs/orpo-X --format peft --out exports/peft
    python -m mlx_orpo.export --adapters runs/orpo-X --format mlx --bits 4 --out exports/mlx-4bit
    python -m mlx_orpo.export --format import-peft --adapters path/to/peft_adapter --out runs/imported

The same as a Python API:

    result = export(adapters="runs/orpo-X", format="gguf", out="exports/model.gguf", progress=print)
    print(result.summary())

Every output is written under a temporary name in the destination's folder
and renamed into place when complete; an existing output is only replaced with
force=True; free disk space is checked first.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig
from .output import (
    MARGIN,
    ExportResult,
    check_apart,
    check_destination,
    output_bytes,
    output_files,
    tensor_shapes,
    tokenizer_bytes,
    write_dir_atomically,
)

FORMATS = ("hf", "mlx", "gguf", "peft", "import-peft")
DTYPES = {"f16": "float16", "bf16": "bfloat16", "f32": "float32",
          "float16": "float16", "bfloat16": "bfloat16", "float32": "float32"}


# ---- fused model directories (hf, mlx) ---------------------------------------------------------------------

def write_model_dir(fused, directory: Path, *, config: dict, weights_format: str) -> None:
    """safetensors shards (+ index), config.json, tokenizer files with the chat template."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import make_shards

    weights = dict(tree_flatten(fused.model.parameters()))
    shards = make_shards(weights, max_file_size_gb=5)
    name = "model-{:05d}-of-{:05d}.safetensors" if len(shards) > 1 else "model.safetensors"
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        shard_name = name.format(i, len(shards))
        mx.save_safetensors(str(directory / shard_name), shard, metadata={"format": weights_format})
        weight_map.update({k: shard_name for k in shard})
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(v.nbytes for v in weights.values())},
                 "weight_map": dict(sorted(weight_map.items()))}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (directory / "config.json").write_text(json.dumps(dict(sorted(config.items())), indent=2) + "\n")
    fused.tokenizer.save_pretrained(str(directory))
    if (fused.base_path / "generation_config.json").is_file():
        shutil.copy(fused.base_path / "generation_config.json", directory / "generation_config.json")


def _tensors(model) -> list[tuple[int, int]]:
    from mlx.utils import tree_flatten
    return tensor_shapes(v for _, v in tree_flatten(model.parameters()))


def _hf_config(fused, dtype: str) -> dict:
    config = dict(fused.config)
    config["torch_dtype"] = dtype  # transformers 4 reads torch_dtype, 5 reads dtype
    config["dtype"] = dtype
    return config


def export_hf(fused, out: Path, *, force: bool = False) -> ExportResult:
    needed = output_bytes("hf", _tensors(fused.model), dtype=fused.dtype,
                          other_files=tokenizer_bytes(fused.base_path)) + MARGIN
    write_dir_atomically(out, force, needed, lambda d: write_model_dir(
        fused, d, config=_hf_config(fused, fused.dtype), weights_format="pt"))
    usage = ("python -c \"from transformers import AutoModelForCausalLM, AutoTokenizer; "
             f"m = AutoModelForCausalLM.from_pretrained('{out}'); t = AutoTokenizer.from_pretrained('{out}')\"")
    return ExportResult("hf", out, output_files(out), fused.dtype, usage)


def export_mlx(fused, out: Path, *, bits: int | None = None, group_size: int = TrainConfig.group_size,
               force: bool = False) -> ExportResult:
    """An mlx-lm model directory; with `bits`, re-quantised after fusing and the logit error measured."""
    from mlx_lm.utils import quantize_model

    from .fuse import logit_error, logits, reference_tokens

    config = _hf_config(fused, fused.dtype)
    dtype, error = fused.dtype, None
    needed = output_bytes("mlx", _tensors(fused.model), dtype=fused.dtype, bits=bits, group_size=group_size,
                          other_files=tokenizer_bytes(fused.base_path)) + MARGIN
    if bits:
        tokens = reference_tokens(fused.tokenizer)
        reference = logits(fused.model, tokens)
        fused.model, config = quantize_model(fused.model, config, group_size=group_size, bits=bits)
        error = logit_error(reference, logits(fused.model, tokens))
        error["computed_in"] = fused.dtype
        dtype = f"{bits}-bit affine, group size {group_size} ({fused.dtype} scales)"
    write_dir_atomically(out, force, needed, lambda d: write_model_dir(fused, d, config=config,
                                                                              weights_format="mlx"))
    usage = f"mlx_lm.generate --model {out} --prompt \"Hello\""
    result = ExportResult("mlx", out, output_files(out), dtype, usage, logit_error=error)
    if error:
        result.notes.append(f"logit error vs the unquantised fused model ({fused.dtype} compute, fixed chat "
                            f"prompt): max abs {error['max_abs']:.4g}, max rel {error['max_rel']:.3g}, "
                            f"top-1 agreement {error['top1_agreement']:.1%}")
    return result


# ---- the API -----------------------------------------------------------------------------------------------

def _push(result: ExportResult, repo: str, log: Callable[[str], None]) -> None:
    """Upload the export to the Hugging Face Hub (needs a token; not exercised offline)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id=repo, exist_ok=True)
    if result.out.is_dir():
        api.upload_folder(folder_path=str(result.out), repo_id=repo)
    else:
        for path, _ in result.files:
            api.upload_file(path_or_fileobj=str(path), path_in_repo=path.name, repo_id=repo)
    log(f"uploaded to https://huggingface.co/{repo}")
    result.notes.append(f"pushed to https://huggingface.co/{repo}")


def export(model: str | None = None, adapters: str | Path | None = None, format: str = "hf",
           out: str | Path | None = None, *, dtype: str = "float16", gguf_type: str = "f16",
           bits: int | None = None, group_size: int = TrainConfig.group_size, force: bool = False,
           push_to_hub: str | None = None, progress: Callable[[str], None] | None = None,
           allow_changed_model: bool = False) -> ExportResult:
    """Export `adapters` (a run directory or checkpoint) fused into `model` (default: the run's base).

    format: hf | mlx | gguf (fused weights), peft (the adapter alone, PEFT layout),
    import-peft (the reverse: a PEFT LoRA directory -> an mlx-orpo adapter directory).
    `progress` receives one line per stage. Returns what was written and how to use it.
    A run's adapters are fused only into the base model the run recorded (model.json), unless
    `allow_changed_model` (logged).
    """
    log = progress or (lambda message: None)
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if out is None:
        raise ValueError("an output path (--out) is required")
    out = Path(out).expanduser().absolute()
    check_apart(out, adapters, "--adapters")
    check_apart(out, model, "--model")
    if adapters is not None and format != "import-peft":
        check_not_training(Path(adapters))
        check_run_version(Path(adapters))
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose f16, bf16 or f32")
    dtype = DTYPES[dtype]
    if bits and format != "mlx":
        raise ValueError("--bits re-quantises MLX exports only (use --gguf-type for GGUF)")
    if format in ("peft", "import-peft"):
        from . import peft_io

        if adapters is None:
            raise ValueError(f"--format {format} needs --adapters")
        check_destination(out, force)
        log(f"{'converting' if format == 'peft' else 'importing'} adapter {adapters}")
        if format == "peft":
            result = peft_io.export_peft(Path(adapters), out, model=model, force=force)
        else:
            result = peft_io.import_peft(Path(adapters), out, model=model, force=force)
    else:
        if format == "gguf":
            from .gguf_export import check_gguf_type
            check_gguf_type(gguf_type)
            check_destination(out, force)
            # f16/q8_0 come from 16-bit weights; fusing happens in float32 per layer regardless.
            dtype = "float32" if gguf_type == "f32" else "float16"
        else:
            check_destination(out, force)
        from .fuse import load_fused

        log(f"loading {model or 'the run base'} and fusing {adapters or 'no adapters'} ({dtype})")
        fused = load_fused(model, adapters, dtype=dtype, allow_changed_model=allow_changed_model, log=log)
        log(f"merged {fused.fused_modules} adapter modules into an in-memory copy of {fused.base_spec} "
            f"(the base on disk is not changed); writing {format} to {out}")
        if format == "hf":
            result = export_hf(fused, out, force=force)
        elif format == "mlx":
            result = export_mlx(fused, out, bits=bits, group_size=group_size, force=force)
        else:
            from .gguf_export import export_gguf
            result = export_gguf(fused, out, gguf_type=gguf_type, force=force)
        result.base, result.fused_modules = fused.base_spec, fused.fused_modules
    if push_to_hub:
        _push(result, push_to_hub, log)
    log(result.summary())
    return result


@dataclass(frozen=True)
class SizeEstimate:
    """What an export of one format would write, before it is made, and the room for it."""
    format: str
    bytes: int  # the output's estimated size
    free: int   # free bytes on the disk it would go to

    @property
    def fits(self) -> bool:
        """Whether the export's own disk check would let it start (the estimate and a margin are free)."""
        return self.bytes + MARGIN <= self.free


# safetensors dtype names -> ours (adapters are saved in one of these)
_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def estimate_sizes(adapters: str | Path, out_dir: str | Path, *, model: str | None = None, dtype: str = "f16",
                   gguf_type: str = "f16", bits: int | None = None,
                   group_size: int = TrainConfig.group_size) -> dict[str, SizeEstimate]:
    """{format: SizeEstimate} for hf, mlx, gguf and peft exports of `adapters` into `out_dir`, with the
    options `export` takes, without loading any weights: the fused model's tensors come from the base
    model's config.json (predict.ModelShape), the adapter's from its safetensors header, and both are
    counted by output.output_bytes, as each export's own disk check counts them."""
    from . import models, rundir
    from .checkpoint import check_safetensors
    from .fuse import check_adapter_dir, run_model_spec
    from .predict import ModelShape, load_model_config

    adapter_dir = check_adapter_dir(adapters)
    base = model or run_model_spec(adapter_dir)
    resolved = Path(models.resolve_model(base))
    fused = ModelShape.from_config(load_model_config(base)).tensors()
    files = tokenizer_bytes(resolved) if resolved.is_dir() else 0
    header = [v for k, v in check_safetensors(adapter_dir / rundir.ADAPTERS).items() if k != "__metadata__"]
    adapter = [(math.prod(v["shape"]), len(v["shape"])) for v in header]
    dtype = DTYPES[dtype]
    sizes = {
        "hf": output_bytes("hf", fused, dtype=dtype, other_files=files),
        "mlx": output_bytes("mlx", fused, dtype=dtype, bits=bits, group_size=group_size, other_files=files),
        "gguf": output_bytes("gguf", fused, gguf_type=gguf_type, other_files=files),
        "peft": output_bytes("peft", adapter, dtype=_SAFETENSORS_DTYPES.get(header[0]["dtype"], "float32")),
    }
    target = Path(out_dir).expanduser().absolute()
    while not target.exists():  # the folder the export would create lies on its nearest existing parent's disk
        target = target.parent
    free = shutil.disk_usage(target).free
    return {fmt: SizeEstimate(fmt, size, free) for fmt, size in sizes.items()}


def check_not_training(adapters: Path) -> None:
    """Refuse a run directory that a trainer holds: its adapters are the newest checkpoint's, not the
    finished run's (a checkpoint directory of it is whole, and may be exported)."""
    from .runlock import holder

    if (pid := holder(adapters)) is not None:
        raise ValueError(f"--adapters {adapters} is still being trained (pid {pid}); export it once the run has "
                         f"finished, or export one of its checkpoints now: --adapters {adapters}/checkpoints/step-N")


def check_run_version(adapters: Path) -> None:
    """Refuse the adapters of a run whose format version this program does not know (a newer one)."""
    from . import rundir

    if (run := rundir.run_of(adapters)) is not None:
        rundir.run_format(run)  # CorruptFileError naming both versions


# ---- CLI ---------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mlx_orpo.export",
        description="Export a trained run: fuse its LoRA/DoRA adapters into a dequantised copy of the base and "
                    "write Hugging Face safetensors, an MLX model, a GGUF for llama.cpp/Ollama, or the adapter "
                    "alone in PEFT's layout. import-peft converts a PEFT LoRA adapter into an mlx-orpo one.")
    p.add_argument("--model", help="Base model (alias, directory, .gguf, Hub id). Default: the run's base model.")
    p.add_argument("--adapters", help="Run directory or checkpoints/step-N directory (for import-peft: the "
                                      "PEFT adapter directory). Omit to convert the base alone.")
    p.add_argument("--format", required=True, choices=FORMATS, help="What to write.")
    p.add_argument("--out", required=True, help="Output directory (hf, mlx, peft, import-peft) or .gguf file.")
    p.add_argument("--dtype", default="f16", choices=("f16", "bf16", "f32"), help="Weight dtype for hf/mlx.")
    p.add_argument("--gguf-type", default="f16", choices=("f16", "q8_0", "f32"),
                   help="GGUF tensor type of the 2-D weights (norms stay f32).")
    p.add_argument("--bits", type=int, choices=(4, 8), help="mlx: re-quantise after fusing; reports the logit "
                                                             "error against the unquantised fused model.")
    p.add_argument("--group-size", type=int, default=TrainConfig.group_size, help="Quantisation group size for --bits.")
    p.add_argument("--force", action="store_true", help="Replace an existing output.")
    p.add_argument("--push-to-hub", metavar="REPO", help="Upload the export to this Hugging Face repo.")
    p.add_argument("--allow-changed-model", action="store_true",
                   help="Fuse a run's adapters into its base model even though the model's files differ from "
                        "those the run trained on (logged).")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        export(args.model, args.adapters, args.format, args.out, dtype=args.dtype, gguf_type=args.gguf_type,
               bits=args.bits, group_size=args.group_size, force=args.force, push_to_hub=args.push_to_hub,
               progress=print, allow_changed_model=args.allow_changed_model)
    except (FileExistsError, FileNotFoundError, OSError, ValueError, RuntimeError) as exc:
        from .files import as_write_error, describe_os_error

        if isinstance(exc, RuntimeError):  # a writer that does not go through files.atomic_output
            exc = as_write_error(Path(args.out), exc)
            if exc is None:
                raise
        shown = describe_os_error(exc) if isinstance(exc, OSError) and exc.errno is not None else exc
        print(f"error: {shown}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
