"""Import a GGUF model (as llama.cpp stores it) into an MLX / Hugging Face model directory.

`mx.load` reads GGUF natively: Q4_0/Q4_1/Q8_0 tensors arrive as MLX affine
quantised triplets (weight, scales, biases). We dequantise them, rename the
tensors to Hugging Face names, undo the row permutation llama.cpp's converter
applies to Q and K for its RoPE layout, and write safetensors + config.json +
the tokenizer (rebuilt from the GGUF vocabulary, merges and chat template:
gguf_tokenizer.py). The result loads with `mlx_lm.load` and with transformers.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import mlx.core as mx

from .files import atomic_output

# GGUF tensor-name stems -> Hugging Face names, for the llama family.
_LLAMA_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
# Hugging Face names of each GGUF architecture; qwen2 adds q/k/v biases and uses NeoX
# RoPE, so its Q/K rows are stored unpermuted.
_HF_ARCHITECTURES = {"llama": ("llama", "LlamaForCausalLM"), "qwen2": ("qwen2", "Qwen2ForCausalLM")}


class GGUFImportError(ValueError):
    pass


# GGUF metadata value types: fixed sizes by type id; 8 is a string, 9 an array.
_GGUF_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY, _GGUF_UINT32 = 8, 9, 4
# ggml tensor types: (values per block, bytes per block).
_GGML_BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
                9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
                15: (256, 292), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 30: (1, 2)}
_GGML_MAX_DIMS = 4


def check_gguf(path: str | Path) -> None:
    """Raise GGUFImportError unless `path` is a GGUF file whose header, counts and tensor sizes fit
    the file. MLX's native reader trusts them: a tensor count of 2^40 crashed the process in it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size < 24 or f.read(4) != b"GGUF":
                raise GGUFImportError(f"{path}: not a GGUF file (it does not start with the GGUF magic)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
                _check_gguf_layout(path, view, size)
    except OSError as exc:
        raise GGUFImportError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _check_gguf_layout(path: Path, view, size: int) -> None:
    def bad(detail: str) -> GGUFImportError:
        return GGUFImportError(f"{path}: damaged or not a GGUF file ({detail})")

    pos = 4

    def take(fmt: str):
        nonlocal pos
        n = struct.calcsize(fmt)
        if pos + n > size:
            raise bad(f"the header runs past the end of the {size}-byte file")
        value = struct.unpack_from(fmt, view, pos)
        pos += n
        return value[0] if len(value) == 1 else value

    def skip(n: int, what: str):
        nonlocal pos
        if n < 0 or pos + n > size:
            raise bad(f"{what} of {n} bytes runs past the end of the {size}-byte file")
        pos += n

    def string(what: str) -> bytes:
        n = take("<Q")
        start = pos
        skip(n, what)
        return bytes(view[start:pos])

    version = take("<I")
    if version not in (2, 3):
        raise bad(f"GGUF version {version}; versions 2 and 3 are read")
    tensor_count, kv_count = take("<QQ")
    # The smallest metadata entry takes 13 bytes and the smallest tensor description 24.
    if kv_count * 13 + tensor_count * 24 > size - pos:
        raise bad(f"it claims {tensor_count} tensors and {kv_count} metadata entries, more than "
                  f"{size} bytes can hold")
    alignment = 32
    for _ in range(kv_count):
        key = string("a metadata key")
        kind = take("<I")
        if key == b"general.alignment" and kind == _GGUF_UINT32:
            alignment = take("<I")
            if alignment == 0 or alignment & (alignment - 1):
                raise bad(f"general.alignment {alignment} is not a power of two")
            continue
        if kind == _GGUF_ARRAY:
            kind, count = take("<IQ")
            if kind == _GGUF_STRING:
                if count * 8 > size - pos:
                    raise bad(f"{key.decode(errors='replace')}: {count} strings cannot fit the file")
                for _ in range(count):
                    string("a metadata string")
            elif kind in _GGUF_SCALAR_SIZES:
                skip(count * _GGUF_SCALAR_SIZES[kind], f"{key.decode(errors='replace')}: an array")
            else:
                raise bad(f"{key.decode(errors='replace')}: unknown array element type {kind}")
        elif kind == _GGUF_STRING:
            string("a metadata string")
        elif kind in _GGUF_SCALAR_SIZES:
            skip(_GGUF_SCALAR_SIZES[kind], "a metadata value")
        else:
            raise bad(f"{key.decode(errors='replace')}: unknown metadata type {kind}")
    tensors = []
    for _ in range(tensor_count):
        name = string("a tensor name").decode(errors="replace")
        n_dims = take("<I")
        if not 1 <= n_dims <= _GGML_MAX_DIMS:
            raise bad(f"tensor {name!r} has {n_dims} dimensions")
        dims = [take("<Q") for _ in range(n_dims)]
        kind, offset = take("<IQ")
        if kind not in _GGML_BLOCKS:
            raise bad(f"tensor {name!r} has unknown type {kind}")
        values = 1
        for d in dims:
            values *= d
        per_block, block_bytes = _GGML_BLOCKS[kind]
        if values == 0 or values % per_block:
            raise bad(f"tensor {name!r} has shape {dims}, not whole blocks of {per_block}")
        tensors.append((name, offset, values // per_block * block_bytes))
    data_start = -(-pos // alignment) * alignment
    for name, offset, nbytes in tensors:
        if offset % alignment or data_start + offset + nbytes > size:
            raise bad(f"tensor {name!r} ({nbytes} bytes at offset {offset}) lies outside the {size}-byte file")


def _scalar(metadata: dict, key: str, default=None):
    if key not in metadata:
        if default is None:
            raise GGUFImportError(f"GGUF metadata has no {key!r}")
        return default
    value = metadata[key]
    return value.item() if isinstance(value, mx.array) else value


def unpermute_rows(weight: mx.array, n_heads: int) -> mx.array:
    """Invert llama.cpp's `permute` of Q/K rows (interleaved -> half-split RoPE)."""
    rows = weight.shape[0]
    rest = weight.shape[1:]
    return weight.reshape(n_heads, rows // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


def _dequantize_all(tensors: dict) -> dict:
    """Turn (weight, scales, biases) triplets into plain float weights."""
    out = {}
    for name, value in tensors.items():
        if name.endswith((".scales", ".biases")):
            continue
        stem = name[: -len(".weight")] if name.endswith(".weight") else None
        if stem is not None and f"{stem}.scales" in tensors:
            scales, biases = tensors[f"{stem}.scales"], tensors[f"{stem}.biases"]
            # GGUF block quants that MLX maps (Q4_0, Q4_1, Q8_0) use blocks of
            # 32 values, and `value` packs 32 / bits values per uint32.
            group_size = 32
            bits = value.shape[-1] // scales.shape[-1]
            value = mx.dequantize(value, scales, biases, group_size=group_size, bits=bits)
        out[name] = value
    return out


def _llama_config(metadata: dict, has_output: bool, arch: str = "llama") -> dict:
    model_type, hf_class = _HF_ARCHITECTURES[arch]
    n_heads = int(_scalar(metadata, f"{arch}.attention.head_count"))
    hidden = int(_scalar(metadata, f"{arch}.embedding_length"))
    vocab = metadata.get(f"{arch}.vocab_size")
    vocab = int(vocab.item()) if vocab is not None else len(metadata["tokenizer.ggml.tokens"])
    config = {
        "architectures": [hf_class],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": int(_scalar(metadata, f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(_scalar(metadata, f"{arch}.block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(_scalar(metadata, f"{arch}.attention.head_count_kv", n_heads)),
        "head_dim": int(_scalar(metadata, f"{arch}.attention.key_length", hidden // n_heads)),
        "rms_norm_eps": float(_scalar(metadata, f"{arch}.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_scalar(metadata, f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(_scalar(metadata, f"{arch}.context_length", 2048)),
        "vocab_size": vocab,
        "tie_word_embeddings": not has_output,
        "hidden_act": "silu",
        "attention_bias": arch == "qwen2",
        "mlp_bias": False,
        "bos_token_id": int(_scalar(metadata, "tokenizer.ggml.bos_token_id", 1)),
        "eos_token_id": int(_scalar(metadata, "tokenizer.ggml.eos_token_id", 2)),
    }
    if "tokenizer.ggml.padding_token_id" in metadata:
        config["pad_token_id"] = int(_scalar(metadata, "tokenizer.ggml.padding_token_id"))
    return config


def _rename_llama(tensors: dict, config: dict, permuted: bool = True) -> dict:
    weights = {}
    for name, value in tensors.items():
        parts = name.split(".")
        if parts[0] == "blk":
            layer, stem, kind = parts[1], parts[2], parts[3]
            if stem not in _LLAMA_LAYER_NAMES:
                raise GGUFImportError(f"unexpected GGUF tensor {name!r} for the llama architecture")
            if stem == "attn_q" and permuted:
                value = unpermute_rows(value, config["num_attention_heads"])
            elif stem == "attn_k" and permuted:
                value = unpermute_rows(value, config["num_key_value_heads"])
            weights[f"model.layers.{layer}.{_LLAMA_LAYER_NAMES[stem]}.{kind}"] = value
        elif parts[0] in _GLOBAL_NAMES:
            weights[f"{_GLOBAL_NAMES[parts[0]]}.{parts[1]}"] = value
        elif parts[0] == "rope_freqs":
            continue  # recomputed from rope_theta
        else:
            raise GGUFImportError(f"unexpected GGUF tensor {name!r}")
    return weights


def _tokenizer(gguf_path: Path, metadata: dict):
    """The file's tokenizer: byte-level BPE rebuilt without torch, anything else via transformers."""
    from .gguf_tokenizer import UnsupportedTokenizer, build_tokenizer

    try:
        return build_tokenizer(metadata)
    except UnsupportedTokenizer:
        pass
    # transformers' GGUF reader needs PyTorch.
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except ImportError as exc:
        raise GGUFImportError(f"{gguf_path}: its {metadata.get('tokenizer.ggml.model')!r} tokenizer is read "
                              f"through transformers, which needs PyTorch here ({exc})") from exc


def import_gguf(gguf_path: str | Path, out_dir: str | Path, dtype: str = "float16") -> Path:
    """Convert `gguf_path` into a model directory at `out_dir` (written atomically)."""
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise GGUFImportError(f"{gguf_path}: no such GGUF file")
    check_gguf(gguf_path)  # before MLX's reader, which trusts the header
    tensors, metadata = mx.load(str(gguf_path), return_metadata=True)
    arch = metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFImportError(
            f"{gguf_path}: architecture {arch!r} is not supported for import "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    tensors = _dequantize_all(tensors)
    config = _llama_config(metadata, has_output="output.weight" in tensors, arch=arch)
    weights = _rename_llama(tensors, config, permuted=arch == "llama")
    target = getattr(mx, dtype)
    weights = {k: v.astype(target) for k, v in weights.items()}
    config["torch_dtype"] = dtype

    tokenizer = _tokenizer(gguf_path, metadata)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_dir, directory=True) as tmp:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "SOURCE").write_text(f"imported from {gguf_path}\n")
    return out_dir
