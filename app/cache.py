"""Small LRU caches of loaded tokenizers and models, shared by all sessions of one app.

Loaded weights are a process resource (like a file cache), not session state:
two browser tabs chatting with the same checkpoint share one copy.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from mlx_orpo import rundir


class LRU:
    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, make):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()  # outside the lock: loading takes seconds
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


def _stamp(path: Path | None):
    """Changes when a checkpoint's adapters are rewritten (the run's newest adapters are)."""
    if path is None:
        return None
    weights = Path(path) / rundir.ADAPTERS
    return (str(path), weights.stat().st_mtime_ns if weights.is_file() else 0)


class Models:
    def __init__(self, models: int = 3, tokenizers: int = 4):
        self._models = LRU(models)
        self._tokenizers = LRU(tokenizers)
        # One chat's MLX work at a time: a chat cut off ends its worker only after the current token,
        # and the next chat's worker waits for that instead of running MLX beside it.
        self.generation = threading.Lock()

    def tokenizer(self, spec: str):
        """The model's tokenizer only (no weights), with a chat template guaranteed."""
        def make():
            from mlx_lm.utils import load_tokenizer

            from mlx_orpo.models import resolve_model
            from mlx_orpo.tokenize import ensure_chat_template

            path = Path(resolve_model(spec))
            if not path.is_dir():
                from huggingface_hub import snapshot_download  # Hub id: tokenizer files only

                path = Path(snapshot_download(str(path), allow_patterns=["*.json", "*.model", "*.txt", "*.jinja"]))
            tok = load_tokenizer(path)
            ensure_chat_template(tok)
            return tok
        return self._tokenizers.get(spec, make)

    def model(self, spec: str, adapter: Path | None):
        """(model, tokenizer) for generation: the base, or base + adapters from `adapter`."""
        def make():
            from mlx_orpo.api import load_with_adapters

            return load_with_adapters(spec, adapter)
        return self._models.get((spec, _stamp(adapter)), make)
