"""CI gates: `bench compare` passes within tolerance, fails (exit 1) naming the number that moved,
and a deliberately degraded model built from the committed checkpoints turns the gate red."""
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.cli import cli
from bench.gates import compare_run
from bench.results import COLUMNS

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "results" / "baselines" / "ci.csv"
CHECKPOINTS = REPO / "results" / "baselines" / "ci-checkpoints"


def _rows(values: dict[tuple[str, str, str], list[float]]) -> pd.DataFrame:
    rows = []
    for (system, metric, variant), vals in values.items():
        for seed, v in enumerate(vals):
            row = {c: "" for c in COLUMNS}
            row.update(system=system, metric=metric, variant=variant, value=v, seed=seed, source="measured", n=10)
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


TOL = """gates:
  - {metric: attribute-accuracy, variant: seen/all, better: higher, max_move: 0.05}
  - {metric: fd-effnet-lite0, variant: blur=0, better: lower, max_move_pct: 10}
"""


@pytest.fixture
def setup(tmp_path):
    base = _rows({("g", "attribute-accuracy", "seen/all"): [0.80, 0.82], ("g", "fd-effnet-lite0", "blur=0"): [50.0]})
    base.to_csv(tmp_path / "base.csv", index=False)
    (tmp_path / "base.tolerances.yaml").write_text(TOL)
    (tmp_path / "run").mkdir()
    return tmp_path


def _run(tmp_path, acc, fd):
    _rows({("g", "attribute-accuracy", "seen/all"): acc, ("g", "fd-effnet-lite0", "blur=0"): fd}).to_csv(
        tmp_path / "run" / "results.csv", index=False)
    return CliRunner().invoke(cli, ["compare", str(tmp_path / "run"), str(tmp_path / "base.csv")])


def test_within_tolerance_passes(setup):
    result = _run(setup, [0.78, 0.78], [54.0])  # mean 0.78 vs 0.81: -0.03; FD +8%
    assert result.exit_code == 0, result.output
    assert "2/2 gated numbers within tolerance" in result.output


def test_regression_fails_and_names_the_number(setup):
    result = _run(setup, [0.70, 0.72], [49.0])
    assert result.exit_code == 1
    fails = [l for l in result.output.splitlines() if l.startswith("FAIL")]
    assert len(fails) == 1 and "attribute-accuracy/seen/all" in fails[0] and "0.71 vs baseline 0.81" in fails[0]
    result = _run(setup, [0.81, 0.81], [56.0])  # FD +12% > 10%
    assert result.exit_code == 1 and "fd-effnet-lite0/blur=0" in result.output


@pytest.mark.parametrize("broken", [float("nan"), float("inf")])
def test_a_non_finite_gated_number_on_any_seed_fails(setup, broken):
    result = _run(setup, [broken, 0.81], [50.0])  # a metric that broke on one seed is no pass (nor an average)
    assert result.exit_code == 1 and "FAIL  g  attribute-accuracy/seen/all: nan" in result.output, result.output


def test_a_run_of_other_seeds_is_bad_input_not_a_pass(setup):
    result = _run(setup, [0.81], [50.0])  # one seed of the baseline's two
    assert result.exit_code == 2
    assert "the run measured seed=[0] but the baseline seed=[0, 1]" in result.output, result.output


def _compare(tmp_path, base: dict, run: dict, tolerances: str):
    _rows(base).to_csv(tmp_path / "base.csv", index=False)
    _rows(run).to_csv(tmp_path / "run" / "results.csv", index=False)
    (tmp_path / "base.tolerances.yaml").write_text(tolerances)
    return CliRunner().invoke(cli, ["compare", str(tmp_path / "run"), str(tmp_path / "base.csv")])


@pytest.mark.parametrize("run, ok", [(-10.5, True), (-11.5, False)])
def test_a_percent_allowance_of_a_negative_baseline_is_of_its_size(setup, run, ok):
    key = ("g", "log-likelihood", "")
    result = _compare(setup, {key: [-10.0]}, {key: [run]},
                      "gates: [{metric: log-likelihood, better: higher, max_move_pct: 10}]\n")
    assert result.exit_code == (0 if ok else 1), result.output
    assert "allowed 1 the bad way" in result.output  # 10% of |-10|


@pytest.mark.parametrize("where", ["base.csv", "run/results.csv"])
def test_reported_rows_are_not_gated(setup, where):
    before = _run(setup, [0.78, 0.78], [54.0]).output
    path = setup / where
    df = pd.read_csv(path)
    reported = _rows({("g", "attribute-accuracy", "seen/all"): [0.01], ("g", "fd-effnet-lite0", "blur=0"): [999.0]})
    reported[["source", "seed", "n"]] = ["reported", -1, -1]  # a literature number under the same alias
    pd.concat([df, reported]).to_csv(path, index=False)
    result = CliRunner().invoke(cli, ["compare", str(setup / "run"), str(setup / "base.csv")])
    assert result.exit_code == 0 and result.output == before, result.output


def test_a_gate_for_one_system_leaves_the_others_alone(setup):
    acc = ("attribute-accuracy", "seen/all")
    result = _compare(setup, {("g", *acc): [0.80], ("h", *acc): [0.80]}, {("g", *acc): [0.80], ("h", *acc): [0.10]},
                      "gates: [{metric: attribute-accuracy, variant: seen/all, system: g, better: higher, "
                      "max_move: 0.05}]\n")
    assert result.exit_code == 0, result.output
    assert "1/1 gated numbers within tolerance" in result.output and "  h  " not in result.output


@pytest.mark.parametrize("alias", ["NA", "null", "nan", "42"])
def test_an_alias_that_reads_like_a_missing_value_or_a_number_is_compared(setup, alias):
    for name in ("base.csv", "run/results.csv"):
        df = _rows({(alias, "attribute-accuracy", "seen/all"): [0.80, 0.82], (alias, "fd-effnet-lite0", "blur=0"): [50.0]})
        if name != "base.csv":
            df["value"] = [0.5, 0.5, 50.0]  # accuracy regressed
        df.to_csv(setup / name, index=False)
    result = CliRunner().invoke(cli, ["compare", str(setup / "run"), str(setup / "base.csv")])
    assert result.exit_code == 1, result.output
    assert f"FAIL  {alias}  attribute-accuracy/seen/all: 0.5 vs baseline 0.81" in result.output, result.output


@pytest.mark.parametrize("args, name", [(["", "BASE"], "RUN_DIR"), (["RUN", ""], "BASELINE_CSV"),
                                        (["RUN", "BASE", "--tolerances", ""], "--tolerances")])
def test_an_empty_path_is_refused_not_read_as_the_current_folder(setup, args, name):
    args = [{"RUN": str(setup / "run"), "BASE": str(setup / "base.csv")}.get(a, a) for a in args]
    result = CliRunner().invoke(cli, ["compare", *args])
    assert result.exit_code == 2 and result.output.startswith(f"error: {name} '': name a"), result.output


def test_a_gated_number_missing_from_the_run_fails(setup):
    _rows({("g", "attribute-accuracy", "seen/all"): [0.81, 0.81]}).to_csv(setup / "run" / "results.csv", index=False)
    ok, table = compare_run(setup / "run", setup / "base.csv")
    assert not ok and "missing from the run" in table


def test_an_optional_gate_may_be_missing_but_is_gated_when_measured(setup):
    """optional: true (bf16 training, measured only where bf16 is native): absent passes and says so; present, it
    is held to its tolerance like any other."""
    (setup / "base.tolerances.yaml").write_text(TOL.replace("max_move_pct: 10}", "max_move_pct: 10, optional: true}"))
    _rows({("g", "attribute-accuracy", "seen/all"): [0.81, 0.81]}).to_csv(setup / "run" / "results.csv", index=False)
    ok, table = compare_run(setup / "run", setup / "base.csv")
    assert ok and table.startswith("1/1 gated numbers within tolerance")
    assert "skip  g  fd-effnet-lite0/blur=0: not measured in this run (optional gate; baseline 50)" in table
    assert _run(setup, [0.81, 0.81], [54.0]).exit_code == 0
    assert _run(setup, [0.81, 0.81], [56.0]).exit_code == 1  # +12% > 10%
    (setup / "base.tolerances.yaml").write_text(TOL.replace("max_move_pct: 10}", "max_move_pct: 10, optional: 1}"))
    result = _run(setup, [0.81, 0.81], [50.0])
    assert result.exit_code == 2 and "optional must be true or false, got 1" in result.output


@pytest.mark.parametrize("breakage", ["no-run", "bad-tolerances", "not-a-csv", "gate-matches-nothing", "other-suite",
                                      "fewer-captions"])
def test_bad_input_exits_2(setup, breakage):
    run_dir = setup / "run"
    _rows({("g", "attribute-accuracy", "seen/all"): [0.81, 0.81], ("g", "fd-effnet-lite0", "blur=0"): [50.0]}).to_csv(
        run_dir / "results.csv", index=False)
    if breakage == "no-run":
        run_dir = setup / "nowhere"
    elif breakage == "bad-tolerances":
        (setup / "base.tolerances.yaml").write_text("gates: [{metric: x}]\n")
    elif breakage == "not-a-csv":
        (run_dir / "results.csv").write_text("just,some\n1,2\n")
    elif breakage in ("other-suite", "fewer-captions"):  # no regression: another suite, or a --limit run
        df = pd.read_csv(run_dir / "results.csv")
        df[{"other-suite": "suite", "fewer-captions": "n"}[breakage]] = {"other-suite": "quickstart", "fewer-captions": 4}[breakage]
        df.to_csv(run_dir / "results.csv", index=False)
    else:
        (setup / "base.tolerances.yaml").write_text("gates: [{metric: kid, better: lower, max_move: 1}]\n")
    result = CliRunner().invoke(cli, ["compare", str(run_dir), str(setup / "base.csv")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith("error: ") and "\n" not in result.output.strip()


def _ci_eval(tmp_path, gpt_path=None, out="run"):
    from bench.runner import Runner
    from bench.suite import load_suite

    overrides = [f"systems.clipgen-lf.args.path={gpt_path}"] if gpt_path else []
    suite = load_suite(REPO / "suites" / "ci-eval.yaml", overrides)
    Runner(suite, out_dir=tmp_path / out, progress=False).run()
    return tmp_path / out


@pytest.mark.slow
def test_ci_eval_is_deterministic_and_a_degraded_gpt_fails_the_gate(tmp_path):
    """Bitwise determinism on one machine, and the gate catches a GPT that ignores its condition."""
    import torch
    from safetensors.torch import load_file, save_file

    first = pd.read_csv(_ci_eval(tmp_path, out="a") / "results.csv")
    second = pd.read_csv(_ci_eval(tmp_path, out="b") / "results.csv")
    keep = first["metric"] != "throughput"
    assert list(first[keep]["value"]) == list(second[second["metric"] != "throughput"]["value"])

    degraded = tmp_path / "gpt-deaf"
    shutil.copytree(CHECKPOINTS / "gpt", degraded)
    weights = load_file(str(degraded / "model.safetensors"))
    weights["cond_proj.weight"] = torch.zeros_like(weights["cond_proj.weight"])  # conditioned on nothing
    save_file(weights, str(degraded / "model.safetensors"))
    run = _ci_eval(tmp_path, gpt_path=degraded, out="deaf")
    ok, table = compare_run(run, BASELINE)
    assert not ok
    fails = [l for l in table.splitlines() if l.startswith("FAIL")]
    assert any("clipgen-lf  attribute-accuracy/seen/all" in l for l in fails), table


def _one_line_error(result) -> str:
    assert result.exit_code == 2, (result.output, result.exception)
    out = result.output.strip()
    assert out.startswith("error: ") and "\n" not in out, out
    return out


@pytest.mark.parametrize("bad", ["max_move: abc", "max_move: -1", "max_move: .nan", "max_move: true",
                                 "max_move_pct: -5", "max_move_pct: [5]"])
def test_tolerance_must_be_a_number_at_least_zero(setup, bad):
    _rows({("g", "attribute-accuracy", "seen/all"): [0.81], ("g", "fd-effnet-lite0", "blur=0"): [50.0]}).to_csv(
        setup / "run" / "results.csv", index=False)
    (setup / "t.yaml").write_text(f"gates:\n  - {{metric: kid, better: lower, {bad}}}\n")
    result = CliRunner().invoke(cli, ["compare", str(setup / "run"), str(setup / "base.csv"),
                                      "--tolerances", str(setup / "t.yaml")])
    out = _one_line_error(result)
    assert "t.yaml: gates[0]: " + bad.split(":")[0] in out and "number >= 0" in out


def test_zero_tolerance_is_allowed(setup):
    (setup / "base.tolerances.yaml").write_text(
        "gates:\n  - {metric: attribute-accuracy, variant: seen/all, better: higher, max_move: 0}\n")
    assert _run(setup, [0.81, 0.81], [50.0]).exit_code == 0
    assert _run(setup, [0.80, 0.81], [50.0]).exit_code == 1


def test_invalid_tolerance_yaml_is_one_line_naming_file_and_place(setup):
    (setup / "base.tolerances.yaml").write_text("gates:\n  - {metric: kid, better: lower\n  - x\n")
    out = _one_line_error(_run(setup, [0.81], [50.0]))
    assert out.endswith("base.tolerances.yaml: not valid YAML: while parsing a flow mapping (line 2, column 5): "
                        "expected ',' or '}', but got '<stream end>' (line 4, column 1)")


def test_a_binary_or_oddly_tagged_tolerance_file_is_one_line(setup):
    path = setup / "base.tolerances.yaml"
    path.write_bytes(b"\xff\xfe\x00gates")
    assert _one_line_error(_run(setup, [0.81], [50.0])).endswith("base.tolerances.yaml: not a tolerance file (not UTF-8 text)")
    path.write_text("gates:\n  - {metric: kid, better: lower, max_move: !!int abc}\n")
    assert "base.tolerances.yaml: not valid YAML: invalid literal for int()" in _one_line_error(_run(setup, [0.81], [50.0]))


def test_non_numeric_value_in_a_baseline_is_one_line(setup):
    base = pd.read_csv(setup / "base.csv")
    base["value"] = base["value"].astype(object)
    base.loc[1, "value"] = "0.8O"
    base.to_csv(setup / "base.csv", index=False)
    out = _one_line_error(_run(setup, [0.81], [50.0]))
    assert "base.csv: not a results table: value in data row 2 is '0.8O', not a number" in out


def _report(run_dir, monkeypatch, capsys) -> tuple[int, str]:
    """`bench report RUN_DIR` through bench.cli.main, which turns a UserError into `error: ...` and status 2."""
    from bench.cli import main

    monkeypatch.setattr("sys.argv", ["bench", "report", str(run_dir)])
    with pytest.raises(SystemExit) as exit_:
        main()
    out = capsys.readouterr()
    return exit_.value.code, out.out + out.err


@pytest.mark.parametrize("content, message", [
    ("", "not a results CSV: the file is empty"),
    ("just,some\n1,2\n", "not a results table: missing columns ['citation', 'extra', 'metric'"),
    (None, "not a results table: value in data row 1 is 'abc', not a number"),
    (None, "not a results table: n in data row 1 is blank, not a whole number"),
    ("n=inf", "not a results table: n in data row 1 is inf, not a whole number"),
    ("extra={not json", "not a results table: extra in data row 1 is '{not json', not a JSON object"),
    ("extra=[1, 2]", "not a results table: extra in data row 1 is '[1, 2]', not a JSON object"),
])
def test_report_on_a_bad_results_csv_is_one_line(setup, monkeypatch, capsys, content, message):
    path = setup / "run" / "results.csv"
    if content is None or "=" in content:
        df = _rows({("g", "attribute-accuracy", "seen/all"): [0.81]})
        column, _, edit = (content or ("value=abc" if "value" in message else "n=")).partition("=")
        df[column] = float(edit) if edit == "inf" else edit or None
        df.to_csv(path, index=False)
    else:
        path.write_text(content)
    code, out = _report(setup / "run", monkeypatch, capsys)
    assert code == 2 and out.strip().count("\n") == 0, out
    assert out.startswith(f"error: {path}: {message}"), out
    assert sorted(p.name for p in (setup / "run").iterdir()) == ["results.csv"]  # no results.md / .tex written


def test_report_reads_the_csv_when_a_parquet_is_there_too(setup, monkeypatch, capsys):
    from bench.results import read_frame, write_frame

    run = setup / "run"
    write_frame(_rows({("g", "attribute-accuracy", "seen/all"): [0.81]}), run)
    edited = pd.read_csv(run / "results.csv")
    edited["value"] = 0.25  # an edit to the CSV counts
    edited.to_csv(run / "results.csv", index=False)
    assert list(read_frame(run)["value"]) == [0.25]
    code, out = _report(run, monkeypatch, capsys)
    assert code == 0 and "| 0.250 " in out and "0.81" not in out, out
    (run / "results.csv").unlink()  # only the parquet: that one
    assert list(read_frame(run)["value"]) == [0.81]


def test_report_on_a_run_folder_it_cannot_write_still_prints_the_table(setup, monkeypatch, capsys):
    import errno

    import bench.cache

    _rows({("g", "attribute-accuracy", "seen/all"): [0.81]}).to_csv(setup / "run" / "results.csv", index=False)

    def read_only(path, text):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(bench.cache, "atomic_write_text", read_only)
    code, out = _report(setup / "run", monkeypatch, capsys)
    assert code == 2 and "| g       | 0.810" in out  # the table came out
    assert out.rstrip().splitlines()[-1] == f"error: printed, but cannot write results.md / results.tex into {setup / 'run'}: Read-only file system"


def test_report_with_a_damaged_per_caption_file_is_one_line(setup, monkeypatch, capsys):
    run = setup / "run"
    _rows({("g", "attribute-accuracy", "seen/all"): [0.81]}).to_csv(run / "results.csv", index=False)
    (run / "per_caption" / "g").mkdir(parents=True)
    (run / "per_caption" / "g" / "seed0.json").write_text('{"3": {"clip-score": "high"}}')
    code, out = _report(run, monkeypatch, capsys)
    assert code == 2 and out.strip().count("\n") == 0 and "seed0.json: not a per-caption file bench wrote" in out, out


@pytest.mark.parametrize("alias", ["NA", "42"])
def test_report_shows_an_alias_that_reads_like_a_missing_value_or_a_number(setup, monkeypatch, capsys, alias):
    _rows({(alias, "attribute-accuracy", "seen/all"): [0.81]}).to_csv(setup / "run" / "results.csv", index=False)
    code, out = _report(setup / "run", monkeypatch, capsys)
    assert code == 0 and f"| {alias} " in out, out


def test_report_with_a_folder_where_a_per_caption_file_belongs_is_one_line(setup, monkeypatch, capsys):
    run = setup / "run"
    _rows({("g", "attribute-accuracy", "seen/all"): [0.81]}).to_csv(run / "results.csv", index=False)
    (run / "per_caption" / "g" / "seed0.json").mkdir(parents=True)
    code, out = _report(run, monkeypatch, capsys)
    assert code == 2 and out.strip().count("\n") == 0 and "seed0.json: not a per-caption file" in out, out


def test_paper_table_leaves_out_an_fd_variant_it_has_no_column_for(setup):
    from bench.paper import paper_table

    df = _rows({("g", "fd-effnet-lite0", "blur=0"): [50.0], ("g", "fd-effnet-lite0", "blur=x"): [51.0]})
    table = paper_table(df, {})
    assert "50" in table and "51" not in table
