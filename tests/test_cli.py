"""The CLI as a user meets it: resource checks, listing, the allocator re-exec."""
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from bench.cli import PROCESS_ENV, cli

REPO = Path(__file__).resolve().parents[1]


def test_mscoco_without_data_or_weights_stops_at_the_resource_check(tmp_path, monkeypatch):
    for var in ("BENCH_COCO_ROOT", "BENCH_WEIGHTS", "BENCH_INCEPTION_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(REPO / "suites" / "mscoco.yaml"), "--out", str(out)])
    assert result.exit_code == 2, result.output
    text = result.output
    for needle in ("BENCH_COCO_ROOT", "components.clip.path", "components.clip-eval.path", "components.vqgan.path",
                   "systems.clip-gen.args.path", "weights-inception-2015-12-05-6726825d.pth"):
        assert needle in text, needle
    assert not out.exists(), "nothing may be written before the resource check passes"


def test_missing_weight_file_names_the_file(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text("suite: s\nversion: 1\ndataset: {name: shapes}\n"
                     "components: {vqgan: {kind: vqgan, path: ckpt/nothing-here}}\n"
                     "systems: [{name: vqgan-recon, args: {vqgan: vqgan}}]\n")
    result = CliRunner().invoke(cli, ["run", str(suite), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert f"{tmp_path / 'ckpt' / 'nothing-here'} does not exist" in result.output


def test_ls_lists_every_registry_with_descriptions():
    result = CliRunner().invoke(cli, ["ls"])
    assert result.exit_code == 0
    for name in ("shapes", "fashion-mnist", "mscoco", "clipgen", "vqgan-clip", "fd", "kid", "clip-score", "caps",
                 "attribute-accuracy", "throughput", "training-probe", "tiny", "paper"):
        assert f"  {name} " in result.output, name
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.startswith("  ")}
    assert lines["vqgan"].endswith("[trains on: train]") and lines["clipgen-text"].endswith("[trains on: pairs]")
    assert "trains on" not in lines["real-images"]


def test_ls_name_shows_every_argument_with_its_default_bounds_and_help():
    import dataclasses

    from bench.registry import COMPONENTS, DATASETS, METRICS, SYSTEMS

    out = CliRunner().invoke(cli, ["ls", "clipgen"]).output
    lines = {line.split()[0]: line.split(None, 3) for line in out.splitlines()[2:]}
    assert lines["train.preset"][1:3] == ["str", "tiny"] and "one of tiny, small, paper" in lines["train.preset"][3]
    assert lines["candidates"][1:] == ["int", "1", ">= 1; samples per caption, best kept by rerank_clip"]
    assert " ".join(" ".join(lines["top_p"]).split()) == "top_p float | null - >= 0.0 and <= 1.0"
    assert lines["compile"][2] == "false"
    assert out.splitlines()[0].startswith("system clipgen: ") and out.splitlines()[0].endswith("[trains on: train]")

    def fields(cls, prefix=""):  # (dotted name, metadata), nested args dataclasses expanded
        for f in dataclasses.fields(cls):
            tp = f.type if not isinstance(f.type, str) else None
            nested = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            if dataclasses.is_dataclass(nested) or dataclasses.is_dataclass(tp):
                yield from fields(type(nested) if nested is not None else tp, prefix + f.name + ".")
            else:
                yield prefix + f.name, f.metadata

    for registry in (DATASETS, SYSTEMS, METRICS, COMPONENTS):
        for entry in registry.entries():
            result = CliRunner().invoke(cli, ["ls", entry.name])
            assert result.exit_code == 0, result.output
            shown = {line.split()[0]: line for line in result.output.splitlines() if line.startswith("    ")}
            if entry.args is None:
                assert "(no arguments)" in result.output
                continue
            for name, meta in fields(entry.args):
                assert name in shown, (entry.name, name)
                assert meta.get("help", "") in shown[name], (entry.name, name)


def test_describe_args_shows_required_literal_empty_and_nested_factory_defaults():
    from dataclasses import dataclass, field
    from typing import Literal

    from bench.registry import describe_args

    @dataclass(frozen=True)
    class Inner:
        steps: int = 5
        mode: Literal["a", "b"] = "a"

    @dataclass(frozen=True)
    class Outer:
        need: int = field(metadata={"min": 1, "help": "no default"})
        root: str = ""
        train: Inner = field(default_factory=lambda: Inner(steps=9))

    assert describe_args(Outer) == [("need", "int", "(required)", ">= 1; no default"), ("root", "str", '""', ""),
                                     ("train.steps", "int", "9", ""), ("train.mode", "'a' | 'b'", "a", "")]


def test_ls_name_of_a_preset_shows_its_whole_configuration():
    import dataclasses

    from reference.clip import PRESETS as CLIP_PRESETS
    from reference.configs import PRESETS

    out = CliRunner().invoke(cli, ["ls", "small"]).output.splitlines()
    rows = {line.split()[0]: line.split(None, 1)[1] for line in out[1:]}
    assert out[0] == "preset small:"
    small = PRESETS["small"]
    assert rows["gpt.n_layer"] == str(small.gpt.n_layer) and rows["vqgan.codebook_size"] == str(small.vqgan.codebook_size)
    assert len(rows) >= len(dataclasses.fields(small.gpt)) + len(dataclasses.fields(small.vqgan))
    out = CliRunner().invoke(cli, ["ls", "tiny-eval"]).output.splitlines()
    assert out[0] == "CLIP preset tiny-eval:"
    assert any(line.split()[:2] == ["steps", str(CLIP_PRESETS["tiny-eval"].steps)] for line in out)


def test_ls_of_an_unknown_name_is_one_line_and_exit_2():
    result = CliRunner().invoke(cli, ["ls", "nope"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "nothing is called 'nope'" in result.output


def test_bench_reexecs_itself_with_the_process_settings_and_keeps_the_users_own():
    env = {k: v for k, v in os.environ.items() if k not in PROCESS_ENV and k != "BENCH_NO_REEXEC"}
    proc = subprocess.run([sys.executable, "-m", "bench", "info"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for key, value in PROCESS_ENV.items():
        assert f"{key}={value}" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "bench", "info"], capture_output=True, text=True,
                          env={**env, "GOMP_SPINCOUNT": "123"}, timeout=120)
    assert "GOMP_SPINCOUNT=123" in proc.stdout and f"MALLOC_TOP_PAD_={PROCESS_ENV['MALLOC_TOP_PAD_']}" in proc.stdout


TINY = ("suite: t\nversion: 1\ndataset: {name: shapes, resolution: 16, num_captions: 4, train_size: 1, pairs_size: 1}\n"
        "systems: [{name: noise}]\nmetrics: [{name: throughput}]\n")


def _suite(tmp_path, text=TINY):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return str(path)


def test_fresh_refuses_a_folder_that_holds_no_run(tmp_path):
    keep = tmp_path / "thesis"
    keep.mkdir()
    (keep / "thesis.tex").write_text("years of work")
    result = CliRunner().invoke(cli, ["run", _suite(tmp_path), "--out", str(keep), "--fresh", "--quiet"])
    assert result.exit_code == 2 and "not a bench run folder" in result.output
    assert (keep / "thesis.tex").read_text() == "years of work"
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, ["run", _suite(tmp_path), "--out", str(run), "--quiet"]).exit_code == 0
    (run / "stray.txt").write_text("x")
    assert CliRunner().invoke(cli, ["run", _suite(tmp_path), "--out", str(run), "--fresh", "--quiet"]).exit_code == 0
    assert not (run / "stray.txt").exists()  # a run folder starts over
    assert (run / ".bench-run").is_file()
    # what an interrupted run leaves: an empty folder, or its marker and training logs
    for left in ("empty", "interrupted"):
        (tmp_path / left).mkdir()
        if left == "interrupted":
            (tmp_path / left / "build-logs").mkdir()
            (tmp_path / left / ".bench-run").write_text("")
        result = CliRunner().invoke(cli, ["run", _suite(tmp_path), "--out", str(tmp_path / left), "--fresh", "--quiet"])
        assert result.exit_code == 0, result.output
    # names another tool might use prove nothing: a folder with samples/ and results.csv but no marker is kept
    other = tmp_path / "other"
    (other / "samples").mkdir(parents=True)
    (other / "results.csv").write_text("mine")
    result = CliRunner().invoke(cli, ["run", _suite(tmp_path), "--out", str(other), "--fresh", "--quiet"])
    assert result.exit_code == 2 and (other / "results.csv").read_text() == "mine"


def test_fresh_never_deletes_the_folder_it_is_run_from(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / ".bench-run").write_text("")  # even one that looks like a run folder
    (project / "main.py").write_text("code")
    for here in (project, project / "sub"):
        monkeypatch.chdir(here)
        result = CliRunner().invoke(cli, ["run", _suite(tmp_path), "--out", str(project), "--fresh", "--quiet"])
        assert result.exit_code == 2 and "holds the current folder" in result.output
        assert (project / "main.py").read_text() == "code"


def test_an_out_folder_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(cli, ["run", _suite(tmp_path), "--out", str(tmp_path / "afile" / "sub"), "--quiet"])
    assert result.exit_code == 2 and result.output.startswith("error: cannot write the run folder"), result.output
    assert "\n" not in result.output.strip()  # (--out afile itself: click's usage error, exit 2)
    assert (tmp_path / "afile").read_text() == "x"


def test_bad_input_found_while_building_leaves_no_new_folder_and_an_old_one_as_it_was(tmp_path):
    (tmp_path / "empty").mkdir()  # a samples-folder without the captions' images: found once systems are built
    bad = TINY.replace("systems: [{name: noise}]", f"systems: [{{name: samples-folder, args: {{path: {tmp_path / 'empty'}}}}}]")
    out = tmp_path / "new"
    result = CliRunner().invoke(cli, ["run", _suite(tmp_path, bad), "--out", str(out), "--quiet"])
    assert result.exit_code == 2 and "no image for caption id" in result.output and not out.exists()
    old = tmp_path / "old"
    assert CliRunner().invoke(cli, ["run", _suite(tmp_path), "--out", str(old), "--quiet"]).exit_code == 0
    before = (old / "suite.resolved.json").read_bytes()
    result = CliRunner().invoke(cli, ["run", _suite(tmp_path, bad), "--out", str(old), "--quiet"])
    assert result.exit_code == 2 and (old / "suite.resolved.json").read_bytes() == before


def test_flags_that_do_not_combine_with_shard_and_a_stray_world_size_are_one_line_errors(tmp_path, monkeypatch):
    out = tmp_path / "run"
    for flag in (["--fresh"], ["--nproc", "2"]):
        result = CliRunner().invoke(cli, ["run", _suite(tmp_path), "--out", str(out), "--shard", "0/2", *flag])
        assert result.exit_code == 2 and f"{flag[0]} does not combine with --shard" in result.output
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    result = CliRunner().invoke(cli, ["run", _suite(tmp_path), "--out", str(out)])
    assert result.exit_code == 2 and "torchrun" in result.output and result.output.count("\n") == 1
    assert not out.exists()
    monkeypatch.setenv("RANK", "1")  # a real torchrun environment: --nproc would be ignored, so it is refused
    result = CliRunner().invoke(cli, ["run", _suite(tmp_path), "--out", str(out), "--nproc", "2"])
    assert result.exit_code == 2 and result.output == ("error: --nproc does not combine with torchrun: its ranks are "
                                                       "the generation processes (leave --nproc out, or start without "
                                                       "torchrun)\n")
    assert not out.exists()


def test_a_suite_file_named_like_an_option_runs_sharded(tmp_path, monkeypatch):
    """The shards' (and build workers') command lines put the suite path after '--'."""
    (tmp_path / "-dash.yaml").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["run", "--nproc", "2", "--out", "run", "--quiet", "--", "-dash.yaml"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "results.csv").is_file()


def test_an_interrupted_command_exits_with_the_signal_status():
    """Ctrl-C and SIGTERM (bench.cli.Signalled) end with one line and 128 + the signal's number, as a shell reports
    a death by that signal, not click's "Aborted!" and status 1."""
    from bench.cli import Signalled, _BenchGroup

    group = _BenchGroup()

    @group.command()
    def ctrl_c():
        raise KeyboardInterrupt

    @group.command()
    def term():
        raise Signalled(15)

    for name, status, word in (("ctrl-c", 130, "SIGINT"), ("term", 143, "SIGTERM")):
        result = CliRunner().invoke(group, [name])
        assert result.exit_code == status, (name, result.output)
        assert f"interrupted ({word})" in result.output and "Aborted" not in result.output


def test_an_empty_out_is_refused(tmp_path):
    result = CliRunner().invoke(cli, ["run", str(REPO / "suites" / "quickstart.yaml"), "--out", ""])
    assert result.exit_code == 2
    assert "--out ''" in result.output and "Traceback" not in result.output


def test_a_full_disk_after_the_results_are_saved_is_one_line_naming_them(tmp_path, monkeypatch):
    import bench.report

    def no_space(out, *args):
        raise OSError(28, "No space left on device", str(out / "grid.png"))

    monkeypatch.setattr(bench.report, "sample_grid", no_space)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", _suite(tmp_path), "--out", str(out), "--quiet"])
    assert result.exit_code == 2 and (out / "results.csv").is_file()
    assert result.output.splitlines()[-1] == (f"error: the results are in {out}/results.csv, but {out}/grid.png could "
                                              "not be written: No space left on device")
