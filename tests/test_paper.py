"""bench.paper: the papers' table layout, reported rows, intervals, paired comparisons."""
import math

import numpy as np
import pandas as pd
import pytest

from bench.paper import paired_comparison, paired_seed_comparison, paper_table, per_caption_values, statement
from bench.results import COLUMNS


def _row(system, name, metric, variant, value, seed, source="measured", uses=False, citation=""):
    row = {c: "" for c in COLUMNS}
    row.update(system=system, system_name=name, metric=metric, variant=variant, value=float(value), seed=seed,
               source=source, uses_captions=uses, citation=citation, n=100, extra="{}")
    return row


def _per_caption(rng, mean, seeds=(0, 1, 2), captions=40, spread=1.0):
    return {s: {c: float(mean + spread * rng.standard_normal()) for c in range(captions)} for s in seeds}


@pytest.fixture
def run():
    rng = np.random.default_rng(0)
    rows = []
    for s in (0, 1, 2):
        for system, name, fd, cs, acc in (("clipgen-lf", "clipgen", 30 + s, 25.0, 0.6),
                                          ("vqgan-clip", "vqgan-clip", 60 + 2 * s, 20.0, 0.3),
                                          ("clipgen-text", "clipgen-text", 29 + s, 25.5, 0.62)):
            for blur, off in ((0, 0.0), (1, -5.0), (2, -10.0)):
                rows.append(_row(system, name, "fd-effnet-lite0", f"blur={blur}", fd + off, s, uses=name == "clipgen-text"))
            rows.append(_row(system, name, "clip-score", "", cs, s))
            rows.append(_row(system, name, "attribute-accuracy", "seen/all", acc, s))
            rows.append(_row(system, name, "attribute-accuracy", "held-out/all", acc - 0.1, s))
            rows.append(_row(system, name, "throughput", "images/s", 100.0 / (1 + 9 * (name == "vqgan-clip")), s))
    rows.append(_row("CogView", "reported", "fid", "blur=0", 27.1, -1, source="reported", uses=True,
                     citation="Ding et al. 2021, Table 1"))
    rows.append(_row("CogView", "reported", "fid", "blur=1", 19.4, -1, source="reported", uses=True,
                     citation="Ding et al. 2021, Table 1"))
    rows.append(_row("[clip]", "component:clip", "modality-gap", "image-text-cosine", 0.98, -1))
    df = pd.DataFrame(rows, columns=COLUMNS)
    per_caption = {("clipgen-lf", "clip-score"): _per_caption(rng, 25.0),
                   ("vqgan-clip", "clip-score"): _per_caption(rng, 20.0),
                   ("clipgen-lf", "attribute-accuracy/seen/all"): _per_caption(rng, 0.6, spread=0.3),
                   ("clipgen-text", "attribute-accuracy/seen/all"): _per_caption(rng, 0.6, spread=0.3)}
    return df, per_caption


def test_markdown_layout_marks_reported_rows(run):
    df, pc = run
    text = paper_table(df, pc)
    header = text.splitlines()[0]
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[:5] == ["Model", "trained on captions?", "FD-EffNet-0", "FD-EffNet-1", "FD-EffNet-2"]
    assert cells[5:7] == ["FID-0 (reported)", "FID-1 (reported)"]  # reported FID never enters the measured FD columns
    assert cells[7:] == ["CLIP score", "attr. acc. seen", "attr. acc. held-out", "img/s"]
    lines = {ln.split("|")[1].strip(): ln for ln in text.splitlines() if ln.startswith("| ")}
    cog = [c.strip() for c in lines["CogView (reported*1)"].strip("|").split("|")]
    assert cog[1] == "yes" and cog[2] == "–" and cog[5] == "27.1" and cog[6] == "19.4"
    lf = [c.strip() for c in lines["clipgen-lf (clipgen)"].strip("|").split("|")]
    assert lf[1] == "no" and lf[2].startswith("31.00 ± ") and lf[2].endswith("‡")  # FD: seeds only
    assert lf[7].startswith("25.") and "‡" not in lf[7]  # CLIP score: caption bootstrap
    assert "Ding et al. 2021, Table 1" in text and "not comparable with published FID" in text
    assert "[clip]" not in lines, "component diagnostics are not models"


def test_interval_half_widths(run):
    df, pc = run
    from bench.paper import cell_stats
    from bench.results import bootstrap_ci

    fd = cell_stats(df, pc, "vqgan-clip", "fd-effnet-lite0", "blur=0")
    assert fd["how"] == "seeds" and math.isclose(fd["half"], 1.96 * np.std([60, 62, 64], ddof=1) / math.sqrt(3))
    cs = cell_stats(df, pc, "clipgen-lf", "clip-score", "")
    lo, hi = bootstrap_ci(pc[("clipgen-lf", "clip-score")])
    assert cs["how"] == "bootstrap" and math.isclose(cs["half"], (hi - lo) / 2)


def test_latex_table(run):
    df, pc = run
    tex = paper_table(df, pc, latex=True)
    assert tex.startswith("\\begin{tabular}{ll" + "r" * 9 + "}") and "\\toprule" in tex and "$\\pm$" in tex
    assert "$^\\ddagger$" in tex and not [ch for ch in tex if ord(ch) > 127]  # pdflatex without extra packages


def test_a_biased_fd_keeps_its_mark_in_the_paper_table(run):
    df, pc = run
    df = df.copy()
    few = (df["system"] == "clipgen-lf") & (df["metric"] == "fd-effnet-lite0")
    df.loc[few, "extra"] = '{"rank_deficient": true}'
    lines = {ln.split("|")[1].strip(): ln for ln in paper_table(df, pc).splitlines() if ln.startswith("| ")}
    lf = [c.strip() for c in lines["clipgen-lf (clipgen)"].strip("|").split("|")]
    vq = [c.strip() for c in lines["vqgan-clip"].strip("|").split("|")]
    assert lf[2].endswith("‡†") and not vq[2].endswith("†") and not lf[7].endswith("†")
    assert "† n not above the feature dimension" in paper_table(df, pc)
    assert "†" not in paper_table(run[0], pc)  # no mark, no note
    assert "$^\\dagger$" in paper_table(df, pc, latex=True)


def test_paired_comparison_equals_hand_bootstrap():
    a = {0: {0: 1.0, 1: 2.0, 2: 3.0, 3: 5.0}, 1: {0: 2.0, 1: 2.5, 2: 2.0, 3: 4.0, 9: 7.0}}
    b = {0: {0: 0.5, 1: 2.5, 2: 1.0, 3: 4.0}, 1: {0: 1.0, 1: 1.5, 2: 2.5, 3: 3.0}}
    got = paired_comparison({("A", "m"): a, ("B", "m"): b}, "A", "B", "m", reps=500, seed=3)
    diff = np.array([[a[s][c] - b[s][c] for c in range(4)] for s in (0, 1)])  # caption 9 is not shared
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 4, size=(500, 4))
    means = np.array([diff[:, i].mean() for i in idx])
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert got["n_captions"] == 4 and got["n_seeds"] == 2
    assert math.isclose(got["mean"], diff.mean()) and math.isclose(got["lo"], lo) and math.isclose(got["hi"], hi)


def test_paired_comparison_detects_a_clear_difference_and_not_a_null_one():
    rng = np.random.default_rng(1)
    base = _per_caption(rng, 0.0, captions=60)
    better = {s: {c: v + 2.0 + 0.1 * rng.standard_normal() for c, v in vals.items()} for s, vals in base.items()}
    same = {s: {c: v + 0.5 * rng.standard_normal() for c, v in vals.items()} for s, vals in base.items()}
    pc = {("A", "k"): better, ("B", "k"): base, ("C", "k"): same}
    clear = paired_comparison(pc, "A", "B", "k")
    assert clear["excludes_zero"] and clear["lo"] > 1.5
    swapped = paired_comparison(pc, "B", "A", "k")  # the better system second: an interval below 0
    assert swapped["excludes_zero"] and swapped["hi"] < -1.5 and math.isclose(swapped["mean"], -clear["mean"])
    assert statement(swapped, lower_is_better=False).startswith(f"k: A beats B: B - A = {swapped['mean']:.2f} [")
    assert statement(swapped, lower_is_better=True).startswith("k: B beats A: ")
    null = paired_comparison(pc, "C", "B", "k")
    assert not null["excludes_zero"] and null["lo"] < 0 < null["hi"]
    with pytest.raises(KeyError):
        paired_comparison(pc, "A", "Z", "k")


def test_table_prints_paired_statements(run):
    df, pc = run
    text = paper_table(df, pc)
    assert "clip-score: clipgen-lf beats vqgan-clip" in text
    assert "fd-effnet-lite0/blur=0: clipgen-lf beats vqgan-clip" in text and "seeds only" in text
    assert "attribute-accuracy/seen/all: no winner can be claimed between clipgen-lf and clipgen-text" in text


def test_seed_comparison_t_interval(run):
    df, _ = run
    r = paired_seed_comparison(df, "clipgen-lf", "vqgan-clip", "fd-effnet-lite0", "blur=0")
    d = np.array([30 - 60, 31 - 62, 32 - 64], dtype=float)
    from scipy import stats

    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert math.isclose(r["mean"], d.mean()) and math.isclose(r["hi"], d.mean() + half) and r["excludes_zero"]


def test_seed_comparison_leaves_out_reported_rows(run):
    df, _ = run
    reported = [_row(s, "reported", "fd-effnet-lite0", "blur=0", v, -1, source="reported", citation="a paper")
                for s, v in (("clipgen-lf", 500.0), ("vqgan-clip", 1.0))]  # literature numbers under the aliases
    r = paired_seed_comparison(pd.concat([df, pd.DataFrame(reported, columns=COLUMNS)]), "clipgen-lf", "vqgan-clip",
                               "fd-effnet-lite0", "blur=0")
    d = np.array([30 - 60, 31 - 62, 32 - 64], dtype=float)
    assert r["n_seeds"] == 3 and math.isclose(r["mean"], d.mean())


def test_one_shared_caption_makes_no_statement(run):
    df, pc = run
    pc = {**pc, ("clipgen-lf", "clip-score"): {s: {0: 25.0, 1: 26.0} for s in (0, 1, 2)},
          ("vqgan-clip", "clip-score"): {s: {0: 20.0, 2: 21.0} for s in (0, 1, 2)}}  # only caption 0 in both
    text = paper_table(df, pc)
    assert "clip-score:" not in text  # not even "no winner can be claimed": there is nothing to pair
    assert "fd-effnet-lite0/blur=0: clipgen-lf beats vqgan-clip" in text  # the other statements stay


def test_fd_metric_preference_and_per_caption_lookup():
    rows = [_row("s", "s", "fd-clip", "blur=0", 5.0, 0), _row("s", "s", "fid", "blur=0", 9.0, 0)]
    text = paper_table(pd.DataFrame(rows, columns=COLUMNS))
    assert "| FID-0 |" in text and "FD-CLIP-0" not in text.splitlines()[0]
    pc = {("s", "attribute-accuracy/held-out/all"): {0: {1: 0.0, 3: 1.0}}}
    assert per_caption_values(pc, "s", "attribute-accuracy", "held-out/all") == {0: {1: 0.0, 3: 1.0}}
    assert per_caption_values(pc, "s", "attribute-accuracy", "seen/all") is None


def test_a_single_shared_seed_gives_no_interval_and_says_so(run):
    df, _ = run
    one = df[~((df["system"] == "vqgan-clip") & (df["seed"] != 0))]
    r = paired_seed_comparison(one, "clipgen-lf", "vqgan-clip", "fd-effnet-lite0", "blur=0")
    assert r["n_seeds"] == 1 and not math.isfinite(r["lo"]) and not r["excludes_zero"]
    assert "no interval from 1 shared seed(s)" in statement(r, lower_is_better=True, seeds_only=True)


def test_the_plain_table_legend_says_one_seed_when_there_is_one(run):
    from bench.results import markdown

    df, pc = run
    assert "mean ± std over seeds [95% bootstrap" in markdown(df, pc)
    one = df[df["seed"].isin([0, -1])]
    text = markdown(one, pc)
    assert "one seed [95% bootstrap interval over captions]" in text and "std over seeds" not in text


def test_the_plain_table_legend_explains_only_what_its_cells_show(run):
    from bench.results import BIASED_MARK, markdown

    df, pc = run
    fd = df["metric"].str.startswith("fd")
    assert BIASED_MARK not in markdown(df, pc)  # no FD row is marked rank-deficient
    df = df.copy()
    df.loc[fd & (df["system"] == "vqgan-clip"), "extra"] = '{"rank_deficient": true}'
    assert BIASED_MARK in markdown(df, pc) and "FD is biased there" in markdown(df[fd], pc)
    no_fd = markdown(df[~fd], pc)
    assert BIASED_MARK not in no_fd and "[95% bootstrap" in no_fd
    assert "[95% bootstrap" not in markdown(df[~fd])  # without per-caption values: no intervals to explain


def test_the_plain_table_keeps_each_cell_as_formatted():
    """tabulate re-parses numeric-looking cells ('1.00' -> '1'): a cell with no interval must keep its digits."""
    from bench.results import COLUMNS, markdown

    row = {c: "" for c in COLUMNS}
    row.update(system="s", system_name="s", metric="attribute-accuracy", variant="judge-on-real/all", value=1.0,
               seed=0, source="measured", n=10, extra="{}")
    assert "| 1.00 " in markdown(pd.DataFrame([row], columns=COLUMNS))


def test_the_plain_latex_table_compiles_without_extra_packages(run):
    from bench.results import latex

    df, pc = run
    df = df.copy()
    df.loc[df["system"] == "clipgen-text", "system"] = "clipgen_text"  # an alias with a LaTeX special character
    tex = latex(df, pc)
    assert not [ch for ch in tex if ord(ch) > 127] and "clipgen\\_text" in tex and "$\\pm$" in tex
    assert tex.count("\\begin{tabular}") == 2  # systems, then the components' diagnostics
    systems, components = tex.split("\\end{tabular}")[:2]
    assert "[clip]" in components and "[clip]" not in systems and "modality-gap" not in systems
    assert "label" not in tex and "column" not in tex  # no pandas index/column-name header rows
    assert "CogView (reported) &  &" in systems  # its unmeasured cells empty, not NaN


def test_latex_escapes_every_special_character_once():
    from bench.results import escape_latex

    assert escape_latex(r"n$^{x}~ a_b \ 95% & #1 ± †") == \
        r"n\$\^{}\{x\}\textasciitilde{} a\_b \textbackslash{} 95\% \& \#1 $\pm$ $^\dagger$"
