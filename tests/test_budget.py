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
    wired_bytes,
    wired_limit,
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
        TrainConfig(memory_budget="0GB").validate()
    assert parse_budget("1500000000B") == 1_500_000_000  # bytes, said so


def test_a_bare_number_is_refused_and_asks_for_a_unit(tmp_path):
    """YAML's `memory_budget: 2` means 2 GB to its writer; read as 2 bytes, the refusal then spoke of a
    budget of 0.0 MB. It is refused with the spelling that works."""
    from mlx_orpo.config import from_dict, load_yaml

    with pytest.raises(ValueError, match=r"^--memory-budget 2: give a unit: 2GB \(or MB, GiB; B for bytes\)"):
        parse_budget("2")
    (tmp_path / "run.yaml").write_text("memory_budget: 2\n")
    with pytest.raises(ValueError, match="give a unit: 2GB"):
        from_dict(load_yaml(tmp_path / "run.yaml")).validate()


def test_a_size_past_what_the_machine_can_address_is_refused_before_anything_is_written(tmp_path, cli_env):
    """--memory-budget 1e30GB passed validation, loaded the model and died in mx.set_memory_limit with a
    TypeError, leaving a run directory without a checkpoint."""
    import subprocess
    import sys

    with pytest.raises(ValueError, match="more than this machine can address"):
        parse_budget("1e30GB")
    assert parse_budget("16TB") == 16 * 10**12  # large but addressable
    out = tmp_path / "runs" / "huge"
    done = subprocess.run([sys.executable, "-m", "mlx_orpo.train", "--memory-budget", "1e30GB", "--output-dir",
                           str(out)], capture_output=True, text=True, timeout=300, env=cli_env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "more than this machine can address" in done.stderr.splitlines()[-1]
    assert not (tmp_path / "runs").exists()


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


METAL = {"max_recommended_working_set_size": 11 * GB, "memory_size": 16 * GB}


def test_metal_wires_what_the_run_needs_never_above_its_budget_or_the_working_set():
    budget = Budget(9 * GB, "test")
    assert wired_bytes(4 * GB, budget, METAL) == 4 * GB          # what the run is predicted to need
    assert wired_bytes(10 * GB, budget, METAL) == 9 * GB         # never above the budget
    assert wired_bytes(30 * GB, None, METAL) == 11 * GB          # nor Metal's recommended working set
    assert wired_bytes(None, None, METAL) == 11 * GB             # not planned: as much as Metal recommends
    assert wired_bytes(4 * GB, budget, {"memory_size": 80 * GB}) is None  # CUDA: no wired memory
    assert wired_bytes(4 * GB, budget, {"architecture": "x86_64"}) is None  # the CPU


def test_the_wired_limit_is_set_on_metal_restored_after_and_skipped_elsewhere(monkeypatch):
    """Decided from a stubbed device description: mx.set_wired_limit is called only where the device
    is Metal (mlx-lm-lora crashes elsewhere, reading a Metal-only key), and the old limit comes back."""
    calls, lines = [], []
    monkeypatch.setattr(mx, "set_wired_limit", lambda limit: calls.append(limit) or 7)
    with wired_limit(4 * GB, Budget(9 * GB, "test"), lines.append, info=METAL):
        assert calls == [4 * GB]
    assert calls == [4 * GB, 7]
    assert lines == ["wired memory: 4.00 GB kept resident for the run (mx.set_wired_limit; Metal's recommended "
                     "working set 11.00 GB)"]
    with wired_limit(4 * GB, None, lines.append, info={"architecture": "x86_64"}):
        pass
    assert calls == [4 * GB, 7] and lines[-1].startswith("wired memory: not set (a Metal setting;")


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
