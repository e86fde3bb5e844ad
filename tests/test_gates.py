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
    result = _run(setup, [0.81], [56.0])  # FD +12% > 10%
    assert result.exit_code == 1 and "fd-effnet-lite0/blur=0" in result.output


def test_a_gated_number_missing_from_the_run_fails(setup):
    _rows({("g", "attribute-accuracy", "seen/all"): [0.81]}).to_csv(setup / "run" / "results.csv", index=False)
    ok, table = compare_run(setup / "run", setup / "base.csv")
    assert not ok and "missing from the run" in table


@pytest.mark.parametrize("breakage", ["no-run", "bad-tolerances", "not-a-csv", "gate-matches-nothing"])
def test_bad_input_exits_2(setup, breakage):
    run_dir = setup / "run"
    _rows({("g", "attribute-accuracy", "seen/all"): [0.81], ("g", "fd-effnet-lite0", "blur=0"): [50.0]}).to_csv(
        run_dir / "results.csv", index=False)
    if breakage == "no-run":
        run_dir = setup / "nowhere"
    elif breakage == "bad-tolerances":
        (setup / "base.tolerances.yaml").write_text("gates: [{metric: x}]\n")
    elif breakage == "not-a-csv":
        (run_dir / "results.csv").write_text("just,some\n1,2\n")
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
