"""Trains a suite's missing artefacts in parallel worker processes (`bench run --build-workers N`).

On a small CPU one training rarely keeps every core busy: on the 2-core machine two single-thread trainings
side by side make 4.9 tiny-GPT steps/s together against 3.5-4.0 for one 2-thread training. So this process
walks the suite's components and systems, dependencies first and the most depended-on first, building each
with a Builder that defers training (bench.build.NeedsTraining); each missing artefact is handed to a worker
(`bench build-item`, started with OMP_NUM_THREADS set to its thread count) while the walk goes on with what
does not wait for it. Workers only write to the cache; this process loads what they trained.

A worker trains exactly what this process would train with the same thread count, and the cache key names
that count (Builder.trained_on), so the numbers depend on the threads per worker but not on how many workers
ran or in which order (tested against an in-process build).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.api import UserError
from bench.build import Builder, Item, NeedsTraining, default_threads
from bench.suite import Suite, references
from reference.progress import progress_bar


def build_order(suite: Suite) -> list[Item]:
    """Every declared component and system, each after what it names, the most depended-on first.

    An item's transitive dependents include those of everything that depends on it, so sorting by their
    count (descending; ties in declaration order) puts every dependency before its dependents.
    """
    deps: dict[Item, set[Item]] = {}
    for name, spec in suite.components.items():
        deps[("component", name)] = {(what, value) for _, what, _, value in references(spec.train)}
    for spec in suite.systems:
        deps[("system", spec.alias)] = {(what, value) for _, what, _, value in references(spec.args)}
    dependents: dict[Item, set[Item]] = {item: set() for item in deps}

    def mark(item: Item, by: Item) -> None:
        for dep in deps.get(item, ()):
            if by not in dependents.setdefault(dep, set()):
                dependents[dep].add(by)
                mark(dep, by)

    for item in deps:
        mark(item, item)
    index = {item: i for i, item in enumerate(deps)}
    return sorted(deps, key=lambda item: (-len(dependents[item]), index[item]))


def default_build_workers(device: str) -> int:
    """2 on a CPU with 2 or more cores, else 1 (train in the calling process, with all its threads)."""
    return 2 if device == "cpu" and default_threads() >= 2 else 1


def worker_threads(workers: int, cores: int) -> int:
    return max(1, cores // max(1, workers))


def ready_builder(suite: Suite, dataset, device: str, cache: str, progress: bool, workers: int,
                  log_dir: Path) -> Builder:
    """A Builder for `suite`. workers > 1: every component and system built now, what is missing trained in
    worker processes of cores/workers threads. workers == 1: built (and trained) on demand, in this process."""
    if workers <= 1:
        return Builder(suite, dataset, device, cache, progress=progress)
    threads = worker_threads(workers, default_threads())
    builder = Builder(suite, dataset, device, cache, progress=progress, build_threads=threads, defer_training=True)
    prebuild(builder, workers, log_dir, progress)
    return builder


def child_failure(log: Path, code: int, what: str) -> Exception:
    """The error of a `bench` child process that exited with `code`: its own one-line UserError (exit 2), else a
    RuntimeError with the tail of its log."""
    text = log.read_text(errors="replace") if log.exists() else ""
    errors = [line[len("error: "):] for line in text.splitlines() if line.startswith("error: ")]
    if code == 2 and errors:
        return UserError(errors[-1])
    tail = "\n".join(text.replace("\r", "\n").splitlines()[-15:])
    return RuntimeError(f"{what} failed (exit {code}); its log: {log}\n{tail}")


def _prctl():
    """libc's prctl on Linux, looked up here in the parent (a dlopen between fork and exec could deadlock)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()
_PR_SET_PDEATHSIG = 1


def stop_with_parent() -> None:
    """Run in a child between fork and exec (Popen's preexec_fn): on Linux, the child gets SIGTERM when the run
    that started it dies, even by SIGKILL or a crash, so no worker trains on orphaned (its SIGTERM handler then
    cleans up as on Ctrl-C). Elsewhere a no-op. Only a system call here: nothing that could wait on a lock."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def start_child(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """A `bench` child process (build worker, generation shard) writing its output to `log`, no stdin, and
    signalled when this process dies (`stop_with_parent`)."""
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=stop_with_parent)


def stop_children(procs: list[subprocess.Popen]) -> None:
    """Interrupt the child processes still running, as Ctrl-C would (a build worker removes its unfinished temp
    folder, a shard keeps the samples it wrote), and wait for them; kill one stuck for 20 s. The signal is SIGTERM,
    which every `bench` process turns into that interrupt (cli.main): SIGINT is ignored by a child of a run started
    in the background (`bench run ... &` from a script), which then was killed 20 s later, without its cleanup."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class _Worker:
    def __init__(self, item: Item, artefact: str, cmd: list[str], env: dict, log: Path):
        self.item, self.artefact, self.log = item, artefact, log
        log.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()
        self.proc = start_child(cmd, log, env)

    def percent(self) -> str:
        """The last progress-bar percentage the worker wrote, or '' before its first bar."""
        try:
            with open(self.log, "rb") as fh:
                fh.seek(max(0, self.log.stat().st_size - 4096))
                tail = fh.read().decode(errors="replace")
        except OSError:
            return ""
        bars = [(m.end(), int(m[1])) for m in re.finditer(r"(\d+)%\|", tail)]  # tqdm bars
        steps = [(m.end(), 100 * int(m[1]) // max(1, int(m[2]))) for m in re.finditer(r"step (\d+)/(\d+)", tail)]
        return f" {max(bars + steps)[1]}%" if bars or steps else ""

    def failure(self, code: int) -> Exception:
        return child_failure(self.log, code, f"training {self.item[0]} {self.item[1]!r}")



def prebuild(builder: Builder, workers: int, log_dir: Path, progress: bool) -> None:
    """Build every component and system of the builder's suite into it, training what is missing in up to
    `workers` processes of `builder.build_threads` threads each. `builder` must defer training."""
    assert builder.defer_training and builder.build_threads
    suite, threads = builder.suite, builder.build_threads
    todo = build_order(suite)
    running: dict[Item, _Worker] = {}
    trained: set[Item] = set()
    # the status line only redraws on a terminal: in a log, the [build] lines say what starts and ends
    bar = progress_bar(total=0, bar_format="{desc}", enabled=progress, in_logs=False, leave=False)
    shown = ""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "BENCH_CACHE": str(builder.cache_dir),
           "TQDM_MININTERVAL": "1"}
    base = [sys.executable, "-m", "bench", "build-item", "--device", builder.device, "--threads", str(threads)]
    for assignment in suite.overrides:
        base += ["--set", assignment]
    try:
        while todo or running:
            for item in list(todo):  # build what we can; hand out what needs training while workers are free
                try:
                    builder.build(item)
                    todo.remove(item)
                except NeedsTraining as need:
                    wanted = need.item
                    if wanted in trained:
                        raise RuntimeError(f"{wanted[0]} {wanted[1]!r} was trained by a worker but its artefact is "
                                           f"not in the cache {builder.cache_dir} under the key this process asks "
                                           "for: was its code or an input file edited while the run went on (the "
                                           "key names both)? Run again") from None
                    in_training = wanted in running or any(w.artefact == need.artefact for w in running.values())
                    if not in_training and len(running) < workers:  # else: load it once its worker is done
                        log = log_dir / f"{wanted[0]}-{wanted[1]}.log"
                        cmd = base + ["--item", f"{wanted[0]}:{wanted[1]}", "--", suite.path]  # '--': '-x.yaml'
                        running[wanted] = _Worker(wanted, need.artefact, cmd, env, log)
                        if progress:
                            bar.write(f"[build] training {wanted[0]} {wanted[1]!r} in a worker "
                                      f"({threads} thread{'s' * (threads > 1)}; log {log})")
            if not running:
                if todo:
                    raise RuntimeError(f"nothing trains, yet {todo[0][0]} {todo[0][1]!r} cannot be built")
                break
            while not (done := [w for w in running.values() if w.proc.poll() is not None]):
                status = "training: " + ", ".join(f"{name}{w.percent()}" for (_, name), w in running.items())
                if status != shown:
                    bar.set_description_str(shown := status)
                time.sleep(0.5)
            for w in done:
                del running[w.item]
                if w.proc.returncode != 0:
                    raise w.failure(w.proc.returncode)
                trained.add(w.item)
                if progress:
                    bar.write(f"[build] {w.item[0]} {w.item[1]!r} trained in {time.perf_counter() - w.t0:.0f} s")
    finally:
        stop_children([w.proc for w in running.values()])
        bar.close()
