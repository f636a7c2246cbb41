"""The ORPO objective (Hong et al., 2024), as pure functions.

    L = L_NLL + λ · L_OR,    L_OR = -log σ(log_odds)
    log_odds = log(odds(y_w) / odds(y_l)),   odds(y) = P(y|x) / (1 - P(y|x))

where P is the length-normalised likelihood: log P = ℓ, the mean per-token
log-probability of the response tokens (prompt masked). Everything here is
computed in float32 whatever the model dtype. No I/O, no `mx.eval`.
"""

from __future__ import annotations

import math

import mlx.core as mx

LN2 = math.log(2.0)
# ℓ = 0 exactly (probability 1) makes the odds infinite and the gradient NaN;
# keep ℓ a hair below 0 (no effect on any ℓ a real response has).
MAX_LOGP = -1e-7
LSE_BLOCK = 256  # vocabulary block for an accurate logsumexp on the CPU


def log1mexp(x: mx.array) -> mx.array:
    """log(1 - e^x) for x < 0, stable everywhere (Mächler, 2012).

    Near 0⁻, 1 - e^x cancels: use log(-expm1(x)). Far below, e^x underflows
    relative to 1: use log1p(-e^x). The branch point is -ln 2. Each branch gets
    an input clamped into its own safe range, so the branch that `where` does
    not select cannot send inf/NaN into the gradient.
    """
    x = mx.minimum(x.astype(mx.float32), MAX_LOGP)
    near_zero = mx.log(-mx.expm1(mx.maximum(x, -LN2)))
    far = mx.log1p(-mx.exp(mx.minimum(x, -LN2)))
    return mx.where(x > -LN2, near_zero, far)


def log_sigmoid(x: mx.array) -> mx.array:
    return -mx.logaddexp(mx.zeros_like(x), -x)


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


def masked_mean(values: mx.array, mask: mx.array) -> mx.array:
    """Mean over the last axis where mask is set (per sequence)."""
    mask = mask.astype(mx.float32)
    return (values * mask).sum(-1) / mx.maximum(mask.sum(-1), 1.0)


def log_odds(chosen_logps: mx.array, rejected_logps: mx.array) -> mx.array:
    """log(odds(y_w) / odds(y_l)) from mean per-token log-probabilities ℓ."""
    return (chosen_logps - rejected_logps) - (log1mexp(chosen_logps) - log1mexp(rejected_logps))


def orpo_loss(chosen_logps: mx.array, rejected_logps: mx.array, nll: mx.array, beta: float):
    """ORPO loss and TRL-named metrics (all lazy scalars).

    chosen_logps, rejected_logps: ℓ per pair, shape (B,). nll: the SFT term, a
    scalar. beta: λ in the paper (TRL calls it beta).
    Returns (loss, metrics).
    """
    chosen_logps = chosen_logps.astype(mx.float32)
    rejected_logps = rejected_logps.astype(mx.float32)
    odds = log_odds(chosen_logps, rejected_logps)
    # Each mean is built once and reused: identical graph nodes returned twice
    # from an mx.compile'd function trip MLX's common-subexpression pass.
    mean_log_sigmoid = log_sigmoid(odds).mean()
    loss = nll - beta * mean_log_sigmoid
    chosen_rewards = beta * chosen_logps
    rejected_rewards = beta * rejected_logps
    metrics = {
        "loss": loss,
        "nll_loss": nll,
        "log_odds_ratio": mean_log_sigmoid,
        "log_odds_chosen": odds.mean(),
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).astype(mx.float32).mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": chosen_logps.mean(),
        "logps/rejected": rejected_logps.mean(),
    }
    return loss, metrics


def sequence_masks(lengths: mx.array, prompt_lengths: mx.array, width: int, prompt_in_nll: bool):
    """Masks over the T = width - 1 next-token targets of right-padded sequences.

    Target t predicts token t + 1. A target is a response token when
    prompt_len <= t + 1 < length. Returns (response_mask, nll_mask), (N, T) bool.
    """
    token_index = mx.arange(1, width)[None, :]
    in_sequence = token_index < lengths[:, None]
    response = in_sequence & (token_index >= prompt_lengths[:, None])
    return response, (in_sequence if prompt_in_nll else response)


def batch_loss(model, batch: dict, beta: float, prompt_in_nll: bool = False):
    """ORPO loss of one batch of pairs run through the model in one forward.

    batch["tokens"] (2B, W) int32: rows [0, B) chosen, [B, 2B) rejected, right
    padded; batch["lengths"], batch["prompt_lengths"] (2B,) int32.
    Returns (loss, metrics); metrics["tokens"] counts non-pad tokens.
    """
    tokens = batch["tokens"]
    n_pairs = tokens.shape[0] // 2
    logits = model(tokens[:, :-1])
    logps = token_logps(logits, tokens[:, 1:])
    response, nll_mask = sequence_masks(batch["lengths"], batch["prompt_lengths"], tokens.shape[1], prompt_in_nll)
    seq_logps = masked_mean(logps, response)
    chosen_nll_mask = nll_mask[:n_pairs].astype(mx.float32)
    nll = -(logps[:n_pairs] * chosen_nll_mask).sum() / mx.maximum(chosen_nll_mask.sum(), 1.0)
    loss, metrics = orpo_loss(seq_logps[:n_pairs], seq_logps[n_pairs:], nll, beta)
    metrics["tokens"] = batch["lengths"].sum()
    return loss, metrics
