"""What the tests, the benchmarks and the scripts measure with: the shared preference set's path, a
tiny random llama, and one training step's measured peak memory on a random llama of a given shape
(what the memory planner is calibrated and tested against: `tests/test_plan.py` and
`scripts/fit_plan.py` share these shapes and this measurement; it runs the trainer's own `step.OrpoStep`).
"""

from __future__ import annotations

import math
from pathlib import Path

from .config import TrainConfig

# The real 300-pair preference set beside the repository (../shared/data, see its README): tests and
# scripts that use it skip, or fall back to the shipped demo set, where it is absent.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dpo_en_demo.json"


def tiny_model(seed: int = 0):
    """A random two-block llama with a 50-token vocabulary: the unit tests' model."""
    import mlx.core as mx
    from mlx_lm.models import llama

    mx.random.seed(seed)
    args = llama.ModelArgs(model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                           num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=50)
    model = llama.Model(args)
    mx.eval(model.parameters())
    return model

# Random llama shapes small enough for a CPU: (name, model config, batch pairs, prompt tokens,
# answer tokens, layout, extra TrainConfig fields) cases are built from them.
TINY = dict(model_type="llama", hidden_size=256, num_hidden_layers=2, intermediate_size=512,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=True)
WIDER = dict(TINY, hidden_size=384, num_hidden_layers=3, intermediate_size=1024, num_attention_heads=6,
             vocab_size=2000, tie_word_embeddings=False)


def measure_step_peak(model_config: dict, cfg: TrainConfig, prompt_len: int, answer_len: int, layout: str) -> int:
    """mx.get_peak_memory() of building the model and running one step of the trainer's own `OrpoStep`."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm.models import llama
    from mlx_lm.utils import quantize_model

    from .batching import Widths, collate
    from .models import attach_adapters
    from .step import MicroBatch, OrpoStep, build_optimizer
    from .tokenize import EncodedPair

    mx.synchronize()
    mx.clear_cache()
    mx.reset_peak_memory()
    mx.random.seed(0)
    args = llama.ModelArgs(rms_norm_eps=1e-5, **model_config)
    model = llama.Model(args)
    model.set_dtype(mx.float32)
    if cfg.bits:
        model, _ = quantize_model(model, {}, group_size=cfg.group_size, bits=cfg.bits)
    mx.eval(model.parameters())
    mx.synchronize()
    mx.reset_peak_memory()  # the float copy that quantising started from is gone: count the run only
    attach_adapters(model, cfg)
    step = OrpoStep(model, cfg, build_optimizer(cfg, steps=1))
    mx.eval(model.parameters())
    rng = np.random.default_rng(0)
    ids = lambda n: tuple(int(i) for i in rng.integers(3, args.vocab_size, n))
    pairs = [EncodedPair(ids(prompt_len), ids(answer_len), ids(answer_len)) for _ in range(cfg.batch_size)]
    batch = collate(pairs, 0, Widths.for_config(cfg))
    assert "response_tokens" in batch or cfg.grad_checkpoint
    if layout == "full rows":  # the layout collate falls back to for batches of mixed prompt/answer lengths
        batch = {k: batch[k] for k in ("tokens", "lengths", "prompt_lengths")}
    result = step([MicroBatch(batch)])
    assert result.applied and math.isfinite(result.metrics["loss"].item())
    peak = mx.get_peak_memory()
    del model, step, result
    return peak


def case_config(case) -> TrainConfig:
    _, _, pairs, prompt_len, answer_len, _, extra = case
    return TrainConfig(batch_size=pairs, max_length=prompt_len + answer_len, max_prompt_length=prompt_len,
                       **extra).validate()


def case_shape(case) -> tuple[int, ...]:
    """The batch shape (batching.batch_shape, on the CPU) of the batch a case measures, in its layout."""
    from .predict import LAYOUTS, ModelShape, ceiling_shapes, shared_prompt

    _, config, _, prompt_len, answer_len, layout, _ = case
    shared = shared_prompt(ModelShape.from_config(config), config)
    shapes = ceiling_shapes(case_config(case), gpu=False, shared=shared, prompt_len=prompt_len, answer_len=answer_len)
    return next(shape for shape in shapes if LAYOUTS[len(shape)] == layout)
