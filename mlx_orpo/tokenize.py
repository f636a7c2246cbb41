"""Render preference pairs with the chat template and tokenize them.

The prompt (with the assistant header, `add_generation_prompt=True`) and each
response are tokenized separately and concatenated, so no token can merge
across the prompt/response boundary and the boundary is known exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from .data import PreferencePair

# Used only when a tokenizer has no chat template of its own (documented in the README).
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '### ' + message['role'] | capitalize + ':\\n' + message['content'] + '\\n\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class EncodedPair:
    prompt: tuple[int, ...]
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]
    origin: str = ""

    @property
    def length(self) -> int:
        """Tokens of the longer sequence (prompt + longer response)."""
        return len(self.prompt) + max(len(self.chosen), len(self.rejected))

    @property
    def tokens(self) -> int:
        """Non-pad tokens the pair contributes to a batch (both sequences)."""
        return 2 * len(self.prompt) + len(self.chosen) + len(self.rejected)


@dataclass
class EncodeStats:
    pairs: int = 0
    truncated: int = 0
    dropped: int = 0


def hf_tokenizer(tokenizer):
    """The Hugging Face tokenizer inside mlx-lm's TokenizerWrapper (or the tokenizer itself)."""
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    return tokenizer._tokenizer if isinstance(tokenizer, TokenizerWrapper) else tokenizer


def ensure_chat_template(tokenizer) -> bool:
    """Give a template-less tokenizer the fallback; return True if it had one."""
    hf = hf_tokenizer(tokenizer)
    if getattr(hf, "chat_template", None):
        return True
    hf.chat_template = FALLBACK_CHAT_TEMPLATE
    return False


def render_prompt(tokenizer, messages) -> str:
    return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)


def _encode_text(tokenizer, text: str) -> list[int]:
    # Templates usually write the BOS token themselves; add it only when the
    # tokenizer would and the template did not.
    ids = tokenizer.encode(text, add_special_tokens=False)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and (not ids or ids[0] != bos) and tokenizer.encode("a")[:1] == [bos]:
        ids = [bos] + ids
    return ids


def response_text(tokenizer, messages, prompt_text: str, answer: str) -> str:
    """The text the template appends for the assistant's answer, ending with its end-of-turn token."""
    full = tokenizer.apply_chat_template(
        list(messages) + [{"role": "assistant", "content": answer}], tokenize=False
    )
    eos = tokenizer.eos_token or ""
    if full.startswith(prompt_text):
        text = full[len(prompt_text):]
        if eos and eos in text:
            return text[: text.rindex(eos) + len(eos)]
        return text + eos
    return answer + eos


def encode_pair(tokenizer, pair: PreferencePair) -> EncodedPair:
    prompt_text = render_prompt(tokenizer, pair.prompt)
    prompt = _encode_text(tokenizer, prompt_text)

    def answer_ids(answer: str) -> tuple[int, ...]:
        text = response_text(tokenizer, pair.prompt, prompt_text, answer)
        return tuple(tokenizer.encode(text, add_special_tokens=False))

    return EncodedPair(tuple(prompt), answer_ids(pair.chosen), answer_ids(pair.rejected), pair.origin)


def fit_to_length(pair: EncodedPair, max_length: int, max_prompt_length: int, min_response_length: int):
    """Truncate a pair to max_length; return (pair or None if dropped, truncated?).

    The prompt is cut from the left first (down to max_prompt_length, no more
    than needed), then both responses from the right. A pair that cannot keep
    min_response_length response tokens is dropped, never emptied: a response
    with zero tokens makes ℓ undefined (0/0), which is how other trainers go NaN.
    """
    if pair.length <= max_length:
        return pair, False
    longest = max(len(pair.chosen), len(pair.rejected))
    keep_prompt = min(len(pair.prompt), max(max_length - longest, max_prompt_length))
    budget = max_length - keep_prompt
    if budget < min_response_length or keep_prompt == 0:
        return None, True
    prompt = pair.prompt[len(pair.prompt) - keep_prompt:]
    return EncodedPair(prompt, pair.chosen[:budget], pair.rejected[:budget], pair.origin), True


def fit_pairs(encoded, *, max_length: int, max_prompt_length: int, min_response_length: int):
    """Fit already-encoded pairs to the length limits; return (fitted pairs, stats). The app's Data tab
    counts truncation with this at each max length without tokenizing again."""
    stats = EncodeStats()
    out = []
    for pair in encoded:
        fitted, truncated = fit_to_length(pair, max_length, max_prompt_length, min_response_length)
        stats.truncated += truncated and fitted is not None
        if fitted is None:
            stats.dropped += 1
        else:
            out.append(fitted)
    stats.pairs = len(out)
    return out, stats


def encode_pairs(tokenizer, pairs, *, max_length: int, max_prompt_length: int, min_response_length: int):
    """Encode and fit every pair; return (encoded pairs, stats)."""
    ensure_chat_template(tokenizer)
    return fit_pairs((encode_pair(tokenizer, pair) for pair in pairs), max_length=max_length,
                     max_prompt_length=max_prompt_length, min_response_length=min_response_length)
