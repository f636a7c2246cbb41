"""The memory budget: what --memory-budget means on this machine, and MLX's memory limit for a run.

    budget = resolve(cfg.memory_budget, gpu=models.on_gpu(), cluster=cluster)  # a Budget, or None for off
    with memory_limit(budget, log):
        ...

`auto` is a share of what MLX may use here (`device_memory`, the one reading of the device); a size
is taken as given; `off` is no budget. Data-parallel ranks take rank 0's budget, so every rank fits
to and is limited by the same number. `fit.fit_to_memory` is the one caller in a training run.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx

AUTO, OFF = "auto", "off"

# --memory-budget auto: the share of what MLX may use here that a run may plan for. The rest is left
# to the OS, the app and the Python process (tokenizer, data), which share a Mac's unified memory.
AUTO_GPU_SHARE = 0.9   # of Metal's recommended working set, or of a CUDA GPU's memory
AUTO_CPU_SHARE = 0.75  # of RAM, on MLX's CPU backend


def parse_bytes(text: str) -> int:
    """'16GB', '16 GiB', '800MB', '1.5e9', '1500000000B' -> bytes (GB = 1e9, GiB = 2**30)."""
    match = re.fullmatch(r"\s*([0-9.e+]+)\s*([kmgt]i?)?(b?)\s*", str(text).lower())
    try:
        value = float(match.group(1)) if match else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"not a memory size: {text!r} (try 16GB)")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
    return int(value * scale[match.group(2) or ""])


# The largest size a budget may name: what a 64-bit process can address (and MLX's limit can hold).
ADDRESSABLE_BYTES = sys.maxsize


def format_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def parse_budget(text: str, flag: str = "--memory-budget") -> int | str:
    """A --memory-budget value: AUTO, OFF, or a size in bytes with its unit (16GB), > 0 and no more than
    this machine can address. A bare number is refused rather than read as bytes: YAML's `2` means
    2 GB to the person who wrote it, and 2 bytes to a parser. Bad input raises a ValueError that names
    `flag` (TrainConfig.validate checks a run's value with it)."""
    value = str(text).strip().lower()
    if value in (AUTO, OFF):
        return value
    try:
        size = parse_bytes(value)
    except ValueError as exc:
        raise ValueError(f"{flag}: {exc}; or auto, or off") from None
    if re.fullmatch(r"[0-9.e+]+", value):
        raise ValueError(f"{flag} {text}: give a unit: {text}GB (or MB, GiB; B for bytes); or auto, or off")
    if size <= 0:
        raise ValueError(f"{flag} must be > 0")
    if size > ADDRESSABLE_BYTES:
        raise ValueError(f"{flag} {text}: more than this machine can address ({ADDRESSABLE_BYTES:.3g} bytes); "
                         "give the memory the run may use, e.g. 16GB, or auto, or off")
    return size


@dataclass(frozen=True)
class Budget:
    """A memory budget in bytes, and where it came from (said in the log)."""
    bytes: int
    source: str

    def __str__(self) -> str:
        return f"{format_bytes(self.bytes)} ({self.source})"


@dataclass(frozen=True)
class DeviceMemory:
    """What MLX may use on this machine: `bytes` of `what`, of which --memory-budget auto plans for `share`."""
    bytes: int
    what: str  # Metal's recommended working set, the GPU's memory, or RAM
    share: float

    def auto(self) -> Budget:
        return Budget(int(self.share * self.bytes),
                      f"auto: {self.share:.0%} of {self.what}, {format_bytes(self.bytes)}")

    def __str__(self) -> str:
        return f"{self.what} ({format_bytes(self.bytes)})"


def device_memory(gpu: bool, info: dict | None = None) -> DeviceMemory:
    """The one reading of what MLX may use here. `gpu`: whether MLX computes on a GPU (models.on_gpu());
    `info`: a device description as `mx.device_info()` gives it (read here when None). Metal reports
    its recommended working set, CUDA the GPU's memory; MLX's CPU backend works in RAM."""
    if info is None:
        try:
            info = mx.device_info()
        except Exception:
            info = {}
    if info.get("max_recommended_working_set_size"):
        return DeviceMemory(int(info["max_recommended_working_set_size"]), "Metal's recommended working set",
                            AUTO_GPU_SHARE)
    if gpu and info.get("memory_size"):
        return DeviceMemory(int(info["memory_size"]), "the GPU's memory", AUTO_GPU_SHARE)
    return DeviceMemory(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "RAM", AUTO_CPU_SHARE)


def mac_working_set(ram: int) -> int:
    """Metal's recommended working set on an Apple-silicon Mac with `ram` bytes: macOS lets the GPU
    wire about two thirds of the memory on Macs of up to 36 GB and three quarters above (as reported by
    `mx.device_info()` on such Macs; the README's table uses it to predict what auto picks there)."""
    return int(ram * (2 / 3 if ram <= 36 * 2**30 else 3 / 4))


def resolve(spec: str, *, gpu: bool, cluster=None, flag: str = "--memory-budget") -> Budget | None:
    """The budget a --memory-budget value `spec` names here: a Budget, or None for off.

    With a data-parallel `cluster` (distributed.Cluster) every rank gets rank 0's: every rank must fit
    to the same number to train with the same settings, and `auto` differs between hosts with different
    memory. All ranks call this once, with the same spec."""
    value = parse_budget(spec, flag)
    if value == OFF:
        return None
    budget = device_memory(gpu).auto() if value == AUTO else Budget(value, flag)
    if cluster is not None and cluster.size > 1:
        budget = Budget(cluster.agree_on(budget.bytes), f"{budget.source} on rank 0")
    return budget


@contextlib.contextmanager
def memory_limit(budget: Budget | None, log: Callable[[str], None] = print):
    """MLX's memory limit set to the budget inside the block (None: left as it is), then restored.

    Past the limit MLX waits for queued kernels to finish before it queues more. A GPU queues far
    ahead of its kernels (MLX's CUDA backend: up to ten graphs of up to 1,000 MB of inputs each on an
    H100), and the buffers the queued kernels read are held until they have run, which adds to the
    peak; the limit bounds that.
    """
    if budget is None:
        yield
        return
    previous = mx.set_memory_limit(budget.bytes)
    log(f"MLX memory limit: {budget.bytes / 1e9:.2f} GB (MLX waits for queued kernels rather than go past it)")
    try:
        yield
    finally:
        mx.set_memory_limit(previous)


def wired_bytes(needed: int | None, budget: Budget | None, info: dict) -> int | None:
    """What a run wires on Metal (`mx.set_wired_limit`): the memory it is predicted to need (`needed`;
    None: not planned, so the budget), never above its budget or Metal's recommended working set. None
    where `info` (a device description as mx.device_info() gives it) is not Metal's: other backends
    have no wired memory (and no recommended working set to read)."""
    working_set = info.get("max_recommended_working_set_size")
    if not working_set:
        return None
    limits = [int(working_set)] + [n for n in (needed, budget and budget.bytes) if n]
    return min(limits)


@contextlib.contextmanager
def wired_limit(needed: int | None, budget: Budget | None, log: Callable[[str], None] = print,
                info: dict | None = None):
    """On Metal, wire the memory the run needs inside the block (wired_bytes), then restore the old
    limit: macOS then keeps the weights resident instead of paging them out under memory pressure,
    which slows a 7B model's steps several times over. Elsewhere a log line says it is skipped.
    `info`: the device description (default: mx.device_info())."""
    if info is None:
        try:
            info = mx.device_info()
        except Exception:
            info = {}
    wired = wired_bytes(needed, budget, info)
    if wired is None:
        log(f"wired memory: not set (a Metal setting; MLX computes on {mx.default_device()} here)")
        yield
        return
    previous = mx.set_wired_limit(wired)
    log(f"wired memory: {format_bytes(wired)} kept resident for the run (mx.set_wired_limit; Metal's "
        f"recommended working set {format_bytes(info['max_recommended_working_set_size'])})")
    try:
        yield
    finally:
        mx.set_wired_limit(previous)
