"""Tests for export: fusing (LoRA, DoRA, 4-bit base), hf, mlx --bits, peft (both ways), gguf (llama, qwen2).

Each exported artefact is read back by an independent implementation (transformers,
PEFT, transformers' GGUF loader) and its logits are compared with the MLX fused
model on the same fixed chat prompt. The "trained" adapters are random but
large enough to move the logits by several units, so a dropped adapter fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from helpers import make_run

from mlx_orpo.config import TrainConfig
from mlx_orpo.models import load_model

# Measured on SmolLM2-135M (max |logit| about 37); see docs/export.md.
TOL_F32 = 2e-3  # float32 files, float32 compute on both sides


def np_logits(model, tokens) -> np.ndarray:
    from mlx_orpo.fuse import logits

    return np.array(logits(model, tokens))


def errors(reference: np.ndarray, other: np.ndarray) -> dict:
    diff = np.abs(reference - other)
    return {"max_abs": float(diff.max()), "max_rel": float(diff.max() / np.abs(reference).max()),
            "top1": float((reference.argmax(-1) == other.argmax(-1)).mean())}


def torch_logits(model, tokens) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


@pytest.fixture(scope="session")
def lora_run(smollm2_dir, tmp_path_factory):
    """(run_dir, logits of the unfused MLX model with adapters, the prompt tokens)."""
    from mlx_orpo.fuse import reference_tokens

    run_dir = tmp_path_factory.mktemp("exports") / "run-lora"
    model, tokenizer = make_run(run_dir, smollm2_dir)
    tokens = reference_tokens(tokenizer)
    return run_dir, np_logits(model, tokens), tokens


@pytest.fixture(scope="session")
def fused32(lora_run):
    from mlx_orpo.fuse import load_fused

    return load_fused(adapters=lora_run[0], dtype="float32")


# ---- fusing ----------------------------------------------------------------------------------------------

def test_fused_model_matches_adapter_model_and_differs_from_base(lora_run, fused32, smollm2_dir):
    _, adapted, tokens = lora_run
    assert fused32.base_spec == str(smollm2_dir)  # --model defaults to the run's base
    assert fused32.fused_modules == 30 * 7
    assert errors(adapted, np_logits(fused32.model, tokens))["max_abs"] < TOL_F32
    base, *_ = load_model(str(smollm2_dir), dtype="float32")
    assert errors(adapted, np_logits(base, tokens))["max_abs"] > 1.0  # the adapter matters


def test_dora_fuses_exactly(smollm2_dir, tmp_path):
    from mlx_orpo.fuse import load_fused, reference_tokens

    model, tokenizer = make_run(tmp_path / "run", smollm2_dir, dora=True, targets=("q_proj", "v_proj"))
    tokens = reference_tokens(tokenizer)
    fused = load_fused(adapters=tmp_path / "run")
    assert fused.fused_modules == 30 * 2
    assert errors(np_logits(model, tokens), np_logits(fused.model, tokens))["max_abs"] < TOL_F32


def test_four_bit_base_keeps_the_adapter(smollm2_dir, tmp_path):
    """mlx-lm issue 1172: fusing into a 4-bit base and re-quantising loses the update."""
    from mlx_lm.utils import load as mlx_load
    from mlx_lm.utils import save_config, save_model

    from mlx_orpo.fuse import load_fused, reference_tokens

    quantized, tokenizer, _, _ = load_model(str(smollm2_dir), dtype="float32", bits=4)
    base4 = tmp_path / "base-4bit"
    save_model(base4, quantized)
    config = json.loads((smollm2_dir / "config.json").read_text())
    config["quantization"] = {"group_size": 64, "bits": 4}
    save_config(config, base4 / "config.json")
    tokenizer.save_pretrained(str(base4))
    del quantized

    model, tokenizer = make_run(tmp_path / "run", base4, targets=("q_proj", "v_proj", "down_proj"))
    tokens = reference_tokens(tokenizer)
    adapted = np_logits(model, tokens)
    fused = load_fused(adapters=tmp_path / "run")
    assert errors(adapted, np_logits(fused.model, tokens))["max_abs"] < TOL_F32
    assert not any("scales" in k for k, _ in __import__("mlx.utils").utils.tree_flatten(fused.model.parameters()))

    # The naive path (fuse, then re-quantise to 4 bits) is measurably further from the adapted model.
    naive, _ = mlx_load(str(base4), adapter_path=str(tmp_path / "run"))
    naive.update_modules(__import__("mlx.utils").utils.tree_unflatten(
        [(n, m.fuse(dequantize=False)) for n, m in naive.named_modules() if hasattr(m, "fuse")]))
    naive.set_dtype(mx.float32)
    assert errors(adapted, np_logits(naive, tokens))["max_abs"] > 10 * TOL_F32


def test_run_model_spec_reads_checkpoints(tmp_path):
    """Without an adapter config naming the base, a run's settings (config.json) name it; a folder
    that is no run is not read as one."""
    from mlx_orpo import rundir
    from mlx_orpo.fuse import run_model_spec

    run = tmp_path / "run"
    (run / "checkpoints" / "step-000002").mkdir(parents=True)
    TrainConfig(model="owner/some-model").save(run / rundir.CONFIG)
    assert run_model_spec(run) is None
    rundir.write_marker(run)
    assert run_model_spec(run / "checkpoints" / "step-000002") == "owner/some-model"
    assert run_model_spec(run) == "owner/some-model"
    (run / rundir.CONFIG).write_text("[]")
    with pytest.raises(ValueError, match=f"{run / rundir.CONFIG}: corrupt run config"):
        run_model_spec(run)


# ---- hf --------------------------------------------------------------------------------------------------

def test_hf_export_loads_in_transformers(lora_run, fused32, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mlx_orpo.export import export, export_hf

    run_dir, _, tokens = lora_run
    reference = np_logits(fused32.model, tokens)

    out32 = tmp_path / "hf32"
    export_hf(fused32, out32)
    config = json.loads((out32 / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(out32, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out32)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Write one sentence about the sea, "
                                          "and count to five."}], add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert list(ids) == tokens  # the chat template and tokenizer travel with the weights
    err32 = errors(reference, torch_logits(model, tokens))
    assert err32["max_abs"] < TOL_F32, err32

    # The default export (float16 file) through the public API; transformers upcasts to float32.
    messages = []
    result = export(adapters=run_dir, format="hf", out=tmp_path / "hf16", progress=messages.append)
    assert result.dtype == "float16" and "AutoModelForCausalLM" in result.usage
    assert {p.name for p, _ in result.files} >= {"model.safetensors", "config.json", "tokenizer.json"}
    model16 = AutoModelForCausalLM.from_pretrained(tmp_path / "hf16", dtype=torch.float32)
    err16 = errors(reference, torch_logits(model16, tokens))
    print("hf f32:", err32, "hf f16:", err16)
    assert err16["max_rel"] < 0.02 and err16["top1"] >= 0.95, err16


def test_refuses_to_overwrite_and_checks_disk_space(lora_run, tmp_path, monkeypatch):
    import shutil

    from mlx_orpo import export as export_mod
    from mlx_orpo.output import write_dir_atomically

    out = tmp_path / "taken"
    out.mkdir()
    with pytest.raises(FileExistsError, match="--force"):
        export_mod.export(adapters=lora_run[0], format="hf", out=out)

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OSError, match="needs about .* is free"):
        write_dir_atomically(tmp_path / "new", False, 10**6, lambda d: None)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("fmt, options", [("hf", {}), ("gguf", {"gguf_type": "q8_0"}), ("mlx", {"bits": 4}),
                                          ("peft", {})])
def test_sizes_estimated_before_an_export_are_close_to_what_it_writes(lora_run, tmp_path, fmt, options):
    """The estimate reads no weights (the base's config.json, the adapter's header). Measured on
    SmolLM2-135M: hf 0.9999, mlx 4-bit 0.9990, gguf f16 1.0064 and q8_0 1.0120, peft 0.989 of the
    bytes written."""
    from mlx_orpo.export import estimate_sizes, export
    from mlx_orpo.output import MARGIN

    estimate = estimate_sizes(lora_run[0], tmp_path / "exports", **options)[fmt]
    out = tmp_path / "exports" / ("model.gguf" if fmt == "gguf" else fmt)
    written = sum(size for _, size in export(adapters=lora_run[0], format=fmt, out=out, **options).files)
    assert abs(estimate.bytes / written - 1) < 0.02, (estimate.bytes, written)
    assert estimate.fits == (estimate.free >= estimate.bytes + MARGIN)


def test_the_estimate_says_when_the_disk_has_no_room(lora_run, tmp_path, monkeypatch):
    import shutil

    from mlx_orpo.export import estimate_sizes

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 10**8, 10**8))
    sizes = estimate_sizes(lora_run[0], tmp_path / "not" / "made" / "yet")
    assert {fmt: s.fits for fmt, s in sizes.items()} == {"hf": False, "mlx": False, "gguf": False, "peft": True}
    assert not (tmp_path / "not").exists()


def test_failed_write_leaves_nothing(tmp_path):
    from mlx_orpo.output import write_dir_atomically

    def boom(directory):
        (directory / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk died")

    with pytest.raises(RuntimeError):
        write_dir_atomically(tmp_path / "out", False, 0, boom)
    assert list(tmp_path.iterdir()) == []


# ---- peft ------------------------------------------------------------------------------------------------

def test_peft_export_loads_with_peft_and_imports_back(lora_run, smollm2_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mlx_orpo.api import load_with_adapters
    from mlx_orpo.export import export

    run_dir, adapted, tokens = lora_run
    result = export(adapters=run_dir, format="peft", out=tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and "q_proj" in config["target_modules"]
    assert "PeftModel.from_pretrained" in result.usage
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "peft")
    err = errors(adapted, torch_logits(peft_model, tokens))
    print("peft:", err)
    assert err["max_abs"] < TOL_F32, err

    # Reverse: the PEFT directory back into an mlx-orpo adapter directory; exact round trip.
    export(model=str(smollm2_dir), adapters=tmp_path / "peft", format="import-peft", out=tmp_path / "back")
    model, _ = load_with_adapters(str(smollm2_dir), tmp_path / "back", dtype="float32")
    assert errors(adapted, np_logits(model, tokens))["max_abs"] < TOL_F32


def test_import_adapter_trained_by_peft(smollm2_dir, tmp_path):
    """An adapter PEFT made itself (some layers, rsLoRA scaling) gives the same logits in MLX."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mlx_orpo.api import load_with_adapters
    from mlx_orpo.fuse import reference_tokens
    from mlx_orpo.peft_io import import_peft

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"],
                                                 layers_to_transform=[5, 20, 29], use_rslora=True,
                                                 task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    peft_model.save_pretrained(tmp_path / "peft")
    import_peft(tmp_path / "peft", tmp_path / "mlx", model=str(smollm2_dir))
    config = json.loads((tmp_path / "mlx" / "adapter_config.json").read_text())
    assert config["num_layers"] == 25 and config["lora_parameters"]["scale"] == 8.0  # 16 / sqrt(4)

    model, tokenizer = load_with_adapters(str(smollm2_dir), tmp_path / "mlx", dtype="float32")
    tokens = reference_tokens(tokenizer)
    err = errors(torch_logits(peft_model, tokens), np_logits(model, tokens))
    print("peft import:", err)
    assert err["max_abs"] < TOL_F32, err


# ---- gguf ------------------------------------------------------------------------------------------------

def make_tiny_qwen2(directory: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A random 2-block qwen2 (q/k/v biases, untied lm_head) with SmolLM2's tokenizer."""
    import shutil

    from mlx.utils import tree_flatten
    from mlx_lm.models import qwen2

    config = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
              "num_hidden_layers": 2, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
              "rms_norm_eps": 1e-6, "vocab_size": 49152, "max_position_embeddings": 2048, "rope_theta": 10000.0,
              "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2}
    mx.random.seed(seed)
    model = qwen2.Model(qwen2.ModelArgs.from_dict(config))
    # Larger than the default init so the logits spread over several units.
    model.update(__import__("mlx.utils").utils.tree_map(lambda p: p * 4 if p.ndim == 2 else p, model.parameters()))
    directory.mkdir(parents=True)
    mx.save_safetensors(str(directory / "model.safetensors"), dict(tree_flatten(model.parameters())),
                        metadata={"format": "mlx"})
    (directory / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tokenizer_dir / name, directory / name)
    return directory


def gguf_in_transformers(path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def test_gguf_llama_reads_back_in_transformers(lora_run, fused32, tmp_path):
    from gguf import GGUFReader

    from mlx_orpo.export import export

    run_dir, _, tokens = lora_run
    reference = np_logits(fused32.model, tokens)
    result = export(adapters=run_dir, format="gguf", gguf_type="q8_0", out=tmp_path / "model.gguf")
    assert result.dtype == "Q8_0" and "llama-cli -m" in result.usage and "ollama create" in result.usage
    modelfile = (tmp_path / "model.Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf") and "<|im_end|>" in modelfile

    fields = GGUFReader(tmp_path / "model.gguf").fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.token_type"].types[-1].name == "INT32"  # llama.cpp refuses other types
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert "<|im_start|>" in fields["tokenizer.chat_template"].contents()

    model, tokenizer = gguf_in_transformers(tmp_path / "model.gguf")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Write one sentence about the sea, "
                                          "and count to five."}], add_generation_prompt=True, tokenize=True)
    assert list(ids["input_ids"] if hasattr(ids, "keys") else ids) == tokens
    err = errors(reference, torch_logits(model, tokens))
    print("gguf q8_0:", err)
    assert err["max_rel"] < 0.06 and err["top1"] >= 0.9, err


def test_gguf_qwen2_reads_back_in_transformers(smollm2_dir, tmp_path):
    from mlx_orpo.export import export
    from mlx_orpo.fuse import load_fused, reference_tokens

    base = make_tiny_qwen2(tmp_path / "qwen2", smollm2_dir)
    make_run(tmp_path / "run", base)
    fused = load_fused(adapters=tmp_path / "run")
    tokens = reference_tokens(fused.tokenizer)
    reference = np_logits(fused.model, tokens)
    export(adapters=tmp_path / "run", format="gguf", gguf_type="f32", out=tmp_path / "gguf")
    model, _ = gguf_in_transformers(tmp_path / "gguf" / "model-f32.gguf")
    err = errors(reference, torch_logits(model, tokens))
    print("gguf qwen2 f32:", err)
    assert err["max_abs"] < TOL_F32 and err["top1"] == 1.0, err


def test_qwen2_gguf_imports_back_into_mlx(smollm2_dir, tmp_path):
    """Export the tiny qwen2 to GGUF (q/k/v biases, unpermuted Q/K) and import it: same logits."""
    from mlx_lm import load as mlx_load

    from mlx_orpo.export import export
    from mlx_orpo.fuse import load_fused, reference_tokens
    from mlx_orpo.gguf_import import import_gguf

    base = make_tiny_qwen2(tmp_path / "qwen2", smollm2_dir, seed=1)
    export(model=str(base), format="gguf", gguf_type="f32", out=tmp_path / "tiny.gguf")
    import_gguf(tmp_path / "tiny.gguf", tmp_path / "imported", dtype="float32")
    fused = load_fused(str(base))
    tokens = reference_tokens(fused.tokenizer)
    imported, _ = mlx_load(str(tmp_path / "imported"))
    assert errors(np_logits(fused.model, tokens), np_logits(imported, tokens))["max_abs"] < TOL_F32


def test_gguf_refuses_other_architectures_and_maps_pre_tokenizers():
    from mlx_orpo.gguf_export import GGUFExportError, check_architecture, detect_pre_tokenizer, permute_rows
    from mlx_orpo.gguf_import import unpermute_rows

    with pytest.raises(GGUFExportError, match="supported: llama, mistral, qwen2"):
        check_architecture({"model_type": "gemma3"})
    assert check_architecture({"model_type": "mistral"}) == "llama"
    assert detect_pre_tokenizer({"type": "ByteLevel", "use_regex": True}) == "gpt-2"
    assert detect_pre_tokenizer({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "use_regex": True}]}) == "smollm"
    qwen = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s+"
    assert detect_pre_tokenizer({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": qwen}}, {"type": "ByteLevel", "use_regex": False}]}) == "qwen2"
    weight = np.arange(8 * 2 * 3, dtype=np.float32).reshape(16, 3)
    assert np.array_equal(np.array(unpermute_rows(mx.array(permute_rows(weight, 2)), 2)), weight)


# ---- mlx --bits and the CLI ------------------------------------------------------------------------------

def test_cli_mlx_requantised_reports_error_and_refuses_overwrite(lora_run, fused32, tmp_path, cli_env):
    import re
    import subprocess
    import sys

    from mlx_lm import load as mlx_load

    run_dir, _, tokens = lora_run
    out = tmp_path / "mlx-4bit"
    cmd = [sys.executable, "-m", "mlx_orpo.export", "--adapters", str(run_dir), "--format", "mlx", "--bits", "4",
           "--dtype", "f32", "--out", str(out)]  # f32: BLAS on the CPU; f16 there is slow
    done = subprocess.run(cmd, capture_output=True, text=True, env=cli_env, timeout=900)
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    assert "model.safetensors" in done.stdout and "4-bit affine" in done.stdout
    assert f"mlx_lm.generate --model {out}" in done.stdout
    reported = float(re.search(r"max abs ([0-9.e+-]+)", done.stdout).group(1))
    assert reported > 0.1  # 4 bits on a 135M model (tied 4-bit embeddings too) costs a lot: about 27

    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["bits"] == 4
    model, _ = mlx_load(str(out))
    err = errors(np_logits(fused32.model, tokens), np_logits(model, tokens))
    print("mlx 4-bit vs fused f32:", err)
    assert 0.1 < err["max_abs"] < reported + 5, err  # the report describes the file written

    again = subprocess.run(cmd, capture_output=True, text=True, env=cli_env, timeout=300)
    assert again.returncode == 2 and "--force" in again.stderr
