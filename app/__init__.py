"""mlx-orpo's desktop app: a Gradio front end over the `mlx_orpo` library.

    python -m app [--host 127.0.0.1] [--port 7860] [--runs-dir runs]

UI only: data checks, training, export and generation are the library's; the app
runs the training CLI in a subprocess and reads the run's metrics.jsonl.
"""

import mlx_orpo  # noqa: F401  (loads the fast BLAS before anything imports mlx)


def build_app(*args, **kwargs):
    from .ui import build_app as build

    return build(*args, **kwargs)
