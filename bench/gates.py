"""CI gates: compare a run's numbers with a committed baseline under per-number tolerances.

Tolerance file (YAML, default `<baseline>.tolerances.yaml` beside the baseline CSV):

    gates:
      - {metric: attribute-accuracy, variant: seen/all, better: higher, max_move: 0.05}
      - {metric: fd-effnet-lite0, variant: blur=0, better: lower, max_move: 5.0}
      - {metric: speed-ratio, variant: kv-cache, better: higher, max_move_pct: 30}

A gate applies to every system that has the number in the baseline (or only to
`system:` when given). The compared value is the mean over seeds. A number
moving the bad way by more than `max_move` (absolute) or `max_move_pct`
(percent of the baseline) fails; a gated number missing from the run fails too, unless the gate says
`optional: true` (a number some machines do not measure, e.g. bf16 training where bf16 is only emulated).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bench.api import UserError
from bench.results import read_results_csv
from reference.errors import first_line, refuse_blank_path


@dataclass(frozen=True)
class Gate:
    metric: str
    variant: str
    better: str  # "higher" | "lower"
    max_move: float | None
    max_move_pct: float | None
    system: str | None
    optional: bool = False  # the run may leave the number out; when it has it, it is gated as any other


def load_gates(path: Path) -> list[Gate]:
    if not path.exists():
        raise UserError(f"{path}: tolerance file not found (give --tolerances or put it beside the baseline)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {_yaml_problem(err)}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a tolerance file (not UTF-8 text)") from None
    except (ValueError, TypeError, AttributeError) as err:  # a tag the safe loader cannot build (!!int abc)
        raise UserError(f"{path}: not valid YAML: {first_line(err)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("gates"), list) or not data["gates"]:
        raise UserError(f"{path}: expected a mapping with a non-empty list under gates:")
    gates = []
    for i, g in enumerate(data["gates"]):
        if not isinstance(g, dict) or "metric" not in g or g.get("better") not in ("higher", "lower"):
            raise UserError(f"{path}: gates[{i}]: needs metric: and better: higher|lower")
        if (g.get("max_move") is None) == (g.get("max_move_pct") is None):
            raise UserError(f"{path}: gates[{i}]: give exactly one of max_move or max_move_pct")
        unknown = set(g) - {"metric", "variant", "better", "max_move", "max_move_pct", "system", "optional"}
        if unknown:
            raise UserError(f"{path}: gates[{i}]: unknown keys {sorted(unknown)}")
        if not isinstance(g.get("optional", False), bool):
            raise UserError(f"{path}: gates[{i}]: optional must be true or false, got {g['optional']!r}")
        moves = {}
        for key in ("max_move", "max_move_pct"):
            v = g.get(key)
            if v is None:
                moves[key] = None
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise UserError(f"{path}: gates[{i}]: {key} must be a number >= 0, got {v!r}")
            else:
                moves[key] = float(v)
        gates.append(Gate(str(g["metric"]), str(g.get("variant", "") or ""), g["better"], moves["max_move"],
                          moves["max_move_pct"], g.get("system"), g.get("optional", False)))
    return gates


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (PyYAML's own text spans several lines)."""
    def where(mark) -> str:
        return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""

    problem = getattr(err, "problem", None)
    if problem is None:
        return first_line(err)
    context = getattr(err, "context", None)
    lead = f"{context}{where(getattr(err, 'context_mark', None))}: " if context else ""
    return lead + problem + where(getattr(err, "problem_mark", None))


def _measured(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["source"] == "measured"]  # text columns are text already (bench.results._check_frame)


def _means(df: pd.DataFrame) -> dict[tuple[str, str, str], float]:
    """The mean over seeds of each (system, metric, variant); NaN when any seed's value is not finite (blank,
    NaN, inf), so the gate fails instead of averaging over the seeds that have a number."""
    means = df.groupby(["system", "metric", "variant"])["value"].agg(
        lambda v: v.mean() if np.isfinite(v.to_numpy(dtype=float)).all() else math.nan)
    return {k: float(v) for k, v in means.items()}


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    """The columns a gate needs, value numeric (bench.results.read_results_csv: UserError otherwise)."""
    return read_results_csv(path, what, ("suite", "system", "metric", "variant", "value", "n", "seed", "source"))


def _check_comparable(run: pd.DataFrame, base: pd.DataFrame, gated: list, run_dir: Path, baseline_csv: Path) -> None:
    """A run of another suite, or of the same suite on fewer captions (--limit, --set), is no regression: bad input.
    run, base: measured rows; gated: the (system, metric, variant) keys the gates check."""
    suites = [sorted(set(df["suite"])) for df in (run, base)]
    if suites[0] != suites[1]:
        raise UserError(f"{run_dir} is a run of suite {', '.join(suites[0]) or '?'} but {baseline_csv} holds "
                        f"{', '.join(suites[1]) or '?'}: compare a run of the baseline's suite")
    for col, what in (("n", "a --limit or --set run?"), ("seed", "other generation.seeds?")):
        values = [df.groupby(["system", "metric", "variant"])[col].apply(lambda v: sorted(set(v))) for df in (run, base)]
        for key in gated:
            if key in values[0] and values[0][key] != values[1][key]:
                raise UserError(f"{key[0]} {key[1]}/{key[2]}: the run measured {col}={values[0][key]} but the "
                                f"baseline {col}={values[1][key]} ({what}): compare runs made with the same settings")


def compare_run(run_dir: str | Path, baseline_csv: str | Path, tolerances: str | Path | None = None) -> tuple[bool, str]:
    for name, given in (("RUN_DIR", run_dir), ("BASELINE_CSV", baseline_csv), ("--tolerances", tolerances)):
        refuse_blank_path(name, given, "run folder" if name == "RUN_DIR" else "file", UserError)
    run_dir, baseline_csv = Path(run_dir), Path(baseline_csv)
    run = _read_csv(run_dir / "results.csv", "run results (results.csv)")
    base = _read_csv(baseline_csv, "baseline")
    tol_path = Path(tolerances) if tolerances else baseline_csv.with_name(baseline_csv.stem + ".tolerances.yaml")
    gates = load_gates(tol_path)
    run, base = _measured(run), _measured(base)
    run_m, base_m = _means(run), _means(base)
    gated = []  # (gate, the baseline keys it checks)
    for gate in gates:
        keys = [k for k in base_m if k[1] == gate.metric and k[2] == gate.variant
                and (gate.system is None or k[0] == gate.system)]
        if not keys:
            raise UserError(f"{tol_path}: gate {gate.metric}/{gate.variant} matches nothing in {baseline_csv}")
        gated.append((gate, keys))
    _check_comparable(run, base, [k for _, keys in gated for k in keys], run_dir, baseline_csv)
    lines = []
    failed = 0
    checked = 0
    for gate, keys in gated:
        for key in keys:
            checked += 1
            b = base_m[key]
            allowed = gate.max_move if gate.max_move is not None else abs(b) * gate.max_move_pct / 100
            label = f"{key[0]}  {key[1]}{('/' + key[2]) if key[2] else ''}"
            if key not in run_m:
                if gate.optional:
                    checked -= 1
                    lines.append(f"skip  {label}: not measured in this run (optional gate; baseline {b:.4g})")
                    continue
                failed += 1
                lines.append(f"FAIL  {label}: missing from the run (baseline {b:.4g})")
                continue
            r = run_m[key]
            worse_by = (b - r) if gate.better == "higher" else (r - b)
            status = "FAIL" if not worse_by <= allowed else "ok  "  # a NaN (in the run or the baseline) fails
            failed += status == "FAIL"
            lines.append(f"{status}  {label}: {r:.4g} vs baseline {b:.4g} (moved {r - b:+.4g}; "
                         f"{gate.better} is better; allowed {allowed:.4g} the bad way)")
    head = f"{checked - failed}/{checked} gated numbers within tolerance"
    return failed == 0, head + "\n" + "\n".join(lines)
