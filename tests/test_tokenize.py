"""Chat-template rendering, the prompt/response boundary, truncation and batching."""

import pytest

from mlx_orpo.batching import Widths, collate, epoch_batches, positions
from mlx_orpo.config import TrainConfig
from mlx_orpo.data import PreferencePair
from mlx_orpo.tokenize import (
    FALLBACK_CHAT_TEMPLATE,
    EncodedPair,
    encode_pair,
    encode_pairs,
    ensure_chat_template,
    fit_to_length,
    render_prompt,
)


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_dir))


PAIR = PreferencePair(
    prompt=({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Spain?"}),
    chosen="Madrid.", rejected="I think it is Barcelona, but I am not sure.")


def test_prompt_and_response_concatenate_to_the_full_template(tokenizer):
    enc = encode_pair(tokenizer, PAIR)
    full = tokenizer.apply_chat_template(list(PAIR.prompt) + [{"role": "assistant", "content": "Madrid."}],
                                         tokenize=False)
    assert tokenizer.decode(list(enc.prompt + enc.chosen)) == full.rstrip("\n")
    assert tokenizer.decode(list(enc.prompt)) == render_prompt(tokenizer, PAIR.prompt)
    # The response ends with the end-of-turn token, so the model learns to stop.
    assert enc.chosen[-1] == tokenizer.eos_token_id and enc.rejected[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(list(enc.chosen)) == "Madrid.<|im_end|>"


def test_boundary_tokens_do_not_merge(tokenizer):
    """A response starting with characters that would merge with the prompt's last token
    is tokenized on its own: the prompt ids are a prefix, whatever the answer."""
    pair = PreferencePair(prompt=({"role": "user", "content": "Say x"},), chosen="\nxx", rejected="yy")
    enc = encode_pair(tokenizer, pair)
    assert enc.prompt == tuple(tokenizer.encode(render_prompt(tokenizer, pair.prompt), add_special_tokens=False))
    assert len(enc.chosen) >= 2


def test_fallback_template_for_tokenizers_without_one(tokenizer):
    import copy

    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    assert ensure_chat_template(bare) is False
    assert bare.chat_template == FALLBACK_CHAT_TEMPLATE
    text = render_prompt(bare, [{"role": "user", "content": "Hi"}])
    assert text == "### User:\nHi\n\n### Assistant:\n"


def test_fit_keeps_short_pairs_untouched():
    pair = EncodedPair((1, 2, 3), (4, 5), (6,))
    assert fit_to_length(pair, 10, 4, 1) == (pair, False)


def test_fit_cuts_prompt_from_the_left_first():
    """Prompt 8, longest response 4, max 10: the prompt keeps its last 6 tokens, responses intact."""
    pair = EncodedPair(tuple(range(8)), (10, 11, 12, 13), (20, 21))
    fitted, truncated = fit_to_length(pair, 10, max_prompt_length=4, min_response_length=2)
    assert truncated and fitted.prompt == (2, 3, 4, 5, 6, 7) and fitted.chosen == (10, 11, 12, 13)


def test_fit_then_cuts_responses_from_the_right():
    """Prompt 8 (max prompt 4), responses 9 and 3, max 10: prompt -> last 4, responses -> first 6."""
    pair = EncodedPair(tuple(range(8)), tuple(range(100, 109)), (200, 201, 202))
    fitted, _ = fit_to_length(pair, 10, max_prompt_length=4, min_response_length=2)
    assert fitted.prompt == (4, 5, 6, 7)
    assert fitted.chosen == (100, 101, 102, 103, 104, 105) and fitted.rejected == (200, 201, 202)
    assert fitted.length <= 10


def test_fit_drops_rather_than_emptying_a_response():
    """max 10, max prompt 9: one response token would be left, below the minimum 2 -> dropped."""
    pair = EncodedPair(tuple(range(12)), (1, 2, 3), (4, 5))
    assert fit_to_length(pair, 10, max_prompt_length=9, min_response_length=2) == (None, True)


def test_encode_pairs_never_yields_an_empty_response(tokenizer, shared_data):
    from mlx_orpo.data import load_pairs

    pairs, _ = load_pairs(str(shared_data))
    encoded, stats = encode_pairs(tokenizer, pairs, max_length=512, max_prompt_length=256, min_response_length=8)
    assert stats.truncated > 0  # this file has long rows: the policy is exercised
    assert stats.pairs + stats.dropped == len(pairs)
    assert all(min(len(e.chosen), len(e.rejected)) >= 1 and e.length <= 512 for e in encoded)


def test_epoch_batches_are_deterministic_length_grouped_and_complete():
    pairs = [EncodedPair((1,) * n, (2,), (3,)) for n in [5, 50, 6, 51, 7, 52, 8]]
    a = epoch_batches(pairs, 2, seed=1, epoch=0)
    assert a == epoch_batches(pairs, 2, seed=1, epoch=0)
    assert a[1:] != epoch_batches(pairs, 2, seed=1, epoch=1)[1:]
    assert sorted(i for b in a for i in b) == list(range(7))
    spans = [max(pairs[i].length for i in b) - min(pairs[i].length for i in b) for b in a]
    assert max(spans) < 40  # short and long pairs are not mixed


def test_the_batch_with_the_most_positions_comes_first():
    # Lengths 3..40, prompts of 1..5 tokens; 38 pairs in batches of 4: nine full batches and one of 2
    # (the longest pairs: a short batch is never the largest).
    pairs = [EncodedPair((1,) * (1 + n % 5), (2,) * n, (3,) * (n // 2 + 1)) for n in range(3, 41)]
    for seed in range(5):
        for epoch in range(3):
            batches = epoch_batches(pairs, 4, seed, epoch, widths=8)
            sizes = [positions([pairs[i] for i in b], 8) for b in batches]
            assert sizes[0] == max(sizes) and len(batches[0]) == 4
            assert sorted(len(b) for b in batches) == [2] + [4] * 9
            assert len({tuple(b) for b in batches[1:]}) == 9
    orders = {tuple(map(tuple, epoch_batches(pairs, 4, 0, epoch, widths=8)[1:])) for epoch in range(4)}
    assert len(orders) == 4  # the rest is shuffled per epoch


def test_positions_count_what_collate_runs():
    cases = [[EncodedPair((1,) * 30, (2,) * 5, (3,) * 9), EncodedPair((1,) * 28, (2,) * 7, (3,) * 2)],
             [EncodedPair((1,) * 40, (2,) * 4, (3,) * 4), EncodedPair((1,) * 4, (2,) * 40, (3,) * 40)]]
    for pairs in cases:
        for widths in (1, 8, Widths(8, pow2=True)):
            batch = collate(pairs, 0, widths)
            if "response_tokens" in batch:
                assert positions(pairs, widths) == batch["prompt_tokens"].size + batch["response_tokens"].size
            else:  # a full row runs all but its last token
                assert positions(pairs, widths) == batch["tokens"].shape[0] * (batch["tokens"].shape[1] - 1)
            rows = batch["tokens"].shape
            assert positions(pairs, widths, shared_prompt=False) == rows[0] * (rows[1] - 1)


def test_widths_are_multiples_or_powers_of_two_times_the_multiple_capped_at_the_longest_row():
    assert [Widths(32)(n) for n in (0, 1, 32, 33, 300)] == [32, 32, 32, 64, 320]
    pow2 = Widths(32, pow2=True, cap=600)
    assert [pow2(n) for n in (1, 32, 33, 65, 129, 300, 513, 600)] == [32, 32, 64, 128, 256, 512, 608, 608]
    assert len({pow2(n) for n in range(1, 601)}) == 6  # 32, 64, 128, 256, 512 and the cap
    assert Widths(8, pow2=True)(9) == 16 and Widths(1, pow2=True)(5) == 8


def test_pad_to_auto_is_pow2_on_a_gpu_and_multiples_on_the_cpu():
    cfg = TrainConfig(max_length=512, pad_multiple=16)
    assert Widths.for_config(cfg, gpu=True) == Widths(16, pow2=True, cap=512)
    assert Widths.for_config(cfg, gpu=False) == Widths(16, pow2=False, cap=512)
    assert Widths.for_config(TrainConfig(pad_to="pow2"), gpu=False).pow2
    assert not Widths.for_config(TrainConfig(pad_to="multiple"), gpu=True).pow2
    with pytest.raises(ValueError, match="--pad-to"):
        TrainConfig(pad_to="pow3").validate()


def test_pad_multiple_defaults_to_128_on_cuda_and_32_elsewhere(monkeypatch):
    import mlx.core as mx

    import mlx_orpo.batching as batching

    cfg = TrainConfig()
    assert Widths.for_config(cfg, gpu=False).multiple == Widths.for_config(cfg, gpu=True).multiple == 32
    # This machine as a CUDA one (cuDNN's attention backward wants multiples of 128).
    monkeypatch.setattr(batching, "on_gpu", lambda: True)
    monkeypatch.setattr(mx.cuda, "is_available", lambda: True)
    assert Widths.for_config(cfg) == Widths(128, pow2=True, cap=1024)
    assert Widths.for_config(cfg, gpu=False) == Widths(32, pow2=False, cap=1024)
    assert Widths.for_config(TrainConfig(pad_multiple=64)).multiple == 64
    assert all(Widths.for_config(cfg)(n) % 128 == 0 for n in range(1, 1025))


def test_collate_layout_and_padding():
    pairs = [EncodedPair((1, 2), (3,), (4, 5)), EncodedPair((6,), (7, 8, 9), (10,))]
    batch = collate(pairs, pad_id=0, widths=8)
    assert batch["tokens"].shape == (4, 9)  # 8 positions run, and the last token as a target
    assert batch["tokens"].tolist()[0][:4] == [1, 2, 3, 0]
    assert batch["tokens"].tolist()[2][:4] == [1, 2, 4, 5]
    assert batch["lengths"].tolist() == [3, 4, 4, 2]
    assert batch["prompt_lengths"].tolist() == [2, 1, 2, 1]


def test_the_largest_batch_is_counted_as_the_model_runs_it():
    # Split, a long prompt with short answers runs few positions; as full rows it runs the most.
    pairs = [EncodedPair((1,) * 100, (2,) * 400, (3,) * 400), EncodedPair((1,) * 100, (2,) * 400, (3,) * 400),
             EncodedPair((1,) * 500, (2,) * 100, (3,) * 100), EncodedPair((1,) * 500, (2,) * 100, (3,) * 100)]
    shared = epoch_batches(pairs, 2, seed=0, epoch=0, widths=32)
    full_rows = epoch_batches(pairs, 2, seed=0, epoch=0, widths=32, shared_prompt=False)
    assert set(shared[0]) == {0, 1} and set(full_rows[0]) == {2, 3}


def test_checkpoints_from_before_largest_first_keep_their_order():
    """largest_first=False is the order of the earlier code: the same shuffle, nothing moved."""
    import numpy as np

    pairs = [EncodedPair((1,) * (n % 7 + 1), (2,) * n, (3,) * (n % 5 + 1)) for n in range(3, 30)]
    for seed, epoch in [(0, 0), (3, 1), (7, 4)]:
        rng = np.random.default_rng([seed, epoch])
        shuffled = rng.permutation(len(pairs))
        by_length = sorted(shuffled, key=lambda i: (pairs[i].length, len(pairs[i].prompt)))
        chunks = [by_length[i:i + 4] for i in range(0, len(by_length), 4)]
        earlier = [[int(i) for i in chunks[j]] for j in rng.permutation(len(chunks))]
        assert epoch_batches(pairs, 4, seed, epoch, widths=8, largest_first=False) == earlier
        moved = epoch_batches(pairs, 4, seed, epoch, widths=8)
        assert moved[1:] == [b for b in earlier if b != moved[0]]
