"""bench.results: summary()'s mean / std / n over seeds, the bootstrap interval, and how pivot prints them."""
import math
import re

import numpy as np
import pandas as pd

from bench.results import COLUMNS, bootstrap_ci, markdown, pivot, summary


def _frame(values, n=37, metric="clip-score"):
    rows = []
    for seed, v in enumerate(values):
        row = {c: "" for c in COLUMNS}
        row.update(system="s", system_name="s", metric=metric, variant="", value=float(v), seed=seed,
                   source="measured", n=n, extra="{}")
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def test_summary_is_mean_and_sample_std_over_seeds_with_the_rows_n():
    s = summary(_frame([1, 2, 6])).iloc[0]
    assert s["mean"] == 3 and math.isclose(s["std"], np.std([1, 2, 6], ddof=1))  # not the median, not ddof=0
    assert s["seeds"] == 3 and s["n"] == 37
    assert pivot(_frame([1, 2, 6])).loc["s", "clip-score"] == "3.00 ± 2.65"
    assert "| 3.00 ± 2.65 " in markdown(_frame([1, 2, 6]))


def test_pivot_prints_both_ends_of_the_caption_bootstrap_interval():
    rng = np.random.default_rng(0)
    pc = {s: {c: float(20 + 3 * rng.standard_normal()) for c in range(30)} for s in range(3)}
    cell = pivot(_frame([20, 21, 22]), {("s", "clip-score"): pc}).loc["s", "clip-score"]
    lo, hi = map(float, re.fullmatch(r"21\.00 ± 1\.00 \[(\S+), (\S+)\]", cell).groups())
    matrix = np.array([[pc[s][c] for c in range(30)] for s in range(3)])  # the bootstrap by hand (bootstrap_ci's doc)
    idx = np.random.default_rng(0).integers(0, 30, size=(1000, 30))
    want = np.percentile([matrix[:, i].mean() for i in idx], [2.5, 97.5])
    assert hi - lo > 0.5  # a real interval, so lo and hi print differently
    assert abs(lo - want[0]) <= 0.005 and abs(hi - want[1]) <= 0.005, (cell, want)
    assert np.allclose(bootstrap_ci(pc), want)


def test_one_shared_caption_gives_no_interval():
    lo, hi = bootstrap_ci({0: {5: 1.0}, 1: {5: 2.0}})
    assert math.isnan(lo) and math.isnan(hi)  # one caption cannot be resampled: no interval, not an exact one
    lo, hi = bootstrap_ci({0: {5: 1.0, 6: 3.0}, 1: {5: 2.0, 7: 4.0}})  # only caption 5 in both seeds
    assert math.isnan(lo) and math.isnan(hi)
    cell = pivot(_frame([1.0, 2.0]), {("s", "clip-score"): {0: {5: 1.0}, 1: {5: 2.0}}}).loc["s", "clip-score"]
    assert "[" not in cell
