"""The Train tab's helpers, called as the server calls them (no browser)."""

from __future__ import annotations

import shlex

import pytest
from helpers import form

pytest.importorskip("gradio")

from app.form import config_from_form
from app.jobs import command_line, write_launch_config
from mlx_orpo.config import FIELD_SPECS
from mlx_orpo.train import build_parser, explicit_settings, resolve_config


def test_the_terminal_command_runs_what_start_runs(tmp_path):
    """The command the tab shows gives the trainer the settings, data and output folder that Start's
    launch.yaml gives it, and the same ones as explicit (auto-fit keeps them alike)."""
    cfg = config_from_form("smollm2-135m", form(iters=3, learning_rate=5e-5, bits="8", grad_checkpoint=True,
                                                memory_budget="off", max_length=256))
    cfg.data, cfg.skip_bad_rows, cfg.lora_targets = str(tmp_path / "my prefs.jsonl"), True, ["q_proj", "v_proj"]
    (tmp_path / "run").mkdir()
    words = shlex.split(command_line(cfg, tmp_path / "run"))
    assert words[:3] == ["python", "-m", "mlx_orpo.train"]
    by_command = build_parser().parse_args(words[3:])
    by_launch = build_parser().parse_args(["--config", str(write_launch_config(tmp_path / "run", cfg.data, cfg))])
    assert resolve_config(by_command).to_dict() == resolve_config(by_launch).to_dict() == \
        {**cfg.to_dict(), "output_dir": str(tmp_path / "run")}
    assert explicit_settings(by_command) == explicit_settings(by_launch)
    assert "--output-dir" not in command_line(cfg)  # no run name: the CLI makes its own folder


def test_every_kind_of_field_is_spelled_as_the_cli_reads_it():
    parser = build_parser()
    for name, value in (("dora", True), ("dora", False), ("lora_targets", ["q_proj", "o_proj"]),
                        ("learning_rate", 1e-5), ("bits", 4), ("memory_budget", "12GB"), ("lr_schedule", "linear")):
        args = parser.parse_args(FIELD_SPECS[name].args(value))
        assert getattr(args, name) == value, (name, value)
    with pytest.raises(ValueError, match="--iters: no command-line value means None"):
        FIELD_SPECS["iters"].args(None)


def test_load_settings_fills_the_form_from_a_run_and_names_a_damaged_config(tmp_path):
    from helpers import TRAIN_RECORD, written_run

    from app.cache import Models
    from app.form import FORM
    from app.session import Context, Session
    from app.train_tab import load_settings
    from mlx_orpo.config import TrainConfig

    ctx = Context(tmp_path, 10**6, Models())
    saved = {**TrainConfig(iters=7, max_length=300).validate().to_dict(), "data": "owner/prefs"}
    written_run(tmp_path, "good", [TRAIN_RECORD], config=saved)
    written_run(tmp_path, "broken", [TRAIN_RECORD], config=[])
    session, message, _, model, *values = load_settings(ctx, Session(), "good")
    assert "Loaded the settings of **good**" in message and model == "smollm2-135m"
    assert values[FORM.index("iters")] == 7 and values[FORM.index("max_length")] == 300
    assert session.data == "owner/prefs"  # a tab without data of its own takes the run's
    _, message, *_ = load_settings(ctx, Session(), "broken")
    assert "Cannot load settings" in message and "config.json" in message
