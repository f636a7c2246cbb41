"""Convert adapters between mlx-lm's layout (what mlx-orpo trains) and PEFT's.

mlx-lm stores, per adapted linear layer `X` (e.g. model.layers.3.self_attn.q_proj):
    X.lora_a (in, r), X.lora_b (r, out), for DoRA also X.m (out,)
and applies  y = W x + scale * (x @ lora_a) @ lora_b  to the last `num_layers` blocks.
PEFT stores  base_model.model.X.lora_A.weight (r, in), ...lora_B.weight (out, r),
DoRA's ...lora_magnitude_vector (out,), and scales by lora_alpha / r
(lora_alpha / sqrt(r) with use_rslora). So A = lora_a^T, B = lora_b^T,
lora_alpha = scale * r, and DoRA's magnitude is the same vector.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import mlx.core as mx

from .output import MARGIN, ExportResult, dtype_name, output_bytes, output_files, tensor_shapes, write_dir_atomically
from .rundir import ADAPTER_CONFIG, ADAPTERS

_PEFT_PREFIX = "base_model.model."
_LAYER = re.compile(r"^(?P<head>.*\.layers)\.(?P<index>\d+)\.(?P<key>.+)$")
_MLX_TO_PEFT = {"lora_a": "lora_A.weight", "lora_b": "lora_B.weight", "m": "lora_magnitude_vector"}
_PEFT_TO_MLX = {v: k for k, v in _MLX_TO_PEFT.items()}


class AdapterFormatError(ValueError):
    pass


def _peft_base_name(adapter_dir: Path, model: str | None) -> str:
    """What PEFT's base_model_name_or_path should say: a Hub id where we know one."""
    from .fuse import base_model_names
    from .models import MODEL_ALIASES

    model_path, spec = base_model_names(adapter_dir)
    spec = model or spec or model_path or ""
    return MODEL_ALIASES.get(spec, spec)


def mlx_to_peft(weights: dict, adapter_cfg: dict, base_name: str) -> tuple[dict, dict]:
    """(PEFT state dict, PEFT adapter_config) from an mlx-lm adapter."""
    kind = adapter_cfg.get("fine_tune_type", "lora")
    if kind not in ("lora", "dora"):
        raise AdapterFormatError(f"fine_tune_type {kind!r} has no PEFT adapter form (only lora and dora)")
    params = adapter_cfg["lora_parameters"]
    rank, scale = int(params["rank"]), float(params["scale"])
    tensors, targets, layers = {}, set(), set()
    for name, value in weights.items():
        module, leaf = name.rsplit(".", 1)
        if leaf not in _MLX_TO_PEFT:
            raise AdapterFormatError(f"unexpected adapter tensor {name!r}")
        tensors[f"{_PEFT_PREFIX}{module}.{_MLX_TO_PEFT[leaf]}"] = value.T if leaf != "m" else value
        targets.add(module.rsplit(".", 1)[-1])
        if match := _LAYER.match(module):
            layers.add(int(match["index"]))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": rank,
        "lora_alpha": scale * rank,  # PEFT scales by lora_alpha / r
        "lora_dropout": float(params.get("dropout", 0.0)),
        "target_modules": sorted(targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": kind == "dora",
        "use_rslora": False,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None if adapter_cfg.get("num_layers", -1) == -1 else sorted(layers),
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    return tensors, config


def _num_hidden_layers(model: str | None) -> int | None:
    if not model:
        return None
    from .models import resolve_model

    try:
        path = Path(resolve_model(model))
    except FileNotFoundError:
        return None
    config = path / "config.json"
    if not config.is_file():
        return None
    cfg = json.loads(config.read_text())
    return cfg.get("num_hidden_layers") or cfg.get("text_config", {}).get("num_hidden_layers")


def peft_to_mlx(tensors: dict, peft_cfg: dict, n_layers: int | None = None, seed: int = 0) -> tuple[dict, dict]:
    """(mlx-lm adapter weights, mlx-lm adapter_config) from a PEFT LoRA/DoRA adapter.

    mlx-lm adapts the same modules in each of the last `num_layers` blocks; a
    PEFT adapter may skip some. Those gaps get lora_b = 0 (so the function is
    unchanged) and a freshly initialised lora_a (so training can move them).
    """
    if peft_cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterFormatError(f"PEFT type {peft_cfg.get('peft_type')!r} is not supported (only LORA)")
    for key, why in (("rank_pattern", "per-module ranks"), ("alpha_pattern", "per-module alphas"),
                     ("modules_to_save", "fully trained extra modules"), ("fan_in_fan_out", "Conv1D layers")):
        if peft_cfg.get(key):
            raise AdapterFormatError(f"this PEFT adapter uses {key} ({why}), which mlx-lm adapters cannot hold")
    if peft_cfg.get("bias", "none") != "none":
        raise AdapterFormatError("PEFT adapters with trained biases (bias != 'none') are not supported")
    rank, alpha = int(peft_cfg["r"]), float(peft_cfg["lora_alpha"])
    scale = alpha / math.sqrt(rank) if peft_cfg.get("use_rslora") else alpha / rank
    dora = bool(peft_cfg.get("use_dora"))

    per_layer: dict[int, dict[str, dict[str, mx.array]]] = {}
    head = None
    for name, value in tensors.items():
        stem = name[len(_PEFT_PREFIX):] if name.startswith(_PEFT_PREFIX) else name
        stem = stem.replace(".default.", ".")  # unsaved adapters carry the adapter name
        leaf = next((p for p in _PEFT_TO_MLX if stem.endswith("." + p)), None)
        match = _LAYER.match(stem[: -len(leaf) - 1]) if leaf else None
        if match is None:
            raise AdapterFormatError(f"PEFT tensor {name!r} is not a LoRA weight inside a transformer block")
        head = match["head"]
        mlx_leaf = _PEFT_TO_MLX[leaf]
        per_layer.setdefault(int(match["index"]), {}).setdefault(match["key"], {})[mlx_leaf] = (
            value if mlx_leaf == "m" else value.T)
    if not per_layer:
        raise AdapterFormatError("the PEFT adapter holds no LoRA weights")

    keys = sorted({k for modules in per_layer.values() for k in modules})
    last = (n_layers or max(per_layer) + 1) - 1
    first = min(per_layer)
    shapes = {k: next(m[k] for m in per_layer.values() if k in m) for k in keys}
    key = mx.random.key(seed)
    weights = {}
    for index in range(first, last + 1):
        for k in keys:
            found = per_layer.get(index, {}).get(k)
            if found is None:
                if dora:
                    raise AdapterFormatError(f"DoRA adapter has no weights for layer {index} {k}; mlx-lm needs "
                                             "the same modules in each of the last N blocks")
                in_dims, out_dims = shapes[k]["lora_a"].shape[0], shapes[k]["lora_b"].shape[1]
                key, sub = mx.random.split(key)
                bound = 1 / math.sqrt(in_dims)
                found = {"lora_a": mx.random.uniform(-bound, bound, (in_dims, rank), key=sub),
                         "lora_b": mx.zeros((rank, out_dims))}
            for leaf, value in found.items():
                weights[f"{head}.{index}.{k}.{leaf}"] = value
    config = {
        "fine_tune_type": "dora" if dora else "lora",
        "num_layers": last + 1 - first,
        "lora_parameters": {"rank": rank, "scale": scale, "dropout": float(peft_cfg.get("lora_dropout", 0.0)),
                            "keys": keys},
        "lora_alpha": alpha,
    }
    return weights, config


def read_peft(peft_dir: Path) -> tuple[dict, dict]:
    config_path, weights_path = peft_dir / "adapter_config.json", peft_dir / "adapter_model.safetensors"
    if not config_path.is_file():
        raise FileNotFoundError(f"{peft_dir}: no adapter_config.json (not a PEFT adapter directory)")
    if not weights_path.is_file():
        raise FileNotFoundError(f"{peft_dir}: no adapter_model.safetensors (re-save the adapter with "
                                "safe_serialization=True; .bin files are not read)")
    return mx.load(str(weights_path)), json.loads(config_path.read_text())


def export_peft(adapter_dir: Path, out: Path, *, model: str | None = None, force: bool = False):
    """Write `out/` with adapter_model.safetensors + adapter_config.json for peft.PeftModel.from_pretrained."""
    from .fuse import check_adapter_dir, read_json

    adapter_dir = check_adapter_dir(adapter_dir)
    weights = mx.load(str(adapter_dir / ADAPTERS))
    base = _peft_base_name(adapter_dir, model)
    tensors, config = mlx_to_peft(weights, read_json(adapter_dir / ADAPTER_CONFIG), base)
    dtype = dtype_name(next(iter(tensors.values())))
    needed = output_bytes("peft", tensor_shapes(tensors.values()), dtype=dtype) + MARGIN

    def write(directory: Path) -> None:
        mx.save_safetensors(str(directory / "adapter_model.safetensors"), tensors, metadata={"format": "pt"})
        (directory / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")

    write_dir_atomically(out, force, needed, write)
    usage = ("python -c \"from transformers import AutoModelForCausalLM; from peft import PeftModel; "
             f"m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained('{base}'), '{out}')\"")
    kind = "DoRA" if config["use_dora"] else "LoRA"
    result = ExportResult("peft", out, output_files(out), f"{dtype} {kind} r={config['r']} "
                          f"alpha={config['lora_alpha']:g}", usage, base=base)
    result.notes.append(f"target modules: {', '.join(config['target_modules'])}")
    return result


def import_peft(peft_dir: Path, out: Path, *, model: str | None = None, force: bool = False):
    """Write an mlx-orpo adapter directory (adapters.safetensors + adapter_config.json) from a PEFT adapter."""

    tensors, peft_cfg = read_peft(peft_dir)
    base = model or peft_cfg.get("base_model_name_or_path")
    weights, config = peft_to_mlx(tensors, peft_cfg, _num_hidden_layers(base))
    config["model"] = base
    config["source"] = f"imported from PEFT adapter {peft_dir}"
    needed = output_bytes("import-peft", tensor_shapes(weights.values()),
                          dtype=dtype_name(next(iter(weights.values())))) + MARGIN

    def write(directory: Path) -> None:
        mx.save_safetensors(str(directory / ADAPTERS), weights)
        (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    write_dir_atomically(out, force, needed, write)
    usage = (f"python -c \"from mlx_orpo.api import load_with_adapters, generate; m, t = load_with_adapters("
             f"'{base}', '{out}'); print(generate(m, t, [{{'role': 'user', 'content': 'Hello'}}]))\"")
    kind = f"{config['fine_tune_type']} r={config['lora_parameters']['rank']}"
    return ExportResult("import-peft", out, output_files(out), kind, usage, base=str(base))
