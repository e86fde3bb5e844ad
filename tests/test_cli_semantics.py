"""What `bench` and `bench cache` promise beyond the happy paths of test_cli.py and test_cli_cache.py: the allocator
re-exec's environment and its loop guard, SIGTERM turned into an interrupt with status 143, a UserError escaping a
command as one line and status 2, `bench run`'s options reaching the run (--set, --limit, --quiet, --nproc and
generation.processes choosing the sharded path, --build-workers' default) and its results.md and sample grid,
`bench validate` checking every file, `bench report` (no results, parquet only, --latex, --paper),
`bench build-item`'s refusals and thread count, and `bench cache`: --unused-for 0 and inf, --kind on an empty cache,
dot folders at the top, an unreadable key.json, exact sizes, a temp folder still being written inside, --all with
--incomplete, the prompt's answers, an entry gone since the scan and a removal that fails half-way."""
from __future__ import annotations

import os
import shutil
import signal
import sys
import time

import pytest
from click.testing import CliRunner
from PIL import Image

import bench.cli as bench_cli
from bench.api import UserError
from bench.cli import PROCESS_ENV, Signalled, _BenchGroup, cli
from bench.cli_cache import cache
from test_cli import TINY, _suite
from test_cli_cache import CLIP_KEY, DAY, _set_mtime, artefact, bench_cache, filled, temp_folder  # noqa: F401
from test_gates import _rows


@pytest.fixture
def sigterm_restored():
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


# ---- process set-up -------------------------------------------------------------------------------------------
class Exec(Exception):
    pass


def _exec_recorder(monkeypatch):
    calls = []

    def execve(path, argv, env):
        calls.append((path, argv, env))
        raise Exec

    monkeypatch.setattr(os, "execve", execve)
    return calls


def test_the_reexec_adds_only_missing_settings_marks_itself_and_keeps_the_arguments(monkeypatch):
    calls = _exec_recorder(monkeypatch)
    for key in PROCESS_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("BENCH_NO_REEXEC")
    monkeypatch.setenv("GOMP_SPINCOUNT", "123")
    monkeypatch.setenv("SOMETHING_OF_THE_USERS", "kept")
    monkeypatch.setattr(sys, "argv", ["/x/bench", "cache", "ls", "--kind", "clip"])
    with pytest.raises(Exec):
        bench_cli.ensure_process_env()
    ((path, argv, env),) = calls
    assert path == sys.executable and argv == [sys.executable, "-m", "bench", "cache", "ls", "--kind", "clip"]
    assert env["GOMP_SPINCOUNT"] == "123" and env["SOMETHING_OF_THE_USERS"] == "kept"
    assert env["MALLOC_MMAP_THRESHOLD_"] == "4294967296" and env["MALLOC_TOP_PAD_"] == "1073741824"
    assert env["MALLOC_TRIM_THRESHOLD_"] == "68719476736"
    assert env["BENCH_NO_REEXEC"] == "1"  # the re-executed process does not do it again


def test_no_reexec_when_marked_or_when_nothing_is_missing(monkeypatch):
    calls = _exec_recorder(monkeypatch)
    for key in PROCESS_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("BENCH_NO_REEXEC", "1")
    bench_cli.ensure_process_env()
    monkeypatch.delenv("BENCH_NO_REEXEC")
    for key in PROCESS_ENV:
        monkeypatch.setenv(key, "7")
    bench_cli.ensure_process_env()
    assert calls == []


def test_sigterm_interrupts_a_command_which_ends_with_status_143(sigterm_restored):
    signal.signal(signal.SIGTERM, lambda signum, frame: None)  # without bench's handler: a failure, not death
    bench_cli._interrupt_on_sigterm()
    with pytest.raises(KeyboardInterrupt) as caught:  # (a plain KeyboardInterrupt would mean status 130)
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next statement
        pytest.fail("SIGTERM did not interrupt")
    assert isinstance(caught.value, Signalled) and caught.value.signum == signal.SIGTERM
    group = _BenchGroup()

    @group.command()
    def killed():
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt")

    result = CliRunner().invoke(group, ["killed"])
    assert result.exit_code == 143 and "interrupted (SIGTERM)" in result.output, result.output


def test_a_user_error_that_escapes_a_command_is_one_line_and_exit_2(monkeypatch, capsys, sigterm_restored):
    import bench.registry

    def broken():
        raise UserError("plugin 'x' (x:y) failed to load: boom")

    monkeypatch.setattr(bench.registry, "load_all", broken)
    monkeypatch.setattr(sys, "argv", ["bench", "ls"])
    with pytest.raises(SystemExit) as exit_:
        bench_cli.main()
    out = capsys.readouterr()
    assert exit_.value.code == 2 and out.out == ""
    assert out.err == "error: plugin 'x' (x:y) failed to load: boom\n"


# ---- bench run ------------------------------------------------------------------------------------------------
def test_set_limit_and_quiet_reach_the_run_and_the_grid_shows_the_generated_seed(tmp_path):
    suite = _suite(tmp_path)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", suite, "--out", str(out), "--limit", "2", "--set", "generation.seeds=[5]"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "samples" / "noise").iterdir()) == ["seed5"]
    assert sorted(p.name for p in (out / "samples" / "noise" / "seed5").glob("*.png")) == ["000000.png", "000001.png"]
    assert "generate noise seed 5" in result.output  # progress bars unless --quiet
    with Image.open(out / "grid.png") as grid:
        assert grid.width == 120 + 2 * 96  # label column + one 96-px cell per generated caption (bench.report)
    assert f"sample grid: {out / 'grid.png'}" in result.output
    # results.md holds the full tables, as `bench report` writes them (the printed one is the headline)
    written = (out / "results.md").read_text()
    assert CliRunner().invoke(cli, ["report", str(out)]).exit_code == 0
    assert (out / "results.md").read_text() == written
    quiet = CliRunner().invoke(cli, ["run", suite, "--out", str(tmp_path / "quiet"), "--limit", "1", "--quiet"])
    assert quiet.exit_code == 0 and "generate noise" not in quiet.output and "%|" not in quiet.output, quiet.output


@pytest.fixture
def no_sharding(monkeypatch):
    """bench.sharding.run_sharded replaced by a recorder that stops the command with a UserError (exit 2)."""
    import bench.sharding

    calls = []

    def run_sharded(suite, suite_path, overrides, nproc, fresh, **common):
        calls.append(dict(suite=suite, suite_path=suite_path, overrides=tuple(overrides), nproc=nproc, fresh=fresh,
                          **common))
        raise UserError("sharded run recorded")

    monkeypatch.setattr(bench.sharding, "run_sharded", run_sharded)
    return calls


def test_nproc_or_the_suites_processes_choose_the_sharded_run_with_the_overrides(tmp_path, no_sharding):
    from bench.build_pool import default_build_workers

    suite = _suite(tmp_path)
    out = str(tmp_path / "run")
    result = CliRunner().invoke(cli, ["run", suite, "--out", out, "--nproc", "2", "--set", "generation.batch_size=3",
                                      "--limit", "3", "--quiet", "--fresh"])
    assert result.exit_code == 2 and result.output == "error: sharded run recorded\n"
    call = no_sharding.pop()
    assert call["nproc"] == 2 and call["suite_path"] == suite and call["overrides"] == ("generation.batch_size=3",)
    assert call["suite"].generation.batch_size == 3 and call["limit"] == 3 and call["fresh"] is True
    assert call["progress"] is False and call["out_dir"] == out and call["device"] == "cpu"
    assert call["build_workers"] == default_build_workers("cpu")
    result = CliRunner().invoke(cli, ["run", suite, "--out", out, "--set", "generation.processes=2",
                                      "--build-workers", "3"])
    assert result.exit_code == 2 and no_sharding.pop()["nproc"] == 2
    result = CliRunner().invoke(cli, ["run", suite, "--out", out, "--nproc", "64"])  # the bound itself is allowed
    assert result.exit_code == 2 and no_sharding.pop()["nproc"] == 64
    result = CliRunner().invoke(cli, ["run", suite, "--out", out, "--nproc", "65"])
    assert result.exit_code == 2 and "at most 64 generation processes" in result.output and not no_sharding
    # --nproc 1 overrides the suite's processes: a plain run in this process
    result = CliRunner().invoke(cli, ["run", suite, "--out", out, "--set", "generation.processes=2", "--nproc", "1",
                                      "--quiet", "--limit", "1"])
    assert result.exit_code == 0 and not no_sharding, result.output


def test_build_workers_option_reaches_the_plain_run(tmp_path, monkeypatch):
    import bench.runner
    from bench.build_pool import default_build_workers

    seen = []

    class Recorder:
        def __init__(self, suite, **kwargs):
            seen.append(kwargs)
            raise UserError("runner recorded")

    monkeypatch.setattr(bench.runner, "Runner", Recorder)
    for args, workers in (([], default_build_workers("cpu")), (["--build-workers", "3"], 3)):
        result = CliRunner().invoke(cli, ["run", _suite(tmp_path), "--out", str(tmp_path / "r"), *args])
        assert result.exit_code == 2 and seen.pop()["build_workers"] == workers


def test_validate_checks_every_file_and_fails_if_one_is_bad(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("suite: b\nversion: 1\ndataset: {name: nosuchdataset}\nsystems: [{name: noise}]\n")
    result = CliRunner().invoke(cli, ["validate", str(bad), _suite(tmp_path)])
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and "nosuchdataset" in lines[0]
    assert lines[1].startswith(f"ok  {tmp_path / 's.yaml'}: t v1, ")


# ---- bench report ---------------------------------------------------------------------------------------------
def test_report_without_results_is_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "run").mkdir()
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "run")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "has no results.csv" in result.output
    assert list((tmp_path / "run").iterdir()) == []


def test_report_reads_a_parquet_only_run_and_writes_latex_and_paper_files(tmp_path):
    from bench.results import write_frame

    run = tmp_path / "run"
    run.mkdir()
    write_frame(_rows({("g", "attribute-accuracy", "seen/all"): [0.81]}), run)
    (run / "results.csv").unlink()
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 0 and "0.810" in result.output, result.output
    assert "\\begin{tabular}" not in result.output
    assert (run / "results.md").read_text() == result.output.split("\n\nwrote ")[0] + "\n"
    tex = (run / "results.tex").read_text()
    assert "\\begin{tabular}" in tex and "0.810" in tex
    result = CliRunner().invoke(cli, ["report", str(run), "--latex"])
    assert result.exit_code == 0 and tex.strip() in result.output
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    result = CliRunner().invoke(cli, ["report", str(run), "--paper"])
    assert result.exit_code == 0, result.output
    assert (run / "paper.md").is_file() and (run / "paper.tex").is_file()
    assert {p.name: p.read_bytes() for p in run.iterdir() if not p.name.startswith("paper.")} == before
    assert result.output.rstrip().endswith(f"wrote {run / 'paper.md'} and {run / 'paper.tex'}")


# ---- bench build-item -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("item", ["component:", "system:", "gpt:x", "noise"])
def test_build_item_refuses_a_malformed_item(tmp_path, item):
    result = CliRunner().invoke(cli, ["build-item", _suite(tmp_path), "--item", item, "--threads", "1"])
    assert result.exit_code == 2 and result.output == \
        f"error: --item {item!r}: expected component:NAME or system:ALIAS\n"


def test_build_item_trains_with_the_thread_count_it_is_given(tmp_path, monkeypatch):
    import torch

    import bench.build
    from bench.cache import cache_dir

    seen = []

    class Recorder:
        def __init__(self, suite, dataset, device, cache, build_threads):
            self.args = dict(device=device, cache=cache, build_threads=build_threads,
                             batch_size=suite.generation.batch_size)

        def build(self, item):
            seen.append(dict(self.args, item=item, threads=torch.get_num_threads()))

    monkeypatch.setattr(bench.build, "Builder", Recorder)
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(cli, ["build-item", _suite(tmp_path), "--item", "system:noise", "--threads", "3",
                                          "--set", "generation.batch_size=5"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert seen == [dict(device="cpu", cache=str(cache_dir()), build_threads=3, batch_size=5, item=("system", "noise"),
                         threads=3)]


# ---- bench cache ----------------------------------------------------------------------------------------------
def _names(root, kind):
    return sorted(p.name for p in (root / kind).iterdir())


def test_unused_for_0_takes_every_complete_entry_and_inf_is_refused(filled):
    before = sorted(filled.rglob("*"))
    result = bench_cache(filled, "prune", "--unused-for", "inf", "--yes")
    assert result.exit_code == 2 and result.output == "error: --unused-for wants a number of days >= 0, got inf\n"
    assert sorted(filled.rglob("*")) == before
    result = bench_cache(filled, "prune", "--unused-for", "0", "--yes")
    assert result.exit_code == 0, result.output
    assert _names(filled, "clip") == [] and list((filled / "stats").iterdir()) == []
    assert f".{'d' * 20}.x1y2z3" in _names(filled, "vqgan")  # incomplete: only with --incomplete


def test_kind_on_an_empty_cache_and_dot_folders_at_the_top(tmp_path, filled):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = bench_cache(empty, "ls", "--kind", "clip")
    assert result.exit_code == 0 and result.output == f"nothing of kind clip cached in {empty}\n"
    artefact(filled, ".trash", "7" * 20, CLIP_KEY, 10, used_days_ago=90)  # not a kind: never listed nor pruned
    (filled / "NOTES").write_text("mine")
    mine = filled / "clip" / ".cafe.old"  # a dot-name with a short hex stem: not a temp name the cache writes
    mine.write_text("mine")
    _set_mtime(mine, 3 * DAY)
    result = bench_cache(filled, "ls", "--kind", "gpt")
    assert result.exit_code == 2 and result.output.endswith("kinds present: clip, stats, vqgan\n"), result.output
    assert "7" * 20 not in bench_cache(filled, "ls").output
    assert bench_cache(filled, "prune", "--all", "--yes").exit_code == 0
    assert (filled / ".trash" / ("7" * 20) / "key.json").is_file() and (filled / "NOTES").read_text() == "mine"
    assert bench_cache(filled, "prune", "--incomplete", "--yes").exit_code == 0 and mine.read_text() == "mine"


def test_an_unreadable_key_json_is_listed_and_pruned(filled):
    (filled / "clip" / ("a" * 20) / "key.json").write_text("{not json")
    result = bench_cache(filled, "ls", "--kind", "clip")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "a" * 20 in line)
    assert line.endswith("(no readable key)")
    assert bench_cache(filled, "prune", "--all", "--kind", "clip", "--yes").exit_code == 0
    assert _names(filled, "clip") == []


def test_sizes_count_every_file_under_an_entry_and_no_folders(tmp_path):
    from bench.cli_cache import _human

    root = tmp_path / "cache"
    folder = artefact(root, "clip", "a" * 20, CLIP_KEY, 100)
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "sub" / "deeper" / "part.bin").write_bytes(b"\1" * 200)
    total = 100 + 200 + (folder / "key.json").stat().st_size  # < 1024: shown in bytes
    lines = bench_cache(root, "ls").output.splitlines()
    assert lines[1].split()[2:4] == [str(total), "B"]
    assert lines[-1] == f"1 entry, {total} B in {root}"
    assert [_human(n) for n in (0, 1023, 1024, 1536, 1024 ** 2 - 1, 1024 ** 2, 3 * 1024 ** 3, 1024 ** 4)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "1024.0 KiB", "1.0 MiB", "3.0 GiB", "1.0 TiB"]


def test_a_temp_folder_written_inside_recently_is_not_incomplete_yet(filled):
    busy = temp_folder(filled, "clip", f".{'f' * 20}.k7m2p4", age_s=3 * 3600)  # the folder and its file: old
    (busy / "nested").mkdir()
    (busy / "nested" / "step-900.bin").write_bytes(b"\0" * 10)  # but a run wrote this just now
    _set_mtime(busy / "nested", 3 * 3600)
    _set_mtime(busy, 3 * 3600)
    line = next(line for line in bench_cache(filled, "ls").output.splitlines() if busy.name in line)
    assert time.strftime("%Y-%m-%d %H:", time.localtime()) in line or time.strftime(
        "%Y-%m-%d %H:", time.localtime(time.time() - 60)) in line  # its last use: the newest file inside
    result = bench_cache(filled, "prune", "--incomplete", "--yes")
    assert result.exit_code == 0, result.output
    assert (busy / "nested" / "step-900.bin").exists()
    assert _names(filled, "vqgan") == ["c" * 20]  # the temp folder untouched for 2 h went


def test_all_with_incomplete_takes_both(filled):
    young = temp_folder(filled, "clip", f".{'f' * 20}.q8r9s0", age_s=600)
    result = bench_cache(filled, "prune", "--all", "--incomplete", "--yes")
    assert result.exit_code == 0, result.output
    assert _names(filled, "clip") == [young.name] and _names(filled, "vqgan") == []
    assert list((filled / "stats").iterdir()) == []


@pytest.mark.parametrize("answer, removed", [("y\n", True), (" Y \n", True), ("YES\n", True), ("no\n", False),
                                             ("yess\n", False), (None, False)])
def test_prune_prompt_answers(filled, monkeypatch, answer, removed):
    monkeypatch.setattr("bench.cli_cache._interactive", lambda: True)
    result = CliRunner().invoke(cache, ["prune", "--all", "--kind", "clip"], input=answer,
                                env={"BENCH_CACHE": str(filled)})
    lines = result.output.splitlines()
    assert [line.split()[:3] for line in lines[:2]] == [["remove", "clip", "b" * 20], ["remove", "clip", "a" * 20]]
    assert lines[2].startswith("remove these 2 entries (2.0 MiB)? [y/N]: ")
    assert result.exit_code == (0 if removed else 1), result.output
    assert _names(filled, "clip") == ([] if removed else ["a" * 20, "b" * 20])
    assert (lines[-1] == "freed 2.0 MiB") if removed else result.output.endswith("not confirmed: nothing removed\n")


def test_an_entry_gone_since_the_scan_is_reported_and_not_counted(filled, monkeypatch):
    import bench.cli_cache as cli_cache

    scan = cli_cache._scan

    def scan_then_another_prune_removes_b(kind):
        found = scan(kind)
        shutil.rmtree(filled / "clip" / ("b" * 20))
        return found

    monkeypatch.setattr(cli_cache, "_scan", scan_then_another_prune_removes_b)
    result = bench_cache(filled, "prune", "--all", "--kind", "clip", "--yes")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("gone already  clip  " + "b" * 20) and lines[1].startswith("removed  clip  " + "a" * 20)
    assert lines[2] == "freed 1.0 MiB" and _names(filled, "clip") == []


def test_a_removal_that_fails_half_way_is_one_line_and_leaves_an_incomplete_entry(filled, monkeypatch):
    import bench.cli_cache as cli_cache

    real_rmtree = shutil.rmtree

    def denied(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cli_cache.shutil, "rmtree", denied)
    entry = filled / "clip" / ("b" * 20)
    result = bench_cache(filled, "prune", "--unused-for", "30", "--yes")
    assert result.exit_code == 2
    (leftover,) = [p for p in (filled / "clip").iterdir() if p.name != "a" * 20]
    assert leftover.name.startswith(f".{'b' * 20}.pruning-") and not entry.exists()
    assert result.output == f"error: cannot remove {entry} (renamed {leftover.name}; --incomplete removes it later): " \
                            "Permission denied\n"
    monkeypatch.setattr(cli_cache.shutil, "rmtree", real_rmtree)
    _set_mtime(leftover, 2 * 3600)
    _set_mtime(leftover / "weights.safetensors", 2 * 3600)
    listed = bench_cache(filled, "ls", "--kind", "clip").output
    assert any(line.startswith(f"clip  {leftover.name}") and line.endswith("incomplete") for line in listed.splitlines())
    assert bench_cache(filled, "prune", "--incomplete", "--yes").exit_code == 0
    assert _names(filled, "clip") == ["a" * 20]
