"""Fuse a run's LoRA/DoRA adapters into a dequantised copy of its base model.

mlx-lm's own `fuse()` re-quantises a quantised base after adding the update
(mlx-lm issue 1172): the small LoRA delta mostly falls below the 4-bit step
and disappears. Here every adapted layer is rebuilt as a plain `nn.Linear`
whose weight is computed in float32 (dequantised base + scale * B^T A^T, and
for DoRA the magnitude renormalisation), then cast to the requested dtype;
layers without adapters are dequantised too. The result is a float model that
any exporter can write, and that can be re-quantised afterwards on purpose.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from . import rundir
from .checkpoint import check_safetensors
from .rundir import ADAPTER_CONFIG, ADAPTERS

# A fixed chat prompt on which exports are compared with the MLX fused model.
REFERENCE_MESSAGES = [{"role": "user", "content": "Write one sentence about the sea, and count to five."}]

# Config keys that describe MLX quantisation; an exported float model has none.
QUANT_KEYS = ("quantization", "quantization_config")


@dataclass
class Fused:
    model: nn.Module
    tokenizer: object  # mlx_lm TokenizerWrapper
    config: dict  # the base's config.json, without quantisation keys
    base_path: Path  # local directory of the base model
    base_spec: str  # what the user (or the run) named the base
    adapter_dir: Path | None
    adapter_config: dict = field(default_factory=dict)
    dtype: str = "float32"
    fused_modules: int = 0


def read_json(path: Path) -> dict:
    """A JSON file's object, or {} where the file is missing."""
    return json.loads(path.read_text()) if path.is_file() else {}


def base_model_names(adapter_dir: str | Path) -> tuple[str | None, str | None]:
    """(model_path, model): the base an adapter directory (a run, one of its checkpoints, or an
    imported adapter) was trained on, as the local directory its run loaded and as the spec the user
    gave, from its adapter config, its run's, or its run's settings (rundir.read_config); None where
    none names it."""
    adapter_dir = Path(adapter_dir)
    run = rundir.run_of(adapter_dir)
    configs = [read_json(directory / ADAPTER_CONFIG) for directory in dict.fromkeys([adapter_dir, run])
               if directory is not None]
    model_path = next((c["model_path"] for c in configs if c.get("model_path")), None)
    spec = next((c["model"] for c in configs if c.get("model")), None)
    if spec is None and run is not None:
        spec = rundir.read_config(run)["model"]
    return model_path, spec


def run_model_spec(adapter_dir: str | Path) -> str | None:
    """The base model a run (or one of its checkpoints) was trained on: the local directory its run
    loaded while it still exists, else the spec the user gave."""
    model_path, spec = base_model_names(adapter_dir)
    return str(model_path) if model_path and Path(model_path).is_dir() else spec


def check_adapter_dir(adapter_dir: str | Path) -> Path:
    adapter_dir = Path(adapter_dir)
    missing = [n for n in (ADAPTERS, ADAPTER_CONFIG) if not (adapter_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{adapter_dir}: not an adapter directory (missing {', '.join(missing)}); pass a run directory "
            "or one of its checkpoints/step-N directories")
    header = check_safetensors(adapter_dir / ADAPTERS)  # a cut file: named, not a traceback
    check_adapter_config(adapter_dir / ADAPTER_CONFIG, header)
    return adapter_dir


def check_adapter_config(path: Path, header: dict) -> dict:
    """The adapter config at `path`, checked against the adapters' tensors (`header`: their
    safetensors header); ValueError naming the file and field otherwise: a `"rank": -5` beside
    rank-8 tensors would otherwise be exported to PEFT as `r: -5`."""
    def bad(detail: str) -> ValueError:
        return ValueError(f"{path}: {detail}; the adapter config does not match the adapters beside it "
                          "(restore it from a checkpoint's copy, e.g. checkpoints/step-N/adapter_config.json)")

    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: not a readable adapter config ({exc})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("lora_parameters"), dict):
        raise bad("no lora_parameters object")
    params = cfg["lora_parameters"]
    if cfg.get("fine_tune_type", "lora") not in ("lora", "dora"):
        raise bad(f"fine_tune_type {cfg.get('fine_tune_type')!r} is not lora or dora")
    rank, scale = params.get("rank"), params.get("scale")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise bad(f"rank {rank!r} is not a positive integer")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise bad(f"scale {scale!r} is not a finite number")
    dropout = params.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise bad(f"dropout {dropout!r} is not in [0, 1)")
    layers = cfg.get("num_layers", -1)
    if isinstance(layers, bool) or not isinstance(layers, int) or not (layers == -1 or layers >= 1):
        raise bad(f"num_layers {layers!r} is not -1 (all) or a positive integer")
    ranks = {tuple(v.get("shape", ()))[-1:] for k, v in header.items() if k.endswith(".lora_a")} \
        | {tuple(v.get("shape", ()))[:1] for k, v in header.items() if k.endswith(".lora_b")}
    if ranks != {(rank,)}:
        found = ", ".join(str(r[0]) for r in sorted(ranks) if r) or "none"
        raise bad(f"rank {rank}, but the adapters' tensors have rank {found}")
    if (cfg.get("fine_tune_type") == "dora") != any(k.endswith(".m") for k in header):
        raise bad(f"fine_tune_type {cfg.get('fine_tune_type', 'lora')!r} does not match the tensors "
                  "(DoRA adapters have magnitude vectors .m, LoRA ones none)")
    return cfg


def _dequantized(linear: nn.Module) -> mx.array:
    if isinstance(linear, nn.QuantizedLinear):
        return mx.dequantize(linear.weight, linear.scales, linear.biases, group_size=linear.group_size,
                             bits=linear.bits, mode=linear.mode).astype(mx.float32)
    return linear.weight.astype(mx.float32)


def fused_linear(layer: nn.Module, dtype: mx.Dtype) -> nn.Linear:
    """One LoRALinear/DoRALinear as a float nn.Linear, computed in float32."""
    weight = _dequantized(layer.linear)
    lora_a = layer.lora_a.astype(mx.float32)
    lora_b = layer.lora_b.astype(mx.float32)
    weight = weight + (layer.scale * lora_b.T) @ lora_a.T
    if "m" in layer:  # DoRA: rescale each output row to the learned magnitude
        weight = (layer.m.astype(mx.float32) / mx.linalg.norm(weight, axis=1))[:, None] * weight
    out_dims, in_dims = weight.shape
    has_bias = "bias" in layer.linear
    linear = nn.Linear(in_dims, out_dims, bias=has_bias)
    linear.weight = weight.astype(dtype)
    if has_bias:
        linear.bias = layer.linear.bias.astype(dtype)
    return linear


def fuse_adapters(model: nn.Module, dtype: mx.Dtype = mx.float32) -> int:
    """Replace every adapter layer by its fused float layer, in place; return how many."""
    from mlx_lm.tuner.dora import DoRALinear
    from mlx_lm.tuner.lora import LoRALinear

    count = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, (LoRALinear, DoRALinear)):
            new = fused_linear(module, dtype)
        elif hasattr(module, "fuse") and hasattr(module, "lora_a"):
            new = module.fuse(dequantize=True)  # e.g. LoRASwitchLinear, LoRAEmbedding
        else:
            continue
        model.update_modules(tree_unflatten([(name, new)]))
        mx.eval(new.parameters())  # one layer at a time keeps peak memory near one copy
        count += 1
    return count


def load_fused(model: str | None = None, adapters: str | Path | None = None, *, dtype: str = "float32",
               allow_changed_model: bool = False, log=lambda line: None) -> Fused:
    """Load the base (alias, directory, .gguf or Hub id), apply and fuse the adapters.

    `model` defaults to the run's base. With `adapters=None` the base itself
    is returned, dequantised (useful to convert a model between formats).
    The adapters of a run are fused only into the base its model.json records (runcheck.check_base_model),
    unless `allow_changed_model` (logged to `log`).
    """
    from mlx_lm.tuner.utils import load_adapters
    from mlx_lm.utils import dequantize_model

    from .models import load_model

    adapter_dir = check_adapter_dir(adapters) if adapters is not None else None
    spec = model or (run_model_spec(adapter_dir) if adapter_dir else None)
    if spec is None:
        raise ValueError("no --model given and the adapter directory does not name its base model")
    if adapter_dir is not None and (run := rundir.run_of(adapter_dir)) is not None:
        from .runcheck import check_base_model

        check_base_model(run, spec, allowed=allow_changed_model, log=log, doing="export")
    target = getattr(mx, dtype)
    # Keep the checkpoint's dtype on load (for a quantised base: its scales);
    # the fused and dequantised layers are computed in float32 and cast after.
    base, tokenizer, config, path = load_model(spec, dtype=dtype)
    adapter_cfg = {}
    count = 0
    if adapter_dir is not None:
        adapter_cfg = read_json(adapter_dir / ADAPTER_CONFIG)
        load_adapters(base, str(adapter_dir))
        count = fuse_adapters(base, target)
    base = dequantize_model(base)
    base.set_dtype(target)
    base.eval()
    mx.eval(base.parameters())
    config = {k: v for k, v in config.items() if k not in QUANT_KEYS}
    return Fused(base, tokenizer, config, Path(path), spec, adapter_dir, adapter_cfg, dtype, count)


def reference_tokens(tokenizer) -> list[int]:
    """Token ids of the fixed comparison prompt (chat template applied)."""
    from .tokenize import ensure_chat_template, render_prompt

    ensure_chat_template(tokenizer)
    prompt = render_prompt(tokenizer, REFERENCE_MESSAGES)
    return list(tokenizer.encode(prompt, add_special_tokens=False))


def logits(model: nn.Module, tokens: list[int]) -> mx.array:
    """float32 logits (len(tokens), vocab) of one sequence."""
    out = model(mx.array(tokens)[None])
    return out[0].astype(mx.float32)


def logit_error(reference: mx.array, other: mx.array) -> dict:
    """Max absolute and relative (to the reference's max |logit|) difference, and top-1 agreement."""
    diff = mx.abs(reference - other)
    max_abs = diff.max().item()
    scale = mx.abs(reference).max().item()
    agree = (reference.argmax(-1) == other.argmax(-1)).astype(mx.float32).mean().item()
    return {"max_abs": max_abs, "max_rel": max_abs / scale if scale else 0.0, "top1_agreement": agree}
