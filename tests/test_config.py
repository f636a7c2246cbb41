"""TrainConfig.validate: every numeric option is a finite number of its type, in range.

`--learning-rate inf` once trained to all-NaN adapters and exited 0, `--beta inf` and
`--lora-alpha nan` trained nothing and exited 0, `--epochs inf` ended in an OverflowError.
"""

import math
import re
import subprocess
import sys
import typing

import pytest

from mlx_orpo.config import FIELDS, TrainConfig
from mlx_orpo.train import build_parser, resolve_config

FLOAT_FIELDS = [name for name, hint in typing.get_type_hints(TrainConfig).items()
                if float in (typing.get_args(hint) or (hint,))]


@pytest.mark.parametrize("flags, message", [
    (["--learning-rate", "inf"], "--learning-rate must be a finite number, got inf"),
    (["--beta", "inf"], "--beta must be a finite number, got inf"),
    (["--lora-alpha", "nan"], "--lora-alpha must be a finite number, got nan"),
    (["--epochs", "inf"], "--epochs must be a finite number, got inf"),
    (["--max-grad-norm=-inf"], "--max-grad-norm must be a finite number, got -inf"),
    (["--lora-alpha", "0"], "--lora-alpha must be > 0"),
    (["--lora-dropout", "1"], "--lora-dropout must be in [0, 1)"),
    (["--warmup-steps", "-1"], "--warmup-steps, --eval-every, --eval-max-pairs and --keep-checkpoints must be >= 0"),
    (["--weight-decay", "-0.1"], "--weight-decay and --max-grad-norm must be >= 0"),
    (["--lora-layers", "0"], "--lora-layers must be -1 (all) or >= 1"),
])
def test_bad_numbers_on_the_command_line_are_named(flags, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_config(build_parser().parse_args(flags))


@pytest.mark.parametrize("name", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_float_option_refuses_inf_and_nan(name, value):
    flag = f"--{name.replace('_', '-')}"
    with pytest.raises(ValueError, match=re.escape(f"{flag} must be a finite number")):
        TrainConfig(**{name: value}).validate()


def test_yaml_values_of_the_wrong_type_are_named(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("beta: fast\n")
    # Named by the YAML key, as written in the file.
    with pytest.raises(ValueError, match=re.escape("run.yaml: beta must be a number, got 'fast'")):
        resolve_config(build_parser().parse_args(["--config", str(yaml_file)]))
    yaml_file.write_text("bits: 3\n")
    with pytest.raises(ValueError, match=re.escape("--bits must be 4 or 8")):
        resolve_config(build_parser().parse_args(["--config", str(yaml_file)]))
    yaml_file.write_text("batch_size: 2.5\n")
    with pytest.raises(ValueError, match=re.escape("run.yaml: batch_size must be an integer, got 2.5")):
        resolve_config(build_parser().parse_args(["--config", str(yaml_file)]))


def test_defaults_are_valid():
    cfg = TrainConfig().validate()
    assert all(getattr(cfg, name) == f.default or name == "lora_targets" for name, f in FIELDS.items())


def test_cli_stops_on_an_infinite_option_with_a_message_not_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mlx_orpo.train", "--epochs", "inf", "--output-dir",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "--epochs must be a finite number, got inf" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def test_corrupt_run_config_on_resume_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text('{"beta": 0.1, "lr')
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'config.json'}: corrupt run config")):
        resolve_config(build_parser().parse_args(["--resume", str(tmp_path)]))
