"""The Python API's generation and pair scoring, on the real SmolLM2-135M."""

from __future__ import annotations

import math

import mlx.core as mx
import pytest

from mlx_orpo.api import generate, load_with_adapters, score_pair
from mlx_orpo.config import TrainConfig
from mlx_orpo.data import PreferencePair
from mlx_orpo.tokenize import encode_pair


@pytest.fixture(scope="module")
def model_and_tokenizer(smollm2_dir):
    return load_with_adapters("smollm2-135m")


def test_answers_cut_by_the_token_limit_end_on_a_whole_character(model_and_tokenizer):
    """Chinese answers take 1-3 tokens per character: some limits cut one, whose first bytes
    mlx-lm's final flush turns into "\ufffd". generate leaves the partial character out."""
    from mlx_lm.generate import stream_generate

    model, tokenizer = model_and_tokenizer
    # SmolLM2 answers this in Chinese, one byte-level token per byte (three per character).
    messages = [{"role": "user", "content": "Translate to Chinese: the Great Wall of China is long."}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    cut = 0
    for limit in range(1, 6):
        raw = "".join(r.text for r in stream_generate(model, tokenizer, prompt, max_tokens=limit))
        streamed = list(generate(model, tokenizer, messages, max_tokens=limit, stream=True))
        assert not any("\ufffd" in s for s in streamed), (limit, streamed)
        assert streamed[-1] == raw.rstrip("\ufffd"), (limit, raw, streamed)
        cut += raw.endswith("\ufffd")
    assert cut, "no limit cut a character: the check above proved nothing"


def test_score_pair_is_the_mean_log_probability_of_each_answer(model_and_tokenizer):
    """ℓ recomputed here from the full logits (log-softmax, response tokens only), and the log odds
    from its definition log(odds_w / odds_l), odds = e^ℓ / (1 - e^ℓ)."""
    model, tokenizer = model_and_tokenizer
    pair = PreferencePair(({"role": "user", "content": "Capital of France?"},), "Paris.", "Lyon, I think.")
    score = score_pair(model, tokenizer, pair, TrainConfig(max_length=128))
    encoded = encode_pair(tokenizer, pair)

    def mean_logp(answer):
        tokens = mx.array([list(encoded.prompt) + list(answer)])
        logits = model(tokens[:, :-1]).astype(mx.float32)
        logps = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        picked = mx.take_along_axis(logps, tokens[:, 1:, None], axis=-1)[0, :, 0]
        return picked[len(encoded.prompt) - 1:].mean().item()

    chosen, rejected = mean_logp(encoded.chosen), mean_logp(encoded.rejected)
    assert score.chosen_logps == pytest.approx(chosen, abs=2e-4)
    assert score.rejected_logps == pytest.approx(rejected, abs=2e-4)
    odds = lambda logp: logp - math.log1p(-math.exp(logp))
    assert score.log_odds == pytest.approx(odds(chosen) - odds(rejected), abs=1e-3)


def test_a_hub_model_not_yet_downloaded_fetches_its_tokenizer_alone(monkeypatch):
    """The plan comes before the weights: a Hub id's tokenizer is fetched by itself (here offline, so
    the fetch fails), and the failure names the model, not a type error of a path given as a repo id."""
    from mlx_orpo.api import load_tokenizer
    from mlx_orpo.models import ModelNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    name = "no-such-org/no-such-model"
    with pytest.raises(ModelNotFoundError, match=rf"^{name}: could not fetch {name}'s tokenizer from the Hugging Face"):
        load_tokenizer(name)
