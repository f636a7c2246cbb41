"""From a batch of token ids to log-probabilities: the model's forward for ORPO.

`batch_token_logps` runs a batch of pairs through the model in either of
`batching.collate`'s layouts (full rows, or each prompt once for both answers)
and returns what the ORPO objective (`loss.py`) is a function of: the
log-probability of every target token, the masks of the response tokens and
of the NLL's targets. Around it: the vocabulary head evaluated a chunk of
positions at a time (`head_logps`), the KV caches of the shared-prompt forward
and `enable_grad_checkpoint`. Everything returned is float32 whatever the
model dtype. No I/O, no `mx.eval`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import mlx.core as mx

from .models import on_gpu

LSE_BLOCK = 256  # vocabulary block for an accurate logsumexp on the CPU


def logsumexp_last(x: mx.array) -> mx.array:
    """logsumexp over the last axis, as a logsumexp of per-block logsumexps.

    MLX's CPU backend sums a long axis in float32 with little pairing: over a
    49,152-token vocabulary plain `mx.logsumexp` drifted by up to 2e-4 (torch
    float32: 3e-5), enough to break gradient parity with TRL
    (tests/test_parity_trl.py). Blocks of LSE_BLOCK keep every sum short.
    """
    width = x.shape[-1]
    if width <= LSE_BLOCK:
        return mx.logsumexp(x, axis=-1)
    pad = -width % LSE_BLOCK
    if pad:  # -inf adds nothing, and every block keeps at least one real entry
        x = mx.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)], constant_values=-math.inf)
    blocks = mx.logsumexp(x.reshape(*x.shape[:-1], -1, LSE_BLOCK), axis=-1)
    return mx.logsumexp(blocks, axis=-1)


def token_logps(logits: mx.array, targets: mx.array) -> mx.array:
    """log p(target) at every position, in float32. logits (N, T, V), targets (N, T)."""
    logits = logits.astype(mx.float32)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    return picked - logsumexp_last(logits)


# Positions whose vocabulary logits exist at one time (head_logps). On the CPU, 256 bounds the logits'
# memory at no cost in speed (element-wise work is the bottleneck there, not the number of kernels). On
# a GPU each chunk adds a handful of small kernels to every step (a head matmul, a logsumexp, a gather,
# forward and backward), so a chunk there covers a whole batch of usual length (2 x 2 pairs x 512)
# while still bounding the logits of long ones. Both give the same numbers (tests/test_loss.py).
LOGIT_CHUNK_CPU = 256
LOGIT_CHUNK_GPU = 2048


def logit_chunk(gpu: bool | None = None) -> int:
    """The head_logps chunk for the CPU or a GPU (default: where MLX computes here)."""
    return LOGIT_CHUNK_GPU if (on_gpu() if gpu is None else gpu) else LOGIT_CHUNK_CPU


# Models whose forward is `head(model.model(x))` with nothing after the head (no logit soft-capping).
PLAIN_HEAD_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi", "phi3")


def head_logps(head, hidden: mx.array, targets: mx.array, chunk: int | None = None) -> mx.array:
    """log p(target) through a frozen vocabulary head, `chunk` positions at a time (default: logit_chunk()).

    Equal to token_logps(head(hidden), targets), without its memory: the full
    (positions, vocabulary) float32 logits, their exponentials and their
    gradient never exist at once. The forward keeps only each position's
    log-partition; the backward recomputes a chunk's logits and turns them into
    softmax - one_hot, so it costs one more head matmul and no more
    exponentials than plain autodiff. The gradient flows to `hidden` only: the
    head must be frozen (LoRA never adapts it).
    hidden (..., d), targets (...) -> (...) float32.
    """
    chunk = chunk or logit_chunk()
    shape = targets.shape
    flat_targets = targets.reshape(-1)
    starts = range(0, flat_targets.shape[0], chunk)

    def chunk_logits(h, start):
        return head(h[start:start + chunk]).astype(mx.float32)

    def picked(logits, start):
        return mx.take_along_axis(logits, flat_targets[start:start + chunk, None], axis=-1).squeeze(-1)

    @mx.custom_function
    def logps(h):
        parts = []
        for start in starts:
            logits = chunk_logits(h, start)
            parts.append(picked(logits, start) - logsumexp_last(logits))
        return mx.concatenate(parts)

    @logps.vjp
    def logps_vjp(h, cotangent, output):  # a one-argument function gets its primal unwrapped
        parts = []
        for start in starts:
            logits = chunk_logits(h, start)
            log_partition = picked(logits, start) - output[start:start + chunk]
            cot = cotangent[start:start + chunk, None]
            one_hot = mx.arange(logits.shape[-1])[None, :] == flat_targets[start:start + chunk, None]
            grad_logits = cot * (one_hot - mx.exp(logits - log_partition[:, None]))
            _, (grad_h,) = mx.vjp(head, [h[start:start + chunk]], [grad_logits.astype(h.dtype)])
            parts.append(grad_h)
        return mx.concatenate(parts)

    return logps(hidden.reshape(-1, hidden.shape[-1])).reshape(shape)


def model_logps(model, tokens: mx.array) -> mx.array:
    """log p(token t+1 | tokens <= t) for each row, (N, W - 1), through head_logps where the model allows."""
    if getattr(model, "model_type", None) in PLAIN_HEAD_MODEL_TYPES and hasattr(model, "model"):
        return head_logps(output_head(model), model.model(tokens[:, :-1]), tokens[:, 1:])
    return token_logps(model(tokens[:, :-1]), tokens[:, 1:])


def sequence_masks(lengths: mx.array, prompt_lengths: mx.array, width: int, prompt_in_nll: bool):
    """Masks over the T = width - 1 next-token targets of right-padded sequences.

    Target t predicts token t + 1. A target is a response token when
    prompt_len <= t + 1 < length. Returns (response_mask, nll_mask), (N, T) bool.
    """
    token_index = mx.arange(1, width)[None, :]
    in_sequence = token_index < lengths[:, None]
    response = in_sequence & (token_index >= prompt_lengths[:, None])
    return response, (in_sequence if prompt_in_nll else response)


class TokenLogps(NamedTuple):
    """The log-probabilities the ORPO objective needs, of a batch of B pairs."""
    logps: mx.array     # (2B, T) log p of each target token: rows [0, B) chosen, [B, 2B) rejected
    response: mx.array  # (2B, T) bool: the response tokens (ℓ is their mean)
    nll: list           # [(logps, float32 mask)]: the chosen rows' targets the NLL term averages over


def batch_token_logps(model, batch: dict, prompt_in_nll: bool = False) -> TokenLogps:
    """Log-probabilities of one batch of pairs.

    batch["tokens"] (2B, W) int32: rows [0, B) chosen, [B, 2B) rejected, right
    padded; batch["lengths"], batch["prompt_lengths"] (2B,) int32. When the
    batch also carries the split layout of `batching.collate`
    ("prompt_tokens", "response_tokens", "response_lengths") and the model is
    one `split_supported` accepts, each prompt runs once for both answers and
    only the positions that are scored get vocabulary logits; otherwise
    chosen and rejected run as full rows in one forward. Both give the same
    loss (tests/test_loss.py, tests/test_parity_trl.py).
    """
    if "response_tokens" in batch and split_supported(model):
        return _split_token_logps(model, batch, prompt_in_nll)
    tokens = batch["tokens"]
    n_pairs = tokens.shape[0] // 2
    logps = model_logps(model, tokens)
    response, nll_mask = sequence_masks(batch["lengths"], batch["prompt_lengths"], tokens.shape[1], prompt_in_nll)
    return TokenLogps(logps, response, [(logps[:n_pairs], nll_mask[:n_pairs].astype(mx.float32))])


# --- Shared prompt: each prompt through the model once, for both answers ---------
#
# The prompt rows (B, Wp) run first and leave every layer's keys and values
# behind; the answer rows (2B, Wr) then attend to those (masked to each
# prompt's real length) and to themselves, with RoPE positions starting at the
# prompt length. This is a KV cache used for training: gradients flow through
# the cached keys and values. mlx-lm's llama blocks accept it unchanged, since
# they read positions from `cache.offset`, keys from `cache.update_and_fetch`
# and the mask from `cache.make_mask`.

SPLIT_MODEL_TYPES = ("llama", "mistral")


def split_supported(model) -> bool:
    """Models whose blocks take the shared-prompt cache: mlx-lm llama-family, no sliding windows,
    blocks called as mlx-lm wrote them or wrapped by `enable_grad_checkpoint` (which passes the
    prompt keys and values in and out of the recomputed block, so their gradients survive)."""
    inner = getattr(model, "model", None)
    if getattr(model, "model_type", None) not in SPLIT_MODEL_TYPES or not hasattr(inner, "embed_tokens"):
        return False

    def as_written(layer):
        call = type(layer).__call__
        return getattr(call, "split_aware", False) or call.__module__ == type(model).__module__

    return all(not getattr(layer, "use_sliding", False) and as_written(layer) for layer in inner.layers)


def enable_grad_checkpoint(model) -> None:
    """Recompute each transformer block in the backward pass (mx.checkpoint): the backward keeps
    each block's input instead of its activations.

    Each block *instance* gets a private subclass; the library's classes are left alone. With
    the shared-prompt caches, the prompt pass returns its keys and values from the checkpointed
    call and the answer pass takes them as inputs, so gradients reach them.
    """
    for layer in model.layers:
        base_call = type(layer).__call__
        if getattr(base_call, "split_aware", False):  # already checkpointed: once is enough
            continue

        def checkpointed(self, x, mask=None, cache=None, _base=base_call):
            def block(params, x, *prompt_kv):
                self.update(params)
                if isinstance(cache, _PromptCache):
                    fresh = _PromptCache()
                    return _base(self, x, mask, cache=fresh), fresh.keys, fresh.values
                if isinstance(cache, _AnswerCache):
                    prompt = _PromptCache()
                    prompt.keys, prompt.values = prompt_kv
                    return _base(self, x, mask, cache=_AnswerCache(prompt, cache.offset, cache.mask))
                return _base(self, x, mask, cache=cache)

            prompt_kv = (cache.prompt.keys, cache.prompt.values) if isinstance(cache, _AnswerCache) else ()
            out = mx.checkpoint(block)(self.trainable_parameters(), x, *prompt_kv)
            if isinstance(cache, _PromptCache):
                out, cache.keys, cache.values = out
            return out

        checkpointed.split_aware = True
        layer.__class__ = type(type(layer).__name__, (type(layer),), {"__call__": checkpointed})


class _PromptCache:
    """Keeps one layer's prompt keys and values (positions start at 0, causal)."""
    offset = 0

    def update_and_fetch(self, keys, values):
        self.keys, self.values = keys, values
        return keys, values

    def make_mask(self, n, return_array=False, window_size=None):
        return "causal"


class _AnswerCache:
    """Serves one layer's answer rows: prompt keys first, then the answer's own."""

    def __init__(self, prompt: _PromptCache, offset: mx.array, mask: mx.array):
        self.prompt, self.offset, self.mask = prompt, offset, mask

    def update_and_fetch(self, keys, values):
        both = lambda x: mx.concatenate([x, x], axis=0)
        return (mx.concatenate([both(self.prompt.keys), keys], axis=2),
                mx.concatenate([both(self.prompt.values), values], axis=2))

    def make_mask(self, n, return_array=False, window_size=None):
        return self.mask


def output_head(model):
    """The vocabulary projection: lm_head, or the tied embedding."""
    if hasattr(model, "lm_head"):
        return model.lm_head
    return model.model.embed_tokens.as_linear


def answer_mask(prompt_lengths: mx.array, prompt_width: int, answer_width: int) -> mx.array:
    """(2B, 1, Wr, Wp + Wr) bool: answer token i sees the real prompt tokens and answer tokens <= i."""
    prompt_part = mx.arange(prompt_width)[None, None, :] < prompt_lengths[:, None, None]
    causal = mx.arange(answer_width)[None, :] <= mx.arange(answer_width)[:, None]
    prompt_part = mx.broadcast_to(prompt_part, (prompt_lengths.shape[0], answer_width, prompt_width))
    causal = mx.broadcast_to(causal[None], (prompt_lengths.shape[0], answer_width, answer_width))
    return mx.concatenate([prompt_part, causal], axis=-1)[:, None]


def _split_token_logps(model, batch: dict, prompt_in_nll: bool) -> TokenLogps:
    prompts, answers = batch["prompt_tokens"], batch["response_tokens"]
    n_pairs, prompt_width = prompts.shape
    answer_width = answers.shape[1]
    prompt_lengths = batch["prompt_lengths"]  # (2B,), rows as in "tokens"
    layers = model.model.layers
    prompt_caches = [_PromptCache() for _ in layers]
    prompt_hidden = model.model(prompts, cache=prompt_caches)  # (B, Wp, d), final norm applied
    mask = answer_mask(prompt_lengths, prompt_width, answer_width)
    answer_caches = [_AnswerCache(c, prompt_lengths, mask) for c in prompt_caches]
    answer_hidden = model.model(answers, cache=answer_caches)  # (2B, Wr, d)

    # Answer token 0 is predicted by the prompt's last real position, token k by answer position k - 1.
    last = (prompt_lengths[:n_pairs] - 1)[:, None, None]
    first = mx.take_along_axis(prompt_hidden, last, axis=1)
    first = mx.concatenate([first, first], axis=0)
    head = output_head(model)
    logps = head_logps(head, mx.concatenate([first, answer_hidden[:, :-1]], axis=1), answers)
    scored = mx.arange(answer_width)[None, :] < batch["response_lengths"][:, None]
    nll = [(logps[:n_pairs], scored[:n_pairs].astype(mx.float32))]
    if prompt_in_nll:  # the chosen rows' prompt tokens 1..p-1, predicted inside the prompt pass
        prompt_logps = head_logps(head, prompt_hidden[:, :-1], prompts[:, 1:])
        in_prompt = (mx.arange(1, prompt_width)[None, :] < prompt_lengths[:n_pairs, None]).astype(mx.float32)
        nll.append((prompt_logps, in_prompt))
    return TokenLogps(logps, scored, nll)
