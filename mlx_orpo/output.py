"""What every export writes through: the result it reports, and outputs that appear whole or not at all.

Shared by export.py, gguf_export.py and peft_io.py. Every output is written
through files.atomic_output (a temporary beside it, synced and renamed into place
when complete); an existing output is only replaced with force=True; free disk
space is checked first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .files import atomic_output, dangling_link, overlap


@dataclass
class ExportResult:
    format: str
    out: Path
    files: list[tuple[Path, int]]  # (path, bytes)
    dtype: str  # float dtype or quantisation type of the weights
    usage: str  # one command that uses the output
    base: str = ""
    fused_modules: int = 0
    logit_error: dict | None = None  # measured against the unquantised fused model (mlx --bits)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote {self.format} export to {self.out} ({self.dtype})"]
        if self.base:
            lines.append(f"  base: {self.base}; fused adapter modules: {self.fused_modules}")
        lines += [f"  {human_size(size):>10}  {path}" for path, size in self.files]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"use it:\n  {self.usage}")
        return "\n".join(lines)


def human_size(n: float) -> str:
    """Bytes in binary units: 1536 -> "1.5 KB"."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def check_destination(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force (force=True) to replace it")
    if (link := dangling_link(out)) is not None:
        raise FileExistsError(f"--out {out}: {link}; create what it points to, remove the link, or choose "
                              "another place for the export")


def check_apart(out: Path, source: str | Path | None, what: str) -> None:
    """Refuse an output that is, contains or lies inside an input: without this, `--adapters RUN
    --out RUN --force` would replace the whole run directory with two PEFT files."""
    if source is None or not Path(source).expanduser().exists():
        return  # an alias or Hub id is not a path on this machine
    problem = overlap(out, source)
    if problem is None:
        return
    raise ValueError(f"--out {out} {problem} the input {what} {source}; writing it would destroy the input: "
                     "choose an output outside it")


# Free space asked beyond an export's estimated size: filesystem overhead and the files the estimate
# leaves out (configs, a Modelfile).
MARGIN = 64 << 20
_WIDTH = {"float32": 4, "float16": 2, "bfloat16": 2}
GGUF_WIDTH = {"f16": 2.0, "q8_0": 34 / 32, "f32": 4.0}  # bytes per element of a 2-D tensor (q8_0: 32 in 34)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "generation_config.json")


def output_bytes(format: str, tensors, *, dtype: str = "float16", gguf_type: str = "f16", bits: int | None = None,
                 group_size: int = 64, other_files: int = 0) -> int:
    """The bytes an export writes: `tensors` ((elements, dimensions) of each parameter of the fused
    model; for peft, of the adapter) at the format's width, plus `other_files` (the tokenizer's files,
    copied beside the weights or, in a GGUF, its vocabulary). The up-front disk check and the app's
    sizes before an export both count with this.

    hf, mlx: `dtype`; mlx with `bits`: matrices at `bits` plus a scale and a bias per group (in
    `dtype`), the norms at `dtype`; gguf: 1-D tensors float32, 2-D at `gguf_type`; peft: `dtype`."""
    width = _WIDTH[dtype]
    if format == "gguf":
        per = {1: 4.0, 2: GGUF_WIDTH[gguf_type]}
    elif format == "mlx" and bits:
        per = {1: width, 2: bits / 8 + 2 * width / group_size}
    elif format in ("hf", "mlx", "peft", "import-peft"):
        per = {1: width, 2: width}
    else:
        raise ValueError(f"unknown export format {format!r}")
    return int(sum(size * per[2 if ndim >= 2 else 1] for size, ndim in tensors)) + other_files


def tensor_shapes(arrays) -> list[tuple[int, int]]:
    """(elements, dimensions) of each array (MLX or NumPy), as output_bytes counts them."""
    return [(int(v.size), int(v.ndim)) for v in arrays]


def dtype_name(array) -> str:
    """'float32' for an MLX or NumPy float32 array."""
    return str(array.dtype).replace("mlx.core.", "")


def tokenizer_bytes(model_dir: Path) -> int:
    """Bytes of the tokenizer files in a model directory (an export copies them or their contents)."""
    return sum((model_dir / name).stat().st_size for name in TOKENIZER_FILES if (model_dir / name).is_file())


def check_free_space(directory: Path, needed: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise OSError(f"not enough disk space in {directory} (the disk mounted at {mount_point(directory)}): the "
                      f"export needs about {human_size(needed)}, {human_size(free)} is free")


def mount_point(path: Path) -> Path:
    """The folder the disk holding `path` is mounted at."""
    path = Path(path).resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


# numpy's tofile (the GGUF writer's) reports a write cut short by a full disk without an errno.
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


@contextlib.contextmanager
def disk_space(out: Path, needed: int) -> Iterator[None]:
    """Check that the disk of `out` has the `needed` bytes free, then write it in the block. A disk that
    fills up meanwhile (the estimate was short, or something else wrote there) is reported as the check
    reports it: the disk, the space needed, and the space free when the export began."""
    check_free_space(out.parent, needed)
    free = shutil.disk_usage(out.parent).free
    try:
        yield
    except OSError as exc:
        short_write = exc.errno is None and _SHORT_WRITE.fullmatch(str(exc))
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) and not short_write:
            raise
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: the disk mounted at {mount_point(out.parent)} "
                      f"filled up while writing; the export needs about {human_size(needed)}, "
                      f"{human_size(free)} was free when it began", str(out)) from None


def output_files(out: Path) -> list[tuple[Path, int]]:
    """(path, bytes) of an output file, or of every file under an output directory."""
    paths = sorted(p for p in out.rglob("*") if p.is_file()) if out.is_dir() else [out]
    return [(p, p.stat().st_size) for p in paths]


def write_dir_atomically(out: Path, force: bool, needed: int, write: Callable[[Path], None]) -> None:
    """Check the destination and the free space, then `write(folder)` the output through
    files.atomic_output: it appears whole, replacing an old one only once complete, or not at all."""
    check_destination(out, force)
    with disk_space(out, needed), atomic_output(out, directory=True) as tmp:
        write(tmp)
