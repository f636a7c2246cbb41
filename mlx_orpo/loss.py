"""The ORPO objective (Hong et al., 2024), as pure functions.

    L = L_NLL + λ · L_OR,    L_OR = -log σ(log_odds)
    log_odds = log(odds(y_w) / odds(y_l)),   odds(y) = P(y|x) / (1 - P(y|x))

where P is the length-normalised likelihood: log P = ℓ, the mean per-token
log-probability of the response tokens (prompt masked). Every function here
takes log-probabilities; `batch_loss`, at the end, takes them from the model
through `forward.batch_token_logps`. Everything is computed in float32 whatever
the model dtype. No I/O, no `mx.eval`.
"""

from __future__ import annotations

import math

import mlx.core as mx

from .forward import batch_token_logps

LN2 = math.log(2.0)
# ℓ = 0 exactly (probability 1) makes the odds infinite and the gradient NaN;
# keep ℓ a hair below 0 (no effect on any ℓ a real response has).
MAX_LOGP = -1e-7


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
        # ℓ_w > ℓ_l: TRL compares λ·ℓ, the same for λ > 0, but always 0 for plain SFT (λ = 0).
        "rewards/accuracies": (chosen_logps > rejected_logps).astype(mx.float32).mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": chosen_logps.mean(),
        "logps/rejected": rejected_logps.mean(),
    }
    return loss, metrics


def nll_mean(parts: list) -> mx.array:
    """The NLL term: minus the mean log-probability over every masked target of [(logps, mask), ...]."""
    (logps, mask), rest = parts[0], parts[1:]
    total, count = -(logps * mask).sum(), mask.sum()
    for logps, mask in rest:
        total = total - (logps * mask).sum()
        count = count + mask.sum()
    return total / mx.maximum(count, 1.0)


def batch_loss(model, batch: dict, beta: float, prompt_in_nll: bool = False):
    """ORPO loss of one batch of pairs (`batching.collate`'s dict): the model's log-probabilities
    (forward.batch_token_logps, either batch layout), then ℓ per sequence, the NLL term and orpo_loss.
    Returns (loss, metrics); metrics["tokens"] counts non-pad tokens.
    """
    out = batch_token_logps(model, batch, prompt_in_nll)
    n_pairs = out.logps.shape[0] // 2
    seq_logps = masked_mean(out.logps, out.response)
    loss, metrics = orpo_loss(seq_logps[:n_pairs], seq_logps[n_pairs:], nll_mean(out.nll), beta)
    metrics["tokens"] = batch["lengths"].sum()
    return loss, metrics
