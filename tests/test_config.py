"""The field table (config.FIELD_SPECS) and TrainConfig.validate: every option is of its kind, a
finite number where it is one, one of its choices and within its bounds, named by its flag.

Unchecked, `--learning-rate inf` trains to all-NaN adapters and exits 0, `--beta inf` and
`--lora-alpha nan` train nothing and exit 0, `--epochs inf` ends in an OverflowError.
"""

import math
import re
import subprocess
import sys

import pytest

from mlx_orpo import rundir
from mlx_orpo.config import FIELD_SPECS, FIELDS, TrainConfig
from mlx_orpo.fields import Bound
from mlx_orpo.train import build_parser, resolve_config

FLOAT_FIELDS = [name for name, spec in FIELD_SPECS.items() if spec.kind is float]
BOUNDED = [name for name, spec in FIELD_SPECS.items() if spec.bounds is not None]


@pytest.mark.parametrize("flags, message", [
    (["--learning-rate", "inf"], "--learning-rate must be a finite number, got inf"),
    (["--beta", "inf"], "--beta must be a finite number, got inf"),
    (["--lora-alpha", "nan"], "--lora-alpha must be a finite number, got nan"),
    (["--epochs", "inf"], "--epochs must be a finite number, got inf"),
    (["--max-grad-norm=-inf"], "--max-grad-norm must be a finite number, got -inf"),
    (["--lora-alpha", "0"], "--lora-alpha must be > 0"),
    (["--lora-dropout", "1"], "--lora-dropout must be in [0, 1)"),
    (["--warmup-steps", "-1"], "--warmup-steps must be >= 0, got -1"),
    (["--weight-decay", "-0.1"], "--weight-decay must be >= 0, got -0.1"),
    (["--lora-layers", "0"], "--lora-layers must be -1 (all) or >= 1, got 0"),
    (["--max-prompt-length", "0"], "--max-prompt-length must be >= 1, got 0"),
    (["--max-prompt-length", "512", "--max-length", "512"], "--max-prompt-length must be below --max-length (512)"),
])
def test_bad_numbers_on_the_command_line_are_named(flags, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_config(build_parser().parse_args(flags))


@pytest.mark.parametrize("name", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_float_option_refuses_inf_and_nan(name, value):
    with pytest.raises(ValueError, match=re.escape(f"{FIELD_SPECS[name].flag} must be a finite number")):
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
    rundir.write_marker(tmp_path)
    (tmp_path / "config.json").write_text('{"beta": 0.1, "lr')
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'config.json'}: corrupt run config")):
        resolve_config(build_parser().parse_args(["--resume", str(tmp_path)]))


@pytest.mark.parametrize("name", BOUNDED)
def test_each_bound_admits_its_edges_and_refuses_values_past_them(name):
    """The range checks are made from the bounds written in the field table, one message per flag."""
    spec = FIELD_SPECS[name]
    step = 1 if spec.kind is int else 1e-6
    for low, low_closed, high, high_closed in spec.bounds.intervals:
        for edge, closed, inward in ((low, low_closed, 1), (high, high_closed, -1)):
            if math.isinf(edge):
                continue
            inside = spec.kind(edge if closed else edge + inward * step)
            outside = spec.kind(edge - inward * step if closed else edge)
            spec.check(inside)
            if spec.bounds.admits(outside):  # another alternative takes it ("-1 (all) or >= 1")
                continue
            with pytest.raises(ValueError, match=re.escape(f"{spec.flag} must be {spec.bounds.text}, got")):
                TrainConfig(**{name: outside}).validate()


def test_bounds_read_as_written():
    bound = Bound.parse("-1 (all) or >= 1")
    assert [v for v in (-2, -1, 0, 1, 5) if bound.admits(v)] == [-1, 1, 5]
    assert (bound.lowest, bound.highest) == (-1, None)
    bound = Bound.parse("in [0, 1)")
    assert [v for v in (-0.1, 0, 0.5, 1) if bound.admits(v)] == [0, 0.5]
    assert (bound.lowest, bound.highest) == (0, 1)
    assert not Bound.parse("> 0").admits(0) and Bound.parse("> 0").admits(1e-9)
    with pytest.raises(ValueError, match="not a bound: 'positive'"):
        Bound.parse("positive")


@pytest.mark.parametrize("name", [name for name, spec in FIELD_SPECS.items() if spec.choices])
def test_choices_are_checked_for_every_caller_not_only_the_command_line(name):
    """A YAML file, config.json or a Python caller bypasses argparse's choices; validate() holds them too."""
    spec = FIELD_SPECS[name]
    wrong = 3 if spec.kind is int else "nonsense"
    with pytest.raises(ValueError, match=re.escape(f"{spec.flag} must be ")):
        TrainConfig(**{name: wrong}).validate()
    for choice in spec.choices:
        spec.check(choice)


def test_a_yaml_dtype_outside_its_choices_is_refused_by_name(tmp_path):
    (tmp_path / "run.yaml").write_text("dtype: float64\n")
    message = "--dtype must be auto, float32, float16 or bfloat16, got 'float64'"
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_config(build_parser().parse_args(["--config", str(tmp_path / "run.yaml")]))


def test_lr_schedules_are_the_field_choices():
    from mlx_orpo.step import SCHEDULES

    assert set(SCHEDULES) == set(FIELD_SPECS["lr_schedule"].choices)
    with pytest.raises(SystemExit):  # argparse names the choices
        build_parser().parse_args(["--lr-schedule", "exponential"])


def test_a_missing_value_is_named_not_a_type_error(tmp_path):
    with pytest.raises(ValueError, match=re.escape("--seed needs a value (default: 0)")):
        TrainConfig(seed=None).validate()
    (tmp_path / "run.yaml").write_text("seed:\n")
    with pytest.raises(ValueError, match=re.escape("run.yaml: seed needs a value (default: 0)")):
        resolve_config(build_parser().parse_args(["--config", str(tmp_path / "run.yaml")]))


def test_the_command_line_is_made_from_the_field_table():
    """One flag per field (plus aliases and --no- for switches), typed, with the field's choices."""
    actions = {a.dest: a for a in build_parser()._actions if a.dest in FIELD_SPECS}
    assert set(actions) == set(FIELD_SPECS)
    for name, spec in FIELD_SPECS.items():
        action = actions[name]
        negated = [f"--no-{spec.flag[2:]}"] if spec.kind is bool else []
        assert action.option_strings == [spec.flag, *spec.aliases, *negated], name
        if spec.kind is dict:  # read by the field's own reader, as a YAML value is
            assert action.type("prompt=q") == {"prompt": "q"}, name
        elif spec.kind is not bool:
            assert action.type is (str if spec.kind is list else spec.kind), name
            assert tuple(action.choices or ()) == (spec.choices or ()), name
    args = build_parser().parse_args(["--lambda", "0.5", "--no-dora", "--lora-targets", "q_proj", "v_proj"])
    assert (args.beta, args.dora, args.lora_targets) == (0.5, False, ["q_proj", "v_proj"])
    assert "(default: all-linear)" in build_parser().format_help()


def test_columns_read_from_the_command_line_and_yaml_alike(tmp_path):
    expected = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    cfg = resolve_config(build_parser().parse_args(["--columns", "prompt=question,chosen=good, rejected=bad"]))
    assert cfg.columns == expected
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("columns:\n  prompt: question\n  chosen: good\n  rejected: bad\n")
    assert resolve_config(build_parser().parse_args(["--config", str(yaml_file)])).columns == expected
    yaml_file.write_text("columns: prompt=question chosen=good rejected=bad\n")
    assert resolve_config(build_parser().parse_args(["--config", str(yaml_file)])).columns == expected
    yaml_file.write_text("columns: [prompt, question]\n")
    with pytest.raises(ValueError, match=re.escape("run.yaml: columns must be name=name pairs")):
        resolve_config(build_parser().parse_args(["--config", str(yaml_file)]))
    with pytest.raises(ValueError, match=re.escape("--columns question=prompt: 'question' is not a role")):
        TrainConfig(columns={"question": "prompt"}).validate()


def test_a_bad_columns_flag_is_one_error_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mlx_orpo.train", "--columns", "prompt", "--output-dir",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "error: argument --columns: --columns must be name=name pairs" in done.stderr, done.stderr
