"""code_fingerprint: cache keys name the code behind a number; docstrings, comments and formatting do not count."""
import importlib
import sys

import pytest

from bench.cache import code_fingerprint

MODULE = '''"""A module docstring."""
SCALE = 2  # a comment


def f(x):
    """Doubles."""
    return x * SCALE
'''


@pytest.fixture
def pkg(tmp_path, monkeypatch):
    root = tmp_path / "fp_pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("")
    (root / "model.py").write_text(MODULE)
    (root / "sub" / "deep.py").write_text("Y = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield root
    for name in [n for n in sys.modules if n.startswith("fp_pkg")]:
        del sys.modules[name]


def _fresh(*modules):
    code_fingerprint.cache_clear()
    return code_fingerprint(*modules)


def test_only_code_changes_count(pkg):
    base = _fresh("fp_pkg.model")
    (pkg / "model.py").write_text(MODULE.replace("Doubles.", "Multiplies by SCALE.").replace("# a comment", "")
                                  .replace("return x * SCALE", "return (x *\n            SCALE)"))
    assert _fresh("fp_pkg.model") == base
    (pkg / "model.py").write_text(MODULE.replace("SCALE = 2", "SCALE = 3"))
    assert _fresh("fp_pkg.model") != base


def test_a_package_counts_with_every_module_under_it(pkg):
    whole, model = _fresh("fp_pkg"), _fresh("fp_pkg.model")
    assert whole != model and _fresh("fp_pkg.model", "fp_pkg") == _fresh("fp_pkg", "fp_pkg.model", "fp_pkg")
    (pkg / "sub" / "deep.py").write_text("Y = 2\n")
    assert _fresh("fp_pkg") != whole and _fresh("fp_pkg.model") == model


def test_one_function_of_a_module(pkg):
    f, whole = _fresh("fp_pkg.model:f"), _fresh("fp_pkg.model")
    assert f != whole
    (pkg / "model.py").write_text(MODULE.replace("SCALE = 2", "SCALE = 3"))  # outside f
    assert _fresh("fp_pkg.model:f") == f and _fresh("fp_pkg.model") != whole
    (pkg / "model.py").write_text(MODULE.replace("return x * SCALE", "return x + SCALE"))
    assert _fresh("fp_pkg.model:f") != f
    with pytest.raises(ValueError, match="defines no 'g'"):
        _fresh("fp_pkg.model:g")


def test_a_module_without_source_counts_by_name(monkeypatch):
    monkeypatch.setitem(sys.modules, "typed_in", type(sys)("typed_in"))  # no __file__, as in an interpreter
    assert _fresh("typed_in") == _fresh("typed_in") != _fresh("typed_in_too")


def test_a_display_only_module_is_left_out_of_its_packages_fingerprint(pkg, monkeypatch):
    import bench.cache

    from bench.cache import UNKEYED_MODULES

    assert "reference.progress" in UNKEYED_MODULES  # progress bars: they draw, they never change a number
    monkeypatch.setattr(bench.cache, "UNKEYED_MODULES", frozenset({"fp_pkg.sub.deep"}))
    whole = _fresh("fp_pkg")
    (pkg / "sub" / "deep.py").write_text("Y = 2\n")
    assert _fresh("fp_pkg") == whole
    (pkg / "model.py").write_text(MODULE.replace("SCALE = 2", "SCALE = 3"))
    assert _fresh("fp_pkg") != whole


def test_a_plugin_module_is_keyed_with_its_whole_package(pkg, tmp_path):
    from bench.cache import code_home

    assert code_home("fp_pkg.model") == "fp_pkg" and code_home("reference.gpt") == "reference"
    assert code_home("bench.systems.clipgen") == "bench.systems.clipgen"  # harness modules stay alone
    assert code_home("fp_pkg") == "fp_pkg"
    (tmp_path / "fp_loose").mkdir()  # a namespace package (no __init__.py): only the module itself is known
    (tmp_path / "fp_loose" / "systems.py").write_text("Z = 1\n")
    importlib.invalidate_caches()
    assert code_home("fp_loose.systems") == "fp_loose.systems"


def test_editing_a_plugins_helper_module_changes_its_artefacts_code_key(pkg):
    from types import SimpleNamespace

    from bench.build import Builder

    builder = SimpleNamespace(_dataset=SimpleNamespace(code_modules=lambda: ["bench.datasets.shapes"]))
    before = Builder.code_of(builder, "fp_pkg.model")  # a factory in fp_pkg.model, which could import fp_pkg.sub
    code_fingerprint.cache_clear()
    (pkg / "sub" / "deep.py").write_text("Y = 2\n")
    assert Builder.code_of(builder, "fp_pkg.model") != before
