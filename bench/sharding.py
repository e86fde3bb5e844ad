"""Sharded generation: N local processes (`bench run --nproc N`) or torchrun ranks.

Captions are split by index (caption i goes to shard i % N). Each shard writes its own PNGs and
timing records into the shared run folder; one process then finds every sample on disk and computes
the metrics once. Samples depend only on (seed, caption id), so the PNGs are identical to a
single-process run's, and so are the numbers with --nproc (tested). Under torchrun they equal a
single-process run started with the same OMP_NUM_THREADS (torchrun sets 1; tested with 2 gloo ranks): the
OpenMP pool size fixed at start-up changes float reduction order (~1e-7 relative) even after
torch.set_num_threads. Components are built (trained into the cache) once, before any shard starts.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.api import UserError
from bench.build_pool import child_failure, start_child, stop_children
from bench.runner import Runner
from reference.progress import progress_bar


def parse_shard(text: str) -> tuple[int, int]:
    try:
        rank, world = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: expected R/N, e.g. 0/4") from None
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"--shard {text!r}: need 0 <= R < N")
    return rank, world


def run_sharded(suite, suite_path: str, overrides, nproc: int, fresh: bool, out_dir, device, limit, progress,
                build_workers: int = 1):
    """Build in this process, generate in `nproc` child processes, measure here."""
    runner = Runner(suite, out_dir=out_dir, device=device, limit=limit, fresh=fresh, progress=progress,
                    build_workers=build_workers)
    builder, dataset, items, systems = runner.prepare()  # trains and caches every component first
    base = [sys.executable, "-m", "bench", "run", "--out", str(runner.out), "--device", device,
            "--quiet", "--build-workers", str(runner.build_workers)]  # the same cache keys: all is loaded
    for assignment in overrides:
        base += ["--set", assignment]
    if limit is not None:
        base += ["--limit", str(limit)]
    logs = [runner.out / "shard-logs" / f"shard{r}of{nproc}.log" for r in range(nproc)]
    logs[0].parent.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        for r, log in enumerate(logs):  # the suite path after '--': a suite named '-x.yaml'
            procs.append(start_child(base + ["--shard", f"{r}/{nproc}", "--", str(suite_path)], log))
        _wait_showing_progress(procs, logs, runner, items, progress)
    except BaseException:  # a shard failed, or interrupted (Ctrl-C, SIGTERM): no shard outlives the run
        stop_children(procs)
        raise
    runner.generate_all(systems, items)  # nothing is missing unless a shard was cut short
    return runner, runner.measure(builder, dataset, items, systems)


def _wait_showing_progress(procs: list[subprocess.Popen], logs, runner: Runner, items, progress: bool) -> None:
    """Wait for the shard processes (which run quietly), with one bar counting the samples they write and naming
    the system they are at. No time estimate: systems differ in speed by 1000x (vqgan-clip against retrieval).
    The first shard to fail raises its error at once (the caller stops the others): they run the same code on the
    same suite, so its error says it all, and the others would run on for nothing."""
    folders = {f"{spec.alias} seed {seed}": runner.sample_dir(spec.alias, seed) for spec in runner.suite.systems
               for seed in runner.suite.seeds_of(spec.alias)}
    wanted = {f"{it.caption_id:06d}.png" for it in items}

    def counts() -> dict[str, int]:
        return {name: len(wanted.intersection(os.listdir(f))) if f.is_dir() else 0 for name, f in folders.items()}

    done = counts()
    bar = progress_bar(total=len(folders) * len(wanted), initial=sum(done.values()), unit="img", enabled=progress,
                       desc=f"generate in {len(procs)} processes",
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
    try:
        running = True
        while running:
            time.sleep(1.0)
            codes = [p.poll() for p in procs]  # before counting: the last count sees every sample
            failed = next((r for r, code in enumerate(codes) if code not in (None, 0)), None)
            if failed is not None:
                raise child_failure(logs[failed], codes[failed], f"generation shard {failed}/{len(procs)}")
            running = None in codes
            done = counts()
            at = next((name for name, n in done.items() if n < len(wanted)), "")
            bar.set_postfix_str(at, refresh=False)
            bar.update(sum(done.values()) - bar.n)
    finally:
        bar.close()


def torchrun_world() -> int:
    """WORLD_SIZE as torchrun sets it (1 when unset); a UserError when it is not a number or RANK is missing."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(text)
        rank = int(os.environ.get("RANK", "0" if world == 1 else ""))
    except ValueError:
        raise UserError(f"WORLD_SIZE={text!r} and RANK={os.environ.get('RANK')!r} are not a torchrun environment: "
                        "start with torchrun, or unset WORLD_SIZE") from None
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"WORLD_SIZE={world}, RANK={rank}: need 0 <= RANK < WORLD_SIZE (start with torchrun, or unset them)")
    return world


def run_torchrun(suite, fresh: bool, out_dir, device, limit, progress, build_workers: int = 1):
    """Under torchrun: rank 0 builds first, every rank generates its shard, rank 0 measures."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), torchrun_world()
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    try:
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        runner = Runner(suite, out_dir=out_dir, device=device, limit=limit, fresh=fresh and rank == 0,
                        progress=progress and rank == 0, rank=rank, world=world, build_workers=build_workers,
                        coordinator=rank == 0)
        if rank == 0:
            prepared = runner.prepare()
        dist.barrier()  # the cache is filled: the other ranks load instead of training
        if rank != 0:
            prepared = runner.prepare()
        builder, dataset, items, systems = prepared
        runner.generate_all(systems, items)
        dist.barrier()
        if rank != 0:
            return runner, None
        return runner, runner.measure(builder, dataset, items, systems)
    finally:
        dist.destroy_process_group()
