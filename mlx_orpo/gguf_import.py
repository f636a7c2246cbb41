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
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.constants import GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, Keys

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


# The header is walked here, with the gguf package's definitions of its value types, tensor types and
# block sizes, not read with gguf.GGUFReader: on SmolLM2-135M's GGUF the reader took 4.1-7.7 s (it maps
# every field and tensor into numpy) against 0.028 s for this walk, and it hung on some crafted files
# that this walk refuses at once.
_READ_VERSIONS = (2, 3)
_SCALAR_SIZES = {kind: np.dtype(scalar).itemsize for kind, scalar in GGUFReader.gguf_scalar_to_np.items()}
_Q = GGMLQuantizationType
# The tensor types handed on to MLX's reader: ggml's float, integer, legacy and K-quant types; a file
# holding any other (the IQ, ternary and FP4 quants) is refused by its type's number. (gguf gives Q8_1
# 40-byte blocks, ggml 36: no converter stores Q8_1, and the larger size only refuses more.)
_TENSOR_TYPES = (_Q.F32, _Q.F16, _Q.BF16, _Q.F64, _Q.I8, _Q.I16, _Q.I32, _Q.I64, _Q.Q4_0, _Q.Q4_1, _Q.Q5_0,
                 _Q.Q5_1, _Q.Q8_0, _Q.Q8_1, _Q.Q2_K, _Q.Q3_K, _Q.Q4_K, _Q.Q5_K, _Q.Q6_K, _Q.Q8_K)
_MAX_DIMS = 4  # ggml's GGML_MAX_DIMS
# The smallest metadata entry takes 13 bytes (key length, type, one byte); a tensor description 24.
_MIN_ENTRY_BYTES, _MIN_TENSOR_BYTES = 13, 24


def check_gguf(path: str | Path) -> None:
    """Raise GGUFImportError unless `path` is a GGUF file whose header, counts and tensor sizes fit
    the file. MLX's native reader trusts them: a tensor count of 2^40 crashed the process in it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size < 24 or int.from_bytes(f.read(4), "little") != GGUF_MAGIC:
                raise GGUFImportError(f"{path}: not a GGUF file (it does not start with the GGUF magic)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
                _check_gguf_layout(_Header(path, view, size))
    except OSError as exc:
        raise GGUFImportError(f"{path}: cannot be read ({exc.strerror or exc})") from None


class _Header:
    """A walk over a GGUF header from after its magic, each read and skip bounded by the file's size."""

    def __init__(self, path: Path, view, size: int):
        self.path, self.view, self.size, self.pos = path, view, size, 4

    def bad(self, detail: str) -> GGUFImportError:
        return GGUFImportError(f"{self.path}: damaged or not a GGUF file ({detail})")

    def take(self, fmt: str):
        n = struct.calcsize(fmt)
        if self.pos + n > self.size:
            raise self.bad(f"the header runs past the end of the {self.size}-byte file")
        value = struct.unpack_from(fmt, self.view, self.pos)
        self.pos += n
        return value[0] if len(value) == 1 else value

    def skip(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.bad(f"{what} of {n} bytes runs past the end of the {self.size}-byte file")
        self.pos += n

    def string(self, what: str) -> bytes:
        n = self.take("<Q")
        start = self.pos
        self.skip(n, what)
        return bytes(self.view[start:self.pos])

    def skip_value(self, key: bytes, kind: int) -> None:
        """Pass over one metadata value of GGUFValueType `kind`."""
        name = key.decode(errors="replace")
        if kind == GGUFValueType.ARRAY:
            kind, count = self.take("<IQ")
            if kind == GGUFValueType.STRING:
                if count * 8 > self.size - self.pos:
                    raise self.bad(f"{name}: {count} strings cannot fit the file")
                for _ in range(count):
                    self.string("a metadata string")
            elif kind in _SCALAR_SIZES:
                self.skip(count * _SCALAR_SIZES[kind], f"{name}: an array")
            else:
                raise self.bad(f"{name}: unknown array element type {kind}")
        elif kind == GGUFValueType.STRING:
            self.string("a metadata string")
        elif kind in _SCALAR_SIZES:
            self.skip(_SCALAR_SIZES[kind], "a metadata value")
        else:
            raise self.bad(f"{name}: unknown metadata type {kind}")

    def tensor(self) -> tuple[str, int, int]:
        """One tensor description: (name, offset in the data section, bytes)."""
        name = self.string("a tensor name").decode(errors="replace")
        n_dims = self.take("<I")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise self.bad(f"tensor {name!r} has {n_dims} dimensions")
        dims = [self.take("<Q") for _ in range(n_dims)]
        kind, offset = self.take("<IQ")
        if kind not in _TENSOR_TYPES:
            raise self.bad(f"tensor {name!r} has unknown type {kind}")
        values = 1
        for d in dims:
            values *= d
        per_block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        if values == 0 or values % per_block:
            raise self.bad(f"tensor {name!r} has shape {dims}, not whole blocks of {per_block}")
        return name, offset, values // per_block * block_bytes


def _check_gguf_layout(header: _Header) -> None:
    version = header.take("<I")
    if version not in _READ_VERSIONS:
        raise header.bad(f"GGUF version {version}; versions 2 and 3 are read")
    tensor_count, kv_count = header.take("<QQ")
    if kv_count * _MIN_ENTRY_BYTES + tensor_count * _MIN_TENSOR_BYTES > header.size - header.pos:
        raise header.bad(f"it claims {tensor_count} tensors and {kv_count} metadata entries, more than "
                         f"{header.size} bytes can hold")
    alignment = GGUF_DEFAULT_ALIGNMENT
    for _ in range(kv_count):
        key = header.string("a metadata key")
        kind = header.take("<I")
        if key == Keys.General.ALIGNMENT.encode() and kind == GGUFValueType.UINT32:
            alignment = header.take("<I")
            if alignment == 0 or alignment & (alignment - 1):
                raise header.bad(f"general.alignment {alignment} is not a power of two")
        else:
            header.skip_value(key, kind)
    tensors = [header.tensor() for _ in range(tensor_count)]
    data_start = -(-header.pos // alignment) * alignment
    for name, offset, nbytes in tensors:
        if offset % alignment or data_start + offset + nbytes > header.size:
            raise header.bad(f"tensor {name!r} ({nbytes} bytes at offset {offset}) lies outside the "
                             f"{header.size}-byte file")


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
