"""Write a fused model as a GGUF file that llama.cpp (and Ollama, LM Studio) load.

Written with the `gguf` package's GGUFWriter. What llama.cpp needs beyond the
tensors, and where it differs from Hugging Face:
  - Q and K rows of llama-family models permuted for its RoPE layout
    (the inverse of gguf_import.unpermute_rows); qwen2 uses NeoX RoPE, unpermuted;
  - the tokenizer as arrays: tokens, int32 token types, merges (BPE) or scores
    (SentencePiece), special ids, and `tokenizer.ggml.pre`, the name of its
    pre-tokenizer regex, which must be one llama.cpp knows;
  - 1-D tensors (norms, biases) in float32 whatever the file type.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np

from .files import atomic_output, atomic_write_text
from .output import (
    GGUF_WIDTH,
    MARGIN,
    ExportResult,
    check_destination,
    disk_space,
    output_bytes,
    output_files,
    tensor_shapes,
    tokenizer_bytes,
    write_dir_atomically,
)
from .tokenize import hf_tokenizer

# model_type (config.json) -> GGUF architecture; llama.cpp runs mistral as llama.
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
GGUF_TYPES = tuple(GGUF_WIDTH)  # f16, q8_0, f32: what the writer makes, and each one's width (output.py)

_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GLOBAL_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


class GGUFExportError(ValueError):
    pass


def check_gguf_type(gguf_type: str) -> None:
    if gguf_type not in GGUF_TYPES:
        raise GGUFExportError(f"unknown GGUF type {gguf_type!r}; choose one of {', '.join(GGUF_TYPES)}")


def check_architecture(config: dict) -> str:
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise GGUFExportError(f"GGUF export does not support model_type {model_type!r} "
                              f"(supported: {', '.join(ARCHITECTURES)}); export --format hf and use "
                              "llama.cpp's convert_hf_to_gguf.py instead")
    return ARCHITECTURES[model_type]


def gguf_paths(out: Path, gguf_type: str = "f16") -> tuple[Path, Path]:
    """(the .gguf file, its Ollama Modelfile). `out` is a .gguf path or a directory to create."""
    if out.suffix == ".gguf":
        return out, out.with_suffix(".Modelfile")
    return out / f"model-{gguf_type}.gguf", out / "Modelfile"


def permute_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's Q/K row order: per head, half-split RoPE pairs become interleaved."""
    rows = weight.shape[0]
    rest = weight.shape[1:]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


def gguf_tensor_name(name: str) -> str:
    stem, kind = name.rsplit(".", 1)
    if stem in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[stem]}.{kind}"
    parts = stem.split(".", 3)
    if parts[:2] == ["model", "layers"] and len(parts) == 4 and parts[3] in _LAYER_NAMES:
        return f"blk.{parts[2]}.{_LAYER_NAMES[parts[3]]}.{kind}"
    raise GGUFExportError(f"no GGUF name for tensor {name!r}")


# ---- tokenizer ---------------------------------------------------------------------------------------------

def detect_pre_tokenizer(pre_tokenizer: dict | None) -> str:
    """llama.cpp's name for a tokenizer.json pre-tokenizer (the regex it splits text with)."""
    steps = (pre_tokenizer or {}).get("pretokenizers", [pre_tokenizer] if pre_tokenizer else [])
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    patterns = [s.get("pattern", {}).get("Regex", "") for s in steps if s.get("type") == "Split"]
    if patterns and kinds[-1] == "ByteLevel":
        if "\\p{N}{1,3}" in patterns[0]:
            return "llama-bpe"
        if "(?i:'s|'t|'re|'ve|'m|'ll|'d)" in patterns[0] and "|\\p{N}|" in patterns[0]:
            return "qwen2"
    raise GGUFExportError(f"unrecognised pre-tokenizer {json.dumps(pre_tokenizer)[:200]}; known: gpt-2 "
                          "(ByteLevel), smollm (Digits + ByteLevel), llama-bpe and qwen2 (Split regexes)")


def _bpe_vocab(hf_tokenizer, vocab_size: int) -> dict:
    from gguf import TokenType

    data = json.loads(hf_tokenizer.backend_tokenizer.to_str())
    if data["model"]["type"] != "BPE":
        raise GGUFExportError(f"tokenizer model {data['model']['type']!r} is not supported (BPE or SentencePiece)")
    tokens = {i: t for t, i in data["model"]["vocab"].items()}
    types = {i: TokenType.NORMAL for i in tokens}
    for added in data.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
    size = max(vocab_size, max(tokens) + 1)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    return {
        "model": "gpt2",
        "pre": detect_pre_tokenizer(data.get("pre_tokenizer")),
        # Rows of the embedding beyond the tokenizer's tokens (padding) get placeholders.
        "tokens": [tokens.get(i, f"[PAD{i}]") for i in range(size)],
        "types": [int(types.get(i, TokenType.UNUSED)) for i in range(size)],
        "merges": merges,
    }


def _spm_vocab(model_file: Path, hf_tokenizer, vocab_size: int) -> dict:
    """SentencePiece (llama 2, mistral v0.1-0.3): pieces, scores and types from tokenizer.model."""
    import sentencepiece as spm
    from gguf import TokenType

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        kind = (TokenType.UNKNOWN if sp.is_unknown(i) else TokenType.CONTROL if sp.is_control(i)
                else TokenType.UNUSED if sp.is_unused(i) else TokenType.BYTE if sp.is_byte(i) else TokenType.NORMAL)
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(int(kind))
    for content, i in sorted(hf_tokenizer.get_added_vocab().items(), key=lambda kv: kv[1]):
        if i >= len(tokens):
            tokens += [f"[PAD{j}]" for j in range(len(tokens), i + 1)]
            scores += [-1000.0] * (i + 1 - len(scores))
            types += [int(TokenType.UNUSED)] * (i + 1 - len(types))
        tokens[i] = content
        types[i] = int(TokenType.USER_DEFINED)
    while len(tokens) < vocab_size:
        tokens.append(f"[PAD{len(tokens)}]")
        scores.append(-1000.0)
        types.append(int(TokenType.UNUSED))
    return {"model": "llama", "pre": None, "tokens": tokens, "types": types, "scores": scores}


def tokenizer_metadata(hf_tokenizer, base_path: Path, vocab_size: int) -> dict:
    spm_file = base_path / "tokenizer.model"
    vocab = _spm_vocab(spm_file, hf_tokenizer, vocab_size) if spm_file.is_file() else \
        _bpe_vocab(hf_tokenizer, vocab_size)
    probe = hf_tokenizer.encode("a")
    vocab["special"] = {name: getattr(hf_tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "unk", "pad")}
    vocab["add_bos"] = bool(probe) and probe[0] == hf_tokenizer.bos_token_id
    vocab["add_eos"] = bool(probe) and probe[-1] == hf_tokenizer.eos_token_id and len(probe) > 1
    vocab["chat_template"] = getattr(hf_tokenizer, "chat_template", None)
    return vocab


# ---- writing -----------------------------------------------------------------------------------------------

def _rope_theta(config: dict) -> float:
    params = config.get("rope_parameters") or {}
    return float(config.get("rope_theta") or params.get("rope_theta") or 10000.0)


def _add_architecture(writer, arch: str, config: dict) -> None:
    n_heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_heads
    writer.add_context_length(config.get("max_position_embeddings", 4096))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(config.get("num_key_value_heads", n_heads))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_vocab_size(config["vocab_size"])
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // n_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "linear":
        from gguf import RopeScalingType
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif kind != "default":
        raise GGUFExportError(f"rope scaling {kind!r} is not supported by this GGUF exporter (default, linear)")


def _add_tokenizer(writer, vocab: dict) -> None:
    writer.add_tokenizer_model(vocab["model"])
    if vocab["pre"]:
        writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])  # int32, as llama.cpp requires
    if "merges" in vocab:
        writer.add_token_merges(vocab["merges"])
    if "scores" in vocab:
        writer.add_token_scores(vocab["scores"])
    special = vocab["special"]
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if special.get(name) is not None:
            add(int(special[name]))
    writer.add_add_bos_token(vocab["add_bos"])
    writer.add_add_eos_token(vocab["add_eos"])
    if vocab["chat_template"]:
        writer.add_chat_template(vocab["chat_template"])


def gguf_tensors(weights: dict, config: dict, arch: str, gguf_type: str):
    """Yield (gguf name, numpy data, raw GGML type or None) for each tensor."""
    from gguf import GGMLQuantizationType, quants

    n_heads = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_heads)
    for name, value in weights.items():
        gguf_name = gguf_tensor_name(name)
        data = np.array(value.astype(mx.float32))
        if arch == "llama" and gguf_name.endswith("attn_q.weight"):
            data = permute_rows(data, n_heads)
        elif arch == "llama" and gguf_name.endswith("attn_k.weight"):
            data = permute_rows(data, n_kv)
        if data.ndim == 1 or gguf_type == "f32":
            yield gguf_name, data, None
        elif gguf_type == "f16":
            yield gguf_name, data.astype(np.float16), None
        else:
            yield gguf_name, quants.quantize(data, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0


def write_gguf(fused, path: Path, gguf_type: str = "f16", name: str | None = None) -> None:
    """Write `fused` (a fuse.Fused) to `path` with GGUFWriter."""
    from gguf import GGUFWriter, LlamaFileType
    from mlx.utils import tree_flatten

    check_gguf_type(gguf_type)
    config = fused.config
    arch = check_architecture(config)
    weights = dict(tree_flatten(fused.model.parameters()))
    if config.get("tie_word_embeddings") and "lm_head.weight" in weights:
        del weights["lm_head.weight"]
    vocab = tokenizer_metadata(hf_tokenizer(fused.tokenizer), fused.base_path, config["vocab_size"])

    writer = GGUFWriter(str(path), arch)
    writer.add_name(name or Path(fused.base_spec).name)
    writer.add_file_type({"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
                          "q8_0": LlamaFileType.MOSTLY_Q8_0}[gguf_type])
    _add_architecture(writer, arch, config)
    _add_tokenizer(writer, vocab)
    if gguf_type == "q8_0":
        writer.add_quantization_version(2)
    for tensor_name, data, raw_type in gguf_tensors(weights, config, arch, gguf_type):
        writer.add_tensor(tensor_name, data, raw_dtype=raw_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def modelfile(gguf_name: str, chat_template: str | None) -> str:
    """An Ollama Modelfile next to the GGUF. ChatML gets an explicit template; for
    others Ollama derives one from the chat template stored in the GGUF."""
    lines = [f"FROM ./{gguf_name}"]
    if chat_template and "<|im_start|>" in chat_template:
        lines += ['TEMPLATE """{{- if .System }}<|im_start|>system',
                  '{{ .System }}<|im_end|>',
                  '{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}',
                  '{{ .Content }}<|im_end|>',
                  '{{ end }}<|im_start|>assistant',
                  '"""',
                  'PARAMETER stop "<|im_end|>"']
    return "\n".join(lines) + "\n"


def export_gguf(fused, out: Path, *, gguf_type: str = "f16", force: bool = False):
    from mlx.utils import tree_flatten

    check_architecture(fused.config)
    gguf_file, model_file = gguf_paths(out, gguf_type)
    needed = output_bytes("gguf", tensor_shapes(v for _, v in tree_flatten(fused.model.parameters())),
                          gguf_type=gguf_type, other_files=tokenizer_bytes(fused.base_path)) + MARGIN
    template = getattr(hf_tokenizer(fused.tokenizer), "chat_template", None)
    if out.suffix == ".gguf":  # a single file (and its Modelfile), each renamed into place
        check_destination(gguf_file, force)
        with disk_space(gguf_file, needed), atomic_output(gguf_file) as tmp:
            write_gguf(fused, tmp, gguf_type)
        atomic_write_text(model_file, modelfile(gguf_file.name, template))
        files = output_files(gguf_file) + output_files(model_file)
    else:
        def write(directory: Path) -> None:
            write_gguf(fused, directory / gguf_file.name, gguf_type)
            (directory / "Modelfile").write_text(modelfile(gguf_file.name, template))

        write_dir_atomically(out, force, needed, write)
        files = output_files(out)
    usage = (f"llama-cli -m {gguf_file} -cnv    # or: ollama create {gguf_file.stem.lower()} -f {model_file}")
    return ExportResult("gguf", gguf_file, files, gguf_type.upper(), usage)
