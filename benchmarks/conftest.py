"""Benchmarks (pytest-benchmark): excluded from the default test run (testpaths = tests).

Run them with `.venv/bin/python -m pytest benchmarks -q -s`. Shared helpers live in
benchmarks/_util.py (see its docstring); the fixtures below hand them to benchmark files.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _util  # noqa: E402


@pytest.fixture(scope="session")
def bench_util():
    """The helper module: interleaved_times, ratio, median, peak_rss_delta, write_summary, print_table, machine_info."""
    return _util


@pytest.fixture(autouse=True)
def _deterministic_seed():
    import torch

    torch.manual_seed(0)
    yield
