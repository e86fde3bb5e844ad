"""Entry-point plugins (group `clipgen_bench.plugins`) as an installed package provides them: a module on the
path plus a dist-info folder whose entry_points.txt names it. Each case runs `bench` in a fresh interpreter,
since the registries load plugins once per process."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

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


def test_a_plugin_that_fails_to_load_is_one_clear_error(tmp_path):
    install(tmp_path, "broken_plugin", BROKEN)
    result = bench(tmp_path, "ls")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "plugin 'broken_plugin' (broken_plugin) failed to load: RuntimeError: boom at import" in lines[0]
