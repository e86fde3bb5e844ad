"""Small name -> factory registries with one-line descriptions.

Each entry may declare an `args` dataclass: the suite loader checks a YAML
entry's `args:` against it (unknown key, wrong type, out of range, unknown
component) before anything heavy runs. Field metadata understood by the loader:
  help: one line for `bench ls`
  min / max: inclusive numeric bounds (applied to every element of a list)
  choices: allowed values
  component: the value names a declared component of this kind ("clip", "vqgan", ...)
  system: the value names another system alias in the suite
  path: the value is a file path; relative paths are taken from the suite file's folder (True: a bare
        word without / or . is left alone, it may name a model; "dir": always a folder path)

Third-party packages add entries through the entry-point group
`clipgen_bench.plugins`: each entry point is a module (or callable) that
registers on import.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Callable

from bench.api import UserError


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    description: str
    args: type | None  # a dataclass, or None for "takes no args"


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, description: str, args: type | None = None):
        def decorator(factory):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = Entry(name, factory, description, args)
            return factory

        return decorator

    def get(self, name: str) -> Entry:
        load_all()
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries))}") from None

    def __contains__(self, name: str) -> bool:
        load_all()
        return name in self._entries

    def names(self) -> list[str]:
        load_all()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        load_all()
        return [self._entries[n] for n in sorted(self._entries)]


DATASETS = Registry("dataset")
SYSTEMS = Registry("system")
METRICS = Registry("metric")
COMPONENTS = Registry("component kind")

_BUILTIN_MODULES = ("bench.datasets", "bench.components", "bench.systems", "bench.metrics")
_loaded = False
_load_failure: UserError | None = None  # a plugin that failed: every later lookup fails the same way


def load_all() -> None:
    """Import the built-in registering modules and any plugins, once."""
    global _loaded, _load_failure
    if _load_failure is not None:
        raise _load_failure  # not a registry without the plugins after it, which would misreport their names
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        import_module(module)
    for ep in entry_points(group="clipgen_bench.plugins"):
        try:
            obj = ep.load()
            if callable(obj):
                obj()
        except Exception as err:  # a third party's bug: name the plugin, not our traceback
            _load_failure = UserError(f"plugin {ep.name!r} ({ep.value}) failed to load: {type(err).__name__}: "
                                      f"{err}; fix or uninstall the package that provides it")
            raise _load_failure from err
