"""A GGUF file's byte-level BPE tokenizer, rebuilt with the `tokenizers` library (no PyTorch).

transformers can read a GGUF's tokenizer too, but its GGUF reader imports torch, which the
default path (`python -m mlx_orpo.train` on the embedded SmolLM2) must not need. A byte-level
BPE ("gpt2" in GGUF terms: SmolLM2, Qwen2, Llama-3 style vocabularies) is fully described by
the file's tokens, merges, token types and special-token ids, so we build it directly and
check it against transformers' reader in tests/test_gguf_tokenizer.py. Other tokenizer kinds
(sentencepiece) still go through transformers.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types

# Split patterns for `tokenizer.ggml.pre` values whose vocabulary was learned on other splits
# than GPT-2's (the pattern comes first, then the byte-level mapping without GPT-2's regex).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
          "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}


class UnsupportedTokenizer(ValueError):
    pass


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes stand for
    themselves, the others are shifted past U+0100."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, shift = {}, 0
    for byte in range(256):
        if byte in keep:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + shift)
            shift += 1
    return mapping


def _strings(value) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in value]


def _ints(value) -> list[int]:
    return np.asarray(value).astype(np.int64).ravel().tolist()


def _scalar(metadata: dict, key: str):
    value = metadata.get(key)
    if value is None:
        return None
    return np.asarray(value).item()


def build_tokenizer(metadata: dict):
    """A `transformers.PreTrainedTokenizerFast` from a GGUF's `tokenizer.*` metadata (as
    `mx.load(path, return_metadata=True)` returns it)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    kind = metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UnsupportedTokenizer(f"GGUF tokenizer kind {kind!r} is not byte-level BPE")
    tokens = _strings(metadata["tokenizer.ggml.tokens"])
    types = _ints(metadata.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ")) for m in _strings(metadata.get("tokenizer.ggml.merges", []))]

    alphabet = byte_alphabet()
    spelled = set(alphabet.values())
    # The vocabulary is stored in the byte alphabet; a token written otherwise is respelled byte by byte.
    vocab = {t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode()): i for i, t in enumerate(tokens)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    split = SPLITS.get(metadata.get("tokenizer.ggml.pre"))
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    # Control tokens (<|im_start|>, ...) stay whole and are special; user-defined ones stay whole.
    # A "control" token outside the byte alphabet is a mislabel that would grow the vocabulary: skipped.
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t, k in zip(tokens, types) if k == CONTROL and set(t) <= spelled])
    backend.add_tokens([AddedToken(t, normalized=False, special=False)
                        for t, k in zip(tokens, types) if k == USER_DEFINED and t in vocab])

    def token(key):
        index = _scalar(metadata, f"tokenizer.ggml.{key}")
        return tokens[int(index)] if index is not None and 0 <= int(index) < len(tokens) else None

    specials = {name: token(key) for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                                                   ("unk_token", "unknown_token_id"),
                                                   ("pad_token", "padding_token_id"))}
    bos = specials["bos_token"]
    if bos and bool(_scalar(metadata, "tokenizer.ggml.add_bos_token")):
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend,
                                        **{k: v for k, v in specials.items() if v is not None})
    template = metadata.get("tokenizer.chat_template")
    if template:
        tokenizer.chat_template = template
    return tokenizer
