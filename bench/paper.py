"""The comparison table in the papers' layout and the paired comparisons behind its claims.

    Model | trained on captions? | FD-0 | FD-1 | FD-2 | CapS | CLIP score | [accuracy seen | held-out] | img/s

Measured cells are mean ± the half-width of a 95% interval over seeds and captions: a caption bootstrap
(bench.results.bootstrap_ci, the same resample of captions for every seed) where per-caption values exist,
otherwise 1.96 * std / sqrt(seeds) over the per-seed values (marked ‡; FD, throughput). Reported rows are
the suite's literature numbers, marked and cited, never mixed into a measured column of another metric.

A sentence "A beats B" is printed only from a paired comparison: the same captions and seeds for both
systems, the mean difference with a 95% bootstrap interval over captions that excludes 0 (`paired_comparison`).
FD is one number per seed (not per caption): its comparison pairs seeds only, with a t interval.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from bench.results import BIASED_MARK, biased, bootstrap_ci, escape_latex

FD_METRICS = ("fid", "fd-effnet-lite0", "fd-clip", "fd-inception")  # preference order for the FD column
FD_LABEL = {"fid": "FID", "fd-effnet-lite0": "FD-EffNet", "fd-clip": "FD-CLIP", "fd-inception": "FD-Inception"}
LOWER_IS_BETTER = (*FD_METRICS, "kid", "caploss")
SEED_MARK = "‡"
REPORTED_MARK = "*"


# ---- values ----------------------------------------------------------------------------------------
def _clean_variant(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def per_caption_values(per_caption: dict, system: str, metric: str, variant: str) -> dict[int, dict[int, float]] | None:
    """seed -> caption_id -> value for one table cell ('metric/variant', as the runner stores them), or None."""
    return per_caption.get((system, f"{metric}/{variant}" if variant else metric))


def cell_stats(df: pd.DataFrame, per_caption: dict, system: str, metric: str, variant: str) -> dict | None:
    """{"mean", "half", "how", "source", "seeds"} for one cell; None when the system has no such row."""
    rows = df[(df["system"] == system) & (df["metric"] == metric)
              & (df["variant"].map(_clean_variant) == variant)]
    if rows.empty:
        return None
    source = rows["source"].iloc[0]
    values = rows["value"].astype(float).to_numpy()
    out = {"mean": float(values.mean()), "half": math.nan, "how": "", "source": source, "seeds": len(values),
           "biased": "extra" in rows and biased(rows["extra"])}
    if source == "reported":
        return out
    pc = per_caption_values(per_caption, system, metric, variant)
    if pc:
        lo, hi = bootstrap_ci(pc)
        if math.isfinite(lo):
            out.update(half=(hi - lo) / 2, how="bootstrap")
            return out
    if len(values) > 1:
        out.update(half=1.96 * float(values.std(ddof=1)) / math.sqrt(len(values)), how="seeds")
    return out


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "–"
    a = abs(x)
    return f"{x:.1f}" if a >= 100 else f"{x:.2f}" if a >= 1 else f"{x:.3f}"


def _cell_text(st: dict | None, pm: str) -> str:
    if st is None:
        return "–"
    if st["source"] == "reported":
        return f"{st['mean']:g}"  # as printed in the source, no added digits
    text = _fmt(st["mean"])
    if math.isfinite(st["half"]):
        text += pm + _fmt(st["half"]) + (SEED_MARK if st["how"] == "seeds" else "")
    return text + (BIASED_MARK if st.get("biased") else "")


# ---- paired comparisons ----------------------------------------------------------------------------
def paired_comparison(per_caption: dict, system_a: str, system_b: str, key: str, reps: int = 1000,
                      seed: int = 0) -> dict:
    """Mean of (A - B) over the captions and seeds both systems share, with a 95% caption-bootstrap interval.

    The bootstrap is bench.results.bootstrap_ci applied to the per-(seed, caption) differences: `reps`
    resamples of the caption set (numpy default_rng(seed).integers(0, C, (reps, C))), the same resample for every
    seed, percentiles 2.5 / 97.5 of the resampled means. Returns {"mean", "lo", "hi", "excludes_zero",
    "n_captions", "n_seeds", "key", "a", "b"}.
    """
    a, b = per_caption.get((system_a, key)), per_caption.get((system_b, key))
    if not a or not b:
        missing = system_a if not a else system_b
        raise KeyError(f"paired_comparison: no per-caption values for ({missing!r}, {key!r})")
    seeds = sorted(set(a) & set(b))
    captions = sorted(set.intersection(*(set(a[s]) & set(b[s]) for s in seeds))) if seeds else []
    diff = {s: {c: a[s][c] - b[s][c] for c in captions} for s in seeds}
    mean = float(np.mean([[diff[s][c] for c in captions] for s in seeds])) if captions else math.nan
    lo, hi = bootstrap_ci(diff, reps=reps, seed=seed) if captions else (math.nan, math.nan)
    return {"a": system_a, "b": system_b, "key": key, "mean": mean, "lo": lo, "hi": hi,
            "excludes_zero": bool(math.isfinite(lo) and (lo > 0 or hi < 0)),
            "n_captions": len(captions), "n_seeds": len(seeds)}


def paired_seed_comparison(df: pd.DataFrame, system_a: str, system_b: str, metric: str, variant: str) -> dict:
    """Mean of (A - B) over shared seeds of a per-seed number (FD), with a 95% t interval over seeds."""
    from scipy import stats

    def by_seed(system):
        rows = df[(df["system"] == system) & (df["metric"] == metric) & (df["source"] == "measured")
                  & (df["variant"].map(_clean_variant) == variant)]
        return dict(zip(rows["seed"].astype(int), rows["value"].astype(float)))

    a, b = by_seed(system_a), by_seed(system_b)
    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds])
    mean = float(d.mean()) if len(d) else math.nan
    if len(d) >= 2:
        half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
        lo, hi = mean - half, mean + half
    else:
        lo = hi = math.nan
    return {"a": system_a, "b": system_b, "key": f"{metric}/{variant}", "mean": mean, "lo": lo, "hi": hi,
            "excludes_zero": bool(math.isfinite(lo) and (lo > 0 or hi < 0)), "n_captions": 0, "n_seeds": len(seeds)}


def statement(result: dict, lower_is_better: bool, seeds_only: bool = False) -> str:
    """One sentence: who beats whom, or that the interval does not allow saying so."""
    a, b, key = result["a"], result["b"], result["key"]
    over = (f"paired over {result['n_seeds']} seeds only (FD is one number per seed; t interval)" if seeds_only
            else f"paired over {result['n_seeds']} seeds x {result['n_captions']} captions (caption bootstrap)")
    interval = f"{a} - {b} = {_fmt(result['mean'])} [{_fmt(result['lo'])}, {_fmt(result['hi'])}]"
    if not math.isfinite(result["lo"]):
        return (f"{key}: no winner can be claimed between {a} and {b}: {interval}, no interval from "
                f"{result['n_seeds']} shared seed(s); {over}.")
    if not result["excludes_zero"]:
        return f"{key}: no winner can be claimed between {a} and {b}: {interval}, 95% interval includes 0; {over}."
    a_better = (result["mean"] < 0) if lower_is_better else (result["mean"] > 0)
    winner, loser = (a, b) if a_better else (b, a)
    return f"{key}: {winner} beats {loser}: {interval}, 95% interval excludes 0; {over}."


def _aliases(df: pd.DataFrame, system_name: str) -> list[str]:
    rows = df[(df["source"] == "measured") & (df["system_name"] == system_name)]
    return list(dict.fromkeys(rows["system"]))


def comparisons(df: pd.DataFrame, per_caption: dict, fd_metric: str | None) -> list[str]:
    """The sentences the table prints: clipgen vs vqgan-clip (CLIP score, CapS, FD), clipgen vs clipgen-text
    (attribute / class accuracy), each only when both systems are in the run."""
    out = []
    # per-caption keys are the table's columns (bench.runner.per_caption_columns)
    pairs = [("clipgen", "vqgan-clip", ["clip-score", "caps/all"], True),
             ("clipgen", "clipgen-text", [f"{m}/{split}/all" for m in ("attribute-accuracy", "class-accuracy")
                                          for split in ("seen", "held-out")], False)]
    for name_a, name_b, keys, with_fd in pairs:
        for a in _aliases(df, name_a):
            for b in _aliases(df, name_b):
                for key in keys:
                    if (a, key) in per_caption and (b, key) in per_caption:
                        r = paired_comparison(per_caption, a, b, key)
                        if r["n_captions"] >= 2:
                            out.append(statement(r, key in LOWER_IS_BETTER))
                if with_fd and fd_metric is not None:
                    r = paired_seed_comparison(df, a, b, fd_metric, "blur=0")
                    if r["n_seeds"] >= 1:
                        out.append(statement(r, True, seeds_only=True))
    return out


# ---- the table -------------------------------------------------------------------------------------
def _columns(df: pd.DataFrame) -> tuple[str | None, list[tuple[str, str, str]]]:
    """(primary FD metric, [(header, metric, variant)]) in the papers' order, for what the frame holds."""
    measured = df[df["source"] == "measured"]
    present = lambda frame, m: bool((frame["metric"] == m).any())  # noqa: E731
    fd = next((m for m in FD_METRICS if present(measured, m)), None) or \
        next((m for m in FD_METRICS if present(df, m)), None)
    fds = [fd] + [m for m in FD_METRICS if m != fd and present(df[df["source"] == "reported"], m)] if fd else []
    cols: list[tuple[str, str, str]] = []
    for m in fds:
        blurs = sorted({int(v[len("blur="):]) for v in df.loc[df["metric"] == m, "variant"].map(_clean_variant)
                        if re.fullmatch(r"blur=\d+", v)})  # FD rows of other variants have no paper column
        cols += [(f"{FD_LABEL[m]}-{k}" + ("" if m == fd else " (reported)"), m, f"blur={k}") for k in blurs]
    variants = lambda m: set(df.loc[df["metric"] == m, "variant"].map(_clean_variant))  # noqa: E731
    if present(df, "caps"):
        cols.append(("CapS", "caps", "all" if "all" in variants("caps") else sorted(variants("caps"))[0]))
    if present(df, "clip-score"):
        cols.append(("CLIP score", "clip-score", ""))
    for metric, label in (("attribute-accuracy", "attr. acc."), ("class-accuracy", "class acc.")):
        v = variants(metric)
        for split in ("seen", "held-out"):
            if f"{split}/all" in v:
                cols.append((f"{label} {split}", metric, f"{split}/all"))
        if not any(f"{s}/all" in v for s in ("seen", "held-out")) and "all/all" in v:
            cols.append((label, metric, "all/all"))
    if present(df, "throughput") and "images/s" in variants("throughput"):
        cols.append(("img/s", "throughput", "images/s"))
    return fd, cols


def paper_table(df: pd.DataFrame, per_caption: dict | None = None, latex: bool = False) -> str:
    """The comparison table (markdown, or LaTeX with booktabs), with notes, citations and paired statements.

    df: the long results frame (bench.results.COLUMNS); per_caption: bench.results.load_per_caption(run_dir).
    """
    per_caption = per_caption or {}
    df = df[~df["system_name"].astype(str).str.startswith("component:")]  # diagnostics of components, not models
    if df.empty:
        return "(no results)"
    fd, cols = _columns(df)
    pm = " ± "
    header = ["Model", "trained on captions?"] + [c[0] for c in cols]
    body, citations = [], []
    for system in dict.fromkeys(df["system"]):
        rows = df[df["system"] == system]
        reported = rows["source"].iloc[0] == "reported"
        name = system + (f" ({rows['system_name'].iloc[0]})" if not reported and rows["system_name"].iloc[0]
                         not in (system, "") else "")
        if reported:
            citations.append(f"{REPORTED_MARK}{len(citations) + 1} {system}: {rows['citation'].iloc[0]}")
            name = f"{system} (reported{REPORTED_MARK}{len(citations)})"
        uses = "yes" if bool(rows["uses_captions"].iloc[0]) else "no"
        cells = [_cell_text(cell_stats(df, per_caption, system, m, v), pm) for _, m, v in cols]
        body.append([name, uses] + cells)

    notes = [f"Measured: mean ± half-width of a 95% interval over seeds and captions (caption bootstrap); "
             f"{SEED_MARK} interval over seeds only, 1.96·std/√seeds (no per-caption values; FD and img/s)."]
    if any(BIASED_MARK in cell for row in body for cell in row[2:]):
        notes.append(f"{BIASED_MARK} n not above the feature dimension: FD is biased there, compare only at equal n.")
    if fd is not None:
        notes.append(f"FD columns: {fd} ({'Inception features' if fd == 'fid' else 'not Inception: not comparable with published FID'}), "
                     f"-k = Gaussian blur radius k on both image sets.")
    if citations:
        notes.append(f"{REPORTED_MARK} reported in the literature, not measured here: " + "; ".join(citations) + ".")
    sentences = comparisons(df, per_caption, fd)

    if latex:
        spec = "ll" + "r" * len(cols)
        lines = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule", " & ".join(escape_latex(h) for h in header) + " \\\\",
                 "\\midrule"]
        lines += [" & ".join(escape_latex(c) for c in row) + " \\\\" for row in body]
        lines += ["\\bottomrule", "\\end{tabular}", ""]
        lines += [escape_latex(n) + "\n" for n in notes + sentences]
        return "\n".join(lines)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", ":-:"] + ["--:"] * len(cols)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    text = "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)
    if sentences:
        text += "\n\nPaired comparisons:\n" + "\n".join(f"- {s}" for s in sentences)
    return text + "\n"
