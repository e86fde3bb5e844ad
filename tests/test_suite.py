"""The suite loader: good suites load, each kind of mistake is one line naming file, line and key."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli import cli
from bench.suite import SuiteError, load_suite

BAD = Path(__file__).parent / "suites_bad"
SUITES = Path(__file__).parents[1] / "suites"
LINE = re.compile(r"^error: (?P<file>[^\n:]+):(?P<line>\d+): (?P<key>\S+): (?P<msg>.+)$")


def _expectation(path: Path) -> tuple[int, str]:
    first = path.read_bytes().decode("utf-8", "replace").splitlines()[:1]
    if not first:  # the empty file
        return 1, "<file>"
    m = re.match(r"# expect: (\d+) (\S+)", first[0])
    assert m, f"{path.name} lacks its '# expect: LINE KEY' header"
    return int(m.group(1)), m.group(2)


BAD_FILES = sorted(p for p in BAD.glob("*.yaml") if p.name != "cycle_b.yaml")


def test_there_are_at_least_15_distinct_malformed_suites():
    assert len(BAD_FILES) >= 15


@pytest.mark.parametrize("path", BAD_FILES, ids=lambda p: p.stem)
def test_malformed_suite_gives_one_line_with_file_line_key(path):
    line, key = _expectation(path)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    out = result.output.strip()
    assert "\n" not in out and "Traceback" not in out, out
    m = LINE.match(out)
    assert m, out
    assert m.group("key").rstrip(":") == key, out
    assert int(m.group("line")) == line, out
    assert m.group("file").endswith(".yaml"), out


def test_unknown_name_lists_the_allowed_ones():
    with pytest.raises(SuiteError, match=r"allowed: .*noise.*real-images"):
        load_suite(BAD / "unknown_system.yaml")


def test_validate_command_has_no_traceback_end_to_end():
    proc = subprocess.run([sys.executable, "-m", "bench", "validate", str(BAD / "negative_batch.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "generation.batch_size: must be >= 1, got -4" in proc.stderr


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_include_merges_and_the_including_file_wins(tmp_path):
    _write(tmp_path, "base.yaml", "suite: base\nversion: 1\ndataset: {name: shapes, resolution: 32}\n"
                                  "generation: {batch_size: 8, seeds: [0, 1]}\nsystems: [{name: noise}]\n")
    child = _write(tmp_path, "child.yaml", "include: base.yaml\nsuite: child\ngeneration: {batch_size: 16}\n")
    s = load_suite(child)
    assert s.suite == "child" and s.generation.batch_size == 16 and s.generation.seeds == (0, 1)
    assert s.dataset.args.resolution == 32


def test_error_in_included_file_names_that_file(tmp_path):
    _write(tmp_path, "base.yaml", "suite: base\nversion: 1\ndataset: {name: shapes}\ngeneration: {batch_size: 0}\n")
    child = _write(tmp_path, "child.yaml", "include: base.yaml\nsystems: [{name: noise}]\n")
    with pytest.raises(SuiteError) as err:
        load_suite(child)
    assert str(err.value).startswith(f"{tmp_path / 'base.yaml'}:4: generation.batch_size:")


def test_set_overrides_with_type_checking(tmp_path):
    p = _write(tmp_path, "s.yaml", "suite: s\nversion: 1\ndataset: {name: shapes}\nsystems: [{name: noise, alias: n}]\n")
    s = load_suite(p, ["dataset.resolution=64", "generation.seeds=[3, 4]"])
    assert s.dataset.args.resolution == 64 and s.generation.seeds == (3, 4)
    with pytest.raises(SuiteError, match=r"^--set dataset.resolution=big:1: dataset.resolution: expected an integer"):
        load_suite(p, ["dataset.resolution=big"])
    with pytest.raises(SuiteError, match=r"^--set nosuch.key=1:1: nosuch: unknown key; allowed: suite, version"):
        load_suite(p, ["nosuch.key=1"])
    with pytest.raises(SuiteError, match=r"no list entry 'zz'.*allowed: an index 0..0 or one of n"):
        load_suite(p, ["systems.zz.alias=x"])


def test_bad_set_path_via_cli_exits_2(tmp_path):
    p = _write(tmp_path, "s.yaml", "suite: s\nversion: 1\ndataset: {name: shapes}\nsystems: [{name: noise}]\n")
    result = CliRunner().invoke(cli, ["validate", str(p), "--set", "generation.nope.deeper=1"])
    assert result.exit_code == 2 and "generation.nope: unknown argument of generation; allowed: batch_size" in result.output


def test_committed_suites_validate():
    paths = sorted(SUITES.glob("*.yaml"))
    assert paths
    result = CliRunner().invoke(cli, ["validate", *map(str, paths)])
    assert result.exit_code == 0, result.output


def test_relative_paths_are_taken_from_the_suite_folder(tmp_path, monkeypatch):
    sub = tmp_path / "suites"
    sub.mkdir()
    p = _write(sub, "s.yaml", "suite: s\nversion: 1\ndataset: {name: shapes}\n"
                              "components:\n  vqgan: {kind: vqgan, path: ../ckpt/vqgan}\n"
                              "  clip: {kind: clip, path: 'ViT-B-32@weights/b32.pt'}\n"
                              "  judge: {kind: attribute-judge, path: 'ckpt@v2/judge'}\n"
                              "systems: [{name: clipgen, args: {path: ../ckpt/gpt}}]\n")
    monkeypatch.setenv("CKPT", str(tmp_path / "elsewhere"))
    s = load_suite(p, ["components.vqgan.path=$CKPT/v"])
    assert s.components["vqgan"].path == str(tmp_path / "elsewhere" / "v")
    assert s.components["clip"].path == "ViT-B-32@" + str(sub / "weights" / "b32.pt")
    assert s.system("clipgen").args.path == str(tmp_path / "ckpt" / "gpt")
    assert s.components["judge"].path == str(sub / "ckpt@v2" / "judge")  # '@' is MODEL@FILE for a clip only


def test_an_at_sign_in_a_checkpoint_folder_is_part_of_its_path(tmp_path):
    from bench.runner import check_resources

    p = _write(tmp_path, "s.yaml", "suite: s\nversion: 1\ndataset: {name: shapes}\n"
                                   "components:\n  vqgan: {kind: vqgan, path: /nowhere/ckpt@v2/vqgan}\n"
                                   "  clip: {kind: clip, path: 'ViT-B-32@/nowhere/b32.pt'}\n"
                                   "systems: [{name: vqgan-recon}]\n")
    missing = check_resources(load_suite(p))
    assert any("/nowhere/ckpt@v2/vqgan does not exist" in line for line in missing), missing
    assert any("/nowhere/b32.pt" in line and "ViT-B-32@" not in line.split("/nowhere")[1] for line in missing), missing


def test_train_source_inherits_resolution_and_resolves_its_root_from_the_suite_folder(tmp_path):
    (tmp_path / "s.yaml").write_text("suite: t\nversion: 1\n"
                                     "dataset: {name: shapes, resolution: 16, train_source: {name: imagefolder, root: imgs}}\n"
                                     "systems: [{name: noise}]\n")
    suite = load_suite(tmp_path / "s.yaml")
    source = suite.dataset.train_source
    assert suite.dataset.name == "shapes" and source.name == "imagefolder"
    assert source.args.resolution == 16 and source.args.root == str((tmp_path / "imgs").resolve())
    assert load_suite(SUITES / "quickstart.yaml").dataset.train_source is None


@pytest.mark.parametrize("seeds", ["[]", "[0, 0]", "[2, 1, 2]"])
def test_generation_seeds_must_be_one_or_more_distinct(tmp_path, seeds):
    p = _write(tmp_path, "s.yaml", f"suite: s\nversion: 1\ndataset: {{name: shapes}}\n"
                                   f"generation:\n  seeds: {seeds}\nsystems: [{{name: noise}}]\n")
    with pytest.raises(SuiteError, match=rf"^{re.escape(str(p))}:5: generation.seeds: expected one or more distinct "
                                         rf"seeds, e.g. \[0, 1, 2\], got {re.escape(seeds)}$"):
        load_suite(p)
    assert load_suite(p, ["generation.seeds=[2, 0]"]).generation.seeds == (2, 0)
    with pytest.raises(SuiteError, match=r"^--set generation.seeds=\[\]:1: generation.seeds: expected one or more"):
        load_suite(SUITES / "quickstart.yaml", ["generation.seeds=[]"])


def test_system_seeds_empty_or_repeated_are_rejected(tmp_path):
    p = _write(tmp_path, "s.yaml", "suite: s\nversion: 1\ndataset: {name: shapes}\ngeneration: {seeds: [0, 1]}\n"
                                   "systems: [{name: noise, seeds: [1, 1]}]\n")
    with pytest.raises(SuiteError, match=r":5: systems.0.seeds: expected one or more distinct seeds out of "
                                         r"generation.seeds \[0, 1\], got \[1, 1\]$"):
        load_suite(p)
    with pytest.raises(SuiteError, match=r"systems.0.seeds: .*got \[\]$"):
        load_suite(p, ["systems.0.seeds=[]"])


@pytest.mark.parametrize("assignment, key, bad", [("generation.seeds=[-1]", "generation.seeds.0", -1),
                                                  ("metrics.0.args.blur=[-1]", "metrics.0.args.blur.0", -1),
                                                  ("metrics.fd.args.blur=[0, -2]", "metrics.0.args.blur.1", -2)])
def test_an_error_in_a_set_value_names_the_override_not_the_replaced_file_line(assignment, key, bad):
    # quickstart.yaml writes both lists, so its lines 8 and 22 know the replaced elements
    result = CliRunner().invoke(cli, ["validate", str(SUITES / "quickstart.yaml"), "--set", assignment])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: --set {assignment}:1: {key}: must be >= 0, got {bad}"


def test_set_keeps_the_file_lines_of_what_it_did_not_replace(tmp_path):
    p = _write(tmp_path, "s.yaml", "suite: s\nversion: 1\ndataset: {name: shapes}\n"
                                   "generation:\n  seeds: [0, -1]\nsystems: [{name: noise}]\n")
    with pytest.raises(SuiteError, match=rf"^{re.escape(str(p))}:5: generation.seeds.1: must be >= 0"):
        load_suite(p, ["generation.batch_size=4"])


def test_reported_accepts_every_fd_and_kid_row_name_the_metrics_emit(tmp_path):
    from bench.features import FD_METRIC_NAME, OTHER_INCEPTION_NAME
    from bench.metrics.kid import KID_METRIC_NAME
    from bench.suite import METRIC_NAMES_REPORTABLE

    emitted = sorted({*FD_METRIC_NAME.values(), *KID_METRIC_NAME.values(), *OTHER_INCEPTION_NAME.values()})
    assert set(emitted) <= set(METRIC_NAMES_REPORTABLE)
    values = ", ".join(f"{name}/blur=0: {i}" for i, name in enumerate(emitted))
    p = _write(tmp_path, "s.yaml", "suite: s\nversion: 1\ndataset: {name: shapes}\nsystems: [{name: noise}]\n"
                                   f"reported: [{{system: published, citation: x 2021, values: {{{values}}}}}]\n")
    row = load_suite(p).reported[0]
    assert sorted(v.metric for v in row.values) == emitted and {v.variant for v in row.values} == {"blur=0"}


def test_seeds_and_process_counts_have_upper_bounds(tmp_path):
    p = _write(tmp_path, "s.yaml", "suite: s\nversion: 1\ndataset: {name: shapes}\nsystems: [{name: noise}]\n")
    for override, message in (("generation.seeds=[99999999999999999999]", "must be <= 9223372036854775807"),
                              ("generation.processes=500", "must be <= 64")):
        with pytest.raises(SuiteError, match=message):
            load_suite(p, [override])
    result = CliRunner().invoke(cli, ["run", str(p), "--nproc", "1000"])
    assert result.exit_code == 2 and "at most 64 generation processes" in result.output


def test_yaml_merge_keys_work_in_suites(tmp_path):
    p = _write(tmp_path, "s.yaml", "suite: s\nversion: 1\ndataset: {name: shapes}\n"
                                   "generation: {<<: {batch_size: 4, seeds: [1]}, seeds: [0]}\nsystems: [{name: noise}]\n")
    generation = load_suite(p).generation
    assert generation.batch_size == 4 and generation.seeds == (0,)  # the mapping's own key wins over the merged


def test_a_broken_list_in_set_says_what_is_wrong_with_it(tmp_path):
    p = _write(tmp_path, "s.yaml", "suite: s\nversion: 1\ndataset: {name: shapes}\nsystems: [{name: noise}]\n")
    with pytest.raises(SuiteError, match=r"generation.seeds: '\[0,1' is not a valid YAML list or mapping: expected"):
        load_suite(p, ["generation.seeds=[0,1"])


def test_a_second_yaml_document_is_named_as_such():
    with pytest.raises(SuiteError, match=r"two_documents.yaml:5: <yaml>: .*a second document starts here \(---\)"):
        load_suite(BAD / "two_documents.yaml")
    with pytest.raises(SuiteError, match=r"systems: expected a list of systems, got a mapping"):
        load_suite(BAD / "systems_as_mapping.yaml")
