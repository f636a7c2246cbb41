"""Every entry point's --help runs (argparse %-formats help text), and the app shows the same texts."""

import subprocess
import sys

import pytest

from mlx_orpo.config import FIELDS

ENTRY_POINTS = {
    "mlx_orpo.train": ["--grad-checkpoint", "--beta", "--resume"],
    "mlx_orpo.export": ["--adapters", "--out"],
    "mlx_orpo.plan": ["--model", "--budget"],
    "app": ["--port", "--runs-dir"],
}


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help_runs_and_lists_the_options(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:")
    for option in ENTRY_POINTS[module]:
        assert option in done.stdout, option


def test_train_help_shows_percent_signs_verbatim():
    from mlx_orpo.train import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "%" in FIELDS["grad_checkpoint"].metadata["help"]
    assert " ".join(FIELDS["grad_checkpoint"].metadata["help"].split()) in text


def test_app_widgets_show_the_same_help_texts(tmp_path):
    pytest.importorskip("gradio")
    from app.ui import build_app

    demo = build_app(str(tmp_path / "runs"))
    infos = {getattr(block, "info", None) for block in demo.blocks.values()}
    assert FIELDS["grad_checkpoint"].metadata["help"] in infos


def test_mlx_without_a_backend_is_a_clear_error():
    """On Linux `pip install mlx` alone has no backend; the error says which extra to install."""
    code = "import sys; sys.modules['mlx.core'] = None\nimport mlx_orpo"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "mlx-orpo[cpu]" in done.stderr and "scripts/setup.sh" in done.stderr, done.stderr[-2000:]
