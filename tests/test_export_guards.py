"""Export refuses to destroy its input and names a corrupt adapters file (no model is loaded:
both checks come first, on a tiny random run directory)."""

import json
import re

import mlx.core as mx
import pytest
from helpers import tiny_model

from mlx_orpo import export as export_mod
from mlx_orpo.checkpoint import save_adapters
from mlx_orpo.config import TrainConfig
from mlx_orpo.models import attach_adapters


@pytest.fixture
def run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    model = tiny_model()
    mx.random.seed(0)
    adapter_cfg = attach_adapters(model, TrainConfig(lora_rank=4))
    save_adapters(run_dir, model)
    (run_dir / "adapter_config.json").write_text(json.dumps(dict(adapter_cfg, model="smollm2-135m")))
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    return run_dir


def contents(directory):
    return {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@pytest.mark.parametrize("where, problem", [(".", "is"), ("..", "contains"), ("sub/peft", "lies inside")])
@pytest.mark.parametrize("fmt", ["peft", "hf"])
def test_output_that_is_contains_or_lies_inside_the_input_is_refused(run, capsys, where, problem, fmt):
    """`--adapters RUN --out RUN --force` once replaced the whole run with two PEFT files."""
    before = contents(run)
    out = (run / where).resolve() if where != "sub/peft" else run / where
    code = export_mod.main(["--adapters", str(run), "--out", str(out), "--format", fmt, "--force"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"error: --out {out} {problem} the input --adapters {run}" in err
    assert contents(run) == before


@pytest.mark.parametrize("fmt", ["peft", "hf", "gguf"])
def test_truncated_adapters_file_is_named(run, tmp_path, capsys, fmt):
    weights = run / "adapters.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out = tmp_path / ("out.gguf" if fmt == "gguf" else "out")
    code = export_mod.main(["--adapters", str(run), "--out", str(out), "--format", fmt])
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search(rf"error: {re.escape(str(weights))}: corrupt or truncated safetensors file \(1000 bytes", err)
    assert not out.exists()
