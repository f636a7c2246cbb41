"""mlx-orpo: ORPO preference tuning (Hong et al., 2024) of LoRA/QLoRA adapters on MLX."""

from . import blas as _blas

# Before anything imports mlx.core: see blas.py.
_blas.enable()

__version__ = "0.1.0"
