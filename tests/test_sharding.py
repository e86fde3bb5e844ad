"""Sharded generation equals a single-process run exactly (samples and numbers)."""
import json
import os
import subprocess
import sys

import pandas as pd
from click.testing import CliRunner

from bench.cli import cli

SUITE = """suite: shard
version: 1
dataset: {name: shapes, resolution: 32, num_captions: 24, train_size: 1, pairs_size: 1}
generation: {batch_size: 4, seeds: [0, 1]}
systems: [{name: real-images}, {name: noise}]
metrics: [{name: fd, args: {features: effnet-lite0, blur: [0, 1]}}]
"""


def _bench(*args):
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], capture_output=True, text=True, timeout=600)


def _assert_same_run(one, two):
    """Identical PNGs and numbers; the two-shard run wrote one timing file per rank and seed."""
    pngs = sorted(p.relative_to(one) for p in (one / "samples").rglob("*.png"))
    assert len(pngs) == 2 * 2 * 24
    assert all((one / p).read_bytes() == (two / p).read_bytes() for p in pngs)
    assert sorted(p.name for p in (two / "timings" / "noise").iterdir()) == \
        ["seed0.rank0.jsonl", "seed0.rank1.jsonl", "seed1.rank0.jsonl", "seed1.rank1.jsonl"]
    for rank in (0, 1):  # each record names its process and wall-clock start (throughput adds processes up)
        records = [json.loads(line) for line in (two / "timings" / "noise" / f"seed0.rank{rank}.jsonl").read_text().splitlines()]
        assert records and all(r["process"] == rank and r["start"] > 1e9 for r in records)
    a, b = (pd.read_csv(d / "results.csv") for d in (one, two))
    assert len(a) == len(b) == 2 * 2 * 2
    assert list(a["value"]) == list(b["value"])


def test_two_processes_equal_one(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE)
    one = _bench("run", suite, "--out", tmp_path / "one", "--quiet")
    assert one.returncode == 0, one.stderr
    two = _bench("run", suite, "--out", tmp_path / "two", "--quiet", "--nproc", "2")
    assert two.returncode == 0, two.stderr
    _assert_same_run(tmp_path / "one", tmp_path / "two")
    # the suite's own generation.processes does the same, with one bar counting what the shards write
    by_suite = _bench("run", suite, "--out", tmp_path / "by-suite", "--set", "generation.processes=2")
    assert by_suite.returncode == 0, by_suite.stderr
    assert "generate in 2 processes" in by_suite.stderr and "96/96" in by_suite.stderr
    _assert_same_run(tmp_path / "one", tmp_path / "by-suite")
    # --nproc wins over the suite
    again = _bench("run", suite, "--out", tmp_path / "forced-one", "--quiet", "--set", "generation.processes=2",
                   "--nproc", "1")
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (tmp_path / "forced-one" / "timings" / "noise").iterdir()) == \
        ["seed0.jsonl", "seed1.jsonl"]


def test_bad_shard_spec_exits_2(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE)
    result = CliRunner().invoke(cli, ["run", str(suite), "--shard", "3/2", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "need 0 <= R < N" in result.output


def test_torchrun_two_gloo_ranks_equal_one_process_with_the_same_omp_threads(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # what torchrun sets for its ranks
    one = subprocess.run([sys.executable, "-m", "bench", "run", str(suite), "--out", str(tmp_path / "one"), "--quiet"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "bench", "run", str(suite), "--out", str(tmp_path / "two"), "--quiet"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    _assert_same_run(tmp_path / "one", tmp_path / "two")
