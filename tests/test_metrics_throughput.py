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
