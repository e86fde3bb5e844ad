"""Small name -> factory registries with one-line descriptions.

Each entry may declare an `args` dataclass: the suite loader checks a YAML
entry's `args:` against it (unknown key, wrong type, out of range, unknown
component) before anything heavy runs. Field metadata understood by the loader:
  help: one line for `bench ls NAME`
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

import dataclasses
import types
import typing
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


_REQUIRED = object()


def describe_args(cls: type | None, prefix: str = "", defaults: Any = None) -> list[tuple[str, str, str, str]]:
    """(dotted name, type, default, what the metadata says) per argument of an args dataclass; a nested args
    dataclass (e.g. a system's `train:`) gives its fields as `train.NAME`, with the defaults of the instance its
    field defaults to (`defaults`)."""
    if cls is None:
        return []
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        tp, name = hints[f.name], prefix + f.name
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = _REQUIRED
        if dataclasses.is_dataclass(tp):
            rows += describe_args(tp, name + ".", None if default is _REQUIRED else default)
            continue
        rows.append((name, _type_name(tp), "(required)" if default is _REQUIRED else _yaml_text(default),
                     _meta_text(f.metadata)))
    return rows


def _yaml_text(value: Any) -> str:
    """A default as a suite would write it ("-" for none)."""
    if value is None:
        return "-"
    if isinstance(value, str) and not value:
        return '""'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    return str(value)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(map(repr, typing.get_args(tp)))
    if typing.get_origin(tp) in (tuple, list):
        return f"list of {_type_name(typing.get_args(tp)[0])}" if typing.get_args(tp) else "list"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _meta_text(meta: typing.Mapping) -> str:
    parts = []
    if "min" in meta or "max" in meta:
        parts.append(" and ".join(f"{op} {meta[k]}" for k, op in (("min", ">="), ("max", "<=")) if k in meta))
    if "choices" in meta:
        parts.append("one of " + ", ".join(map(str, meta["choices"])))
    if "component" in meta:
        parts.append(f"names {'an' if meta['component'][0] in 'aeiou' else 'a'} {meta['component']} component")
    if "system" in meta:
        parts.append("names a system alias")
    if meta.get("path"):
        parts.append("a folder path" if meta["path"] == "dir" else "a file path")
    if "help" in meta:
        parts.append(meta["help"])
    return "; ".join(parts)


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
    _loaded = True  # first: a module that looks a name up while it registers must not load everything again
    try:
        for module in _BUILTIN_MODULES:
            import_module(module)
    except BaseException:
        _loaded = False  # a broken install: every lookup raises again, none sees a partial registry
        raise
    for ep in entry_points(group="clipgen_bench.plugins"):
        try:
            obj = ep.load()
            if callable(obj):
                obj()
        except Exception as err:  # a third party's bug: name the plugin, not our traceback
            _load_failure = UserError(f"plugin {ep.name!r} ({ep.value}) failed to load: {type(err).__name__}: "
                                      f"{err}; fix or uninstall the package that provides it")
            raise _load_failure from err
    _check_declarations()


def _check_declarations() -> None:
    """Every factory's `reads` (the splits its cache keys name) is well formed: a mistake there is one line at
    start-up, naming the entry and its module, not a traceback when the entry is first built."""
    global _load_failure
    from bench.datasets.base import check_reads

    for registry in (DATASETS, SYSTEMS, METRICS, COMPONENTS):
        for entry in registry._entries.values():
            reads = getattr(entry.factory, "reads", None)
            if reads is None:
                continue
            try:
                check_reads(reads, f"{registry.kind} {entry.name!r} ({entry.factory.__module__})")
            except ValueError as err:
                _load_failure = UserError(str(err))
                raise _load_failure from None
