"""What building and sharding promise, pinned in this process with tiny suites: the build order (every dependency
before its dependents, transitively, ties in declaration order); each component and system built once per run and
a component shared by two systems (or two names with one key) trained once, its artefact named in the provenance
of both; a deferring Builder raising NeedsTraining for the innermost missing item with the folder a serial build
fills; build workers run as `bench build-item` with the suite's overrides, their thread count and the run's cache,
at most `workers` at a time, leaving the cache a serial build leaves; a worker that fails, dies or trains nothing
stops the build with one error and no other worker trains on; generation shards (`--nproc`) get caption i when
i % N is their rank, each caption once, with the PNGs of a single-process run and metrics that count every sample;
a failing or killed shard stops the run naming it, before any results are written. Workers and shards run the real
`bench` command line in this process (click's CliRunner in place of a subprocess) or are stand-in processes."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import bench.build
import bench.build_pool
import bench.sharding
from bench.api import UserError
from bench.build import Builder, NeedsTraining, default_threads
from bench.build_pool import build_order, child_failure, default_build_workers, prebuild, ready_builder, \
    worker_threads
from bench.cli import cli
from bench.datasets.base import build_dataset
from bench.registry import COMPONENTS, SYSTEMS, Entry
from bench.runner import Runner
from bench.sharding import parse_shard, run_sharded, torchrun_world
from bench.suite import load_suite

REPO = Path(__file__).resolve().parents[1]

# ---- a test component kind and system, registered only while a test that asks for them runs -------------------

TRAINED: list[tuple[str, int]] = []  # (component name, value) per training in this process
BUILT: list[tuple] = []  # ("component", name) or ("system", args) per factory call


@dataclass(frozen=True)
class CounterArgs:
    value: int = field(default=1, metadata={"min": 0})
    uses: str | None = field(default=None, metadata={"component": "semantics-counter"})


def build_counter(spec, ctx):
    """A 'trained' vector seeded by `value`, cached like the real components; builds `uses` first."""
    BUILT.append(("component", spec.name))
    if spec.train.uses is not None:
        ctx.component(spec.train.uses)

    def train():
        TRAINED.append((spec.name, spec.train.value))
        return torch.randn(8, generator=torch.Generator().manual_seed(spec.train.value))

    return ctx.cached("semantics-counter", {"train": dataclasses.asdict(spec.train)}, train,
                      save=lambda t, d: Path(d, "w.bin").write_bytes(t.numpy().tobytes()),
                      load=lambda d: torch.from_numpy(np.frombuffer(Path(d, "w.bin").read_bytes(), np.float32).copy()))


build_counter.reads = ("train",)


@dataclass(frozen=True)
class PairArgs:
    a: str = field(default="c1", metadata={"component": "semantics-counter"})
    b: str | None = field(default=None, metadata={"component": "semantics-counter"})
    scale: int = 1


class Pair:
    uses_captions = False

    def __init__(self, weights):
        self.weights = weights

    def generate(self, captions, caption_ids, seeds):
        return torch.zeros(len(captions), 3, 16, 16, dtype=torch.uint8)


def build_pair(args, ctx):
    BUILT.append(("system", args))
    return Pair([ctx.component(args.a)] + ([ctx.component(args.b)] if args.b else []))


@pytest.fixture
def registered(monkeypatch):
    COMPONENTS.names()  # the built-in entries and plugins first
    monkeypatch.setitem(COMPONENTS._entries, "semantics-counter",
                        Entry("semantics-counter", build_counter, "test: a seeded vector", CounterArgs))
    monkeypatch.setitem(SYSTEMS._entries, "semantics-pair", Entry("semantics-pair", build_pair, "test", PairArgs))
    TRAINED.clear()
    BUILT.clear()


HEAD = """suite: sem
version: 1
dataset: {name: shapes, resolution: 16, num_captions: 4, train_size: 1, pairs_size: 1}
"""

POOL = HEAD + """components:
  c1: {kind: semantics-counter, train: {value: 1}}
  c2: {kind: semantics-counter, train: {value: 2}}
  c3: {kind: semantics-counter, train: {value: 3}}
  c1-again: {kind: semantics-counter, train: {value: 1}}
systems:
  - {name: semantics-pair, alias: p12, args: {a: c1, b: c2}}
  - {name: semantics-pair, alias: p13, args: {a: c1-again, b: c3}}
  - {name: random-caption, alias: wrap, args: {of: p12}}
  - {name: semantics-pair, alias: p1, args: {a: c1, scale: 2}}
"""


def suite_of(tmp_path, text, overrides=()):
    path = tmp_path / "sem.yaml"
    path.write_text(text)
    return load_suite(path, overrides)


def builder_for(suite, cache, **kw):
    return Builder(suite, build_dataset(suite.dataset), "cpu", str(cache), progress=False, **kw)


def artefacts(cache: Path) -> dict[str, bytes]:
    """Every file of every complete artefact under `cache`, by relative path, read from disk."""
    return {p.relative_to(cache).as_posix(): p.read_bytes() for p in sorted(cache.rglob("*"))
            if p.is_file() and p.name != "key.json" and not p.parent.name.startswith(".")}


# ---- build order --------------------------------------------------------------------------------------------------

def test_build_order_counts_dependents_transitively_and_keeps_declaration_order_in_ties(tmp_path, registered):
    """Wrappers declared before what they wrap: only the transitive count of dependents puts `inner` before `mid`
    before `outer`. By hand: c1 <- inner <- mid <- outer gives c1 3 dependents, inner 2, mid 1; c2 and outer none
    (c2 declared first); c0 is used by c2 only."""
    suite = suite_of(tmp_path, HEAD + """components:
  c2: {kind: semantics-counter, train: {value: 2, uses: c0}}
  c0: {kind: semantics-counter, train: {value: 0}}
  c1: {kind: semantics-counter, train: {value: 1}}
systems:
  - {name: random-caption, alias: outer, args: {of: mid}}
  - {name: random-caption, alias: mid, args: {of: inner}}
  - {name: semantics-pair, alias: inner, args: {a: c1}}
""")
    assert build_order(suite) == [("component", "c1"), ("system", "inner"), ("component", "c0"), ("system", "mid"),
                                  ("component", "c2"), ("system", "outer")]


# ---- Builder: once each, shared artefacts, deferral ---------------------------------------------------------------

def test_each_item_is_built_once_and_an_artefact_shared_by_two_systems_trains_once(tmp_path, registered):
    suite = suite_of(tmp_path, POOL)
    builder = builder_for(suite, tmp_path / "cache", build_threads=1)
    systems = {alias: builder.system(alias) for alias in ("p12", "p13", "wrap", "p1", "p12")}
    assert builder.system("p12") is systems["p12"] and builder.component("c1") is systems["p12"].weights[0]
    assert sorted(TRAINED) == [("c1", 1), ("c2", 2), ("c3", 3)]  # c1-again has c1's key: loaded, not trained
    assert sorted(b for b in BUILT if b[0] == "component") == [
        ("component", n) for n in ("c1", "c1-again", "c2", "c3")]  # every factory once
    assert len([b for b in BUILT if b[0] == "system"]) == 3
    assert torch.equal(systems["p13"].weights[0], torch.randn(8, generator=torch.Generator().manual_seed(1)))
    # the provenance of every system names the artefacts on disk it was built from, also when reached through a
    # component built (and cached in the builder) for an earlier system
    on_disk = {f"semantics-counter/{d.name}": d for d in (tmp_path / "cache" / "semantics-counter").iterdir()}
    assert len(on_disk) == 3
    c1_dir = next(k for k, d in on_disk.items()
                  if json.loads((d / "key.json").read_text())["key"]["train"]["value"] == 1)
    for alias in ("p12", "p13", "wrap", "p1"):  # p1 gets c1 as p12 left it in the builder
        assert c1_dir in builder.made_of(("system", alias)), alias
    assert set(builder.made_of(("system", "p12"))) <= set(builder.made_of(("system", "wrap")))
    # another process with the same cache loads all of it
    TRAINED.clear()
    again = builder_for(suite, tmp_path / "cache", build_threads=1)
    assert torch.equal(again.system("p13").weights[1], systems["p13"].weights[1]) and TRAINED == []


def test_a_wrapping_systems_provenance_names_the_wrapped_systems_arguments(tmp_path, registered):
    """`wrap` (random-caption of p12) may make other samples when p12's arguments change, even ones that load no
    other artefact: its made_of, which its sample folders' fingerprint reads, must change with them."""
    def made_of(scale: int) -> list[str]:
        suite = suite_of(tmp_path, POOL.replace("args: {a: c1, b: c2}", f"args: {{a: c1, b: c2, scale: {scale}}}"))
        builder = builder_for(suite, tmp_path / "cache", build_threads=1)
        builder.system("wrap")
        return builder.made_of(("system", "wrap"))

    assert made_of(1) == made_of(1)
    assert made_of(1) != made_of(2)


def test_components_that_use_each_other_in_a_ring_are_one_user_error(tmp_path, registered):
    suite = suite_of(tmp_path, HEAD + """components:
  c1: {kind: semantics-counter, train: {uses: c2}}
  c2: {kind: semantics-counter, train: {uses: c1}}
systems: [{name: semantics-pair, args: {a: c1}}]
""")
    with pytest.raises(UserError, match="cycle: c1 -> c2 -> c1"):
        builder_for(suite, tmp_path / "cache").component("c1")


def test_deferred_training_names_the_innermost_item_and_the_folder_a_serial_build_fills(tmp_path, registered):
    suite = suite_of(tmp_path, POOL.replace("c3: {kind: semantics-counter, train: {value: 3}}",
                                            "c3: {kind: semantics-counter, train: {value: 3, uses: c2}}"))
    deferring = builder_for(suite, tmp_path / "cache", build_threads=1, defer_training=True)
    with pytest.raises(NeedsTraining) as caught:
        deferring.build(("system", "p13"))  # -> c1-again (c1's artefact), the first it builds
    assert caught.value.item == ("component", "c1-again") and TRAINED == []
    with pytest.raises(NeedsTraining) as inner:
        deferring.component("c3")  # c3 uses c2: c2 is what is missing first
    assert inner.value.item == ("component", "c2")
    assert not (tmp_path / "cache").exists()
    # the serial path, with the thread count the deferring builder keys by, trains into exactly that folder
    builder_for(suite, tmp_path / "cache", build_threads=1).component("c2")
    assert (Path(inner.value.artefact) / "key.json").is_file()
    assert [p.name for p in (tmp_path / "cache" / "semantics-counter").iterdir()] == [Path(inner.value.artefact).name]
    assert Path(inner.value.artefact).parent == tmp_path / "cache" / "semantics-counter"
    # another thread count is another artefact: still missing for a builder keyed by 2 threads
    with pytest.raises(NeedsTraining):
        builder_for(suite, tmp_path / "cache", build_threads=2, defer_training=True).component("c2")
    # Builder.cached with no item (nothing to hand to a worker) trains even when deferring
    value = deferring.cached("loose", {"a": 1}, train=lambda: 5, save=lambda obj, d: Path(d, "v").write_text("5"),
                             load=lambda d: int(Path(d, "v").read_text()))
    assert value == 5 and (tmp_path / "cache" / "loose").is_dir()


def test_training_is_keyed_by_cpu_threads_on_a_cpu_only(tmp_path, registered, monkeypatch):
    """On a GPU the CPU thread count changes no weight: a GPU artefact (any cuda:N) names none, so ranks and machines
    with other core counts share it."""
    monkeypatch.setattr(bench.build, "platform_key", lambda device: {"device": device.split(":")[0]})
    suite = suite_of(tmp_path, POOL)
    on = {device: Builder(suite, None, device, str(tmp_path), build_threads=3).trained_on()
          for device in ("cuda", "cuda:1", "cpu")}
    assert on == {"cuda": {"device": "cuda"}, "cuda:1": {"device": "cuda"}, "cpu": {"device": "cpu", "threads": 3}}
    assert Builder(suite, None, "cpu", str(tmp_path)).trained_on()["threads"] == torch.get_num_threads()


# ---- build workers --------------------------------------------------------------------------------------------------

def test_worker_counts_and_threads(monkeypatch):
    assert [worker_threads(w, c) for w, c in ((2, 2), (2, 5), (3, 2), (1, 4), (0, 4), (4, 16))] == [1, 2, 1, 4, 4, 4]
    if hasattr(os, "sched_getaffinity"):  # the cores this process may run on (taskset, a container's cpuset)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5, 7})
        monkeypatch.setattr(os, "cpu_count", lambda: 64)
        assert default_threads() == 3


@pytest.mark.parametrize("cores,device,workers", [(1, "cpu", 1), (2, "cpu", 2), (16, "cpu", 2), (16, "cuda", 1),
                                                  (16, "cuda:1", 1)])
def test_default_build_workers(monkeypatch, cores, device, workers):
    monkeypatch.setattr(bench.build_pool, "default_threads", lambda: cores)
    assert default_build_workers(device) == workers


def test_ready_builder_defers_to_workers_of_a_share_of_the_cores(tmp_path, registered, monkeypatch):
    suite = suite_of(tmp_path, POOL)
    dataset = build_dataset(suite.dataset)
    calls = []
    monkeypatch.setattr(bench.build_pool, "prebuild", lambda *args: calls.append(args))
    monkeypatch.setattr(bench.build_pool, "default_threads", lambda: 5)
    one = ready_builder(suite, dataset, "cpu", str(tmp_path), False, 1, tmp_path / "logs")
    assert calls == [] and not one.defer_training and one.build_threads is None  # trains here, with its threads
    pooled = ready_builder(suite, dataset, "cpu", str(tmp_path), False, 2, tmp_path / "logs")
    assert pooled.defer_training and pooled.build_threads == 2  # 5 cores // 2 workers
    assert calls == [(pooled, 2, tmp_path / "logs", False)]


class Finished:
    """A child process that has already exited with `code`."""

    def __init__(self, code: int):
        self.returncode = code

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        return self.returncode

    def send_signal(self, sig):
        raise AssertionError("signalled after it ended")


class InProcessWorker:
    """A build worker: `bench build-item` run by click in this process, when prebuild first asks whether it has
    ended (so until then it counts as running, and what it trains is not in the cache yet)."""

    def __init__(self, cmd, log, env, events):
        self.cmd, self.log, self.env, self.events, self.returncode = cmd, log, env, events, None

    def poll(self):
        if self.returncode is None:
            self.events.append(("ends", self.cmd[self.cmd.index("--item") + 1]))
            threads = torch.get_num_threads()
            try:
                result = CliRunner().invoke(cli, self.cmd[3:], env=self.env)
            finally:
                torch.set_num_threads(threads)
            self.log.write_text(result.output + (repr(result.exception) if result.exit_code else ""))
            self.returncode = result.exit_code
        return self.returncode

    def wait(self, timeout=None):
        return self.poll()

    def send_signal(self, sig):
        raise AssertionError("a worker interrupted in a build that did not fail")


def in_process_workers(monkeypatch, events: list):
    """Build workers as `bench build-item` run in this process: the command line and environment that prebuild
    gives them are the only inputs. `events` gets ("start", item, cmd, env) and ("ends", item)."""
    def start(cmd, log, env=None):
        assert cmd[:4] == [sys.executable, "-m", "bench", "build-item"]
        events.append(("start", cmd[cmd.index("--item") + 1], cmd, env))
        return InProcessWorker(cmd, log, env, events)

    monkeypatch.setattr(bench.build_pool, "start_child", start)


def test_workers_train_each_artefact_once_at_most_n_at_a_time_into_the_serial_builds_cache(tmp_path, registered,
                                                                                           monkeypatch):
    suite = suite_of(tmp_path, POOL, overrides=("components.c2.train.value=5",))
    events = []
    in_process_workers(monkeypatch, events)
    builder = builder_for(suite, tmp_path / "pooled", build_threads=2, defer_training=True)
    prebuild(builder, workers=2, log_dir=tmp_path / "logs", progress=False)
    starts = [e for e in events if e[0] == "start"]
    assert sorted(e[1] for e in starts) == ["component:c1", "component:c2", "component:c3"]  # not c1-again
    assert sorted(TRAINED) == [("c1", 1), ("c2", 5), ("c3", 3)]  # the override reached the worker
    running, most = set(), 0
    for e in events:
        running = running | {e[1]} if e[0] == "start" else running - {e[1]}
        most = max(most, len(running))
    assert most == 2
    for _, _, cmd, env in starts:
        assert cmd[cmd.index("--threads") + 1] == "2" and env["OMP_NUM_THREADS"] == "2"
        assert cmd[cmd.index("--device") + 1] == "cpu" and cmd[cmd.index("--set") + 1] == "components.c2.train.value=5"
        assert cmd[-2:] == ["--", suite.path] and env["BENCH_CACHE"] == str(tmp_path / "pooled")
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [
        "component-c1.log", "component-c2.log", "component-c3.log"]
    # everything is built in the calling builder, from the workers' artefacts
    TRAINED.clear()
    assert torch.equal(builder.system("p13").weights[1], torch.randn(8, generator=torch.Generator().manual_seed(3)))
    assert TRAINED == []
    # a serial build with the workers' thread count leaves the same artefacts under the same keys
    serial = builder_for(suite, tmp_path / "serial", build_threads=2)
    for alias in ("p12", "p13", "wrap", "p1"):
        serial.system(alias)
        assert serial.made_of(("system", alias)) == builder.made_of(("system", alias))
    assert artefacts(tmp_path / "pooled") == artefacts(tmp_path / "serial") != {}


def test_two_names_for_one_artefact_hand_out_one_worker(tmp_path, registered, monkeypatch):
    """c1 and c1-again have one key: with a worker free for each, only one is handed out; the other loads."""
    suite = suite_of(tmp_path, HEAD + """components:
  c1: {kind: semantics-counter, train: {value: 1}}
  c1-again: {kind: semantics-counter, train: {value: 1}}
systems: [{name: semantics-pair, args: {a: c1, b: c1-again}}]
""")
    events = []
    in_process_workers(monkeypatch, events)
    builder = builder_for(suite, tmp_path / "cache", build_threads=1, defer_training=True)
    prebuild(builder, workers=2, log_dir=tmp_path / "logs", progress=False)
    assert [e[1] for e in events if e[0] == "start"] == ["component:c1"] and TRAINED == [("c1", 1)]
    assert builder.component("c1-again") is builder.system("semantics-pair").weights[1]


def test_a_worker_that_exits_without_training_stops_the_build(tmp_path, registered, monkeypatch):
    suite = suite_of(tmp_path, POOL)
    started = []

    def start(cmd, log, env=None):
        started.append(cmd)
        assert len(started) < 10, "the same item handed out again and again"
        return Finished(0)

    monkeypatch.setattr(bench.build_pool, "start_child", start)
    builder = builder_for(suite, tmp_path / "cache", build_threads=1, defer_training=True)
    with pytest.raises(RuntimeError, match="component 'c1' was trained by a worker but its artefact is not in the "
                                           "cache"):
        prebuild(builder, workers=2, log_dir=tmp_path / "logs", progress=False)


def test_a_killed_worker_stops_the_build_and_the_other_worker(tmp_path, registered, monkeypatch):
    """c1's worker sleeps, c2's dies by SIGKILL (an OOM kill): one error naming c2 and its exit, and c1's worker is
    interrupted rather than left training."""
    suite = suite_of(tmp_path, POOL)
    real_start, procs = bench.build_pool.start_child, {}
    stand_ins = {"component:c1": "import time; time.sleep(600)",
                 "component:c2": "import os, signal; print('training c2', flush=True); "
                                 "os.kill(os.getpid(), signal.SIGKILL)"}

    def start(cmd, log, env=None):
        item = cmd[cmd.index("--item") + 1]
        procs[item] = real_start([sys.executable, "-c", stand_ins[item]], log, env)
        return procs[item]

    monkeypatch.setattr(bench.build_pool, "start_child", start)
    builder = builder_for(suite, tmp_path / "cache", build_threads=1, defer_training=True)
    with pytest.raises(RuntimeError, match=r"training component 'c2' failed \(exit -9\); its log: .*component-c2.log"
                       ) as caught:
        prebuild(builder, workers=2, log_dir=tmp_path / "logs", progress=False)
    assert "training c2" in str(caught.value)
    assert sorted(procs) == ["component:c1", "component:c2"]
    assert procs["component:c1"].poll() is not None  # stopped, not training on
    assert not (tmp_path / "cache").exists()


def test_child_failure_is_its_user_error_or_the_tail_of_its_log(tmp_path):
    log = tmp_path / "w.log"
    log.write_text("warming up\nerror: first\nerror: the suite changed since the run loaded it\n")
    err = child_failure(log, 2, "training component 'x'")
    assert isinstance(err, UserError) and str(err) == "the suite changed since the run loaded it"
    # another exit status is a crash even when it printed an error line: its log's last 15 lines, progress
    # bars' carriage returns as line breaks
    log.write_text("".join(f"line {i}\n" for i in range(30)) + "error: not a usage error\n 10%\r 50%\rTraceback\n")
    err = child_failure(log, 1, "training component 'x'")
    assert type(err) is RuntimeError
    text = str(err)
    assert text.startswith(f"training component 'x' failed (exit 1); its log: {log}\n")
    assert text.splitlines()[1:] == [f"line {i}" for i in range(19, 30)] + ["error: not a usage error", " 10%",
                                                                             " 50%", "Traceback"]
    assert isinstance(child_failure(tmp_path / "absent.log", 2, "x"), RuntimeError)  # status 2, nothing said


def test_stop_children_interrupts_a_child_that_ignores_sigint(tmp_path):
    """A run started in the background (`bench run ... &` from a script) passes SIGINT on ignored to its workers and
    shards: they must still be interrupted (their cleanup runs: a worker removes its unfinished temp folder), not
    killed 20 s later. Every `bench` process turns SIGTERM into that interrupt (bench.cli.main); the stand-in child
    does the same. A child that has already ended is left alone."""
    flag = tmp_path / "cleaned-up"
    code = ("import signal, sys, time\nfrom bench.cli import _interrupt_on_sigterm\n"
            "signal.signal(signal.SIGINT, signal.SIG_IGN)\n_interrupt_on_sigterm()\ntry:\n"
            "    print('ready', flush=True)\n    time.sleep(600)\nexcept KeyboardInterrupt:\n"
            f"    open({str(flag)!r}, 'w').write('yes')\n    sys.exit(143)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline() == "ready\n"
    bench.build_pool.stop_children([proc, Finished(0)])
    assert proc.returncode == 143 and flag.read_text() == "yes"


# ---- generation shards --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["-1/2", "2/2", "0/0", "1", "a/2", "1/2/3", ""])
def test_a_bad_shard_is_a_user_error(text):
    with pytest.raises(UserError, match="--shard"):
        parse_shard(text)


def test_parse_shard():
    assert [parse_shard(t) for t in ("0/1", "2/3", " 1/ 4")] == [(0, 1), (2, 3), (1, 4)]


@pytest.mark.parametrize("env,world", [
    ({}, 1), ({"WORLD_SIZE": "1"}, 1), ({"WORLD_SIZE": "3", "RANK": "2"}, 3),
    ({"WORLD_SIZE": "2"}, None), ({"WORLD_SIZE": "two", "RANK": "0"}, None), ({"WORLD_SIZE": "2", "RANK": "2"}, None),
    ({"WORLD_SIZE": "2", "RANK": "-1"}, None), ({"WORLD_SIZE": "0", "RANK": "0"}, None)])
def test_torchrun_world(monkeypatch, env, world):
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if world is None:
        with pytest.raises(UserError):
            torchrun_world()
    else:
        assert torchrun_world() == world


SHARDS = """suite: shards
version: 1
dataset: {name: shapes, resolution: 16, num_captions: 7, train_size: 1, pairs_size: 1}
generation: {batch_size: 2, seeds: [0, 1], warmup: false}
systems: [{name: noise}, {name: real-images}]
metrics: [{name: throughput}]
"""
OVERRIDES = ("generation.seeds=[1, 3]",)


def pngs(out: Path) -> set[tuple[str, str, int]]:
    return {(p.parent.parent.name, p.parent.name, int(p.stem)) for p in (out / "samples").rglob("*.png")}


def test_shards_split_captions_by_index_and_equal_one_process(tmp_path, monkeypatch):
    path = tmp_path / "shards.yaml"
    path.write_text(SHARDS)
    suite = load_suite(path, OVERRIDES)
    ids = [it.caption_id for it in build_dataset(suite.dataset).eval_captions()][:5]  # --limit 5
    written, cmds = [], []

    def start(cmd, log, env=None):  # a shard: the real `bench run --shard` in this process
        cmds.append(cmd)
        before = pngs(tmp_path / "sharded")
        threads = torch.get_num_threads()
        try:
            result = CliRunner().invoke(cli, cmd[3:])
        finally:
            torch.set_num_threads(threads)
        assert result.exit_code == 0, result.output
        written.append(pngs(tmp_path / "sharded") - before)
        return Finished(0)

    monkeypatch.setattr(bench.sharding, "start_child", start)
    runner, results = run_sharded(suite, str(path), OVERRIDES, 3, fresh=False, out_dir=tmp_path / "sharded",
                                  device="cpu", limit=5, progress=False)
    assert [c[c.index("--shard") + 1] for c in cmds] == ["0/3", "1/3", "2/3"]
    assert all(c[-2:] == ["--", str(path)] for c in cmds)
    # the run's build-workers, whose thread count its cache keys name: a shard loads what the run built
    assert all(c[c.index("--build-workers") + 1] == "1" and c[c.index("--out") + 1] == str(tmp_path / "sharded")
               for c in cmds)
    for rank, mine in enumerate(written):  # caption i (in the dataset's order) to shard i % 3, every system and seed
        assert mine == {(alias, f"seed{seed}", cid) for alias in ("noise", "real-images") for seed in (1, 3)
                        for i, cid in enumerate(ids) if i % 3 == rank}, rank
    every = set().union(*written)
    assert sum(map(len, written)) == len(every) == 2 * 2 * 5  # none twice, none lost
    assert pngs(tmp_path / "sharded") == every  # nothing left for this process to generate, nothing past --limit
    # the same PNGs as one process, and the measuring process counted every shard's samples
    one = Runner(suite, out_dir=tmp_path / "one", limit=5, progress=False).run()
    for alias, seed, cid in every:
        name = f"samples/{alias}/{seed}/{cid:06d}.png"
        assert (tmp_path / "sharded" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    df = pd.read_csv(tmp_path / "sharded" / "results.csv")
    counted = df[(df.metric == "throughput") & (df.variant == "images/s")]
    # per system and seed, the timing records of all 3 shards: calls of 2 captions, 2 and 1 (run as 2 rows)
    assert sorted(zip(counted.system, counted.seed, counted.n, [json.loads(e)["processes"] for e in counted.extra])) \
        == [("noise", 1, 6, 3), ("noise", 3, 6, 3), ("real-images", 1, 6, 3), ("real-images", 3, 6, 3)]
    assert len(results.frame()) == len(one.frame())


@pytest.mark.parametrize("how", ["exit 1", "killed", "user error"])
def test_a_failing_shard_stops_the_run_naming_it_and_writes_no_results(tmp_path, monkeypatch, how):
    path = tmp_path / "shards.yaml"
    path.write_text(SHARDS)
    failing = {"exit 1": "print('Traceback (most recent call last):'); print('boom in the shard'); raise SystemExit(1)",
               "killed": "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
               "user error": "print('error: no such caption file'); raise SystemExit(2)"}[how]
    real_start = bench.sharding.start_child

    def start(cmd, log, env=None):
        shard = cmd[cmd.index("--shard") + 1]
        return real_start([sys.executable, "-c", failing if shard == "1/2" else "pass"], log, env)

    monkeypatch.setattr(bench.sharding, "start_child", start)
    expected = {"exit 1": (RuntimeError, r"generation shard 1/2 failed \(exit 1\); its log: .*shard1of2.log"),
                "killed": (RuntimeError, r"generation shard 1/2 failed \(exit -9\)"),
                "user error": (UserError, r"^no such caption file$")}[how]
    with pytest.raises(expected[0], match=expected[1]) as caught:
        run_sharded(load_suite(path), str(path), (), 2, fresh=False, out_dir=tmp_path / "run", device="cpu",
                    limit=None, progress=False)
    if how == "exit 1":
        assert "boom in the shard" in str(caught.value)
    assert not list((tmp_path / "run").glob("results.*")) and pngs(tmp_path / "run") == set()


def test_a_failing_shard_stops_the_shards_still_running(tmp_path, monkeypatch):
    """Shard 1 fails while shard 0 would run for 10 minutes: the run stops shard 0 and names shard 1 at once."""
    path = tmp_path / "shards.yaml"
    path.write_text(SHARDS)
    real_start, procs = bench.sharding.start_child, []

    def start(cmd, log, env=None):
        slow = cmd[cmd.index("--shard") + 1] == "0/2"
        code = "import time; time.sleep(600)" if slow else "print('boom in the shard'); raise SystemExit(1)"
        procs.append(real_start([sys.executable, "-c", code], log, env))
        return procs[-1]

    monkeypatch.setattr(bench.sharding, "start_child", start)
    with pytest.raises(RuntimeError, match=r"generation shard 1/2 failed \(exit 1\)"):
        run_sharded(load_suite(path), str(path), (), 2, fresh=False, out_dir=tmp_path / "run", device="cpu",
                    limit=None, progress=False)
    assert len(procs) == 2 and procs[0].poll() is not None  # stopped, not left sleeping
    assert not list((tmp_path / "run").glob("results.*"))


def test_an_interrupted_sharded_run_stops_its_shards(tmp_path, monkeypatch):
    path = tmp_path / "shards.yaml"
    path.write_text(SHARDS)
    real_start, procs = bench.sharding.start_child, []

    def start(cmd, log, env=None):
        procs.append(real_start([sys.executable, "-c", "import time; time.sleep(600)"], log, env))
        return procs[-1]

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench.sharding, "start_child", start)
    monkeypatch.setattr(bench.sharding, "_wait_showing_progress", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sharded(load_suite(path), str(path), (), 2, fresh=False, out_dir=tmp_path / "run", device="cpu",
                    limit=None, progress=False)
    assert len(procs) == 2 and all(p.poll() is not None for p in procs)
