"""bench/cache.py's promises that a mutation audit found no test could fail on: what changes a key and what must not
(key order; docstrings of modules, classes and async functions; the code outside a "module:Class.method" entry; a
module's place in its package; the torch build and the processor a device names), `path_stamp` of files (their
spelling: relative, "~") and folders (every file under them, nested ones included, by place, size and mtime),
`cached_artefact` (trains once then loads the saved folder; a training or save that fails, even by Ctrl-C, leaves
nothing behind; a folder without key.json is not done; a rival that finished first keeps its artefact and ours
leaves no temp folder; temp names that `bench cache` knows as incomplete), the atomic writers (a write that fails
keeps the old file and leaves no temp file; text as UTF-8) and `stats_file_key`'s refusals (a key that is no
dict, a pickled key)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch

import bench
import bench.cache
from bench.cache import (LIBRARIES, artefact_dir, atomic_write_bytes, atomic_write_text, cached_artefact, key_hash,
                         library_versions, machine_name, path_stamp, stats_file_key)
from bench.cli_cache import TEMP_NAME

try:  # tests/ as a package or as a plain folder on sys.path
    from tests.test_code_fingerprint import _fresh, pkg  # noqa: F401  (pkg: a fixture, used by name)
except ImportError:
    from test_code_fingerprint import _fresh, pkg  # noqa: F401


# ---- key_hash, library versions, the processor ---------------------------------------------------------------
def test_key_hash_ignores_key_order_at_every_depth_but_not_list_order():
    h = key_hash({"x": 1, "y": {"b": [1, 2], "a": "s"}})
    assert h == key_hash({"y": {"a": "s", "b": [1, 2]}, "x": 1})
    assert h != key_hash({"x": 1, "y": {"b": [2, 1], "a": "s"}})
    assert len(h) == 20 and int(h, 16) >= 0  # the folder names `bench cache` lists
    assert key_hash({"p": Path("/a/b")}) == key_hash({"p": "/a/b"})  # a value JSON cannot write counts by str()


def test_key_hash_of_a_set_is_the_same_in_every_process():
    """A set of strings iterates in an order that PYTHONHASHSEED changes; its key must not."""
    code = ("from bench.cache import key_hash; "
            "print(key_hash({'s': {'alpha', 'beta', 'gamma', 'delta', 'epsilon'}, 'f': frozenset({3, 1, 2})}))")
    hashes = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": str(seed)},
                             capture_output=True, text=True, check=True).stdout.strip() for seed in range(6)}
    assert len(hashes) == 1
    assert hashes.pop() == key_hash({"s": ["alpha", "beta", "delta", "epsilon", "gamma"], "f": [1, 2, 3]})


def test_library_versions_name_torch_with_its_build_tag_and_absent_libraries(monkeypatch):
    versions = library_versions()
    assert set(versions) == set(LIBRARIES)
    assert versions["torch"] == torch.__version__  # "2.x.y+cu130", which the package metadata leaves out
    assert versions["numpy"] == version("numpy")
    monkeypatch.setattr(bench.cache, "LIBRARIES", ("numpy", "no-such-library-clipgen"))
    assert library_versions.__wrapped__() == {"numpy": version("numpy"), "no-such-library-clipgen": "absent"}


def test_machine_name_is_the_cpu_model_or_the_model_of_the_gpu_named(monkeypatch):
    model = None
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as fh:
            model = next((line.partition(":")[2].strip() for line in fh if line.startswith("model name")), None)
    assert machine_name.__wrapped__("cpu").startswith(model or platform.processor() or platform.machine() or "unknown")
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: asked.append(device) or f"GPU of {device}")
    assert machine_name.__wrapped__("cuda:1") == "GPU of cuda:1"  # the second GPU may be another model
    assert machine_name.__wrapped__("cuda") == "GPU of cuda" and asked == ["cuda:1", "cuda"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert machine_name.__wrapped__("cuda:0") == "cuda (not available)"


def test_machine_name_tells_apart_cpu_generations_that_share_a_model_name(tmp_path, monkeypatch):
    """A VM may call a Zen 3 and a Zen 4 both "AMD EPYC"; they run other kernels (AVX2, AVX-512) and so train
    other weights: the CPU family and model numbers and torch's instruction set tell them apart."""
    def cpuinfo(model: int) -> str:
        block = "processor\t: {}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: {}\nmodel name\t: AMD EPYC\n\n"
        path = tmp_path / f"cpuinfo-{model}"
        path.write_text(block.format(0, model) + block.format(1, 99))  # the first processor's block counts
        return str(path)

    isa = torch.backends.cpu.get_cpu_capability()
    zen3 = machine_name.__wrapped__("cpu", cpuinfo(1))
    assert zen3 == f"AMD EPYC (cpu family 25, model 1; {isa})"
    assert machine_name.__wrapped__("cpu", cpuinfo(17)) == f"AMD EPYC (cpu family 25, model 17; {isa})"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "ANOTHER-ISA")
    assert machine_name.__wrapped__("cpu", cpuinfo(1)) == "AMD EPYC (cpu family 25, model 1; ANOTHER-ISA)"
    (tmp_path / "bare").write_text("processor\t: 0\n")  # no model fields (some ARM kernels): the platform's name
    assert machine_name.__wrapped__("cpu", str(tmp_path / "bare")) == \
        f"{platform.processor() or platform.machine() or 'unknown'} (ANOTHER-ISA)"


# ---- code_fingerprint: docstrings never count, code always does ----------------------------------------------
CLASSY = '''"""A module of a model."""


class Model:
    """A model."""

    def forward(self, x):
        """Forward."""
        return x + 1

    def other(self):
        return 0


async def fetch(x):
    """Fetches."""
    return x
'''


def test_docstrings_of_modules_classes_and_async_functions_do_not_count(pkg):
    (pkg / "classy.py").write_text(CLASSY)
    entries = ("fp_pkg.classy", "fp_pkg.classy:Model", "fp_pkg.classy:Model.forward", "fp_pkg.classy:fetch")
    before = [_fresh(e) for e in entries]
    assert len(set(before)) == 4
    (pkg / "classy.py").write_text(CLASSY.replace("A module of a model.", "Reworded.").replace("A model.", "Better.")
                                   .replace("Forward.", "Adds one.").replace("Fetches.", "Returns x."))
    assert [_fresh(e) for e in entries] == before


def test_a_qualname_entry_follows_its_definition_only(pkg):
    (pkg / "classy.py").write_text(CLASSY)
    whole, method, fetch = _fresh("fp_pkg.classy"), _fresh("fp_pkg.classy:Model.forward"), _fresh("fp_pkg.classy:fetch")
    (pkg / "classy.py").write_text(CLASSY.replace("return 0", "return 1"))  # another method of the class
    assert _fresh("fp_pkg.classy:Model.forward") == method and _fresh("fp_pkg.classy:fetch") == fetch
    assert _fresh("fp_pkg.classy") != whole
    (pkg / "classy.py").write_text(CLASSY.replace("return x + 1", "return x + 2"))
    assert _fresh("fp_pkg.classy:Model.forward") != method and _fresh("fp_pkg.classy:fetch") == fetch
    (pkg / "classy.py").write_text(CLASSY.replace("    return x\n", "    return x * 2\n"))
    assert _fresh("fp_pkg.classy:fetch") != fetch and _fresh("fp_pkg.classy:Model.forward") == method


def test_a_qualname_entry_counts_every_definition_of_its_name(pkg):
    """Python uses the last definition of a name, and a property's setter shares its getter's name: all count."""
    twice = CLASSY + "\n\nasync def fetch(x):\n    return x\n"
    (pkg / "classy.py").write_text(twice)
    fetch = _fresh("fp_pkg.classy:fetch")
    (pkg / "classy.py").write_text(twice[:-len("x\n")] + "-x\n")  # the second fetch, the one in force, changed
    assert _fresh("fp_pkg.classy:fetch") != fetch
    prop = CLASSY.replace("    def other(self):", "    @property\n    def v(self):\n        return 1\n\n"
                                                 "    @v.setter\n    def v(self, value):\n        self.w = value\n\n"
                                                 "    def other(self):")
    (pkg / "classy.py").write_text(prop)
    v = _fresh("fp_pkg.classy:Model.v")
    (pkg / "classy.py").write_text(prop.replace("self.w = value", "self.w = -value"))
    assert _fresh("fp_pkg.classy:Model.v") != v


def test_a_module_moved_within_its_package_changes_the_packages_key(pkg):
    whole = _fresh("fp_pkg")
    (pkg / "sub" / "deep.py").rename(pkg / "sub" / "deeper.py")  # the same code under another import name
    assert _fresh("fp_pkg") != whole


# ---- path_stamp ----------------------------------------------------------------------------------------------
def test_a_file_stamp_is_its_resolved_path_size_and_mtime_however_it_is_spelled(tmp_path, monkeypatch):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    os.utime(f, ns=(1_600_000_000_000_000_000, 1_700_000_000_123_456_789))
    stamp = path_stamp(f)
    assert stamp == {"path": str(f.resolve()), "size": 3, "mtime_ns": 1_700_000_000_123_456_789}
    monkeypatch.chdir(tmp_path)
    assert path_stamp("w.bin") == stamp
    monkeypatch.setenv("HOME", str(tmp_path))
    assert path_stamp("~/w.bin") == stamp
    os.utime(f, ns=(1_600_000_000_000_000_000, 1_700_000_000_123_456_790))  # rewritten in place, same size
    assert path_stamp(f) != stamp
    assert path_stamp(tmp_path / "gone") == {"path": str(tmp_path / "gone"), "size": None, "mtime_ns": None}


def test_a_folder_stamp_follows_every_file_under_it(tmp_path, monkeypatch):
    ck = tmp_path / "ckpt"
    (ck / "sub").mkdir(parents=True)
    (ck / "sub" / "w.bin").write_bytes(b"1234")
    (ck / "a.txt").write_text("x")
    deep = ck / "sub" / "w.bin"
    t = deep.stat().st_mtime_ns
    base = path_stamp(ck)
    assert base["files"] == 2 and base["path"] == str(ck.resolve())
    monkeypatch.chdir(tmp_path)
    assert path_stamp("ckpt") == base == path_stamp(ck)
    os.utime(deep, ns=(t, t + 1000))  # a nested checkpoint rewritten in place: same size, another mtime
    assert path_stamp(ck) != base
    os.utime(deep, ns=(t, t))
    assert path_stamp(ck) == base
    deep.write_bytes(b"12345")  # another size, the same mtime
    os.utime(deep, ns=(t, t))
    assert path_stamp(ck) != base
    deep.write_bytes(b"1234")
    os.utime(deep, ns=(t, t))
    assert path_stamp(ck) == base
    (ck / "other").mkdir()
    deep.rename(ck / "other" / "w.bin")  # the same file in another place (a rename keeps the mtime)
    assert path_stamp(ck) != base
    assert path_stamp(ck)["files"] == 2


# ---- cached_artefact -----------------------------------------------------------------------------------------
class Store:
    """train/save/load callables that record their calls; save writes the object into w.txt."""

    def __init__(self, value: str = "weights"):
        self.value, self.calls = value, []

    def train(self):
        self.calls.append("train")
        return self.value

    def save(self, obj, folder):
        self.calls.append(("save", folder))
        Path(folder, "w.txt").write_text(obj)

    def load(self, folder):
        self.calls.append(("load", folder))
        return Path(folder, "w.txt").read_text() + " (loaded)"

    def __call__(self, root, key=None):
        return cached_artefact(root, "thing", key or {"a": 1}, self.train, self.save, self.load)


def test_cached_artefact_trains_once_saves_beside_the_target_and_then_loads_it(tmp_path):
    store, target = Store(), artefact_dir(tmp_path, "thing", {"a": 1})
    assert store(tmp_path) == "weights"
    assert store(tmp_path) == "weights (loaded)"
    assert store.calls[0] == "train" and store.calls[2] == ("load", str(target)) and len(store.calls) == 3
    saved_in = Path(store.calls[1][1])
    assert saved_in.parent == target.parent and saved_in != target
    assert TEMP_NAME.fullmatch(saved_in.name)  # what a killed run leaves, `bench cache` lists as incomplete
    record = json.loads((target / "key.json").read_text())
    assert (record["kind"], record["key"], record["bench_version"]) == ("thing", {"a": 1}, bench.__version__)
    assert sorted(os.listdir(tmp_path / "thing")) == [target.name]
    assert sorted(os.listdir(target)) == ["key.json", "w.txt"]
    assert store(tmp_path, {"a": 2}) == "weights" and store.calls.count("train") == 2  # another key: trained


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_save_that_fails_leaves_nothing_and_the_next_call_trains_again(tmp_path, error):
    def half_save(obj, folder):
        Path(folder, "half.bin").write_bytes(b"\0" * 10)
        raise error

    with pytest.raises(type(error)):
        cached_artefact(tmp_path, "thing", {"a": 1}, lambda: "w", half_save, Store().load)
    assert os.listdir(tmp_path / "thing") == []
    store = Store()
    assert store(tmp_path) == "weights" and store(tmp_path) == "weights (loaded)"


def test_a_training_that_fails_leaves_nothing(tmp_path):
    def fail():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_artefact(tmp_path, "thing", {"a": 1}, fail, Store().save, Store().load)
    assert list(tmp_path.rglob("*")) == []


def test_a_folder_without_key_json_is_not_done(tmp_path):
    target = artefact_dir(tmp_path, "thing", {"a": 1})
    target.mkdir(parents=True)  # e.g. a copy of the cache cut short, or a folder made by hand
    store = Store()
    assert store(tmp_path) == "weights" and store.calls[0] == "train"
    assert store(tmp_path) == "weights (loaded)"  # the empty folder was replaced by the whole artefact


def test_a_folder_left_incomplete_is_set_aside_so_the_artefact_trains_once(tmp_path):
    """A non-empty folder without key.json (a cache copy cut short) cannot be renamed over: it is moved to a name
    that `bench cache` lists as incomplete, and the new artefact takes its place, instead of training every time."""
    target = artefact_dir(tmp_path, "thing", {"a": 1})
    target.mkdir(parents=True)
    (target / "w.txt").write_text("half")
    store = Store()
    assert store(tmp_path) == "weights" and store(tmp_path) == "weights (loaded)"
    assert store.calls.count("train") == 1 and (target / "w.txt").read_text() == "weights"
    aside = [p for p in (tmp_path / "thing").iterdir() if p != target]
    assert len(aside) == 1 and TEMP_NAME.fullmatch(aside[0].name) and (aside[0] / "w.txt").read_text() == "half"


def test_when_a_rival_finishes_first_its_artefact_stays_and_ours_leaves_no_temp_folder(tmp_path):
    theirs = Store("theirs")

    def rival_finishes_while_we_train():
        theirs(tmp_path)  # another process trains the same artefact and renames it into place first
        return "ours"

    ours = cached_artefact(tmp_path, "thing", {"a": 1}, rival_finishes_while_we_train, Store().save, Store().load)
    assert ours == "ours"
    target = artefact_dir(tmp_path, "thing", {"a": 1})
    assert os.listdir(tmp_path / "thing") == [target.name]
    assert (target / "w.txt").read_text() == "theirs"
    assert Store("never")(tmp_path) == "theirs (loaded)"


# ---- atomic writes -------------------------------------------------------------------------------------------
def test_a_write_that_fails_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "r.csv"
    target.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "text, not bytes")  # fails inside the write
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["r.csv"]
    renamed = []

    def interrupted(src, dst):
        renamed.append(Path(src).name)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "stats" / f"{'0' * 20}.npz", b"new")
    assert os.listdir(tmp_path / "stats") == [] and target.read_text() == "old"
    assert TEMP_NAME.fullmatch(renamed[0])  # a statistics file's temp: what `bench cache` lists as incomplete


def test_atomic_write_text_writes_utf8(tmp_path):
    atomic_write_text(tmp_path / "r.md", "café ✓\n")
    assert (tmp_path / "r.md").read_bytes() == b"caf\xc3\xa9 \xe2\x9c\x93\n"


# ---- stats_file_key ------------------------------------------------------------------------------------------
def test_stats_file_key_reads_a_dict_and_refuses_anything_else(tmp_path):
    def npz(name, **arrays):
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    assert stats_file_key(npz("good.npz", mu=np.zeros(2), key=np.array(json.dumps({"a": [1, 2]})))) == {"a": [1, 2]}
    assert stats_file_key(npz("list.npz", key=np.array(json.dumps([1, 2])))) is None
    assert stats_file_key(npz("nokey.npz", mu=np.zeros(2))) is None
    assert stats_file_key(npz("badjson.npz", key=np.array("{not json"))) is None
    # a key stored as a pickled object is never unpickled, though it would read as a dict
    assert stats_file_key(npz("pickled.npz", key=np.array('{"a": 1}', dtype=object))) is None
    (tmp_path / "text.npz").write_text("not an npz")
    assert stats_file_key(tmp_path / "text.npz") is None and stats_file_key(tmp_path / "missing.npz") is None


def test_an_npy_array_under_the_npz_name_has_no_key(tmp_path):
    """np.load gives an array, no archive, for such a file: it once raised a TypeError out of `bench cache ls`."""
    np.save(tmp_path / "array.npy", np.zeros(3))
    os.rename(tmp_path / "array.npy", tmp_path / "array.npz")
    assert stats_file_key(tmp_path / "array.npz") is None
