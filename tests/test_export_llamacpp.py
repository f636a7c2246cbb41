"""The exported GGUF in llama.cpp itself (via llama-cpp-python): tokenizer, logits and greedy tokens.

transformers' GGUF reader is more lenient than llama.cpp (it accepts a token_type array that
llama.cpp refuses with "invalid gguf type for tokenizer.ggml.token_type"), so the real check is llama.cpp. Installing
llama-cpp-python compiles llama.cpp from source (minutes), hence the slow mark.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from helpers import make_run

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "List three prime numbers greater than 10.",
]
N_TOKENS = 8


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed "
                               "(pip install llama-cpp-python; it builds llama.cpp from source)")


def round_to_q8_0(model) -> None:
    """Replace each 2-D weight by its Q8_0 round trip (what llama.cpp reads from the file)."""
    from gguf import GGMLQuantizationType, quants
    from mlx.utils import tree_flatten, tree_unflatten

    q8 = GGMLQuantizationType.Q8_0
    rounded = [(name, mx.array(quants.dequantize(quants.quantize(np.array(w), q8), q8)))
               for name, w in tree_flatten(model.parameters()) if w.ndim == 2]
    model.update(tree_unflatten(rounded))


def mlx_greedy(model, tokens: list[int], n: int) -> list[int]:
    out = []
    for _ in range(n):
        logits = model(mx.array(tokens + out)[None])[0, -1]
        out.append(int(mx.argmax(logits).item()))
    return out


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_llama_cpp_generates_the_mlx_tokens(llama_cpp, smollm2_dir, tmp_path, gguf_type):
    from mlx_orpo.export import export
    from mlx_orpo.fuse import load_fused
    from mlx_orpo.tokenize import render_prompt

    run_dir = tmp_path / "run"
    make_run(run_dir, smollm2_dir)
    result = export(adapters=run_dir, format="gguf", gguf_type=gguf_type, out=tmp_path / "model.gguf")
    # The MLX model holds the weights the GGUF holds (f16, or q8_0 rounded), computed in float32.
    fused = load_fused(adapters=run_dir, dtype="float16")
    fused.model.set_dtype(mx.float32)
    if gguf_type == "q8_0":
        round_to_q8_0(fused.model)

    llm = llama_cpp.Llama(model_path=str(result.out), n_ctx=512, n_threads=2, verbose=False, seed=0,
                          logits_all=True)
    matches, logit_diffs, margins = [], [], []
    for prompt in PROMPTS:
        text = render_prompt(fused.tokenizer, [{"role": "user", "content": prompt}])
        tokens = list(fused.tokenizer.encode(text, add_special_tokens=False))
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tokens  # same tokenizer

        llm.reset()
        llm.eval(tokens)
        cpp_logits = np.array(llm.scores[llm.n_tokens - 1])
        mlx_logits = np.array(fused.model(mx.array(tokens)[None])[0, -1])
        logit_diffs.append(float(np.abs(cpp_logits - mlx_logits).max()))

        llm.reset()
        cpp_tokens = []
        for token in llm.generate(tokens, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            cpp_tokens.append(token)
            if len(cpp_tokens) == N_TOKENS:
                break
        mlx_tokens = mlx_greedy(fused.model, tokens, N_TOKENS)
        matches.append(sum(a == b for a, b in zip(cpp_tokens, mlx_tokens)))
        # How far below MLX's best first token llama.cpp's choice is (0 when they agree).
        margins.append(float(mlx_logits.max() - mlx_logits[cpp_tokens[0]]))
        print(f"{gguf_type} {prompt!r}: llama.cpp {fused.tokenizer.decode(cpp_tokens)!r} "
              f"mlx {fused.tokenizer.decode(mlx_tokens)!r}")
    print(f"{gguf_type}: first-token max |logit diff| {max(logit_diffs):.4f}; "
          f"greedy tokens matched {sum(matches)}/{N_TOKENS * len(PROMPTS)} {matches}; margins {margins}")
    if gguf_type == "f16":
        assert max(logit_diffs) < 0.1
        assert matches == [N_TOKENS] * len(PROMPTS)
    else:
        # llama.cpp also rounds the activations to 8 bits in q8_0 products (about 1 logit of noise
        # here, the same size as the weight rounding itself), so near-ties may go either way.
        assert max(logit_diffs) < 2.0
        assert max(margins) < 2 * max(logit_diffs)  # any disagreement is a near-tie
        assert matches.count(N_TOKENS) >= 2
