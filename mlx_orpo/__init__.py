"""mlx-orpo: ORPO preference tuning (Hong et al., 2024) of LoRA/QLoRA adapters on MLX."""

import os as _os

from . import blas as _blas

# mlx-lm imports transformers for its tokenizers, and without PyTorch transformers warns on import that
# "Models won't be available": true, and of no concern here (MLX runs the models), but a new user reads it
# as a failure. Its advisory warnings go; its errors stay. Set before anything imports transformers.
_os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# Before anything imports mlx.core: see blas.py.
_blas.enable()

try:
    import mlx.core  # noqa: F401
except ImportError as exc:  # on Linux a bare `mlx` has no backend ("libmlx.so: cannot open shared object file")
    raise ImportError(f"MLX could not be loaded ({exc}). On Linux MLX needs a backend: pip install "
                      "'mlx-orpo[cpu]' or 'mlx-orpo[cuda]', or run bash scripts/setup.sh, which picks one") from exc

__version__ = "0.1.0"
