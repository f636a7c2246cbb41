"""Data-parallel training over MLX's own distributed layer (`mx.distributed`).

Launched with `mlx.launch` (ring over TCP/Thunderbolt, MPI, or NCCL on CUDA),
every rank builds the same global batches, trains on its shard of each, and
gradients are averaged with `mlx.nn.average_gradients`. A single process is a
cluster of one, so the trainer has one code path.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass

import mlx.core as mx


class PeerLostError(RuntimeError):
    pass


@dataclass
class Cluster:
    group: object | None = None  # mx.distributed.Group when size > 1
    rank: int = 0
    size: int = 1

    @classmethod
    def init(cls) -> Cluster:
        group = mx.distributed.init()
        if group.size() == 1:
            return cls(None)
        return cls(group, group.rank(), group.size())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's share of a global batch (round-robin, so sizes differ by at most one)."""
        return items[self.rank::self.size]

    def sum(self, x: mx.array) -> mx.array:
        if self.group is None:
            return x
        try:
            out = mx.distributed.all_sum(x, group=self.group)
            mx.eval(out)
        except RuntimeError as exc:
            raise PeerLostError(f"rank {self.rank}: lost a peer ({exc})") from exc
        return out

    def average_gradients(self, grads):
        if self.group is None:
            return grads
        from mlx.nn import average_gradients

        try:
            grads = average_gradients(grads, group=self.group)
            mx.eval(grads)
        except RuntimeError as exc:
            raise PeerLostError(f"rank {self.rank}: lost a peer ({exc})") from exc
        return grads

    def agree_on(self, value: int) -> int:
        """Rank 0's integer, on every rank (a broadcast made of one all_sum)."""
        if self.group is None:
            return value
        return int(self.sum(mx.array(value if self.is_main else 0, dtype=mx.int64)).item())


class Watchdog:
    """Ends a rank that has made no progress for `timeout` seconds.

    A peer that dies is reported by the ring backend at the next collective,
    but a peer that hangs (or a network that silently drops) would block the
    others forever. Checkpoints are written atomically, so exiting loses at
    most the steps since the last one.
    """

    def __init__(self, cluster: Cluster, timeout: float, describe=lambda: ""):
        self.cluster, self.timeout, self.describe = cluster, timeout, describe
        self._last = time.monotonic()
        self._done = threading.Event()

    def beat(self) -> None:
        self._last = time.monotonic()

    def __enter__(self):
        if self.cluster.size > 1 and self.timeout > 0:
            threading.Thread(target=self._watch, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._done.set()

    def _watch(self):
        while not self._done.wait(min(5.0, self.timeout)):
            if time.monotonic() - self._last > self.timeout:
                print(f"rank {self.cluster.rank}: no progress for {self.timeout:.0f} s; a peer is probably "
                      f"hung or unreachable. Stopping. {self.describe()}", file=sys.stderr, flush=True)
                os._exit(3)
