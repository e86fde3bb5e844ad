"""Entry-point plugins (group `clipgen_bench.plugins`) as an installed package provides them: a module on the
path plus a dist-info folder whose entry_points.txt names it. The cases run `bench` in a fresh interpreter,
since the registries load plugins once per process (one checks the loader itself in this one)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "plugins.md"

GOOD = '''
from bench.registry import SYSTEMS

@SYSTEMS.register("plugin-grey", "a plugin system: every image mid-grey")
def build(args, ctx):
    raise NotImplementedError
'''

BROKEN = '''
raise RuntimeError("boom at import")
'''


def install(root: Path, name: str, source: str) -> None:
    (root / f"{name}.py").write_text(source)
    dist = root / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[clipgen_bench.plugins]\n{name} = {name}\n")


def bench(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(REPO)]), "BENCH_NO_REEXEC": "1"}
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, env=env,
                          cwd=root, timeout=120)


def test_an_installed_plugin_registers_a_system_that_suites_can_name(tmp_path):
    install(tmp_path, "grey_plugin", GOOD)
    listed = bench(tmp_path, "ls")
    assert listed.returncode == 0, listed.stderr
    assert "plugin-grey" in listed.stdout and "every image mid-grey" in listed.stdout
    suite = tmp_path / "s.yaml"
    suite.write_text("suite: s\nversion: 1\ndataset: {name: shapes}\nsystems: [{name: plugin-grey}]\n")
    checked = bench(tmp_path, "validate", str(suite))
    assert checked.returncode == 0, checked.stderr


BAD_READS = '''
from bench.registry import SYSTEMS

@SYSTEMS.register("plugin-bad-reads", "declares its split as a bare string")
def build(args, ctx):
    raise NotImplementedError

build.reads = "train"
'''


def test_a_plugin_factory_with_malformed_reads_is_one_error_at_start_up(tmp_path):
    install(tmp_path, "bad_reads_plugin", BAD_READS)
    result = bench(tmp_path, "ls")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "system 'plugin-bad-reads' (bad_reads_plugin): reads='train'; a tuple of the splits" in lines[0]


METRIC = '''
from bench.registry import METRICS

@METRICS.register("plugin-sharpness", "a plugin metric, its rows named after it")
def build(args):
    raise NotImplementedError
'''


def test_a_plugin_metrics_name_may_carry_reported_values(tmp_path):
    install(tmp_path, "sharpness_plugin", METRIC)
    suite = tmp_path / "s.yaml"
    reported = ("reported: [{system: Paper, citation: 'Someone 2025, Table 2', "
                "values: {plugin-sharpness/edges: 0.8, fid: 12.0, %s: 1.0}}]\n")
    suite.write_text("suite: s\nversion: 1\ndataset: {name: shapes}\nsystems: [{name: noise}]\n"
                     + reported % "clip-score")
    checked = bench(tmp_path, "validate", str(suite))
    assert checked.returncode == 0, checked.stderr
    suite.write_text("suite: s\nversion: 1\ndataset: {name: shapes}\nsystems: [{name: noise}]\n"
                     + reported % "fd")  # a registered built-in whose rows are named fid / fd-*: not a row name
    checked = bench(tmp_path, "validate", str(suite))
    assert checked.returncode == 2 and "unknown metric 'fd'; allowed: fid," in checked.stderr
    assert checked.stderr.strip().endswith("throughput, plugin-sharpness")


CHECKED = '''
from bench.registry import SYSTEMS

@SYSTEMS.register("plugin-a", "needs file a")
def build_a(args, ctx):
    raise NotImplementedError

@SYSTEMS.register("plugin-b", "needs file b")
def build_b(args, ctx):
    raise NotImplementedError

build_a.missing_resources = lambda args: ["plugin-a: put a.bin in place"]
build_b.missing_resources = lambda args: ["plugin-b: put b.bin in place"]
'''


def test_bench_run_asks_each_plugin_factory_for_its_missing_files(tmp_path):
    install(tmp_path, "checked_plugin", CHECKED)
    suite = tmp_path / "s.yaml"
    suite.write_text("suite: s\nversion: 1\ndataset: {name: shapes, resolution: 16, num_captions: 4}\n"
                     "systems: [{name: plugin-a}, {name: plugin-b}]\nmetrics: [{name: throughput}]\n")
    result = bench(tmp_path, "run", str(suite), "--out", str(tmp_path / "run"), "--quiet")
    assert result.returncode == 2 and "NotImplementedError" not in result.stderr, result.stderr
    assert "plugin-a: put a.bin in place" in result.stderr and "plugin-b: put b.bin in place" in result.stderr
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_a_built_in_module_that_fails_to_import_fails_every_lookup(monkeypatch):
    import bench.registry as registry

    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_BUILTIN_MODULES", (*registry._BUILTIN_MODULES, "bench.no_such_module"))
    for _ in range(2):  # the second lookup must not see a registry without that module's entries
        with pytest.raises(ModuleNotFoundError, match="bench.no_such_module"):
            registry.SYSTEMS.names()


def test_a_plugin_that_fails_to_load_is_one_clear_error(tmp_path):
    install(tmp_path, "broken_plugin", BROKEN)
    result = bench(tmp_path, "ls")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "plugin 'broken_plugin' (broken_plugin) failed to load: RuntimeError: boom at import" in lines[0]
    assert result.stdout == "", "a listing begun before the failure"
    # every later lookup in the process fails the same way, not with "unknown system" for a later plugin's name
    install(tmp_path, "zz_grey_plugin", GOOD)  # loads after the broken one
    suite = tmp_path / "s.yaml"
    suite.write_text("suite: s\nversion: 1\ndataset: {name: shapes}\nsystems: [{name: plugin-grey}]\n")
    checked = bench(tmp_path, "validate", str(suite), str(suite))
    assert checked.returncode == 2
    lines = checked.stderr.strip().splitlines()
    assert len(lines) == 2 and all("plugin 'broken_plugin'" in line for line in lines), checked.stderr


def guide_block(name: str) -> str:
    """The fenced block that follows `<!-- plugin-example: NAME -->` in docs/plugins.md."""
    found = re.search(rf"<!-- plugin-example: {re.escape(name)} -->\n```\w*\n(.*?)\n```", GUIDE.read_text(), re.S)
    assert found, f"docs/plugins.md has no fenced block after <!-- plugin-example: {name} -->"
    return found.group(1) + "\n"


def test_the_plugin_guide_example_runs_end_to_end(tmp_path, monkeypatch):
    """docs/plugins.md's flatpaint package, installed as its pyproject declares it, runs its check suite: the
    pixel-mean rows equal the means of the saved PNGs, and flat-colour paints the train split's mean colour."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads(guide_block("pyproject.toml"))["project"]["entry-points"]["clipgen_bench.plugins"]
    assert declared == {"flatpaint": "flatpaint"}  # what install() writes into entry_points.txt
    install(tmp_path, "flatpaint", guide_block("flatpaint.py"))
    suite_text = guide_block("flatpaint-check.yaml")
    (tmp_path / "flatpaint-check.yaml").write_text(suite_text)
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))  # bench() passes os.environ on
    limit = 6
    ran = bench(tmp_path, "run", "flatpaint-check.yaml", "--limit", str(limit), "--out", str(tmp_path / "run"),
                "--quiet")
    assert ran.returncode == 0, ran.stdout + ran.stderr

    suite = yaml.safe_load(suite_text)
    flat = {s.get("alias", s["name"]): s.get("args", {}) for s in suite["systems"] if s["name"] == "flat-colour"}
    assert len(flat) == 2 and any(args.get("jitter", 0) > 0 for args in flat.values())
    df = pd.read_csv(tmp_path / "run" / "results.csv")
    rows = df[df["metric"] == "pixel-mean"]
    aliases = [s.get("alias", s["name"]) for s in suite["systems"]]
    assert sorted(set(rows["system"])) == sorted(aliases)
    assert (rows["n"] == limit).all() and not rows[rows["system"].isin(list(flat))]["uses_captions"].any()
    assert set(rows[rows["system"].isin(list(flat))]["system_name"]) == {"flat-colour"}

    # the metric, computed again from the PNGs the run saved (per image, then over images)
    images = {}
    for alias in aliases:
        pngs = sorted((tmp_path / "run" / "samples" / alias / "seed0").glob("*.png"))
        assert len(pngs) == limit
        images[alias] = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) for p in pngs])
        per_image = images[alias].mean(axis=(1, 2))  # [N,3]
        per_caption = json.loads((tmp_path / "run" / "per_caption" / alias / "seed0.json").read_text())
        for c, channel in enumerate("rgb"):
            row = rows[(rows["system"] == alias) & (rows["variant"] == channel)]
            assert len(row) == 1
            assert abs(row["value"].iloc[0] - per_image[:, c].mean()) < 1e-9, (alias, channel)
            saved = [per_caption[str(int(p.stem))][f"pixel-mean/{channel}"] for p in pngs]
            assert np.allclose(saved, per_image[:, c], rtol=0, atol=1e-9)

    # flat-colour's colour: the mean of the first train_images train renders, computed here independently
    from bench.datasets.shapes import ShapesDataset

    dataset = ShapesDataset(**{k: v for k, v in suite["dataset"].items() if k != "name"})
    for alias, args in flat.items():
        mean = dataset.train_images()[: args["train_images"]].double().mean(dim=(0, 2, 3)).numpy()
        got = images[alias]  # [N,H,W,3]
        assert (got == got[:, :1, :1, :]).all(), f"{alias}: images are not flat"
        colours = got[:, 0, 0, :]  # [N,3]
        jitter = args.get("jitter", 0.0)
        assert (np.abs(colours - mean) <= jitter + 0.5).all(), (alias, colours, mean)
        if jitter == 0:
            assert (colours == np.round(mean)).all()
        else:  # seeded per caption: the images differ
            assert len({tuple(c) for c in colours}) > 1

    # one cached mean for both aliases, keyed as the guide says: its key, the train split, platform and code
    assert len({args["train_images"] for args in flat.values()}) == 1
    entries = [p for p in (tmp_path / "cache" / "flat-colour-mean").glob("*/key.json")
               if not p.parent.name.startswith(".")]
    assert len(entries) == 1
    key = json.loads(entries[0].read_text())["key"]
    assert key["train_images"] == next(iter(flat.values()))["train_images"] and "jitter" not in key
    assert list(key["data"]) == ["train"] and key["data"]["train"]["split"] == "train"
    assert {"trained_on", "code"} <= set(key)
