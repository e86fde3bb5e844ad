"""Sharded generation equals a single-process run exactly (samples and numbers)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.cli import cli

REPO = Path(__file__).resolve().parents[1]

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


SLEEPY = '''
import time
import torch
from bench.registry import SYSTEMS

class Sleepy:
    uses_captions = False
    def generate(self, captions, caption_ids, seeds):
        time.sleep(0.5)
        return torch.zeros(len(captions), 3, 16, 16, dtype=torch.uint8)

@SYSTEMS.register("plugin-sleepy", "half a second per batch")
def build(args, ctx):
    return Sleepy()
'''


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc (Linux)")
@pytest.mark.parametrize("how", ["terminate", "kill"])
def test_the_generation_shards_stop_with_the_run(tmp_path, how):
    """SIGTERM to `bench run --nproc 2` stops its shard processes (and the run exits 143); SIGKILL, which no
    cleanup sees, stops them through the parent-death signal they were started with."""
    from test_build_pool import _processes_mentioning, stop_run_and_wait_for_children
    from test_plugins import install

    install(tmp_path, "sleepy_plugin", SLEEPY)
    suite = tmp_path / "sleepy.yaml"
    suite.write_text("suite: sleepy\nversion: 1\ndataset: {name: shapes, resolution: 16, num_captions: 200, "
                     "train_size: 1, pairs_size: 1}\ngeneration: {batch_size: 1, seeds: [0], warmup: false}\n"
                     "systems: [{name: plugin-sleepy}]\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
           "BENCH_CACHE": str(tmp_path / "cache")}
    run = subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite), "--out", str(tmp_path / "run"),
                            "--quiet", "--nproc", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    shard = f"--shard 1/2 -- {suite}"
    deadline = time.time() + 120
    while not list((tmp_path / "run" / "samples").rglob("*.png")) and time.time() < deadline and run.poll() is None:
        time.sleep(0.2)  # a shard is generating
    assert _processes_mentioning(shard), "the shard processes did not start"
    stop_run_and_wait_for_children(run, how, shard)


def test_throughput_counts_the_timings_of_every_shard(tmp_path):
    """The measuring run reads every rank's timing file (as a sharded run writes them, see _assert_same_run)."""
    import dataclasses

    from bench.api import TimingRecord
    from bench.metrics.throughput import build_throughput
    from bench.runner import Runner
    from bench.suite import load_suite
    from metrics_testing import make_ctx

    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE)
    runner = Runner(load_suite(suite), out_dir=tmp_path / "r", progress=False)
    folder = tmp_path / "r" / "timings" / "noise"
    folder.mkdir(parents=True)
    for rank in (0, 1):  # 12 captions each, in 3 calls of 4
        records = [TimingRecord(1.0, 4, batch_size=4, process=rank, start=100.0 + i) for i in range(3)]
        (folder / f"seed0.rank{rank}.jsonl").write_text("".join(json.dumps(dataclasses.asdict(r)) + "\n"
                                                                for r in records))
    timings = runner.timings("noise", 0)
    assert len(timings) == 6
    rows = build_throughput(None).compute(make_ctx(None, tmp_path, timings=timings))
    speed = [r for r in rows if r.variant == "images/s"]
    assert len(speed) == 1 and speed[0].n == 24  # all 24 captions of seed 0
