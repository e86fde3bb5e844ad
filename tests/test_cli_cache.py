"""`bench cache ls | prune` over a synthetic cache, and the last-use stamps that loads leave."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bench.cache import cached_artefact
from bench.cli_cache import cache
from bench.metrics.stats import reference_stats
from metrics_testing import TensorDataset, make_ctx

MiB = 1024 * 1024
DAY = 86400
CLIP_KEY = {"args": {"preset": "tiny", "steps": 150, "seed": 0},
            "data": {"pairs": {"dataset": "shapes", "split": "pairs", "pairs_size": 12000}},
            "trained_on": {"device": "cpu", "threads": 2}, "code": "0123456789abcdef0123"}
VQGAN_KEY = {"train": {"preset": "small", "steps": None}, "data": {"train": {"train_source": {"name": "imagefolder", "count": 9}}},
             "trained_on": {"device": "cuda", "gpu": "H200"}, "code": "0123456789abcdef0123"}
STATS_KEY = {"reference": {"dataset": "shapes", "split": "test", "count": 256},
             "extractor": {"features": "inception"}, "blur": 0}


def _set_mtime(path: Path, seconds_ago: float) -> float:
    t = time.time() - seconds_ago
    os.utime(path, (t, t))
    return t


def artefact(root: Path, kind: str, name: str, key: dict, size: int, used_days_ago: float = 0.0) -> Path:
    folder = root / kind / name
    folder.mkdir(parents=True)
    (folder / "weights.safetensors").write_bytes(b"\0" * size)
    (folder / "key.json").write_text(json.dumps({"kind": kind, "key": key, "bench_version": "0.1.0"}))
    _set_mtime(folder / "key.json", used_days_ago * DAY)
    return folder


def stats(root: Path, name: str, size: int, used_days_ago: float = 0.0) -> Path:
    path = root / "stats" / f"{name}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, features=np.zeros(size // 8), key=np.array(json.dumps(STATS_KEY)))
    _set_mtime(path, used_days_ago * DAY)
    return path


def temp_folder(root: Path, kind: str, name: str, age_s: float) -> Path:
    folder = root / kind / name
    folder.mkdir(parents=True)
    (folder / "half-written.bin").write_bytes(b"\0" * 1000)
    _set_mtime(folder / "half-written.bin", age_s)
    _set_mtime(folder, age_s)
    return folder


def bench_cache(root: Path, *args: str):
    return CliRunner().invoke(cache, list(args), env={"BENCH_CACHE": str(root)})


@pytest.fixture
def filled(tmp_path) -> Path:
    """clip: two artefacts (used 10 and 40 days ago), vqgan: one (used now) and a temp folder, stats: one file."""
    root = tmp_path / "cache"
    artefact(root, "clip", "a" * 20, CLIP_KEY, MiB, used_days_ago=10)
    artefact(root, "clip", "b" * 20, CLIP_KEY, MiB, used_days_ago=40)
    artefact(root, "vqgan", "c" * 20, VQGAN_KEY, 2 * MiB)
    temp_folder(root, "vqgan", f".{'d' * 20}.x1y2z3", age_s=2 * 3600)
    stats(root, "e" * 20, MiB // 2, used_days_ago=3)
    return root


def test_ls_lists_every_entry_by_kind_then_last_use_with_a_total(filled):
    result = bench_cache(filled, "ls")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["KIND", "HASH", "SIZE", "CREATED", "LAST", "USED", "SUMMARY"]
    assert [line.split()[:2] for line in lines[1:-1]] == [
        ["clip", "b" * 20], ["clip", "a" * 20], ["stats", "e" * 20], ["vqgan", f".{'d' * 20}.x1y2z3"],
        ["vqgan", "c" * 20]]
    clip_old = lines[1]
    assert "1.0 MiB" in clip_old
    assert time.strftime("%Y-%m-%d", time.localtime(time.time() - 40 * DAY)) in clip_old
    assert clip_old.endswith("preset=tiny steps=150 data=shapes/pairs on=cpu")
    assert lines[3].endswith("reference=shapes/test n=256 features=inception blur=0")
    assert lines[4].endswith("incomplete")
    assert lines[5].endswith("preset=small data=imagefolder/train on=cuda")  # steps None: the preset's, not shown
    assert lines[-1] == f"5 entries, 4.5 MiB in {filled} (1 incomplete)"


def test_ls_of_one_kind(filled):
    result = bench_cache(filled, "ls", "--kind", "clip")
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()[1:-1]] == ["clip", "clip"]
    assert result.output.splitlines()[-1] == f"2 entries, 2.0 MiB in {filled}"


@pytest.mark.parametrize("make", [lambda root: None, lambda root: root.mkdir()], ids=["missing", "empty"])
def test_ls_of_a_missing_or_empty_cache_says_so(tmp_path, make):
    root = tmp_path / "cache"
    make(root)
    result = bench_cache(root, "ls")
    assert result.exit_code == 0
    assert result.output == f"nothing cached in {root}\n"


def test_prune_by_age_removes_only_entries_unused_that_long(filled):
    result = bench_cache(filled, "prune", "--unused-for", "30", "--yes")
    assert result.exit_code == 0, result.output
    assert not (filled / "clip" / ("b" * 20)).exists()
    assert sorted(p.name for p in (filled / "clip").iterdir()) == ["a" * 20]  # no renamed leftover either
    assert (filled / "stats" / f"{'e' * 20}.npz").exists() and (filled / "vqgan" / ("c" * 20)).exists()
    assert (filled / "vqgan" / f".{'d' * 20}.x1y2z3").exists()  # incomplete ones only with --incomplete
    lines = result.output.splitlines()
    assert len(lines) == 2 and lines[0].startswith("removed  clip  " + "b" * 20)
    assert lines[1] == "freed 1.0 MiB"


def test_prune_keeps_what_a_run_used_after_the_scan(filled, monkeypatch):
    import bench.cli_cache as cli_cache

    scan = cli_cache._scan

    def scan_then_a_run_loads_b(kind):
        found = scan(kind)
        os.utime(filled / "clip" / ("b" * 20) / "key.json")  # what a load does (mark_used)
        return found

    monkeypatch.setattr(cli_cache, "_scan", scan_then_a_run_loads_b)
    result = bench_cache(filled, "prune", "--unused-for", "30", "--yes")
    assert result.exit_code == 0, result.output
    assert (filled / "clip" / ("b" * 20) / "weights.safetensors").exists()
    lines = result.output.splitlines()
    assert lines[0].startswith("used since, kept  clip  " + "b" * 20) and lines[1] == "freed 0 B"


def test_prune_by_age_reaches_a_statistics_file_by_its_mtime(filled):
    path = filled / "stats" / f"{'e' * 20}.npz"
    size = path.stat().st_size
    result = bench_cache(filled, "prune", "--unused-for", "2.5", "--kind", "stats", "--yes")
    assert result.exit_code == 0, result.output
    assert not path.exists() and list((filled / "stats").iterdir()) == []
    assert result.output.splitlines()[-1] == f"freed {size / 1024:.1f} KiB"


def test_dry_run_lists_but_removes_nothing(filled):
    before = sorted(filled.rglob("*"))
    result = bench_cache(filled, "prune", "--all", "--dry-run")  # no --yes needed, and stdin is not a terminal
    assert result.exit_code == 0, result.output
    assert sorted(filled.rglob("*")) == before
    lines = result.output.splitlines()
    assert [line.split()[2] for line in lines[:-1]] == ["clip", "clip", "stats", "vqgan"]
    assert all(line.startswith("would remove  ") for line in lines[:-1])
    assert lines[-1] == "would free 4.5 MiB (4 entries)"
    one = bench_cache(filled, "prune", "--all", "--kind", "vqgan", "--dry-run").output.splitlines()
    assert len(one) == 2 and one[-1].startswith("would free ") and one[-1].endswith(" (1 entry)")


def test_prune_all_of_one_kind_leaves_the_other_kinds(filled):
    result = bench_cache(filled, "prune", "--all", "--kind", "clip", "--yes")
    assert result.exit_code == 0, result.output
    assert list((filled / "clip").iterdir()) == []
    assert (filled / "vqgan" / ("c" * 20)).exists() and (filled / "stats" / f"{'e' * 20}.npz").exists()
    assert result.output.splitlines()[-1] == "freed 2.0 MiB"


def test_prune_incomplete_takes_only_temp_folders_older_than_an_hour(filled):
    fresh = temp_folder(filled, "clip", f".{'f' * 20}.q8r9s0", age_s=600)  # a run may still be writing it
    result = bench_cache(filled, "prune", "--incomplete", "--yes")
    assert result.exit_code == 0, result.output
    assert not (filled / "vqgan" / f".{'d' * 20}.x1y2z3").exists()
    assert fresh.exists()
    assert (filled / "clip" / ("b" * 20)).exists()  # 40 days unused, but complete
    assert sorted(p.name for p in (filled / "vqgan").iterdir()) == ["c" * 20]


def test_prune_without_yes_on_a_non_terminal_refuses_and_removes_nothing(filled):
    before = sorted(filled.rglob("*"))
    result = bench_cache(filled, "prune", "--all")
    assert result.exit_code == 2
    assert len(result.output.splitlines()) == 1 and "--yes" in result.output
    assert sorted(filled.rglob("*")) == before


@pytest.mark.parametrize("args, needle", [
    (["prune", "--kind", "clip"], "--unused-for DAYS, --all or --incomplete"),
    (["prune", "--unused-for", "-1", "--yes"], "--unused-for wants a number of days >= 0, got -1"),
    (["prune", "--unused-for", "nan", "--yes"], "--unused-for wants a number of days >= 0, got nan"),
    (["prune", "--all", "--unused-for", "3", "--yes"], "--all and --unused-for select differently"),
    (["prune", "--all", "--kind", "gpt", "--yes"], "no kind 'gpt'"),
    (["ls", "--kind", "gpt"], "kinds present: clip, stats, vqgan"),
])
def test_bad_input_is_one_line_and_exit_2(filled, args, needle):
    before = sorted(filled.rglob("*"))
    result = bench_cache(filled, *args)
    assert result.exit_code == 2
    assert len(result.output.splitlines()) == 1 and needle in result.output, result.output
    assert sorted(filled.rglob("*")) == before


@pytest.mark.parametrize("command", [["ls"], ["prune", "--all", "--yes"]])
def test_a_cache_path_that_is_a_file_is_exit_2(tmp_path, command):
    (tmp_path / "cache").write_text("")
    result = bench_cache(tmp_path / "cache", *command)
    assert result.exit_code == 2
    assert result.output == f"error: the cache {tmp_path / 'cache'} (BENCH_CACHE) is a file, not a folder\n"


def test_bench_has_the_cache_command(tmp_path, monkeypatch, capsys):
    from bench.cli import main

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "none"))
    monkeypatch.setattr(sys, "argv", ["bench", "cache", "ls"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"nothing cached in {tmp_path / 'none'}\n"


# ---- last use: a load sets the mtime that `bench cache` reads ----------------------------------------------------
def _cached_text(root: Path, loads: list[str]) -> str:
    def save(obj: str, folder: str) -> None:
        Path(folder, "obj.txt").write_text(obj)

    def load(folder: str) -> str:
        loads.append(folder)
        return Path(folder, "obj.txt").read_text()

    return cached_artefact(root, "thing", {"n": 1}, lambda: "trained", save, load)


def test_loading_an_artefact_marks_its_key_json_used(tmp_path):
    loads: list[str] = []
    assert _cached_text(tmp_path, loads) == "trained" and loads == []
    key_json = Path(next((tmp_path / "thing").iterdir()), "key.json")
    old = _set_mtime(key_json, 30 * DAY)
    assert _cached_text(tmp_path, loads) == "trained" and len(loads) == 1
    assert key_json.stat().st_mtime > old + 29 * DAY


def test_a_load_from_a_cache_it_cannot_stamp_still_loads(tmp_path, monkeypatch):
    loads: list[str] = []
    _cached_text(tmp_path, loads)

    def read_only(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(os, "utime", read_only)
    assert _cached_text(tmp_path, loads) == "trained" and len(loads) == 1


class MeanColour:
    """A feature extractor for the test: each image's mean colour."""

    def identity(self) -> dict:
        return {"features": "mean-colour"}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().mean(dim=(2, 3))


def test_loading_reference_statistics_marks_the_file_used(tmp_path):
    reference = torch.randint(0, 256, (6, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ctx = make_ctx(TensorDataset(reference), str(tmp_path))
    assert reference_stats(ctx, MeanColour(), 0, 4)[1] is False
    (path,) = (tmp_path / "stats").glob("*.npz")
    old = _set_mtime(path, 30 * DAY)
    assert reference_stats(ctx, MeanColour(), 0, 4)[1] is True
    assert path.stat().st_mtime > old + 29 * DAY


def test_an_unreadable_statistics_file_is_computed_again(tmp_path):
    reference = torch.randint(0, 256, (6, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ctx = make_ctx(TensorDataset(reference), str(tmp_path))
    stats, _ = reference_stats(ctx, MeanColour(), 0, 4)
    (path,) = (tmp_path / "stats").glob("*.npz")
    path.write_bytes(b"not an npz")  # e.g. a file copied in half
    again, cached = reference_stats(ctx, MeanColour(), 0, 4)
    assert cached is False and np.array_equal(again.mu, stats.mu)
    assert reference_stats(ctx, MeanColour(), 0, 4)[1] is True  # and rewritten whole


def test_created_is_when_the_artefact_was_written_even_after_a_copy(tmp_path):
    _cached_text(tmp_path, [])
    folder = next((tmp_path / "thing").iterdir())
    record = json.loads((folder / "key.json").read_text())
    assert abs(record["created"] - time.time()) < 600 and record["key"] == {"n": 1}
    _set_mtime(folder, 100 * DAY)  # what `cp -r` without -p, or a restore, does to the folder's mtime
    _set_mtime(folder / "key.json", 2 * DAY)
    legacy = artefact(tmp_path, "thing", "0" * 20, CLIP_KEY, 10, used_days_ago=1)  # key.json without "created"
    _set_mtime(legacy, 50 * DAY)
    cells = {line.split()[1]: line.split() for line in bench_cache(tmp_path, "ls").output.splitlines()[1:-1]}

    def day(days_ago: float) -> str:
        return time.strftime("%Y-%m-%d", time.localtime(time.time() - days_ago * DAY))

    assert cells[folder.name][4] == day(0) and cells[folder.name][6] == day(2)  # CREATED, LAST USED dates
    assert cells["0" * 20][4] == day(50) and cells["0" * 20][6] == day(1)


def test_reference_statistics_are_computed_when_the_cache_cannot_keep_them(tmp_path, monkeypatch, capsys):
    import errno

    import bench.metrics.stats

    def read_only(path, data):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(bench.metrics.stats, "atomic_write_bytes", read_only)
    reference = torch.randint(0, 256, (6, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    stats, cached = reference_stats(make_ctx(TensorDataset(reference), str(tmp_path)), MeanColour(), 0, 4)
    assert cached is False and stats.n == 6
    assert "cannot keep the reference statistics" in capsys.readouterr().err


def test_dot_names_the_cache_never_writes_are_left_alone(filled):
    """BENCH_CACHE pointed at a project folder by mistake: its .git, .venv and .env.local are not temp folders of
    killed runs, however old; a stats temp file (`.<hash>.npz.<random>`) and a half-pruned entry are."""
    project = filled / "proj"
    for name in (".git", ".venv"):
        temp_folder(filled, "proj", name, age_s=3 * DAY)
    (project / ".env.local").write_text("SECRET=1\n")
    _set_mtime(project / ".env.local", 3 * DAY)
    npz_temp = filled / "stats" / f".{'e' * 20}.npz.ab12cd34"
    npz_temp.write_bytes(b"\0" * 10)
    _set_mtime(npz_temp, 2 * 3600)
    pruning = temp_folder(filled, "clip", f".{'a' * 20}.pruning-0123abcd", age_s=2 * 3600)
    listed = bench_cache(filled, "ls").output
    assert ".git" not in listed and ".venv" not in listed and ".env.local" not in listed
    result = bench_cache(filled, "prune", "--incomplete", "--yes")
    assert result.exit_code == 0, result.output
    assert all((project / name).exists() for name in (".git", ".venv", ".env.local"))
    assert not npz_temp.exists() and not pruning.exists()


def test_a_symlinked_entry_is_unlinked_not_followed(filled, tmp_path):
    elsewhere = artefact(tmp_path / "elsewhere", "clip", "9" * 20, CLIP_KEY, 10)
    (filled / "clip" / ("8" * 20)).symlink_to(elsewhere, target_is_directory=True)
    result = bench_cache(filled, "prune", "--all", "--kind", "clip", "--yes")
    assert result.exit_code == 0, result.output
    assert not list((filled / "clip").iterdir())
    assert (elsewhere / "weights.safetensors").exists(), "the link's target is not the cache's to delete"


@pytest.mark.parametrize("created", ["1e300", "NaN"])
def test_a_key_json_with_an_impossible_time_still_lists(filled, created):
    key_json = filled / "clip" / ("a" * 20) / "key.json"
    key_json.write_text(key_json.read_text()[:-1] + f', "created": {created}}}')
    result = bench_cache(filled, "ls")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output


def test_a_statistics_file_damaged_past_its_key_is_computed_again(tmp_path):
    reference = torch.randint(0, 256, (6, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ctx = make_ctx(TensorDataset(reference), str(tmp_path))
    stats, _ = reference_stats(ctx, MeanColour(), 0, 4)
    (path,) = (tmp_path / "stats").glob("*.npz")
    with np.load(path) as z:
        members = {name: z[name] for name in z.files}
    np.savez_compressed(path, **members)
    data = bytearray(path.read_bytes())
    start = data.index(b"features.npy") + 40  # inside the compressed features, before the key member
    data[start:start + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    again, cached = reference_stats(ctx, MeanColour(), 0, 4)
    assert cached is False and np.array_equal(again.mu, stats.mu)


def test_a_statistics_file_with_one_bit_flipped_in_its_features_is_computed_again(tmp_path):
    reference = torch.randint(0, 256, (6, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ctx = make_ctx(TensorDataset(reference), str(tmp_path))
    stats, _ = reference_stats(ctx, MeanColour(), 0, 4)
    (path,) = (tmp_path / "stats").glob("*.npz")  # as written: members stored uncompressed, each with its CRC-32
    data = bytearray(path.read_bytes())
    at = data.index(stats.features.tobytes())  # the raw features, found in the file
    data[at + 3] ^= 0x01
    path.write_bytes(bytes(data))
    again, cached = reference_stats(ctx, MeanColour(), 0, 4)
    assert cached is False and np.array_equal(again.features, stats.features)


def test_a_cache_folder_under_an_unknown_home_is_one_line(tmp_path):
    result = bench_cache(Path("~nosuchuser-clipgen/cache"), "ls")
    assert result.exit_code == 2 and result.output.startswith("error: BENCH_CACHE='~nosuchuser-clipgen/cache'"), \
        result.output


@pytest.mark.parametrize("answer, removed", [("n\n", False), ("\n", False), ("yes\n", True)])
def test_prune_asks_on_a_terminal_and_only_yes_removes(filled, monkeypatch, answer, removed):
    monkeypatch.setattr("bench.cli_cache._interactive", lambda: True)
    result = CliRunner().invoke(cache, ["prune", "--all", "--kind", "clip"], input=answer,
                                env={"BENCH_CACHE": str(filled)})
    assert "remove these 2 entries" in result.output
    assert result.exit_code == (0 if removed else 1), result.output
    assert (filled / "clip" / ("a" * 20)).exists() is not removed
    if not removed:
        assert "not confirmed: nothing removed" in result.output


def test_ctrl_c_at_the_prune_prompt_is_an_interrupt(filled, monkeypatch):
    from bench.cli import _BenchGroup

    def ctrl_c():
        raise KeyboardInterrupt

    group = _BenchGroup()
    group.add_command(cache)
    monkeypatch.setattr("bench.cli_cache._interactive", lambda: True)
    monkeypatch.setattr("builtins.input", ctrl_c)
    result = CliRunner().invoke(group, ["cache", "prune", "--all"], env={"BENCH_CACHE": str(filled)})
    assert result.exit_code == 130 and "interrupted (SIGINT)" in result.output, result.output
    assert (filled / "clip" / ("a" * 20)).exists()


class OtherMeanColour(MeanColour):
    """The same features from another extractor (other weights, say): statistics of its own."""

    def identity(self) -> dict:
        return {"features": "mean-colour", "weights_sha256": "another"}


def test_reference_statistics_are_keyed_by_extractor_platform_batch_size_and_code(tmp_path, monkeypatch):
    """Each thing that can change the reference features makes reference_stats compute them again instead of
    loading another's: the extractor's identity, the processor and libraries, the batch size, the code of the
    statistics, the extractor and the dataset."""
    import bench.cache
    import bench.metrics.stats as stats_module

    reference = torch.randint(0, 256, (6, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ctx = make_ctx(TensorDataset(reference), str(tmp_path))

    def cached(extractor=None, batch_size: int = 4) -> bool:
        return reference_stats(ctx, extractor or MeanColour(), 0, batch_size)[1]

    assert [cached(), cached()] == [False, True]
    assert cached(OtherMeanColour()) is False
    assert cached(batch_size=2) is False
    real_fingerprint = stats_module.code_fingerprint
    seen = []
    monkeypatch.setattr(stats_module, "code_fingerprint", lambda *m: seen.append(m) or real_fingerprint(*m) + "-edited")
    assert cached() is False
    assert {"bench.metrics.stats", bench.cache.code_home(MeanColour.__module__),
            *map(bench.cache.code_home, ctx.dataset.code_modules())} <= set(seen[0])
    monkeypatch.setattr(bench.cache, "machine_name", lambda device: "another processor")
    assert cached() is False
    monkeypatch.setattr(bench.cache, "library_versions", lambda: {"torch": "0.0"})
    assert cached() is False
    assert len(list((tmp_path / "stats").glob("*.npz"))) == 6


@pytest.mark.parametrize("command", [("ls",), ("prune", "--all", "--yes")])
def test_an_entry_it_may_not_read_is_one_line_and_exit_2(filled, monkeypatch, command):
    """A shared cache may hold another user's folders: a permission error names the path (tests may run as root, where
    permissions do not hold, so the refusal is simulated)."""
    import bench.cli_cache

    def refused(kind, path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(bench.cli_cache, "_entry", refused)
    before = sorted(filled.rglob("*"))
    result = bench_cache(filled, *command)
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"error: cannot read {filled}/") and result.output.endswith(
        " in the cache: permission denied\n")
    assert sorted(filled.rglob("*")) == before
