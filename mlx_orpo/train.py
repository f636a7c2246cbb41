"""Command line: `python -m mlx_orpo.train [--model M] [--data FILE] [options]`.

Every option is a field of `TrainConfig` (config.py), with its help text;
`--config run.yaml` supplies the same keys. CLI > YAML > defaults.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path

from . import rundir
from .config import FIELD_SPECS, FIELDS, TrainConfig, from_dict, load_yaml

DESCRIPTION = """\
ORPO (Hong et al., 2024): preference-tune a model's LoRA/DoRA adapters in one stage,
with no reference model: L = L_NLL(chosen) + λ · -log σ(log odds(chosen)/odds(rejected)),
odds(y) = P(y|x) / (1 - P(y|x)), P the mean per-token likelihood of the response.
With no --model/--data it trains SmolLM2-135M-Instruct on the shipped demo set."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mlx_orpo.train", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file whose keys are these options' long names.")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="Continue the run in RUN_DIR from its newest checkpoint, exactly: with its own model, "
                             "data and settings (options that would change them are refused). A run stopped "
                             "before its first checkpoint starts again from step 0.")
    parser.add_argument("--allow-changed-data", action="store_true",
                        help="With --resume: continue although the data files differ from those the run started "
                             "with (logged; the resumed steps are then not those of the run as started).")
    parser.add_argument("--allow-changed-model", action="store_true",
                        help="With --resume: continue although the base model's files differ from those the run "
                             "started with (logged).")
    for name, spec in FIELD_SPECS.items():
        # argparse %-formats help strings: a literal "%" (as in "30% more time") must be doubled.
        default = "" if spec.default is None else f" (default: {spec.shown_default})"  # None's help says what happens
        kwargs = dict(dest=name, default=argparse.SUPPRESS, help=f"{spec.help}{default}".replace("%", "%%"))
        flags = [spec.flag, *spec.aliases]
        if spec.kind is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if spec.kind is list:  # names separated by spaces: --lora-targets q_proj v_proj
            kwargs.update(nargs="+", type=str)
        if spec.kind is dict:  # name=name pairs: --columns prompt=question,chosen=good
            kwargs.update(type=_reader(spec), metavar="ROLE=COLUMN,...")
        if spec.choices is not None:
            kwargs["choices"] = spec.choices
        parser.add_argument(*flags, **{"type": spec.kind, **kwargs})
    return parser


def _reader(spec):
    """argparse's `type` for an option read as a YAML value is (FieldSpec.read), its error as argparse's."""
    def read(text: str):
        try:
            return spec.read(text, spec.flag)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return read


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    given = {k: v for k, v in vars(args).items() if k in FIELDS}
    values = {}
    if args.resume:
        values.update(rundir.read_config(args.resume))  # the run's own settings, by its format version
        if "output_dir" in given and Path(given["output_dir"]).resolve() != Path(args.resume).resolve():
            raise ValueError(f"--resume {args.resume} continues in that folder; leave --output-dir out")
        values["output_dir"] = given["output_dir"] = args.resume
    if args.config:
        values.update(load_yaml(args.config))
    values.update(given)
    return from_dict(values, source=args.config or "options").validate()


def explicit_settings(args: argparse.Namespace) -> set[str]:
    """The settings the user gave, on the command line or in --config: auto-fit keeps them as given
    (see --memory-budget). Defaults, and settings only a resumed run's config.json holds, are not."""
    given = {k for k in vars(args) if k in FIELDS}
    return given | (set(load_yaml(args.config)) if args.config else set())


EXIT_STOPPED = 4  # stopped by SIGTERM/SIGINT with a checkpoint saved: resumable (README, "Stopping")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for given, name in ((args.allow_changed_data, "--allow-changed-data"),
                        (args.allow_changed_model, "--allow-changed-model")):
        if given and not args.resume:
            parser.error(f"{name} goes with --resume RUN_DIR")
    try:
        cfg = resolve_config(args)
    except rundir.CorruptFileError as exc:  # the run's own files, not the command line: no usage
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        parser.error(str(exc))
    # Until the training loop installs its own handler (checkpoint, then exit), a stop request ends
    # the process with one line: nothing has been trained yet, so nothing is lost.
    signal.signal(signal.SIGTERM, _stop_requested)
    try:
        return _train(cfg, args)
    except (KeyboardInterrupt, StopRequested) as exc:
        how = "stopped (SIGTERM)" if isinstance(exc, StopRequested) else "interrupted"
        print(f"error: {how} before training started; {_what_was_written(cfg, resume=bool(args.resume))}",
              file=sys.stderr)
        return 143 if isinstance(exc, StopRequested) else 130


class StopRequested(BaseException):
    """SIGTERM before the training loop took over stop requests (a BaseException, as KeyboardInterrupt
    is: the run's clean-up on the way out runs, nothing catches it as an error)."""


def _stop_requested(signum, frame):
    raise StopRequested


def _what_was_written(cfg: TrainConfig, *, resume: bool) -> str:
    """What a run stopped before training left, and how to go on (cfg.output_dir is set once the run's
    folder is chosen; a folder holding nothing else is removed on the way out)."""
    from .checkpoint import list_checkpoints

    run_dir = Path(cfg.output_dir) if cfg.output_dir else None
    if run_dir is None or not (run_dir / rundir.CONFIG).is_file():
        return "nothing was trained or written"
    if list_checkpoints(run_dir):
        return f"nothing more was trained; continue with: python -m mlx_orpo.train --resume {run_dir}"
    return (f"{run_dir} holds the run's settings and no checkpoint; python -m mlx_orpo.train --resume {run_dir} "
            "starts it from step 0" + ("" if resume else ", or remove the folder"))


def _train(cfg: TrainConfig, args: argparse.Namespace) -> int:
    """Train (or resume) the run; the exit status, with one `error:` line for what the user can fix."""
    from .api import run_training, stopped
    from .data import DataError
    from .distributed import Cluster, PeerLostError
    from .files import describe_os_error
    from .models import ModelNotFoundError
    from .runlock import RunLockedError

    started = time.time()
    try:
        run_dir = run_training(cfg, resume=bool(args.resume), allow_changed_data=args.allow_changed_data,
                               allow_changed_model=args.allow_changed_model, explicit=explicit_settings(args))
    except (DataError, ModelNotFoundError, FileExistsError, ValueError, RunLockedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PeerLostError as exc:
        print(f"error: {exc}. Checkpoints are written atomically: continue with "
              f"--resume {cfg.output_dir} once every host is back.", file=sys.stderr)
        return 3
    except OSError as exc:  # a full disk, a read-only or forbidden folder: the user's to fix
        print(f"error: {describe_os_error(exc) if exc.errno is not None else exc}"
              + (f" (checkpoints are written whole: continue with --resume {cfg.output_dir} once it is fixed)"
                 if cfg.output_dir and exc.errno is not None and Path(cfg.output_dir, rundir.CONFIG).exists()
                 else ""), file=sys.stderr)
        return 2
    if stopped(run_dir, since=started):  # the trainer said where it stopped and how to continue
        return EXIT_STOPPED
    if Cluster.init().is_main:
        from .models import resolve_model

        print(f"adapters: {run_dir / rundir.ADAPTERS}\n"
              f"chat:     python -m mlx_lm generate --model {shlex.quote(resolve_model(cfg.model))} "
              f"--adapter-path {shlex.quote(str(run_dir))} --prompt 'Hello'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
