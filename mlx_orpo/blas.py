"""Use an optimised BLAS for MLX's CPU backend on Linux.

MLX's Linux CPU wheel links a slow reference BLAS (about 8 GFLOP/s on a 1024^2
float32 matmul here). Loading a system OpenBLAS with RTLD_GLOBAL *before*
``mlx.core`` is first imported makes MLX resolve its BLAS symbols to it
(about 245 GFLOP/s, and LoRA steps about 8x faster). This module must therefore
be imported before anything imports mlx; ``mlx_orpo/__init__`` does that.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# Debian/Ubuntu paths of the threaded OpenBLAS, then generic fallbacks.
_CANDIDATES = (
    "/usr/lib/{arch}-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/{arch}-linux-gnu/openblas-openmp/libblas.so.3",
    "/usr/lib/{arch}-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)

# What was decided at import; read by `describe()` for the one log line.
_state = {"blas": "not checked"}


def _load() -> str:
    if sys.platform != "linux":
        return "platform default (Accelerate on macOS)" if sys.platform == "darwin" else "platform default"
    if os.environ.get("MLX_ORPO_BLAS", "").lower() in ("0", "off", "none", "reference"):
        return "MLX's bundled reference BLAS (MLX_ORPO_BLAS=off)"
    if "mlx.core" in sys.modules:
        return "MLX's bundled reference BLAS (mlx was imported before mlx_orpo, too late to swap)"
    arch = platform.machine()
    explicit = os.environ.get("MLX_ORPO_BLAS")
    paths = [explicit] if explicit else [p.format(arch=arch) for p in _CANDIDATES]
    for path in paths:
        if path and os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
            except OSError as exc:  # a broken install must not stop training
                return f"MLX's bundled reference BLAS ({path} failed to load: {exc})"
            return f"OpenBLAS ({path})"
    return ("MLX's bundled reference BLAS (slow; `apt-get install libopenblas0-pthread` "
            "makes CPU training several times faster)")


def enable() -> str:
    """Load the fastest BLAS found, once; return a description of the one in use."""
    if _state["blas"] == "not checked":
        _state["blas"] = _load()
    return _state["blas"]


def describe() -> str:
    return _state["blas"]
