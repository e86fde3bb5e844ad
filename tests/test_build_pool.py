"""Build workers (`bench run --build-workers N`): what they train equals an in-process build with the same
thread count, byte for byte; the cache key names the thread count; failures surface as one error."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import bench.build
import bench.cache
from bench.build import Builder, NeedsTraining
from bench.build_pool import build_order, prebuild
from bench.datasets.base import build_dataset
from bench.suite import load_suite, references
from reference.train import native_bf16

REPO = Path(__file__).resolve().parents[1]

SUITE = """suite: pool
version: 1
dataset: {name: shapes, resolution: 32, num_captions: 12, train_size: 256, pairs_size: 256}
generation: {batch_size: 6, seeds: [0]}
components:
  clip:  {kind: clip, train: {preset: tiny, steps: 3, batch_size: 32}}
  vqgan: {kind: vqgan, train: {preset: tiny, steps: 3}}
  judge: {kind: attribute-judge, train: {steps: 3}}
systems:
  - {name: clipgen, alias: lf, args: {clip: clip, vqgan: vqgan, train: {preset: tiny, steps: 3}}}
  - {name: random-caption, args: {of: lf}}
  - {name: vqgan-recon, args: {vqgan: vqgan}}
metrics:
  - {name: attribute-accuracy, args: {judge: judge}}
"""


@pytest.fixture
def suite_file(tmp_path):
    path = tmp_path / "pool.yaml"
    path.write_text(SUITE)
    return path


def _depends_on(suite, item):
    kind, name = item
    args = suite.components[name].train if kind == "component" else suite.system(name).args
    return {(what, value) for _, what, _, value in references(args)}


@pytest.mark.parametrize("name", ["quickstart", "shapes", "fashion"])
def test_build_order_puts_dependencies_first_and_the_shared_ones_first(name):
    suite = load_suite(REPO / "suites" / f"{name}.yaml")
    order = build_order(suite)
    assert len(order) == len(suite.components) + len(suite.systems) == len(set(order))
    for i, item in enumerate(order):
        assert _depends_on(suite, item) <= set(order[:i]), item
    assert set(order[:2]) == {("component", "clip"), ("component", "vqgan")}  # what every generator waits for


def test_missing_artefacts_raise_needs_training_for_the_innermost_item(suite_file, tmp_path):
    suite = load_suite(suite_file)
    builder = Builder(suite, build_dataset(suite.dataset), "cpu", str(tmp_path / "cache"), progress=False,
                      build_threads=1, defer_training=True)
    with pytest.raises(NeedsTraining) as caught:
        builder.build(("system", "random-caption"))  # -> system lf -> component clip, the first that is missing
    assert caught.value.item == ("component", "clip")
    assert not (tmp_path / "cache").exists()  # nothing was trained


def counting_cache(suite_file, cache):
    """`cached(threads)`: Builder.cached of one artefact whose value is how many trainings happened before it was
    saved (so a load returns an earlier number), and the builder."""
    suite = load_suite(suite_file)
    dataset = build_dataset(suite.dataset)
    trained = []

    def cached(threads: int = 1):
        builder = Builder(suite, dataset, "cpu", str(cache), progress=False, build_threads=threads)
        value = builder.cached("thing", {"a": 1}, train=lambda: trained.append(1) or len(trained),
                               save=lambda obj, d: Path(d, "v").write_text(str(obj)),
                               load=lambda d: int(Path(d, "v").read_text()))
        return value, builder

    return cached


def test_an_artefact_is_keyed_by_the_data_it_trains_on(suite_file, tmp_path):
    """The vqgan reads the train split: another train_size trains again, more eval captions do not."""
    trained = []

    def cached(*overrides: str) -> int:
        suite = load_suite(suite_file, overrides)
        builder = Builder(suite, build_dataset(suite.dataset), "cpu", str(tmp_path), progress=False, build_threads=1)
        return builder.cached("thing", {"a": 1}, train=lambda: trained.append(1) or len(trained),
                              save=lambda obj, d: Path(d, "v").write_text(str(obj)),
                              load=lambda d: int(Path(d, "v").read_text()), item=("component", "vqgan"))

    assert [cached(), cached("dataset.train_size=80"), cached(), cached("dataset.num_captions=16")] == [1, 2, 1, 1]


def test_the_cache_key_names_the_training_threads(suite_file, tmp_path):
    cached = counting_cache(suite_file, tmp_path)
    assert [cached(threads)[0] for threads in (1, 2, 1, 2)] == [1, 2, 1, 2]  # each trained once, then loaded


def test_the_cache_key_names_the_library_versions(suite_file, tmp_path, monkeypatch):
    """An upgraded numeric library (open_clip's tokenizer, torch's kernels, ...) retrains instead of reusing."""
    cached = counting_cache(suite_file, tmp_path)
    assert [cached()[0], cached()[0]] == [1, 1]
    versions = bench.cache.library_versions()
    assert versions["torch"] == torch.__version__ and versions["open_clip_torch"] != "absent"
    monkeypatch.setattr(bench.cache, "library_versions", lambda: {**versions, "open_clip_torch": "0.0.1"})
    assert cached()[0] == 2


def test_the_cache_key_names_the_processor_model(suite_file, tmp_path, monkeypatch):
    """The same recipe on another CPU model (another fp32 kernel) gives other weights: a cache shared between
    machines trains again instead of serving the first machine's artefact."""
    cached = counting_cache(suite_file, tmp_path)
    assert [cached()[0], cached()[0]] == [1, 1]
    assert bench.cache.machine_name("cpu") not in ("", "unknown")
    monkeypatch.setattr(bench.cache, "machine_name", lambda device: "Another CPU @ 3.0GHz")
    assert cached()[0] == 2


def test_the_cache_key_names_the_code(suite_file, tmp_path, monkeypatch):
    """Editing the code behind an artefact (reference/, its component's module, the dataset's) retrains it."""
    counted = counting_cache(suite_file, tmp_path)

    def cached():
        value, builder = counted()
        return value, builder.key_of("vqgan")

    (first, vqgan_key), (again, same_key) = cached(), cached()
    assert first == again == 1 and vqgan_key == same_key
    seen = []
    real = bench.build.code_fingerprint
    monkeypatch.setattr(bench.build, "code_fingerprint", lambda *mods: seen.append(mods) or real(*mods) + "-edited")
    edited, edited_key = cached()
    assert edited == 2 and edited_key != vqgan_key  # trained a second time
    assert all("reference" in mods and "bench.datasets.shapes" in mods for mods in seen)
    assert ("reference", "bench.components.vqgan_component", "bench.datasets.shapes") in seen


def test_the_code_in_a_key_is_the_factorys_and_the_train_functions_not_functools(suite_file, tmp_path, monkeypatch):
    import functools

    suite = load_suite(suite_file)
    builder = Builder(suite, build_dataset(suite.dataset), "cpu", str(tmp_path / "cache"), progress=False,
                      build_threads=1)
    seen = []
    real = bench.build.code_fingerprint
    monkeypatch.setattr(bench.build, "code_fingerprint", lambda *mods: seen.append(mods) or real(*mods))
    builder._building.append(("component", "judge"))  # as while the judge's factory runs
    value = builder.cached("thing", {}, functools.partial(int, "7"), save=lambda obj, d: None, load=lambda d: 0,
                           item=("component", "judge"))
    assert value == 7
    assert seen == [("reference", "bench.components.judge", "builtins", "bench.datasets.shapes")]


def test_the_gpt_key_names_the_precision_it_trained_in(tmp_path):
    """precision: auto trains in bf16 where the CPU runs it natively, else fp32, and its key names the one used:
    it loads the artefact of the explicit setting it resolves to, and fp32 and bf16 are two artefacts."""
    extra = "".join(f"  - {{name: clipgen, alias: {p}, args: {{clip: clip, vqgan: vqgan, "
                    f"train: {{preset: tiny, steps: 3, precision: {p}}}}}}}\n" for p in ("fp32", "bf16"))
    path = tmp_path / "precision.yaml"
    path.write_text(SUITE.replace("  - {name: random-caption, args: {of: lf}}\n", extra))
    suite = load_suite(path)
    builder = Builder(suite, build_dataset(suite.dataset), "cpu", str(tmp_path / "cache"), progress=False,
                      build_threads=1)
    systems = {alias: builder.system(alias) for alias in ("fp32", "bf16", "lf")}  # lf last: it loads
    gpts = {alias: [a for a in builder.made_of(("system", alias)) if a.startswith("clipgen-gpt/")] for alias in systems}
    assert len(gpts["fp32"]) == 1 and gpts["fp32"] != gpts["bf16"]
    auto = "bf16" if native_bf16("cpu") else "fp32"
    assert gpts["lf"] == gpts[auto]
    assert len(list((tmp_path / "cache" / "clipgen-gpt").iterdir())) == 2  # auto trained nothing of its own
    assert systems["bf16"].training["precision"] == "bf16" and systems["lf"].training["precision"] == auto
    assert not torch.equal(systems["fp32"].gpt.head.weight, systems["bf16"].gpt.head.weight)


def _bench(args, env):
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, **env})


def test_two_workers_train_what_one_process_trains_with_one_thread(suite_file, tmp_path):
    pooled = _bench(["run", suite_file, "--out", tmp_path / "pooled", "--quiet", "--build-workers", "2"],
                    {"BENCH_CACHE": str(tmp_path / "c-pooled")})
    assert pooled.returncode == 0, pooled.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "pooled" / "build-logs").iterdir()) == [
        "component-clip.log", "component-judge.log", "component-vqgan.log", "system-lf.log"]
    alone = _bench(["run", suite_file, "--out", tmp_path / "alone", "--quiet", "--build-workers", "1",
                    "--set", "generation.threads=1"], {"BENCH_CACHE": str(tmp_path / "c-alone"), "OMP_NUM_THREADS": "1"})
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert not (tmp_path / "alone" / "build-logs").exists()
    files = sorted(p.relative_to(tmp_path / "c-pooled") for p in (tmp_path / "c-pooled").rglob("*.safetensors"))
    assert len(files) == 4  # clip, vqgan, judge, GPT, under the same keys in both caches
    for f in files:
        assert (tmp_path / "c-pooled" / f).read_bytes() == (tmp_path / "c-alone" / f).read_bytes(), f
    a, b = (pd.read_csv(tmp_path / d / "results.csv") for d in ("pooled", "alone"))
    assert list(a["metric"]) == list(b["metric"]) and len(a) > 0
    # the same weights; only this process's own thread count (2 against 1) moves its sums in the last digits
    assert np.allclose(a["value"], b["value"], rtol=1e-5, atol=1e-7, equal_nan=True)
    assert not list((tmp_path / "c-pooled").rglob(".*"))  # no temp folder left behind


def test_a_worker_that_fails_is_one_error_naming_it_and_its_log(suite_file, tmp_path):
    suite = load_suite(suite_file)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be: every worker fails to save")
    builder = Builder(suite, build_dataset(suite.dataset), "cpu", str(blocked), progress=False, build_threads=1,
                      defer_training=True)
    with pytest.raises(RuntimeError, match=r"training component '(clip|vqgan)' failed .*its log: ") as caught:
        prebuild(builder, workers=2, log_dir=tmp_path / "logs", progress=False)
    assert "NotADirectoryError" in str(caught.value) or "FileExistsError" in str(caught.value)


def test_a_worker_user_error_comes_back_as_the_same_user_error(suite_file, tmp_path):
    from bench.api import UserError

    suite = load_suite(suite_file)
    builder = Builder(suite, build_dataset(suite.dataset), "cpu", str(tmp_path / "cache"), progress=False,
                      build_threads=1, defer_training=True)
    suite_file.write_text(SUITE.replace("vqgan: {kind: vqgan,", "vqgan2: {kind: vqgan,"))  # edited since loaded
    with pytest.raises(UserError, match="no component named 'vqgan'"):
        prebuild(builder, workers=2, log_dir=tmp_path / "logs", progress=False)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_generation_shards_load_what_the_run_trained(suite_file, tmp_path, workers):
    """Shard processes get a share of the cores for generation, but the cache keys name the build's threads:
    they must find every artefact the coordinating process trained, not train their own."""
    cache = tmp_path / "cache"
    run = _bench(["run", suite_file, "--out", tmp_path / "run", "--quiet", "--nproc", "2", "--build-workers", workers],
                 {"BENCH_CACHE": str(cache)})
    assert run.returncode == 0, run.stderr[-3000:]
    trained = {kind.name: [d.name for d in kind.iterdir()] for kind in cache.iterdir() if kind.name != "stats"}
    assert sorted(trained) == ["attribute-judge", "clip", "clipgen-gpt", "vqgan"]
    assert all(len(dirs) == 1 for dirs in trained.values()), trained


def test_items_that_share_an_artefact_train_it_in_one_worker(suite_file, tmp_path):
    """Two sampling variants of one GPT (the suites' clipgen-lf and clipgen-lf-rerank4) need the same artefact:
    with a worker free for each, one trains it and the other loads it afterwards."""
    suite_file.write_text(SUITE.replace("  - {name: random-caption, args: {of: lf}}\n",
                                        "  - {name: clipgen, alias: lf-top5, args: {clip: clip, vqgan: vqgan, "
                                        "train: {preset: tiny, steps: 3}, top_k: 5}}\n"))
    suite = load_suite(suite_file)
    cache, dataset = str(tmp_path / "cache"), build_dataset(suite.dataset)
    Builder(suite, dataset, "cpu", cache, progress=False, build_threads=1).component("clip")  # the GPT is all
    Builder(suite, dataset, "cpu", cache, progress=False, build_threads=1).component("vqgan")  # that is missing
    Builder(suite, dataset, "cpu", cache, progress=False, build_threads=1).component("judge")
    builder = Builder(suite, dataset, "cpu", cache, progress=False, build_threads=1, defer_training=True)
    prebuild(builder, workers=2, log_dir=tmp_path / "logs", progress=False)
    assert [p.name for p in (tmp_path / "logs").iterdir()] == ["system-lf.log"]
    assert len(list((tmp_path / "cache" / "clipgen-gpt").iterdir())) == 1
    gpts = [{e for e in builder.made_of(("system", alias)) if e.startswith("clipgen-gpt/")} for alias in ("lf", "lf-top5")]
    assert len(gpts[0]) == 1 and gpts[0] == gpts[1]  # both built on that one GPT


def _processes_mentioning(text: str) -> list[int]:
    """Pids of the live processes whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("State:"))
            except (OSError, StopIteration):
                continue
            if text in cmdline and "zombie" not in state:
                found.append(int(entry.name))
    return found


def stop_run_and_wait_for_children(run: subprocess.Popen, how: str, child: str) -> None:
    """Send the run SIGTERM ("terminate") or SIGKILL ("kill"), to it only, not to its process group; assert it ends
    as that signal's death (143 after its cleanup, or killed) and that within 30 s no process whose command line
    holds `child` is left."""
    getattr(run, how)()
    run.wait(timeout=60)
    assert run.returncode == (128 + signal.SIGTERM if how == "terminate" else -signal.SIGKILL), run.stdout.read()
    deadline = time.time() + 30
    while _processes_mentioning(child) and time.time() < deadline:
        time.sleep(0.2)
    assert not _processes_mentioning(child), f"{child!r} runs on after its run was stopped"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc (Linux)")
@pytest.mark.parametrize("how", ["terminate", "kill"])
def test_the_build_workers_stop_with_the_run(tmp_path, how):
    """`kill PID` / `timeout` / a cancelled CI job (SIGTERM: the run stops them), or a run killed outright (SIGKILL,
    an OOM kill: the kernel signals them): the workers stop instead of training on, orphaned."""
    suite = tmp_path / "slow.yaml"
    suite.write_text(SUITE.replace("train: {preset: tiny, steps: 3, batch_size: 32}",  # the clip: the first to train
                                   "train: {preset: tiny, steps: 100000, batch_size: 32}"))
    run = subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite), "--out", str(tmp_path / "run"),
                            "--quiet", "--build-workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           env={**os.environ, "BENCH_CACHE": str(tmp_path / "cache")})
    clip_worker = f"--item component:clip -- {suite}"
    deadline = time.time() + 300
    while not _processes_mentioning(clip_worker) and time.time() < deadline and run.poll() is None:
        time.sleep(0.5)
    assert _processes_mentioning(clip_worker), "the clip's build worker did not start"
    stop_run_and_wait_for_children(run, how, clip_worker)
    assert not [p for p in (tmp_path / "cache").rglob(".*") if p.is_dir()], "a worker left an unfinished cache folder"
