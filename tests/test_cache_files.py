"""bench/cache.py: where the cache is, and the modes of what the atomic writers leave behind."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bench.cache import atomic_write_bytes, atomic_write_text, cache_dir, cached_artefact


@pytest.fixture
def umask():
    """os.umask, with the process's umask put back after the test."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_mode_open_would_give(tmp_path, umask, mask):
    umask(mask)
    atomic_write_bytes(tmp_path / "samples" / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "results.csv", "a,b\n1,2\n")
    with open(tmp_path / "plain.txt", "w") as f:  # what a plain open() gives under this umask
        f.write("x")
    assert _mode(tmp_path / "samples" / "a.bin") == _mode(tmp_path / "results.csv") == 0o666 & ~mask
    assert _mode(tmp_path / "results.csv") == _mode(tmp_path / "plain.txt")
    assert (tmp_path / "results.csv").read_text() == "a,b\n1,2\n"
    assert os.umask(mask) == mask  # reading the umask left it as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "results.csv", "samples"]  # no temp files


def test_overwriting_keeps_the_new_mode_and_content(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "r.csv"
    target.write_text("old")
    target.chmod(0o600)
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o644


def test_cached_artefact_folder_gets_the_mode_mkdir_would_give(tmp_path, umask):
    umask(0o022)

    def save(obj, folder):
        Path(folder, "w.txt").write_text(obj)

    assert cached_artefact(tmp_path, "thing", {"a": 1}, lambda: "trained", save, lambda d: "loaded") == "trained"
    [folder] = (tmp_path / "thing").iterdir()
    assert _mode(folder) == 0o755 and (folder / "key.json").is_file()
    assert _mode(folder / "w.txt") == 0o644
    assert cached_artefact(tmp_path, "thing", {"a": 1}, lambda: "trained", save, lambda d: "loaded") == "loaded"


def test_empty_bench_cache_means_unset(monkeypatch, tmp_path):
    default = Path.home() / ".cache" / "clipgen-bench"
    monkeypatch.setenv("BENCH_CACHE", "")
    assert cache_dir() == default
    monkeypatch.delenv("BENCH_CACHE")
    assert cache_dir() == default
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.setenv("BENCH_CACHE", "~/somewhere")
    assert cache_dir() == Path.home() / "somewhere"
