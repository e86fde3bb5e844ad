"""The long results table (one row per number, with provenance) and its views.

Columns: suite, suite_version, system, system_name, uses_captions,
metric, variant, value, n, seed, source, citation, args_hash, git_sha,
versions, device, timestamp, extra.
"""
from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import io
import json
import math
import platform
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

import bench
from bench.api import UserError
from bench.cache import atomic_write_bytes, atomic_write_text, canonical_json, library_versions
from bench.suite import args_dict
from reference.errors import first_line

COLUMNS = ["suite", "suite_version", "system", "system_name", "uses_captions", "metric", "variant", "value", "n",
           "seed", "source", "citation", "args_hash", "git_sha", "versions", "device", "timestamp", "extra"]


@functools.lru_cache(maxsize=1)
def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(bench.__file__).resolve().parent)
        sha = out.stdout.strip() if out.returncode == 0 else "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               timeout=5, cwd=Path(bench.__file__).resolve().parent).stdout.strip()
        return sha + ("-dirty" if dirty and sha != "unknown" else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def versions() -> str:
    return json.dumps({"bench": bench.__version__, "python": platform.python_version(), **library_versions()},
                      sort_keys=True)


def args_hash(*parts) -> str:
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()[:12]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def measured_row(suite, system_spec, system, metric_spec, value, seed: int, device: str,
                 samples_made_by: str | None = None, run: dict | None = None) -> dict:
    """samples_made_by: the fingerprint in the samples' made-by.json (what built the system that made them);
    run: the runner's provenance of the run and of the components the metric used (Runner.run_provenance)."""
    extra = {**(run or {}), **value.extra}
    for key, what in (system.provenance() if hasattr(system, "provenance") else {}).items():
        extra.setdefault(key, what)  # how the system was made (training, sampling settings): the metric's keys win
    if samples_made_by is not None:
        extra.setdefault("samples_made_by", samples_made_by)
    return {
        "suite": suite.suite, "suite_version": suite.version, "system": system_spec.alias,
        "system_name": system_spec.name, "uses_captions": bool(getattr(system, "uses_captions", False)),
        "metric": value.metric, "variant": value.variant, "value": float(value.value), "n": int(value.n),
        "seed": int(seed), "source": "measured", "citation": "",
        "args_hash": args_hash(system_spec.name, args_dict(system_spec.args), metric_spec.name,
                               args_dict(metric_spec.args)),
        "git_sha": git_sha(), "versions": versions(), "device": device, "timestamp": _now(),
        "extra": canonical_json(extra),
    }


def component_row(suite, component: str, metric: str, variant: str, value: float, n: int, device: str,
                  extra: dict | None = None) -> dict:
    """A diagnostic of a component (not of a system), e.g. a CLIP's modality gap; extra: its provenance."""
    spec = suite.components[component]
    return {
        "suite": suite.suite, "suite_version": suite.version, "system": f"[{component}]",
        "system_name": f"component:{spec.kind}", "uses_captions": False, "metric": metric, "variant": variant,
        "value": float(value), "n": int(n), "seed": -1, "source": "measured", "citation": "",
        "args_hash": args_hash(spec.kind, spec.path, args_dict(spec.train)), "git_sha": git_sha(),
        "versions": versions(), "device": device, "timestamp": _now(),
        "extra": canonical_json(extra or {}),
    }


class Results:
    def __init__(self, suite, device: str):
        self.suite = suite
        self.device = device
        self.rows: list[dict] = []

    def extend(self, rows: list[dict]) -> None:
        self.rows.extend(rows)

    def add_reported(self) -> None:
        for r in self.suite.reported:
            for v in r.values:
                self.rows.append({
                    "suite": self.suite.suite, "suite_version": self.suite.version, "system": r.system,
                    "system_name": "reported", "uses_captions": r.uses_captions, "metric": v.metric,
                    "variant": v.variant, "value": v.value, "n": -1, "seed": -1, "source": "reported",
                    "citation": r.citation, "args_hash": "", "git_sha": git_sha(), "versions": "",
                    "device": "", "timestamp": _now(), "extra": "{}"})

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)

    def save(self, out: Path) -> None:
        write_frame(self.frame(), out)


def write_frame(df: pd.DataFrame, out: Path) -> None:
    """results.csv and results.parquet, each written to a temp file and renamed."""
    out = Path(out)
    atomic_write_text(out / "results.csv", df.to_csv(index=False))
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(out / "results.parquet", buf.getvalue())


# the columns `bench report` reads (results.md / .tex, paper.md / .tex); a results file may carry more
REPORT_COLUMNS = ("system", "system_name", "uses_captions", "metric", "variant", "value", "n", "seed", "source",
                  "citation", "extra")


NUMBER_COLUMNS = ("value", "n", "seed")
# names and text: read back as written ("NA", "null", "42" are aliases a suite may use, not a missing value or a
# number), blank as ""
TEXT_COLUMNS = ("suite", "system", "system_name", "metric", "variant", "source", "citation", "args_hash", "git_sha",
                "versions", "device", "timestamp", "extra")


def _check_frame(df: pd.DataFrame, path: Path, columns) -> pd.DataFrame:
    """`df` with `columns` present, its text columns as text, value a number or blank (not measured: NaN), n and
    seed whole numbers, and each `extra` a JSON object; UserError naming the first problem otherwise."""
    missing = set(columns) - set(df.columns)
    if missing:
        raise UserError(f"{path}: not a results table: missing columns {sorted(missing)}")

    def refuse(col: str, bad: pd.Series, what: str):
        i = int(bad.to_numpy().argmax())
        v = df[col].iloc[i]
        raise UserError(f"{path}: not a results table: {col} in data row {i + 1} is "
                        f"{'blank' if pd.isna(v) else repr(v) if isinstance(v, str) else v}, not {what}")

    for col in TEXT_COLUMNS:
        if col in df.columns:
            df[col] = df[col].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    for col in NUMBER_COLUMNS:
        if col not in columns:
            continue
        numbers = pd.to_numeric(df[col], errors="coerce")
        bad = numbers.isna()
        if col == "value":  # blank: a number that could not be measured (NaN)
            bad &= df[col].notna()
        else:
            bad |= ~np.isfinite(numbers) | (numbers != numbers.round())
        if bad.any():
            refuse(col, bad, "a number" if col == "value" else "a whole number")
        df[col] = numbers
    if "extra" in columns:
        bad = ~df["extra"].map(_is_json_object)
        if bad.any():
            refuse("extra", bad, "a JSON object")
    return df


def _is_json_object(text: str) -> bool:
    if text == "":
        return True
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def read_results_csv(path: str | Path, what: str = "results", columns=REPORT_COLUMNS) -> pd.DataFrame:
    """A long results CSV (this module's COLUMNS, or at least `columns`) with numeric value / n / seed.

    Anything else (no file, not a CSV, empty, a column missing, text where a number belongs) is a UserError naming
    the file and the problem in one line. `bench report` (read_frame) and `bench compare` (bench/gates.py) read
    through here."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: {what} not found")
    try:  # blank, NaN and nan are a missing number only in the number columns
        df = pd.read_csv(path, keep_default_na=False, na_values={c: ["", "NaN", "nan"] for c in NUMBER_COLUMNS},
                         dtype={c: str for c in TEXT_COLUMNS})
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: not a results CSV: the file is empty (no header line)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        raise UserError(f"{path}: not a results CSV ({err.__class__.__name__}: {first_line(err)})") from None
    return _check_frame(df, path, columns)


def read_frame(run_dir: Path) -> pd.DataFrame:
    """A run folder's results: results.csv when it is there (the file people read and edit, and the one `bench
    compare` reads), else results.parquet. `write_frame` writes both with the same rows, so normally they agree;
    if someone edited the CSV, the edit counts. UserError (one line naming the file) for a file that is not a
    results table."""
    run_dir = Path(run_dir)
    csv, parquet = run_dir / "results.csv", run_dir / "results.parquet"
    if csv.exists() or not parquet.exists():
        return read_results_csv(csv, "run results (results.csv)")
    try:
        df = pd.read_parquet(parquet)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise UserError(f"{parquet}: not a results table ({err.__class__.__name__}: {first_line(err)})") from None
    return _check_frame(df, parquet, REPORT_COLUMNS)


def load_per_caption(run_dir: Path) -> dict[tuple[str, str], dict[int, dict[int, float]]]:
    """(system, 'metric/variant') -> seed -> caption_id -> value, from per_caption/<system>/seed<s>.json."""
    out: dict = {}
    root = Path(run_dir) / "per_caption"
    if not root.exists():
        return out
    for path in sorted(root.glob("*/seed*.json")):
        try:
            system, seed = path.parent.name, int(path.stem[4:])
            for cid, values in json.loads(path.read_text()).items():
                for key, v in values.items():
                    out.setdefault((system, key), {}).setdefault(seed, {})[int(cid)] = float(v)
        except (OSError, ValueError, TypeError, AttributeError, UnicodeDecodeError) as err:  # OSError: a folder there
            raise UserError(f"{path}: not a per-caption file bench wrote ({first_line(err)}); delete it and run the "
                            "suite again to rewrite it") from None
    return out


def bootstrap_ci(per_seed: dict[int, dict[int, float]], reps: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean over seeds and captions, resampling captions (the same resample for every seed)."""
    captions = sorted(set.intersection(*(set(v) for v in per_seed.values())))
    if len(captions) < 2:
        return (math.nan, math.nan)
    matrix = np.array([[per_seed[s][c] for c in captions] for s in sorted(per_seed)])  # [seeds, captions]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(captions), size=(reps, len(captions)))
    means = matrix[:, idx].mean(axis=(0, 2))  # [reps]
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "nan"
    a = abs(x)
    if a >= 1e6:  # bytes, tokens: whole numbers
        return f"{x:.0f}"
    if a >= 100:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


BIASED_MARK = "†"  # FD from n at or below the feature dimension (metrics/fd.py sets extra.rank_deficient)


def biased(extras) -> bool:
    """Whether any of these rows' `extra` JSON marks its number rank-deficient (FD biased: compare at equal n)."""
    return any(json.loads(e).get("rank_deficient") for e in extras if isinstance(e, str) and e)


def summary(df: pd.DataFrame, per_caption: dict | None = None) -> pd.DataFrame:
    """One row per (system, metric, variant): mean and std over seeds, n, 95% bootstrap interval over captions."""
    per_caption = per_caption or {}
    rows = []
    for (system, metric, variant), g in df.groupby(["system", "metric", "variant"], sort=False, dropna=False):
        variant = "" if (isinstance(variant, float) and math.isnan(variant)) else variant
        key = f"{metric}/{variant}" if variant else metric
        lo, hi = bootstrap_ci(per_caption[(system, key)]) if (system, key) in per_caption else (math.nan, math.nan)
        rows.append({
            "system": system, "source": g["source"].iloc[0], "uses_captions": bool(g["uses_captions"].iloc[0]),
            "metric": metric, "variant": variant, "column": key, "mean": g["value"].mean(),
            "std": g["value"].std(ddof=1) if len(g) > 1 else math.nan, "seeds": len(g), "n": int(g["n"].iloc[0]),
            "ci_lo": lo, "ci_hi": hi, "citation": g["citation"].iloc[0],
            "flag": BIASED_MARK if biased(g["extra"]) else "",
        })
    return pd.DataFrame(rows)


def pivot(df: pd.DataFrame, per_caption: dict | None = None) -> pd.DataFrame:
    """Systems x metric/variant, cells 'mean ± std [lo, hi]'; reported rows marked (reported)."""
    s = summary(df, per_caption)
    if s.empty:
        return pd.DataFrame()
    pm = " ± "

    def cell(r) -> str:
        text = _fmt(r["mean"])
        if math.isfinite(r["std"]):
            text += pm + _fmt(r["std"])
        if math.isfinite(r["ci_lo"]):
            text += f" [{_fmt(r['ci_lo'])}, {_fmt(r['ci_hi'])}]"
        return text + r["flag"]

    s["cell"] = s.apply(cell, axis=1)
    s["label"] = s.apply(lambda r: r["system"] + (" (reported)" if r["source"] == "reported" else ""), axis=1)
    order_rows = list(dict.fromkeys(s["label"]))
    order_cols = list(dict.fromkeys(s["column"]))
    table = s.pivot(index="label", columns="column", values="cell").reindex(index=order_rows, columns=order_cols)
    return table.fillna("")


def is_headline(column: str) -> bool:
    """The columns printed after a run (results.md keeps them all): one number per question."""
    metric, _, variant = column.partition("/")
    if metric in ("attribute-accuracy", "class-accuracy"):
        return variant.endswith("/all") and not variant.startswith("all/")
    if metric in ("caps", "caploss"):
        return metric == "caps" and variant in ("", "all")
    if metric == "throughput":
        return variant == "images/s"
    return True


def _is_component(df: pd.DataFrame) -> pd.Series:
    return df["system_name"].astype(str).str.startswith("component:")


def markdown(df: pd.DataFrame, per_caption: dict | None = None, headline: bool = False) -> str:
    """The systems table, then the components' diagnostics (e.g. each CLIP's modality gap)."""
    table = pivot(df[~_is_component(df)], per_caption)
    if headline and not table.empty:
        table = table[[c for c in table.columns if is_headline(c)]]
    parts = []
    if not table.empty:
        systems = df[~_is_component(df) & (df["source"] == "measured")]
        several = (systems.groupby(["system", "metric", "variant"], dropna=False).size() > 1).any()
        cells = [str(c) for c in table.to_numpy().ravel()]
        legend = ["mean ± std over seeds" if several else "one seed"]
        if any("[" in c for c in cells):
            legend[0] += " [95% bootstrap interval over captions]"
        if any(BIASED_MARK in c for c in cells):
            legend.append(f"{BIASED_MARK} n not above the feature dimension (FD is biased there)")
        parts.append(table.to_markdown(disable_numparse=True) + "\n\n" + "; ".join(legend) + ".")
    components = pivot(df[_is_component(df)])
    if not components.empty:
        parts.append("components:\n\n" + components.to_markdown(disable_numparse=True))
    return "\n\n".join(parts) or "(no results)"


LATEX_ESCAPES = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "_": "\\_", "#": "\\#", "$": "\\$", "{": "\\{",
                 "}": "\\}", "^": "\\^{}", "~": "\\textasciitilde{}", "±": "$\\pm$", "‡": "$^\\ddagger$",
                 "†": "$^\\dagger$", "–": "--", "·": "$\\cdot$", "√": "$\\surd$"}
_LATEX_SPECIAL = re.compile("|".join(map(re.escape, LATEX_ESCAPES)))


def escape_latex(text: str) -> str:
    """Text for pdflatex without extra packages: its special characters escaped, our marks as math symbols (in one
    pass, so what one replacement writes is never escaped again)."""
    return _LATEX_SPECIAL.sub(lambda m: LATEX_ESCAPES[m.group()], text)


def latex(df: pd.DataFrame, per_caption: dict | None = None) -> str:
    """The systems table, then the components' diagnostics, as LaTeX tabulars."""
    parts = []
    for table in (pivot(df[~_is_component(df)], per_caption), pivot(df[_is_component(df)])):
        if not table.empty:
            table = table.map(lambda cell: escape_latex(str(cell)))
            table.index = [escape_latex(str(label)) for label in table.index]
            table.columns = [escape_latex(str(column)) for column in table.columns]
            parts.append(table.to_latex(escape=False))
    return "\n".join(parts)
