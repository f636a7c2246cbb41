"""The GGUF tokenizer rebuilt without PyTorch equals transformers' GGUF reader (which needs torch)."""

import json
import subprocess
import sys

import pytest

from mlx_orpo.data import load_pairs
from mlx_orpo.demo_data import DEMO_DATA_PATH
from mlx_orpo.gguf_tokenizer import byte_alphabet

EDGE_CASES = ["", " ", "  two leading spaces", "tabs\tand\nnewlines\r\n\n", "12345 3.14159 1,000,000",
              "don't I'll we've", "naïve café", "日本語のテキスト", "emoji 🙂👍🏽", "<|im_start|>user\nhi<|im_end|>",
              "<|endoftext|> inside text", "ｆｕｌｌｗｉｄｔｈ", "\u200bzero width", "a" * 300,
              "Ġ Ċ literal byte chars"]


@pytest.fixture(scope="module")
def both(smollm2_dir):
    """(ours as saved by the import, transformers' reading the GGUF itself)."""
    pytest.importorskip("torch")
    from transformers import AutoTokenizer

    from mlx_orpo.models import offline_smollm2_gguf

    gguf = offline_smollm2_gguf()
    return (AutoTokenizer.from_pretrained(str(smollm2_dir)),
            AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name))


def texts(shared_data) -> list[str]:
    """A few hundred real strings: the demo set's and the shared set's prompts and answers."""
    out = list(EDGE_CASES)
    for source in (DEMO_DATA_PATH, shared_data):
        for pair in load_pairs(str(source))[0]:
            out += [m["content"] for m in pair.prompt] + [pair.chosen, pair.rejected]
    return out[:400]


def test_byte_alphabet_is_a_bijection_of_printable_characters():
    chars = byte_alphabet()
    assert len(set(chars.values())) == 256
    assert chars[ord("A")] == "A" and chars[ord(" ")] == "Ġ" and chars[ord("\n")] == "Ċ"
    assert all(c.isprintable() for c in chars.values())


def test_same_ids_and_text_as_transformers_on_real_strings(both, shared_data):
    ours, reference = both
    strings = texts(shared_data)
    assert len(strings) >= 300
    for text in strings:
        ids = reference.encode(text)
        assert ours.encode(text) == ids, text[:80]
        assert ours.decode(ids) == reference.decode(ids), text[:80]
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(ours, name) == getattr(reference, name), name
    assert len(ours) == len(reference)


def test_same_chat_template_rendering(both, shared_data):
    ours, reference = both
    pairs = load_pairs(str(shared_data))[0][:50]
    assert len(pairs) == 50
    for pair in pairs:
        messages = list(pair.prompt) + [{"role": "assistant", "content": pair.chosen}]
        for generation_prompt in (True, False):
            shown = messages[:-1] if generation_prompt else messages
            expected = reference.apply_chat_template(shown, tokenize=False, add_generation_prompt=generation_prompt)
            assert ours.apply_chat_template(shown, tokenize=False, add_generation_prompt=generation_prompt) == expected
            assert ours.encode(expected, add_special_tokens=False) == reference.encode(expected,
                                                                                       add_special_tokens=False)


def test_import_needs_no_torch(tmp_path):
    """The default path imports the GGUF in a process where `import torch` fails."""
    from mlx_orpo.models import offline_smollm2_gguf

    gguf = offline_smollm2_gguf()
    if gguf is None:
        pytest.skip("the offline model package is missing")
    code = ("import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
            "from mlx_orpo.gguf_import import import_gguf\n"
            f"import_gguf({str(gguf)!r}, {str(tmp_path / 'model')!r})\n"
            "from transformers import AutoTokenizer\n"
            f"t = AutoTokenizer.from_pretrained({str(tmp_path / 'model')!r})\n"
            "print(len(t), t.eos_token)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["49152", "<|im_end|>"]
    assert json.loads((tmp_path / "model" / "config.json").read_text())["vocab_size"] == 49152
