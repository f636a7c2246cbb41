"""mlx-orpo: ORPO preference tuning (Hong et al., 2024) of LoRA/QLoRA adapters on MLX."""

from . import blas as _blas

# Before anything imports mlx.core: see blas.py.
_blas.enable()

try:
    import mlx.core  # noqa: F401
except ImportError as exc:  # on Linux a bare `mlx` has no backend ("libmlx.so: cannot open shared object file")
    raise ImportError(f"MLX could not be loaded ({exc}). On Linux MLX needs a backend: pip install "
                      "'mlx-orpo[cpu]' or 'mlx-orpo[cuda]', or run bash scripts/setup.sh, which picks one") from exc

__version__ = "0.1.0"
