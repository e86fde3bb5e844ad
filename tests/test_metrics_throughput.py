from __future__ import annotations

import pytest

from bench.api import TimingRecord
from metrics_testing import TensorDataset, make_ctx
from bench.metrics.throughput import build_throughput

import torch


def test_throughput_rows(tmp_path):
    timings = [TimingRecord(2.0, 64, tokens=4096, peak_memory_bytes=100, batch_size=64, device="cpu"),
               TimingRecord(1.0, 32, tokens=2048, peak_memory_bytes=300, batch_size=64, device="cpu")]
    ctx = make_ctx(TensorDataset(torch.zeros(2, 3, 8, 8, dtype=torch.uint8)), tmp_path, timings=timings)
    rows = {r.variant: r for r in build_throughput(None).compute(ctx)}
    assert rows["images/s"].value == pytest.approx(96 / 3.0)
    assert rows["seconds/image"].value == pytest.approx(3.0 / 96)
    assert rows["tokens/s"].value == pytest.approx(6144 / 3.0)
    assert rows["peak-memory-bytes"].value == 300
    assert rows["images/s"].n == 96 and rows["images/s"].extra["batch_sizes"] == [64]
    assert rows["images/s"].extra["devices"] == ["cpu"]


def test_throughput_without_tokens_or_timings(tmp_path):
    ds = TensorDataset(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    rows = build_throughput(None).compute(make_ctx(ds, tmp_path, timings=[TimingRecord(1.0, 10)]))
    assert "tokens/s" not in {r.variant for r in rows}
    assert build_throughput(None).compute(make_ctx(ds, tmp_path)) == []


def test_concurrent_processes_add_up_sequential_ones_do_not(tmp_path):
    ds = TensorDataset(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))

    def rows(timings):
        return {r.variant: r for r in build_throughput(None).compute(make_ctx(ds, tmp_path, timings=timings))}

    # two processes, each 10 images in 2 calls of 1 s, side by side over the same 2 s of wall time
    side = [TimingRecord(1.0, 5, process=p, start=100.0 + i + 0.1 * p) for p in (0, 1) for i in (0, 1)]
    got = rows(side)
    assert got["images/s"].value == pytest.approx(20 / 2.1)  # union [100, 102.1]
    assert got["seconds/image"].value == pytest.approx(4.0 / 20)  # each process spends 0.2 s per image
    assert got["images/s"].extra["processes"] == 2 and got["images/s"].extra["process_images_per_s"] == [5.0, 5.0]
    # the same calls one shard after the other (e.g. `--shard 0/2`, then `--shard 1/2`): no overlap, no gain
    after = [TimingRecord(1.0, 5, process=p, start=100.0 + i + 50 * p) for p in (0, 1) for i in (0, 1)]
    assert rows(after)["images/s"].value == pytest.approx(5.0)
    # records from before `start` was recorded count back to back, beside dated ones
    assert rows([TimingRecord(2.0, 10), TimingRecord(1.0, 5, start=7.0), TimingRecord(1.0, 5, start=7.5)])[
        "images/s"].value == pytest.approx(20 / 3.5)


def test_a_resume_under_other_settings_does_not_blend_them(tmp_path):
    ds = TensorDataset(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    first = [TimingRecord(1.0, 8, batch_size=8, threads=2, start=10.0 + i) for i in range(3)]  # 8 images/s
    resumed = [TimingRecord(1.0, 32, batch_size=32, threads=2, start=100.0 + i) for i in range(2)]  # 32 images/s
    # another shard, on a machine with another thread count, keeps its own calls
    shard = [TimingRecord(2.0, 8, batch_size=8, threads=4, process=1, start=200.0)]
    rows = {r.variant: r for r in build_throughput(None).compute(make_ctx(ds, tmp_path, timings=first + resumed + shard))}
    assert rows["images/s"].value == pytest.approx((64 + 8) / 4.0) and rows["images/s"].n == 72
    assert rows["images/s"].extra["dropped_calls"] == 3 and rows["images/s"].extra["batch_sizes"] == [8, 32]
    assert rows["images/s"].extra["process_images_per_s"] == [32.0, 4.0]


def test_peak_memory_restarts_for_each_generation():
    """The runner resets the peak before each system's generation, so its row is not the training's peak."""
    import mmap
    from pathlib import Path

    from bench.runner import _peak_memory, _reset_peak_memory

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs (elsewhere the peak is the process's since start)")
    size = 256 << 20
    _reset_peak_memory("cpu")
    base = _peak_memory("cpu")
    block = mmap.mmap(-1, size)  # anonymous memory, returned to the kernel on close whatever malloc keeps
    for i in range(0, size, mmap.PAGESIZE):
        block[i] = 1  # make every page resident
    high = _peak_memory("cpu")
    assert high >= base + size - (16 << 20)
    block.close()
    assert _peak_memory("cpu") >= high - (16 << 20)  # a peak, not the current size (counters lag a little)
    _reset_peak_memory("cpu")
    assert _peak_memory("cpu") < high - size + (16 << 20)


def _rows(tmp_path, timings):
    ds = TensorDataset(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    return {r.variant: r for r in build_throughput(None).compute(make_ctx(ds, tmp_path, timings=timings))}


def test_peak_memory_is_the_highest_peak_not_the_last(tmp_path):
    timings = [TimingRecord(1.0, 8, peak_memory_bytes=300), TimingRecord(1.0, 8, peak_memory_bytes=100)]
    assert _rows(tmp_path, timings)["peak-memory-bytes"].value == 300


def test_a_resume_on_another_device_drops_the_earlier_devices_calls(tmp_path):
    cpu = [TimingRecord(1.0, 8, batch_size=8, threads=2, device="cpu", start=10.0 + i) for i in range(3)]  # 8/s
    cuda = [TimingRecord(1.0, 64, batch_size=8, threads=2, device="cuda", start=100.0 + i) for i in range(2)]  # 64/s
    rows = _rows(tmp_path, cpu + cuda)
    assert rows["images/s"].value == pytest.approx(64.0) and rows["images/s"].n == 128
    assert rows["images/s"].extra["dropped_calls"] == 3 and rows["images/s"].extra["devices"] == ["cuda"]


def test_tokens_per_second_of_concurrent_processes_is_over_the_busy_wall_time(tmp_path):
    # as in test_concurrent_processes_add_up_sequential_ones_do_not: 4 calls of 1 s over the union [100, 102.1]
    side = [TimingRecord(1.0, 5, tokens=80, process=p, start=100.0 + i + 0.1 * p) for p in (0, 1) for i in (0, 1)]
    rows = _rows(tmp_path, side)
    assert rows["tokens/s"].value == pytest.approx(320 / 2.1)  # not 320 / 4 s of summed call time
    assert rows["tokens/s"].value / rows["images/s"].value == pytest.approx(16)


def test_the_latest_settings_are_those_of_the_latest_call_whatever_the_record_order(tmp_path):
    first = [TimingRecord(1.0, 8, batch_size=8, threads=2, start=10.0 + i) for i in range(3)]
    resumed = [TimingRecord(1.0, 32, batch_size=32, threads=2, start=100.0 + i) for i in range(2)]
    in_order, reversed_ = _rows(tmp_path, first + resumed), _rows(tmp_path, resumed + first)
    assert in_order["images/s"].value == pytest.approx(32.0)
    assert {v: (r.value, r.n, r.extra) for v, r in reversed_.items()} == \
        {v: (r.value, r.n, r.extra) for v, r in in_order.items()}
