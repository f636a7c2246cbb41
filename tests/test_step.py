"""The compiled step's inputs and shapes."""

import mlx.core as mx
from helpers import cfg_for, tiny_model

from mlx_orpo.batching import Widths, batch_shape, collate
from mlx_orpo.loss import batch_loss
from mlx_orpo.models import attach_adapters
from mlx_orpo.step import MicroBatch, OrpoStep, build_optimizer
from mlx_orpo.tokenize import EncodedPair


def pair(prompt: int, chosen: int, rejected: int, start: int = 3) -> EncodedPair:
    return EncodedPair(tuple(range(start, start + prompt)), tuple(range(5, 5 + chosen)) + (2,),
                       tuple(range(7, 7 + rejected)) + (2,))


def counting_step(tmp_path, **kw):
    """An OrpoStep on a tiny llama whose loss counts its traces (a compiled function's Python body
    runs once per new input shape)."""
    cfg = cfg_for(tmp_path, **kw)
    model = tiny_model(seed=0)
    attach_adapters(model, cfg)
    traces = []

    def loss(model, batch, prompt_in_nll=False):
        traces.append(sorted((k, tuple(v.shape)) for k, v in batch.items()))
        return batch_loss(model, batch, prompt_in_nll)

    return OrpoStep(model, cfg, build_optimizer(cfg, 10), loss=loss), traces


def test_a_shared_prompt_batch_compiles_by_its_prompt_and_answer_widths_only(tmp_path):
    step, traces = counting_step(tmp_path)
    # Prompts and answers padded to 8 in both (pad 4), full rows of 13 and then 17 tokens.
    a, b = [pair(7, 3, 3), pair(2, 7, 7)], [pair(7, 7, 7), pair(2, 3, 3)]
    batches = [collate(p, 0, 4) for p in (a, b)]
    assert [batch["tokens"].shape for batch in batches] == [(4, 13), (4, 17)]
    assert batch_shape(a, 4) == batch_shape(b, 4) == (2, 8, 8)
    for batch in batches:
        assert step([MicroBatch(batch)]).applied
    assert len(traces) == 1 and "tokens" not in dict(traces[0])
    # A full-row batch (no shared-prompt layout) keeps its rows: a second trace.
    full = {k: v for k, v in batches[0].items() if k in ("tokens", "lengths", "prompt_lengths")}
    assert step.inputs(full) is full and step([MicroBatch(full)]).applied
    assert len(traces) == 2


def test_powers_of_two_leave_fewer_shapes_to_compile(tmp_path):
    data = [pair(p, c, r, start=3 + i) for i, (p, c, r) in enumerate(
        [(3, 4, 5), (5, 9, 6), (9, 12, 10), (12, 17, 15), (17, 20, 19), (20, 26, 22), (26, 30, 31)])]
    counts = {}
    for pow2 in (False, True):
        widths = Widths(4, pow2=pow2, cap=64)
        step, traces = counting_step(tmp_path, pad_to="pow2" if pow2 else "multiple", pad_multiple=4)
        for p in data:
            step([MicroBatch(collate([p], 0, widths))])
        counts[pow2] = len(traces)
        assert counts[pow2] == len({batch_shape([p], widths) for p in data})
    assert counts[True] < counts[False]


def test_padding_to_powers_of_two_changes_no_loss_metric_or_gradient(tmp_path):
    from mlx.utils import tree_flatten

    step, _ = counting_step(tmp_path)
    pairs = [pair(9, 13, 5), pair(6, 11, 14, start=9)]
    results = []
    for widths in (Widths(1), Widths(4, pow2=True, cap=64)):
        metrics, grads = step.gradients(MicroBatch(collate(pairs, 0, widths)))
        mx.eval(metrics, grads)
        results.append((metrics, dict(tree_flatten(grads))))
    (m1, g1), (m2, g2) = results
    assert collate(pairs, 0, Widths(4, pow2=True, cap=64))["response_tokens"].shape == (4, 16)  # 15 -> 16
    for k in m1:
        assert mx.allclose(m1[k], m2[k], rtol=1e-5, atol=1e-6).item(), k
    for k in g1:
        assert mx.allclose(g1[k], g2[k], rtol=1e-4, atol=1e-7).item(), k
