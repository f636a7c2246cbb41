"""`python -m app`: open the mlx-orpo UI on http://127.0.0.1:7860 (loopback unless --host)."""

from __future__ import annotations

import argparse
import signal
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1",
                        help="Interface to listen on (default: 127.0.0.1, this machine only). "
                             "0.0.0.0 exposes the app, and everything it can do, to your network.")
    parser.add_argument("--port", type=int, default=7860, help="Port (default: 7860).")
    parser.add_argument("--runs-dir", default="runs",
                        help="Where runs, uploads and exports live; the app reads and writes nothing else "
                             "(default: ./runs).")
    parser.add_argument("--max-upload-mb", type=float, default=200, help="Largest accepted upload (default: 200).")
    parser.add_argument("--open", action="store_true", help="Open a browser tab.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .ui import build_app, launch

    # SIGTERM exits like Ctrl-C, so the atexit hooks stop running trainings with a checkpoint.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    demo = build_app(args.runs_dir, max_upload_mb=args.max_upload_mb)
    launch(demo, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, inbrowser=args.open)
    return 0


if __name__ == "__main__":
    sys.exit(main())
