"""Shared helpers for the benchmark files (pytest-benchmark runs, never unit tests).

- machine_info() -> dict: platform, python, torch, cpu_count, threads, device_name.
- interleaved_times(fns, repeats, warmup) -> {name: [seconds]}: calls every
  function once per round, round after round, so that load changes on a shared
  machine hit all of them alike; CUDA is synchronised around each call.
- median(xs); ratio(times, a, b): the median over rounds of times[a][i] / times[b][i], so that each
  ratio compares two calls made back to back (on this VM the speed of both moves by 30% from round to round,
  together; the ratio of the two medians mixes calls from different rounds).
- peak_rss_delta(setup, code) -> bytes: runs `setup` then `code` in a fresh
  Python subprocess and returns the peak resident set (VmHWM, i.e. ru_maxrss of
  this process image) after `code` minus that after `setup` (the peak extra
  resident memory of `code`).
- write_summary(name, payload) -> Path: results/benchmarks/<name>.json with
  machine info and a timestamp added, written atomically.
- print_table(rows): a short aligned table on stdout.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from bench.cache import machine_name

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "benchmarks"


def machine_info() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device_name": machine_name("cuda" if cuda else "cpu"),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, list[float]]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            times[name].append(time.perf_counter() - start)
    return times


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median of the per-round ratios a / b (rounds from interleaved_times)."""
    return median([ta / tb for ta, tb in zip(times[a], times[b], strict=True)])


_RSS_PROBE = """
def hwm_kb():
    # the peak resident set of this process image; unlike ru_maxrss it is not
    # inherited across fork+exec from a large parent (such as pytest itself)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
{setup}
base = hwm_kb()
{code}
peak = hwm_kb()
print("RSS_DELTA_KB", peak - base)
"""


def peak_rss_delta(setup: str, code: str, env: dict | None = None) -> int:
    """Peak extra resident memory of `code` after `setup`, in bytes, in a fresh interpreter."""
    script = _RSS_PROBE.format(setup=setup, code=code)
    # glibc's defaults, not the house MALLOC_* settings: with those, memory freed
    # during setup stays resident and is reused, hiding what `code` needs
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                          env={**base_env, **(env or {}), "PYTHONPATH": str(REPO)}, check=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RSS_DELTA_KB"):
            return int(line.split()[1]) * 1024  # Linux reports kilobytes
    raise RuntimeError(f"no RSS figure in the probe's output: {proc.stdout!r} {proc.stderr[-500:]!r}")


def write_summary(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {"benchmark": name, "machine": machine_info(),
           "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **payload}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    return path


def print_table(rows: list[dict]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print()
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(x.ljust(w) for x, w in zip(row, widths)))
