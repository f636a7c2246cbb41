"""The memory budget (mlx_orpo.budget): parsing --memory-budget, the one reading of the device, what
auto means there, rank 0's budget on every rank, and MLX's memory limit around a run."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlx_orpo.budget import (
    AUTO,
    OFF,
    Budget,
    DeviceMemory,
    device_memory,
    memory_limit,
    parse_budget,
    parse_bytes,
    resolve,
)
from mlx_orpo.config import TrainConfig
from mlx_orpo.distributed import Cluster

GB = 10**9


def test_parse_bytes():
    assert parse_bytes("16GB") == 16 * GB and parse_bytes("16 GiB") == 16 * 2**30
    assert parse_bytes("800MB") == 800 * 10**6 and parse_bytes("1.5e9") == 1_500_000_000


def test_a_budget_is_auto_off_or_a_positive_size_and_bad_input_names_the_option():
    assert parse_budget(" Auto ") == AUTO and parse_budget("OFF") == OFF and parse_budget("12GB") == 12 * GB
    with pytest.raises(ValueError, match=r"^--memory-budget: not a memory size: 'lots' \(try 16GB\); or auto, or off$"):
        parse_budget("lots")
    with pytest.raises(ValueError, match="^--budget must be > 0$"):
        parse_budget("0GB", "--budget")
    # The run's own check is this one.
    with pytest.raises(ValueError, match="--memory-budget must be > 0"):
        TrainConfig(memory_budget="0").validate()


def test_one_reading_of_the_device_says_what_auto_plans_for():
    metal = device_memory(True, {"max_recommended_working_set_size": 11 * GB, "memory_size": 16 * GB})
    assert metal == DeviceMemory(11 * GB, "Metal's recommended working set", 0.9)
    assert metal.auto() == Budget(int(0.9 * 11 * GB), "auto: 90% of Metal's recommended working set, 11.00 GB")
    assert device_memory(True, {"memory_size": 80 * GB}) == DeviceMemory(80 * GB, "the GPU's memory", 0.9)
    # A GPU's memory does not count for a run on the CPU: MLX's CPU backend works in RAM.
    cpu = device_memory(False, {"memory_size": 80 * GB})
    assert cpu.what == "RAM" and cpu.share == 0.75 and cpu.bytes > 0
    assert str(cpu) == f"RAM ({cpu.bytes / 1e9:.2f} GB)"


class FakeRank(Cluster):
    """Rank 1 of 2, without a group: agree_on answers rank 0's value (`rank0`) and counts the calls."""

    def __init__(self, rank0: int):
        super().__init__(None, 1, 2)
        self.rank0, self.asked = rank0, []

    def agree_on(self, value: int) -> int:
        self.asked.append(value)
        return self.rank0


def test_every_rank_takes_rank_0s_budget():
    rank = FakeRank(7 * GB)
    mine = device_memory(False).auto()
    assert resolve("auto", gpu=False, cluster=rank) == Budget(7 * GB, f"{mine.source} on rank 0")
    assert rank.asked == [mine.bytes]
    assert resolve("off", gpu=False, cluster=rank) is None and len(rank.asked) == 1  # off: nothing to agree on


def test_memory_limit_is_set_inside_and_restored_after():
    before = mx.set_memory_limit(7_000_000_000)
    lines = []
    try:
        with memory_limit(Budget(123_000_000, "test"), lines.append):
            assert mx.set_memory_limit(123_000_000) == 123_000_000
        assert mx.set_memory_limit(7_000_000_000) == 7_000_000_000
        with memory_limit(None, lines.append):
            assert mx.set_memory_limit(7_000_000_000) == 7_000_000_000
    finally:
        mx.set_memory_limit(before)
    assert lines == ["MLX memory limit: 0.12 GB (MLX waits for queued kernels rather than go past it)"]


class LimitSet(Exception):
    """Raised where MLX's memory limit is set: the run stops there, before training."""


def test_a_rank_fits_to_and_is_limited_by_rank_0s_budget(smollm2_dir, tmp_path, monkeypatch):
    """Data-parallel ranks resolve the budget once: rank 1 (whose own `auto` is this machine's) fits to
    rank 0's budget and caps MLX at the same number. Rank 0's budget here is the checkpointed plan's,
    so the fit turns checkpointing on; this machine's own auto would leave the run as it is."""
    import mlx_orpo.api as api
    from mlx_orpo.fit import fit_candidates
    from mlx_orpo.predict import load_model_config, predict_peak

    cfg = TrainConfig(model=str(smollm2_dir), max_length=128, iters=1, output_dir=str(tmp_path / "run")).validate()
    rank0 = predict_peak(fit_candidates(cfg)[1], load_model_config(cfg.model)).total
    assert rank0 < predict_peak(cfg, load_model_config(cfg.model)).total < device_memory(False).auto().bytes
    rank = FakeRank(rank0)
    monkeypatch.setattr(api.Cluster, "init", classmethod(lambda cls: rank))
    limits = []

    def set_memory_limit(limit):
        limits.append(limit)
        raise LimitSet

    monkeypatch.setattr(mx, "set_memory_limit", set_memory_limit)
    with pytest.raises(LimitSet):
        api.run_training(cfg, progress=False)
    assert cfg.grad_checkpoint is True  # fitted to rank 0's budget
    assert limits == [rank0]            # and MLX limited by the same one
    assert len(rank.asked) == 1         # resolved once
