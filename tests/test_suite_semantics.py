"""What a suite means once loaded, pinned by values written out by hand: the documented defaults; how YAML values
become ints, floats, bools and lists (and which are refused, each with one line naming the file, line and key);
inclusive bounds; paths taken from the folder of the file that wrote them (never the working directory), with ~,
$VARS, bare words, `--set` values and a clip's MODEL@FILE; `--set` into list entries, empty values, plain text and
sections the file left empty; include order; component, system and reported-value checks; `seeds_of`, `system`,
`references`, `path_args` and `split_model_path`; `Suite.hash()` shared by spellings of one suite and changed by any
edit that changes a number; the resolved suite as JSON; and `bench run` on a bad suite exiting 2 with nothing
written. Together they kill 48 mutations of bench/suite.py that the older suite tests let through, and one test
pins the fix that lets `--set` write into a section the file left empty (`generation:` with nothing under it)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli import cli
from bench.suite import SuiteError, load_suite, path_args, references, split_model_path

try:  # tests/ as a package or as a plain folder on sys.path
    from tests.test_suite import BAD, _write
except ImportError:
    from test_suite import BAD, _write

HEAD = "suite: s\nversion: 1\ndataset: {name: shapes}\n"
NOISE = HEAD + "systems: [{name: noise}]\n"


def _error(path: Path, overrides=()) -> str:
    with pytest.raises(SuiteError) as err:
        load_suite(path, list(overrides))
    return str(err.value)


# ---- defaults ----------------------------------------------------------------------------------------------------
def test_defaults_are_filled_in_as_documented(tmp_path):
    p = _write(tmp_path, "s.yaml", HEAD + "systems: [{name: noise}, {name: random-caption, alias: r, args: {of: noise}}]\n"
                                          "metrics: [{name: fd}]\ncomponents: {clip: {kind: clip, train: }}\n")
    s = load_suite(p)
    assert (s.suite, s.version, s.description, s.path, s.overrides) == ("s", 1, "", str(p), ())
    g = s.generation
    assert (g.batch_size, g.seeds, g.threads, g.warmup, g.processes) == (64, (0,), None, True, 1)
    a = s.dataset.args
    assert (s.dataset.name, a.resolution, a.num_captions, a.seed, a.train_size, a.pairs_size) == ("shapes", 32, 384, 0,
                                                                                                  16000, 12000)
    assert a.held_out == ("red square", "green triangle", "blue cross", "yellow circle") and s.dataset.train_source is None
    noise, r = s.systems
    assert (noise.name, noise.alias, noise.args, noise.seeds) == ("noise", "noise", None, None)
    assert (r.name, r.alias, r.args.of, r.seeds) == ("random-caption", "r", "noise", None)
    fd = s.metrics[0]
    assert (fd.name, fd.args.features, fd.args.blur, fd.args.clip, fd.args.batch_size) == ("fd", "inception-v3-compat",
                                                                                           [0], None, 64)
    clip = s.components["clip"]  # `train:` left empty: every training default
    assert (clip.name, clip.kind, clip.path) == ("clip", "clip", None)
    t = clip.train
    assert (t.preset, t.steps, t.batch_size, t.lr, t.seed) == ("tiny", 150, 256, 0.002, 0)
    assert s.reported == ()


def test_a_reported_row_without_uses_captions_uses_them_and_its_numbers_are_floats(tmp_path):
    p = _write(tmp_path, "s.yaml", NOISE + "reported:\n  - system: CogView\n    citation: Ding 2021\n"
                                           "    values: {fid/held-out/colour: 27, kid: 0.5}\n")
    row = load_suite(p).reported[0]
    assert (row.system, row.citation, row.uses_captions) == ("CogView", "Ding 2021", True)
    fid, kid = row.values
    assert (fid.metric, fid.variant, fid.value, type(fid.value)) == ("fid", "held-out/colour", 27.0, float)
    assert (kid.metric, kid.variant, kid.value) == ("kid", "", 0.5)


# ---- types and bounds ----------------------------------------------------------------------------------------------
def test_ints_become_floats_single_values_become_lists_and_null_stays_null(tmp_path):
    p = _write(tmp_path, "s.yaml", "suite: s\nversion: 1\ndataset: {name: shapes, held_out: red square}\n"
                                   "generation: {seeds: 3, warmup: no}\n"
                                   "components: {clip: {kind: clip, train: {}}, vqgan: {kind: vqgan, train: {}}}\n"
                                   "systems: [{name: clipgen, args: {temperature: 2, top_p: 1, top_k: null}}]\n"
                                   "metrics: [{name: fd, args: {blur: 2}}]\n")
    s = load_suite(p)
    assert s.generation.seeds == (3,) and s.generation.warmup is False
    assert s.dataset.args.held_out == ("red square",)
    args = s.system("clipgen").args
    assert (args.temperature, type(args.temperature), args.top_p, type(args.top_p)) == (2.0, float, 1.0, float)
    assert args.top_k is None
    assert s.metrics[0].args.blur == [2]  # a list[int] field stays a list


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads 1e-3 as text; a suite means the number (YAML 1.2), in the file and in --set."""
    p = _write(tmp_path, "s.yaml", "suite: s\nversion: 1\ndataset: {name: shapes}\n"
                                   "components: {clip: {kind: clip, train: {}}, vqgan: {kind: vqgan, train: {}}}\n"
                                   "systems: [{name: clipgen, args: {temperature: 5e-1, top_p: 1E0}}]\n"
                                   "reported: [{system: x, citation: y, values: {kid: 2e-3, fid: -1.5e+1}}]\n")
    s = load_suite(p)
    assert (s.system("clipgen").args.temperature, s.system("clipgen").args.top_p) == (0.5, 1.0)
    assert [v.value for v in s.reported[0].values] == [0.002, -15.0]
    assert load_suite(p, ["systems.clipgen.args.temperature=25e-2"]).system("clipgen").args.temperature == 0.25
    assert _error(p, ["systems.clipgen.args.temperature=0e0"]).endswith("temperature: must be >= 1e-06, got 0.0")
    for text in ("nan", "inf", "1e", "e3", "1e-3x", "'1.5'", "'1e-3 '"):
        assert "expected a number, got str" in _error(p, [f"systems.clipgen.args.temperature={text}"]), text


@pytest.mark.parametrize("line, key, message", [
    ("generation: {warmup: 1}", "generation.warmup", "expected true or false, got int 1"),
    ("generation: {warmup: 'true'}", "generation.warmup", "expected true or false, got str 'true'"),
    ("generation: {batch_size: true}", "generation.batch_size", "expected an integer, got a boolean (true)"),
    ("generation: {batch_size: 8.0}", "generation.batch_size", "expected an integer, got float 8.0"),
    ("generation: {seeds: true}", "generation.seeds", "expected a list, got a boolean (true)"),
    ("generation: {seeds: {a: 1}}", "generation.seeds", "expected a list, got a mapping"),
    ("metrics: [{name: fd, args: {features: swav}}]", "metrics.0.args.features",
     "got 'swav'; allowed: inception-v3-compat, effnet-lite0, clip"),
    ("metrics: [{name: attribute-accuracy, args: {judge_floor: false}}]", "metrics.0.args.judge_floor",
     "expected a number, got a boolean (false)"),
    ("reported: [{system: x, citation: y, values: {fid: true}}]", "reported.0.values.fid",
     "expected a number, got a boolean (true)"),
    ("reported: [{system: x, citation: y, values: {}}]", "reported.0.values",
     "expected a mapping of 'metric' or 'metric/variant' -> number"),
    ("reported: [{system: x, citation: y, uses_captions: 1, values: {fid: 1}}]", "reported.0.uses_captions",
     "expected true or false, got int 1"),
    ("description:", "description", "expected text, got nothing"),
    ("1: one", "<top>", "keys must be strings, got 1"),
])
def test_a_value_of_the_wrong_type_is_one_line_naming_its_key(tmp_path, line, key, message):
    p = _write(tmp_path, "s.yaml", NOISE + line + "\n")
    assert _error(p) == f"{p}:5: {key}: {message}"


@pytest.mark.parametrize("version", ["true", "0", "-1", "1.0"])
def test_version_is_a_positive_integer(tmp_path, version):
    p = _write(tmp_path, "s.yaml", f"suite: s\nversion: {version}\ndataset: {{name: shapes}}\nsystems: [{{name: noise}}]\n")
    assert _error(p).startswith(f"{p}:2: version: expected a positive integer, got ")


@pytest.mark.parametrize("name, ok", [("a.b-c_1", True), ("_x", True), ("'9'", True), (".hidden", False),
                                      ("-x", False), ("a/b", False), ("'a b'", False)])
def test_the_suite_name_must_name_a_folder(tmp_path, name, ok):
    p = _write(tmp_path, "s.yaml", f"suite: {name}\nversion: 1\ndataset: {{name: shapes}}\nsystems: [{{name: noise}}]\n")
    if ok:
        assert load_suite(p).suite == name.strip("'")
    else:
        assert re.match(rf"^{re.escape(str(p))}:1: suite: .* cannot name the run folder runs/<suite>", _error(p))


@pytest.mark.parametrize("assignment, value", [
    ("generation.batch_size=1", 1), ("generation.processes=64", 64), ("generation.seeds=[0]", (0,)),
    ("generation.seeds=[9223372036854775807]", (2**63 - 1,)), ("dataset.resolution=16", 16),
    ("dataset.resolution=512", 512), ("systems.0.args.top_p=0", 0.0), ("systems.0.args.top_p=1", 1.0),
])
def test_bounds_are_inclusive(tmp_path, assignment, value):
    p = _write(tmp_path, "s.yaml", HEAD + "components: {clip: {kind: clip, path: /c}, vqgan: {kind: vqgan, path: /v}}\n"
                                          "systems: [{name: clipgen}]\n")
    s = load_suite(p, [assignment])
    key = assignment.split("=")[0]
    got = {"generation.batch_size": s.generation.batch_size, "generation.processes": s.generation.processes,
           "generation.seeds": s.generation.seeds, "dataset.resolution": s.dataset.args.resolution,
           "systems.0.args.top_p": s.systems[0].args.top_p}[key]
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("assignment, message", [
    ("generation.batch_size=0", "must be >= 1, got 0"), ("generation.processes=65", "must be <= 64, got 65"),
    ("dataset.resolution=15", "must be >= 16, got 15"), ("dataset.resolution=513", "must be <= 512, got 513"),
    ("generation.seeds=[9223372036854775808]", "must be <= 9223372036854775807, got 9223372036854775808"),
])
def test_one_past_a_bound_is_refused(tmp_path, assignment, message):
    p = _write(tmp_path, "s.yaml", NOISE)
    key = assignment.split("=")[0] + (".0" if "seeds" in assignment else "")
    assert _error(p, [assignment]) == f"--set {assignment}:1: {key}: {message}"


def test_a_system_without_arguments_takes_an_empty_mapping_but_no_argument(tmp_path):
    p = _write(tmp_path, "s.yaml", HEAD + "systems: [{name: noise, args: {}}]\n")
    assert load_suite(p).systems[0].args is None
    q = _write(tmp_path, "q.yaml", HEAD + "systems: [{name: noise, args: {x: 1}}]\n")
    assert _error(q) == f"{q}:4: systems.0.args: system noise takes no arguments"


# ---- paths -------------------------------------------------------------------------------------------------------
def test_paths_are_taken_from_the_suite_folder_whatever_the_working_directory(tmp_path, monkeypatch):
    tmp_path = tmp_path.resolve()
    sub = tmp_path / "suites"
    sub.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("W", "/weights")
    monkeypatch.delenv("UNSET_W", raising=False)
    p = _write(sub, "s.yaml", HEAD + "components:\n"
                                     "  clip: {kind: clip, path: 'ViT-B-32@w/b32.pt'}\n"
                                     "  hub: {kind: clip, path: 'ViT-B-32@openai'}\n"
                                     "  at: {kind: clip, path: '/ck@v2/clip'}\n"
                                     "  vqgan: {kind: vqgan, path: '~/v'}\n"
                                     "systems:\n"
                                     "  - {name: samples-folder, alias: dir, args: {path: imgs}}\n"
                                     "  - {name: clipgen, alias: bare, args: {path: gpt}}\n"
                                     "  - {name: clipgen, alias: file, args: {path: gpt.pt}}\n"
                                     "  - {name: clipgen, alias: var, args: {path: $W/gpt.pt}}\n"
                                     "  - {name: clipgen, alias: unset, args: {path: $UNSET_W/gpt.pt}}\n"
                                     "  - {name: clipgen, alias: set, args: {path: x.pt}}\n")
    s = load_suite(p, ["systems.set.args.path=rel/gpt.pt"])
    assert s.components["clip"].path == f"ViT-B-32@{sub}/w/b32.pt"
    assert s.components["hub"].path == "ViT-B-32@openai"  # a hub tag: a bare word stays
    assert s.components["at"].path == "/ck@v2/clip"  # '@' inside a folder name: no MODEL@ prefix
    assert s.components["vqgan"].path == f"{tmp_path}/home/v"
    paths = {spec.alias: spec.args.path for spec in s.systems}
    assert paths == {"dir": f"{sub}/imgs",  # a folder argument: even a bare word is a folder by the suite
                     "bare": "gpt",  # a path-or-model argument: a bare word may name a model
                     "file": f"{sub}/gpt.pt", "var": "/weights/gpt.pt",
                     "unset": "$UNSET_W/gpt.pt",  # left for the resource check to name the variable
                     "set": f"{elsewhere}/rel/gpt.pt"}  # a --set value: relative to the working directory


def test_a_path_written_in_an_included_file_is_taken_from_that_files_folder(tmp_path):
    tmp_path = tmp_path.resolve()
    (tmp_path / "base" / "deeper").mkdir(parents=True)
    _write(tmp_path / "base" / "deeper", "d.yaml", "suite: deep\nversion: 2\ncomponents: {vqgan: {kind: vqgan, path: ck/v}}\n")
    _write(tmp_path / "base", "b.yaml", "include: deeper/d.yaml\n"
                                        "dataset: {name: shapes, resolution: 16, train_source: {name: imagefolder, root: imgs}}\n"
                                        "systems: [{name: samples-folder, alias: f, args: {path: out}}]\n")
    top = _write(tmp_path, "top.yaml", "include: base/b.yaml\nsystems: [{name: samples-folder, alias: g, args: {path: mine}}]\n")
    s = load_suite(top)
    assert (s.suite, s.version) == ("deep", 2)
    assert s.components["vqgan"].path == f"{tmp_path}/base/deeper/ck/v"
    assert s.dataset.train_source.args.root == f"{tmp_path}/base/imgs"
    assert [(x.alias, x.args.path) for x in s.systems] == [("g", f"{tmp_path}/mine")]  # a list is replaced whole


def test_split_model_path_and_path_args_and_references(tmp_path):
    tmp_path = tmp_path.resolve()
    assert split_model_path("clip", "ViT-B-32@/w/b.pt") == ("ViT-B-32", "/w/b.pt")
    assert split_model_path("clip", "ViT-B-32@openai") == ("ViT-B-32", "openai")
    assert split_model_path("clip", "/x/ck@v2/c") == ("", "/x/ck@v2/c")
    assert split_model_path("clip", "@file.pt") == ("", "@file.pt")
    assert split_model_path("vqgan", "arch@/w/v.pt") == ("", "arch@/w/v.pt")
    p = _write(tmp_path, "s.yaml", HEAD + "components: {clip: {kind: clip, train: {}}, vqgan: {kind: vqgan, train: {}}}\n"
                                          "systems:\n  - {name: clipgen, alias: a}\n"
                                          "  - {name: clipgen, alias: b, args: {path: g.pt, rerank_clip: clip}}\n"
                                          "  - {name: samples-folder, args: {path: imgs, mapping: m.json}}\n"
                                          "  - {name: random-caption, args: {of: a}}\n")
    s = load_suite(p)
    assert path_args(s.system("a").args) == []  # path unset (None): nothing to stamp
    assert path_args(s.system("b").args) == [("path", f"{tmp_path}/g.pt")]
    assert path_args(s.system("samples-folder").args) == [("path", f"{tmp_path}/imgs")]  # mapping is no path argument
    assert path_args(None) == []
    assert list(references(s.system("a").args, ("x",))) == [(("x", "clip"), "component", "clip", "clip"),
                                                            (("x", "vqgan"), "component", "vqgan", "vqgan")]
    assert [r[0] for r in references(s.system("b").args)] == [("clip",), ("vqgan",), ("rerank_clip",)]
    assert list(references(s.system("random-caption").args)) == [(("of",), "system", "", "a")]

    @dataclass(frozen=True)
    class Inner:
        judge: str = field(default="j", metadata={"component": "attribute-judge"})

    @dataclass(frozen=True)
    class Outer:
        inner: Inner = field(default_factory=Inner)
        of: str | None = field(default=None, metadata={"system": True})

    assert list(references(Outer(), ("m",))) == [(("m", "inner", "judge"), "component", "attribute-judge", "j")]


# ---- seeds_of and system ----------------------------------------------------------------------------------------
def test_seeds_of_and_system_go_by_alias(tmp_path):
    p = _write(tmp_path, "s.yaml", HEAD + "generation: {seeds: [3, 1, 2]}\n"
                                          "systems: [{name: noise, alias: a}, {name: real-images, alias: b, seeds: [2, 3]}]\n")
    s = load_suite(p)
    assert s.seeds_of("a") == (3, 1, 2) and s.seeds_of("b") == (2, 3)
    assert s.system("b").name == "real-images"
    with pytest.raises(KeyError):
        s.system("noise")  # its name is not its alias


# ---- --set ----------------------------------------------------------------------------------------------------------
def test_set_finds_list_entries_by_alias_or_by_a_name_that_has_no_alias(tmp_path):
    p = _write(tmp_path, "s.yaml", HEAD + "systems: [{name: noise, alias: n}, {name: random-caption, args: {of: n}}]\n")
    assert load_suite(p, ["generation.seeds=[0, 1]", "systems.n.seeds=[1]"]).system("n").seeds == (1,)
    assert load_suite(p, ["systems.random-caption.args.of=n"]).system("random-caption").args.of == "n"
    assert _error(p, ["systems.noise.seeds=[0]"]) == ("--set:1: systems.noise.seeds: no list entry 'noise' under systems; "
                                                      "allowed: an index 0..1 or one of n, random-caption")
    assert _error(p, ["systems.2.seeds=[0]"]).startswith("--set:1: systems.2.seeds: no list entry '2' under systems")


def test_set_values_empty_plain_text_and_with_equals_signs(tmp_path):
    p = _write(tmp_path, "s.yaml", NOISE + "description: from the file\n")
    assert load_suite(p, ["description="]).description == ""
    assert load_suite(p, ["description=a: b: c"]).description == "a: b: c"  # not YAML: the text itself
    assert load_suite(p, ["description=x=y"]).description == "x=y"
    s = load_suite(p, ["generation.batch_size=4", "generation.batch_size=5"])
    assert s.generation.batch_size == 5 and s.overrides == ("generation.batch_size=4", "generation.batch_size=5")


def test_set_fills_a_section_the_file_left_empty(tmp_path):
    # an empty `generation:` or `args:` means the defaults; --set writes into it as into a missing one
    p = _write(tmp_path, "s.yaml", HEAD + "generation:\ncomponents:\n"
                                          "systems: [{name: noise}, {name: random-caption, alias: r, args: }]\n")
    s = load_suite(p, ["generation.batch_size=4", "systems.r.args.of=noise", "components.v.kind=vqgan",
                       "components.v.path=/v"])
    assert s.generation.batch_size == 4 and s.system("r").args.of == "noise"
    assert (s.components["v"].kind, s.components["v"].path) == ("vqgan", "/v")


# ---- includes ------------------------------------------------------------------------------------------------------
def test_later_includes_win_over_earlier_ones_and_the_file_over_both(tmp_path):
    tmp_path = tmp_path.resolve()
    _write(tmp_path, "a.yaml", "suite: a\nversion: 1\ngeneration: {batch_size: 3, seeds: [1]}\n")
    _write(tmp_path, "b.yaml", "suite: b\ndataset: {name: shapes}\nsystems: [{name: noise}]\ngeneration: {batch_size: 5}\n")
    s = load_suite(_write(tmp_path, "s.yaml", "include: [a.yaml, b.yaml]\ngeneration: {warmup: false}\n"))
    assert (s.suite, s.generation.batch_size, s.generation.seeds, s.generation.warmup) == ("b", 5, (1,), False)
    assert load_suite(_write(tmp_path, "t.yaml", "include: b.yaml\nversion: 7\n")).version == 7
    assert _error(_write(tmp_path, "self.yaml", "include: self.yaml\n")) == (
        f"{tmp_path}/self.yaml:1: include: include cycle: self.yaml -> self.yaml")


def test_an_error_in_the_including_file_names_its_own_line(tmp_path):
    _write(tmp_path, "base.yaml", "suite: s\nversion: 1\ndataset: {name: shapes}\nsystems: [{name: noise}]\n\n"
                                  "generation: {batch_size: 8}\n")
    child = _write(tmp_path, "child.yaml", "include: base.yaml\ngeneration: {batch_size: 0}\n")
    assert _error(child) == f"{child}:2: generation.batch_size: must be >= 1, got 0"


def test_a_train_source_inherits_the_resolution_only(tmp_path):
    p = _write(tmp_path, "s.yaml", "suite: s\nversion: 1\n"
                                   "dataset: {name: shapes, resolution: 48, seed: 5, train_source: {name: imagefolder, root: i}}\n"
                                   "systems: [{name: noise}]\n")
    source = load_suite(p).dataset.train_source.args
    assert (source.resolution, source.seed, source.max_images) == (48, 0, 0)


# ---- components and references --------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, key, message", [
    ("{kind: vqgan}", "components.v", "give exactly one of path: (load) or train: (train from a spec)"),
    ("{kind: vqgan, path: ''}", "components.v.path", "expected a file or directory path, got str ''"),
])
def test_a_component_needs_exactly_one_nonempty_source(tmp_path, spec, key, message):
    p = _write(tmp_path, "s.yaml", NOISE + f"components:\n  v: {spec}\n")
    assert _error(p) == f"{p}:6: {key}: {message}"


def test_references_must_name_a_component_of_the_right_kind_and_another_system(tmp_path):
    p = _write(tmp_path, "s.yaml", NOISE + "components: {v: {kind: vqgan, path: /v}}\n"
                                           "metrics:\n  - {name: clip-score, args: {clip: v}}\n")
    assert _error(p) == f"{p}:7: metrics.0.args.clip: component 'v' is a vqgan, expected a clip"
    q = _write(tmp_path, "q.yaml", HEAD + "systems:\n  - {name: noise}\n  - {name: random-caption, alias: r, args: {of: r}}\n")
    assert _error(q) == f"{q}:6: systems.1.args.of: no other system with alias 'r'; allowed: noise"


@pytest.mark.timeout(30)
def test_a_ring_that_a_system_leads_into_is_named_from_its_own_members(tmp_path):
    p = _write(tmp_path, "s.yaml", HEAD + "systems:\n"
                                          "  - {name: random-caption, alias: a, args: {of: b}}\n"
                                          "  - {name: random-caption, alias: b, args: {of: c}}\n"
                                          "  - {name: random-caption, alias: c, args: {of: b}}\n")
    assert _error(p) == f"{p}:7: systems.2.args.of: systems wrap each other in a ring: b -> c -> b"


# ---- the hash --------------------------------------------------------------------------------------------------------
SUITE = ("suite: h\nversion: 1\ndescription: d\n"
         "dataset: {name: shapes, resolution: 16, num_captions: 8, train_source: {name: imagefolder, root: /imgs}}\n"
         "generation: {batch_size: 8, seeds: [0, 1]}\n"
         "components: {clip: {kind: clip, train: {steps: 5}}, v: {kind: vqgan, path: /ck/v}}\n"
         "systems: [{name: clipgen, alias: g, args: {vqgan: v, temperature: 1.0}, seeds: [1]}, {name: noise}]\n"
         "metrics: [{name: fd, args: {blur: [0, 1]}}]\n"
         "reported: [{system: p, citation: c, values: {fid: 27.1}}]\n")


def test_the_hash_is_shared_by_spellings_of_one_suite(tmp_path, monkeypatch):
    monkeypatch.setenv("CK", "/ck")
    h = load_suite(_write(tmp_path, "a.yaml", SUITE)).hash()
    spellings = {
        "block style, keys reordered, defaults written out, an int for a float, $VAR": (
            "reported:\n  - values: {fid: 27.1}\n    citation: c\n    system: p\n    uses_captions: true\n"
            "metrics:\n  - name: fd\n    args: {blur: [0, 1], features: inception-v3-compat, batch_size: 64}\n"
            "systems:\n  - name: clipgen\n    seeds: [1]\n    alias: g\n    args: {temperature: 1, vqgan: v, clip: clip}\n"
            "  - {name: noise, alias: noise}\n"
            "components:\n  v: {path: $CK/v, kind: vqgan}\n  clip: {kind: clip, train: {steps: 5, preset: tiny}}\n"
            "generation: {seeds: [0, 1], batch_size: 8, warmup: true, processes: 1}\n"
            "dataset:\n  train_source: {name: imagefolder, root: /imgs, resolution: 16}\n  name: shapes\n"
            "  num_captions: 8\n  resolution: 16\n  seed: 0\n"
            "description: d\nversion: 1\nsuite: h\n", []),
        "a system given the suite's seeds": (SUITE.replace("{name: noise}", "{name: noise, seeds: [0, 1]}"), []),
        "a merge key": (SUITE.replace("generation: {batch_size: 8, seeds: [0, 1]}",
                                      "generation: {<<: &g {batch_size: 8}, seeds: [0, 1]}"), []),
        "--set": (SUITE.replace("batch_size: 8", "batch_size: 4").replace("fid: 27.1", "fid: 3"),
                  ["generation.batch_size=8", "reported.0.values.fid=27.1"]),
    }
    for why, (text, overrides) in spellings.items():
        assert load_suite(_write(tmp_path, "b.yaml", text), overrides).hash() == h, why
    (tmp_path / "inc").mkdir()
    _write(tmp_path / "inc", "base.yaml", SUITE)
    assert load_suite(_write(tmp_path, "c.yaml", "include: inc/base.yaml\n")).hash() == h, "an include"


@pytest.mark.parametrize("old, new", [
    ("resolution: 16", "resolution: 32"), ("root: /imgs", "root: /imgs2"), ("seeds: [0, 1]", "seeds: [0, 1, 2]"),
    ("seeds: [1]", "seeds: [0]"), ("steps: 5", "steps: 6"), ("path: /ck/v", "path: /ck/w"),
    ("temperature: 1.0", "temperature: 0.5"), ("alias: g", "alias: g2"), ("blur: [0, 1]", "blur: [0]"),
    ("fid: 27.1", "fid: 27.2"), ("{name: noise}", "{name: real-images}"),
])
def test_the_hash_changes_with_any_edit_that_changes_a_number(tmp_path, old, new):
    assert SUITE.count(old) == 1
    a = load_suite(_write(tmp_path, "a.yaml", SUITE))
    b = load_suite(_write(tmp_path, "b.yaml", SUITE.replace(old, new)))
    assert a.hash() != b.hash()


# ---- the resolved suite ----------------------------------------------------------------------------------------------
def test_the_resolved_suite_is_plain_json_that_loads_as_the_same_suite_from_another_folder(tmp_path, monkeypatch):
    """suite.resolved.json lands in the run folder: its relative paths are written resolved (from the suite file's
    folder; from the working directory for a --set value), so loading it there gives the same suite."""
    tmp_path = tmp_path.resolve()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "suites").mkdir()
    _write(tmp_path / "suites", "base.yaml", "suite: r\nversion: 1\ndataset: {name: shapes, resolution: 16}\n"
                                             "generation: {batch_size: 8, seeds: [0, 1]}\nsystems: [{name: noise}]\n")
    s = load_suite(_write(tmp_path / "suites", "s.yaml", "include: base.yaml\n"
                                                          "dataset: {train_source: {name: imagefolder, root: imgs}}\n"
                                                          "systems: [{name: samples-folder, alias: f, args: {path: out}},"
                                                          " {name: samples-folder, alias: g, args: {path: x}}]\n"),
                   ["generation.seeds=[2]", "systems.f.args.uses_captions=false", "systems.g.args.path=w/g"])
    expected = {"suite": "r", "version": 1, "generation": {"batch_size": 8, "seeds": [2]},
                "dataset": {"name": "shapes", "resolution": 16,
                            "train_source": {"name": "imagefolder", "root": f"{tmp_path}/suites/imgs"}},
                "systems": [{"name": "samples-folder", "alias": "f",
                             "args": {"path": f"{tmp_path}/suites/out", "uses_captions": False}},
                            {"name": "samples-folder", "alias": "g", "args": {"path": f"{tmp_path}/w/g"}}]}
    text = json.dumps(s.resolved, indent=1)  # plain JSON types only: no default= needed
    assert json.loads(text) == expected
    (tmp_path / "runs" / "r").mkdir(parents=True)
    again = load_suite(_write(tmp_path / "runs" / "r", "suite.resolved.json", text))  # JSON is YAML: loads as a suite
    assert again.hash() == s.hash() and again.overrides == ()
    assert again.system("f").args.path == f"{tmp_path}/suites/out" and again.seeds_of("f") == (2,)


# ---- through the CLI -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suite, overrides", [(BAD / "unknown_system.yaml", []), (BAD / "system_ring.yaml", []),
                                              (None, ["generation.seeds=[0, 0]"])])
def test_bench_run_on_a_bad_suite_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, suite, overrides):
    monkeypatch.chdir(tmp_path)
    suite = suite or _write(tmp_path, "s.yaml", NOISE)
    before = sorted(tmp_path.iterdir())
    args = ["run", str(suite), *(a for o in overrides for a in ("--set", o))]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: ") and "Traceback" not in result.output
    result = CliRunner().invoke(cli, args)  # nor the default run folder, runs/<suite>/ here
    assert result.exit_code == 2 and sorted(tmp_path.iterdir()) == before
