"""ORPO loss: expected numbers derived by hand (see each docstring)."""

import math
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from helpers import tiny_model

from mlx_orpo.forward import LOGIT_CHUNK_CPU, LOGIT_CHUNK_GPU, head_logps, logit_chunk, sequence_masks, token_logps
from mlx_orpo.loss import LossParts, batch_objective, log1mexp, log_odds, orpo_loss


def close(a, b, rel=1e-5, abs_=0.0):
    return a == pytest.approx(b, rel=rel, abs=abs_)


def test_log1mexp_near_zero_uses_expm1():
    """log(1 - e^x) at x = -1e-5: 1 - e^x = 1e-5 - 5e-11 + ..., so ln ≈ -11.5129305.

    The naive float32 form loses digits to cancellation."""
    got = log1mexp(mx.array([-1e-5, -1e-3], dtype=mx.float32)).tolist()
    assert close(got[0], -11.512930464966061)
    assert close(got[1], -6.908255237315471)
    # The naive form in float32 at -1e-6: 1 - e^x keeps one significant digit.
    naive = float(np.log(np.float32(1.0) - np.exp(np.float32(-1e-6))))
    exact = math.log(-math.expm1(-1e-6))
    assert not close(naive, exact, rel=1e-3)
    assert close(log1mexp(mx.array([-1e-6])).item(), exact)


def test_log1mexp_far_below_uses_log1p():
    """At x = -50, 1 - e^x rounds to 1 in float32 but ln(1 - e^-50) = -e^-50 - ... = -1.92875e-22."""
    got = log1mexp(mx.array([-50.0])).item()
    assert close(got, -1.9287498479639178e-22)
    assert close(log1mexp(mx.array([-math.log(2)])).item(), -math.log(2))  # the branch point: ln(1/2)


def test_log1mexp_at_zero_is_finite_with_finite_gradient():
    value, grad = mx.value_and_grad(lambda x: log1mexp(x).sum())(mx.array([0.0, -1e-12, -0.5, -80.0]))
    assert np.isfinite(np.array(value)).all() and np.isfinite(np.array(grad)).all()


def test_log_odds_by_hand():
    """ℓc = ln 0.5, ℓr = ln 0.25: odds 1 and 1/3, so log odds ratio = ln 3."""
    got = log_odds(mx.array([math.log(0.5)]), mx.array([math.log(0.25)])).item()
    assert close(got, math.log(3.0))


def test_orpo_loss_and_metrics_by_hand():
    """Pair 1: P(c)=0.5, P(r)=0.25 -> log odds ln 3, log σ = ln(3/4).
    Pair 2: P(c)=0.2, P(r)=0.6 -> odds 1/4 and 3/2, log odds ln(1/6), log σ = ln(1/7).
    λ = 0.5, NLL = 6 / 3 tokens = 2.0: loss = 2 - 0.5 · (ln .75 + ln(1/7)) / 2."""
    c = mx.array([math.log(0.5), math.log(0.2)])
    r = mx.array([math.log(0.25), math.log(0.6)])
    loss, m = orpo_loss(LossParts(c, r, nll_sum=mx.array(6.0), nll_tokens=mx.array(3.0)), beta=0.5)
    mean_ls = (math.log(0.75) + math.log(1 / 7)) / 2
    assert close(loss.item(), 2.0 - 0.5 * mean_ls)
    assert close(m["log_odds_ratio"].item(), mean_ls)
    assert close(m["log_odds_chosen"].item(), (math.log(3) + math.log(1 / 6)) / 2)
    assert close(m["rewards/chosen"].item(), 0.5 * (math.log(0.5) + math.log(0.2)) / 2)
    assert close(m["rewards/accuracies"].item(), 0.5)
    assert close(m["rewards/margins"].item(), 0.5 * (math.log(2) + math.log(1 / 3)) / 2)
    assert close(m["logps/rejected"].item(), (math.log(0.25) + math.log(0.6)) / 2)


def test_lambda_zero_is_plain_nll():
    parts = LossParts(mx.array([-1.0, -2.0]), mx.array([-0.5, -3.0]), mx.array(1.2345), mx.array(1.0))
    loss, m = orpo_loss(parts, beta=0.0)
    assert loss.item() == pytest.approx(1.2345) and m["nll_loss"].item() == pytest.approx(1.2345)
    assert m["rewards/accuracies"].item() == 0.5  # still measured under plain SFT: pair 2 prefers chosen


def test_shares_divided_by_the_whole_counts_add_up_to_the_whole():
    """One pair per share; NLL sums 3 over 2 tokens and 5 over 6: the whole's NLL is 8 / 8 = 1, not
    the mean of 1.5 and 0.83. Each share divided by the whole's counts (8 tokens, 2 pairs) adds up."""
    a = LossParts(mx.array([math.log(0.5)]), mx.array([math.log(0.25)]), mx.array(3.0), mx.array(2.0))
    b = LossParts(mx.array([math.log(0.2)]), mx.array([math.log(0.6)]), mx.array(5.0), mx.array(6.0))
    whole_loss, whole = orpo_loss(LossParts.concatenate([a, b]), beta=0.5)
    (loss_a, share_a), (loss_b, share_b) = (orpo_loss(p, beta=0.5, nll_tokens=8.0, pairs=2) for p in (a, b))
    assert close(whole["nll_loss"].item(), 1.0)
    assert close(whole_loss.item(), 1.0 - 0.5 * (math.log(0.75) + math.log(1 / 7)) / 2)
    assert close(loss_a.item() + loss_b.item(), whole_loss.item())
    for key in whole:
        assert close(share_a[key].item() + share_b[key].item(), whole[key].item()), key


def test_token_logps_is_log_softmax_pick():
    logits = mx.array([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])
    got = token_logps(logits, mx.array([[2, 1]])).tolist()[0]
    assert close(got[0], 3.0 - math.log(math.exp(1) + math.exp(2) + math.exp(3)))
    assert close(got[1], -math.log(3.0))


@pytest.mark.parametrize("quantized", [False, True])
def test_chunked_head_logps_equal_the_full_logits(quantized):
    """Values and gradients (to the hidden states) of head_logps, 5 positions at a time over 3 x 7
    positions (a ragged last chunk), against autodiff through the whole logits."""
    mx.random.seed(0)
    head = nn.Linear(64, 300, bias=False)
    if quantized:
        head = nn.QuantizedLinear.from_linear(head)
    hidden, targets = mx.random.normal((3, 7, 64)), mx.random.randint(0, 300, (3, 7))
    weights = mx.random.normal((3, 7))  # a cotangent that differs per position

    def total(fn):
        return lambda h: (fn(h) * weights).sum()

    chunked = lambda h: head_logps(head, h, targets, chunk=5)
    reference = lambda h: token_logps(head(h), targets)
    assert np.abs(np.array(chunked(hidden) - reference(hidden))).max() < 1e-5
    expected = np.array(mx.grad(total(reference))(hidden))
    for grad_fn in (mx.grad(total(chunked)), mx.compile(mx.grad(total(chunked)))):
        got = np.array(grad_fn(hidden))
        assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_cpu_and_gpu_logit_chunks_give_equal_results():
    """forward.logit_chunk sizes head_logps' chunk per backend (256 on the CPU, larger on a GPU):
    over 600 positions (three CPU chunks, one GPU chunk) values and gradients agree, and both
    agree with one whole-sequence chunk."""
    assert logit_chunk(gpu=False) == LOGIT_CHUNK_CPU == 256 and logit_chunk(gpu=True) == LOGIT_CHUNK_GPU > 600
    mx.random.seed(1)
    head = nn.Linear(32, 500, bias=False)
    hidden, targets = mx.random.normal((2, 300, 32)), mx.random.randint(0, 500, (2, 300))
    weights = mx.random.normal((2, 300))
    results = []
    for chunk in (logit_chunk(gpu=False), logit_chunk(gpu=True), 600):
        fn = lambda h, chunk=chunk: (head_logps(head, h, targets, chunk=chunk) * weights).sum()
        value, grad = mx.value_and_grad(fn)(hidden)
        results.append((value.item(), np.array(grad)))
    for value, grad in results[1:]:
        assert close(value, results[0][0], rel=1e-6)
        assert np.abs(grad - results[0][1]).max() <= 1e-6 * np.abs(results[0][1]).max()


def test_masks_cover_exactly_the_response_tokens():
    """Row 0: 7 tokens, prompt 3 -> targets t=2..5 predict tokens 3..6 (response).
    Row 1: 4 tokens, prompt 2 -> targets t=1,2. Width 8 -> 7 targets per row."""
    response, nll = sequence_masks(mx.array([7, 4]), mx.array([3, 2]), width=8, prompt_in_nll=False)
    assert response.tolist() == [[0, 0, 1, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0, 0]]
    assert nll.tolist() == response.tolist()
    _, with_prompt = sequence_masks(mx.array([7, 4]), mx.array([3, 2]), width=8, prompt_in_nll=True)
    assert with_prompt.tolist() == [[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0]]


def tiny_batch():
    # Two pairs sharing prompts; chosen and rejected differ in their responses; right padded.
    chosen = [[1, 5, 6, 7, 10, 11, 12, 2], [1, 8, 9, 13, 14, 2]]
    rejected = [[1, 5, 6, 7, 20, 21, 2], [1, 8, 9, 22, 23, 24, 25, 2]]
    rows = chosen + rejected
    tokens = np.zeros((4, 8), dtype=np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    return {"tokens": mx.array(tokens), "lengths": mx.array([len(r) for r in rows]),
            "prompt_lengths": mx.array([4, 3, 4, 3])}


def test_batch_loss_ignores_padding_and_prompt():
    """Changing pad tokens or prompt-only tokens' *targets* must not change ℓ."""
    model, batch = tiny_model(), tiny_batch()
    _, m1 = batch_objective(model, batch, beta=0.1)
    padded = dict(batch, tokens=mx.where(batch["tokens"] == 0, 49, batch["tokens"]))
    _, m2 = batch_objective(model, padded, beta=0.1)
    for key in ("logps/chosen", "logps/rejected", "nll_loss", "loss"):
        assert close(m1[key].item(), m2[key].item(), rel=1e-6)


def test_gradient_step_raises_chosen_minus_rejected():
    model, batch = tiny_model(seed=3), tiny_batch()
    model.freeze()
    model.unfreeze(keys=["weight"], recurse=True)
    loss_and_grad = nn.value_and_grad(model, partial(batch_objective, beta=1.0))
    (_, before), grads = loss_and_grad(model, batch)
    optimizer = __import__("mlx.optimizers", fromlist=["SGD"]).SGD(learning_rate=0.5)
    optimizer.update(model, grads)
    _, after = batch_objective(model, batch, beta=1.0)
    margin = lambda m: m["logps/chosen"].item() - m["logps/rejected"].item()
    assert margin(after) > margin(before)
    assert after["loss"].item() < before["loss"].item()
