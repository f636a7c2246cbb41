"""The ORPO objective (Hong et al., 2024), as pure functions.

    L = L_NLL + λ · L_OR,    L_OR = -log σ(log_odds)
    log_odds = log(odds(y_w) / odds(y_l)),   odds(y) = P(y|x) / (1 - P(y|x))

where P is the length-normalised likelihood: log P = ℓ, the mean per-token
log-probability of the response tokens (prompt masked). Every function here
takes log-probabilities; `batch_loss`, at the end, takes them from the model
through `forward.batch_token_logps` and returns the objective's parts (per pair ℓ,
the NLL term's sum and count); `orpo_loss` alone turns parts into the loss and its
metrics. Everything is computed in float32 whatever
the model dtype. No I/O, no `mx.eval`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

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


# The TRL names of the metrics `orpo_loss` returns, in the order the trainer reduces and reports them.
METRIC_KEYS = ("loss", "nll_loss", "log_odds_ratio", "log_odds_chosen", "rewards/chosen", "rewards/rejected",
               "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected")


class LossParts(NamedTuple):
    """What the objective is made of, before any mean: per pair ℓ_w and ℓ_l, and the NLL term's sum
    and token count. Means over data-parallel ranks or a whole held-out set divide by the total
    counts once (`orpo_loss`'s `nll_tokens` and `pairs`)."""
    chosen_logps: mx.array    # ℓ_w per pair, (B,)
    rejected_logps: mx.array  # ℓ_l per pair, (B,)
    nll_sum: mx.array         # minus the summed log-probability of the NLL term's targets (scalar)
    nll_tokens: mx.array      # how many targets that is (scalar, float32)

    @staticmethod
    def concatenate(parts: list[LossParts]) -> LossParts:
        """The parts of several batches as one (the pairs in order, the NLL sums added)."""
        return LossParts(mx.concatenate([p.chosen_logps for p in parts]),
                         mx.concatenate([p.rejected_logps for p in parts]),
                         sum(p.nll_sum for p in parts), sum(p.nll_tokens for p in parts))


def orpo_loss(parts: LossParts, beta: float, nll_tokens=None, pairs=None):
    """ORPO loss and TRL-named metrics (METRIC_KEYS; all lazy scalars): the one place the objective
    is written.

    beta: λ in the paper (TRL calls it beta). The NLL term is parts.nll_sum / nll_tokens and every
    pair term a sum over the pairs / `pairs`; both default to the parts' own counts. A share of a
    larger batch (a rank's shard of the global batch) passes the larger batch's counts, so the shares'
    losses add up to the larger batch's.
    Returns (loss, metrics).
    """
    chosen_logps = parts.chosen_logps.astype(mx.float32)
    rejected_logps = parts.rejected_logps.astype(mx.float32)
    nll_tokens = parts.nll_tokens if nll_tokens is None else nll_tokens
    # A mean as `mx.mean` takes it (the sum times 1/n), so a batch alone gives its means' very bits.
    per_pair = 1.0 / (chosen_logps.shape[0] if pairs is None else pairs)
    odds = log_odds(chosen_logps, rejected_logps)
    # Each mean is built once, and the loss reuses the metrics' own: identical graph nodes returned
    # twice from an mx.compile'd function trip MLX's common-subexpression pass.
    chosen_rewards = beta * chosen_logps
    rejected_rewards = beta * rejected_logps
    metrics = {
        "nll_loss": parts.nll_sum / mx.maximum(nll_tokens, 1.0),
        "log_odds_ratio": log_sigmoid(odds).sum() * per_pair,  # mean log σ(log odds) = -L_OR
        "log_odds_chosen": odds.sum() * per_pair,
        "rewards/chosen": chosen_rewards.sum() * per_pair,
        "rewards/rejected": rejected_rewards.sum() * per_pair,
        # ℓ_w > ℓ_l: TRL compares λ·ℓ, the same for λ > 0, but always 0 for plain SFT (λ = 0).
        "rewards/accuracies": (chosen_logps > rejected_logps).astype(mx.float32).sum() * per_pair,
        "rewards/margins": (chosen_rewards - rejected_rewards).sum() * per_pair,
        "logps/chosen": chosen_logps.sum() * per_pair,
        "logps/rejected": rejected_logps.sum() * per_pair,
    }
    metrics["loss"] = metrics["nll_loss"] - beta * metrics["log_odds_ratio"]
    return metrics["loss"], metrics


def batch_loss(model, batch: dict, prompt_in_nll: bool = False) -> LossParts:
    """The objective's parts for one batch of pairs (`batching.collate`'s dict): the model's
    log-probabilities (forward.batch_token_logps, either batch layout), ℓ per sequence and the NLL
    term's sum and count. `orpo_loss(parts, beta)` makes the loss of it."""
    out = batch_token_logps(model, batch, prompt_in_nll)
    n_pairs = out.logps.shape[0] // 2
    seq_logps = masked_mean(out.logps, out.response)
    (logps, mask), rest = out.nll[0], out.nll[1:]
    nll_sum, nll_tokens = -(logps * mask).sum(), mask.sum()
    for logps, mask in rest:
        nll_sum = nll_sum - (logps * mask).sum()
        nll_tokens = nll_tokens + mask.sum()
    return LossParts(seq_logps[:n_pairs], seq_logps[n_pairs:], nll_sum, nll_tokens)


def batch_objective(model, batch: dict, beta: float, prompt_in_nll: bool = False):
    """(loss, metrics) of one batch alone: `orpo_loss(batch_loss(...), beta)`."""
    return orpo_loss(batch_loss(model, batch, prompt_in_nll), beta)
