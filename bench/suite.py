"""YAML suite -> frozen dataclasses.

`load_suite(path, overrides)` reads the YAML (rejecting duplicate keys), resolves
`include:` (relative paths, deep merge, cycles rejected), applies `--set
key.path=value` overrides, and checks the schema and every registry name. Every
mistake raises `SuiteError` whose message is one line:

    FILE:LINE: key.path: what is wrong; allowed: ...

Nothing here needs data or weights: this is all `bench validate` does.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from bench.api import ComponentSpec, UserError
from bench.cache import canonical_json
from bench.registry import COMPONENTS, DATASETS, METRICS, SYSTEMS, Registry
from reference.errors import first_line


class SuiteError(UserError):
    pass


# ---- the suite, as frozen dataclasses ---------------------------------------------------------
MAX_SEED = 2**63 - 1  # seeds are stored as int64 (results tables, parquet)
MAX_PROCESSES = 64  # generation processes: a typo of 1000 would start 1000 torch processes


@dataclass(frozen=True)
class GenerationSpec:
    batch_size: int = field(default=64, metadata={"min": 1, "help": "captions per generate() call"})
    seeds: tuple[int, ...] = field(default=(0,), metadata={"min": 0, "max": MAX_SEED,
                                                           "help": "one full generation pass per seed"})
    threads: int | None = field(default=None, metadata={"min": 1, "help": "torch threads (default: all cores)"})
    warmup: bool = field(default=True, metadata={"help": "one untimed generate() before timing"})
    processes: int = field(default=1, metadata={"min": 1, "max": MAX_PROCESSES,
                                                "help": "generate in N processes of cores/N threads (captions "
                                                        "sharded, the same samples; --nproc wins)"})


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    args: Any  # the dataset's args dataclass
    # where the image-only training set comes from instead (e.g. an imagefolder); evaluation stays on `name`
    train_source: "DatasetSpec | None" = None


@dataclass(frozen=True)
class SystemSpec:
    name: str
    alias: str
    args: Any  # the system's args dataclass (or None)
    seeds: tuple[int, ...] | None = None  # a subset of generation.seeds for a costly system; None: all of them


@dataclass(frozen=True)
class MetricSpec:
    name: str
    args: Any


@dataclass(frozen=True)
class ReportedValue:
    metric: str
    variant: str
    value: float


@dataclass(frozen=True)
class ReportedRow:
    system: str
    citation: str
    uses_captions: bool
    values: tuple[ReportedValue, ...]


@dataclass(frozen=True)
class Suite:
    suite: str
    version: int
    path: str
    description: str
    dataset: DatasetSpec
    generation: GenerationSpec
    components: dict[str, ComponentSpec]
    systems: tuple[SystemSpec, ...]
    metrics: tuple[MetricSpec, ...]
    reported: tuple[ReportedRow, ...]
    resolved: dict  # the merged YAML after includes and overrides, paths resolved (provenance: loads from anywhere)
    overrides: tuple[str, ...] = ()  # the --set assignments it was loaded with (to load it again elsewhere)

    def system(self, alias: str) -> SystemSpec:
        for s in self.systems:
            if s.alias == alias:
                return s
        raise KeyError(alias)

    def seeds_of(self, alias: str) -> tuple[int, ...]:
        """The seeds this system generates with: its own `seeds:` or the suite's."""
        return self.system(alias).seeds or self.generation.seeds

    def hash(self) -> str:
        """12 hex digits naming the suite as checked (a results row's `suite_hash`): includes merged, overrides
        applied, defaults filled in and paths resolved, so two spellings of one suite share it while one file whose
        relative paths or $VARS lead to other folders does not."""
        checked = dataclasses.asdict(self)
        for provenance_only in ("path", "resolved", "overrides"):
            del checked[provenance_only]
        return hashlib.sha256(canonical_json(checked).encode()).hexdigest()[:12]


# ---- YAML with line numbers -----------------------------------------------------------------
class _Located:
    """Where each key path came from: (file, line)."""

    def __init__(self):
        self.where: dict[tuple, tuple[str, int]] = {}

    def get(self, path: tuple, default: tuple[str, int]) -> tuple[str, int]:
        while path:
            if path in self.where:
                return self.where[path]
            path = path[:-1]
        return self.where.get((), default)


def _node_to_python(node: yaml.Node, file: str, path: tuple, loc: _Located) -> Any:
    loc.where[path] = (file, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        merged = _flatten_merge_keys(node, file, path)
        out: dict = {}
        own: set = set()
        for i, (key_node, value_node) in enumerate(node.value):
            key = _scalar(key_node, file, path, loc)
            if not isinstance(key, str):
                raise SuiteError(f"{file}:{key_node.start_mark.line + 1}: {_dotted(path) or '<top>'}: "
                                 f"keys must be strings, got {key!r}")
            if i >= merged:  # the mapping's own keys (merged ones come first, and its own override them)
                if key in own:
                    raise SuiteError(f"{file}:{key_node.start_mark.line + 1}: {_dotted(path + (key,))}: duplicate key")
                own.add(key)
            out[key] = _node_to_python(value_node, file, path + (key,), loc)
            loc.where[path + (key,)] = (file, key_node.start_mark.line + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_node_to_python(v, file, path + (i,), loc) for i, v in enumerate(node.value)]
    return _scalar(node, file, path, loc)


def _flatten_merge_keys(node: yaml.MappingNode, file: str, path: tuple) -> int:
    """Expand YAML merge keys (`<<: *defaults`) in place, as a YAML loader does; returns how many of the pairs
    now first in `node.value` were merged in."""
    loader = yaml.SafeLoader("")
    own = sum(1 for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge")
    try:
        loader.flatten_mapping(node)
        return len(node.value) - own
    except yaml.YAMLError as err:
        raise SuiteError(f"{file}:{node.start_mark.line + 1}: {_dotted(path) or '<top>'}: "
                         f"{getattr(err, 'problem', None) or err}") from None
    finally:
        loader.dispose()


def _scalar(node: yaml.Node, file: str, path: tuple, loc: _Located) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise SuiteError(f"{file}:{node.start_mark.line + 1}: {_dotted(path) or '<top>'}: expected a plain value")
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, AttributeError) as err:  # a tag the safe loader refuses, !!int abc
        problem = getattr(err, "problem", None) or first_line(err)
        raise SuiteError(f"{file}:{node.start_mark.line + 1}: {_dotted(path) or '<top>'}: cannot read "
                         f"{node.value!r} (tag {node.tag}): {problem}") from None
    finally:
        loader.dispose()


def _read_yaml(path: Path, loc: _Located, base: tuple = ()) -> dict:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SuiteError(f"{file}:1: <file>: no such suite file") from None
    except OSError as err:
        raise SuiteError(f"{file}:1: <file>: cannot read: {err.strerror}") from None
    except UnicodeDecodeError as err:  # err.object: the file's bytes
        line = err.object[:err.start].count(b"\n") + 1
        raise SuiteError(f"{file}:{line}: <file>: not UTF-8 text (byte {err.object[err.start]:#04x})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        if problem == "but found another document":
            problem = "a second document starts here (---); a suite file holds one"
        raise SuiteError(f"{file}:{line}: <yaml>: not valid YAML: {problem}") from None
    if node is None:
        raise SuiteError(f"{file}:1: <file>: the suite is empty; it needs at least suite:, version:, dataset:")
    if not isinstance(node, yaml.MappingNode):
        raise SuiteError(f"{file}:{node.start_mark.line + 1}: <top>: a suite is a mapping of keys, got a "
                         f"{type(node).__name__.replace('Node', '').lower()}")
    try:
        return _node_to_python(node, file, base, loc)
    except RecursionError:
        raise SuiteError(f"{file}:1: <yaml>: an alias refers to itself (a recursive structure)") from None


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _resolve_includes(path: Path, loc: _Located, stack: tuple[Path, ...] = ()) -> dict:
    """Read `path`, merge its includes under it (the including file wins), record every key's line."""
    path = path.resolve() if path.exists() else path
    if path in stack:
        cycle = " -> ".join(p.name for p in stack + (path,))
        file, line = loc.get(("include",), (str(stack[-1]), 1))
        raise SuiteError(f"{file}:{line}: include: include cycle: {cycle}")
    own = _Located()
    data = _read_yaml(path, own)
    includes = data.pop("include", None)
    merged: dict = {}
    if includes is not None:
        file, line = own.get(("include",), (str(path), 1))
        if isinstance(includes, str):
            includes = [includes]
        if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
            raise SuiteError(f"{file}:{line}: include: expected a path or a list of paths")
        for inc in includes:
            target = path.parent / inc
            if not target.exists():
                raise SuiteError(f"{file}:{line}: include: included file {inc!r} not found (looked at {target})")
            loc.where[("include",)] = (file, line)
            merged = _deep_merge(merged, _resolve_includes(target, loc, stack + (path,)))
    loc.where.update(own.where)  # the including file's lines win
    return _deep_merge(merged, data)


# ---- --set overrides --------------------------------------------------------------------------
def apply_override(data: dict, assignment: str, loc: _Located) -> None:
    where = "--set"
    if "=" not in assignment:
        raise SuiteError(f"{where}:1: {assignment}: expected key.path=value")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise SuiteError(f"{where}:1: {key}: empty segment in key path")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        if raw.strip()[:1] in ("[", "{"):  # meant as a list or mapping: say what is wrong with it
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise SuiteError(f"{where}:1: {key}: {raw!r} is not a valid YAML list or mapping: {problem}") from None
        value = raw  # not YAML: the text itself
    except (ValueError, TypeError, AttributeError):  # a tag the safe loader refuses (!!int abc): the text itself
        value = raw
    node: Any = data
    walked: list = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            idx = _list_index(node, part)
            if idx is None:
                names = [str(x.get("alias", x.get("name"))) for x in node if isinstance(x, dict)]
                raise SuiteError(f"{where}:1: {key}: no list entry {part!r} under {_dotted(tuple(walked)) or '<top>'}; "
                                 f"allowed: an index 0..{len(node) - 1} or one of {', '.join(names)}")
            part = idx
        elif isinstance(node, dict):
            if not last and node.get(part) is None:  # a section the file left out or left empty (`generation:`)
                if part not in node:  # the schema check judges the key
                    loc.where[tuple(walked) + (part,)] = (f"--set {assignment}", 1)
                node[part] = {}
        else:
            raise SuiteError(f"{where}:1: {key}: {_dotted(tuple(walked))} is a plain value, it has no {part!r}")
        walked.append(part)
        if last:
            node[part] = value
            replaced = tuple(walked)  # the file's lines at and under it no longer say where the value came from
            for stale in [k for k in loc.where if k[:len(replaced)] == replaced]:
                del loc.where[stale]
            loc.where[replaced] = (f"--set {assignment}", 1)
        else:
            node = node[part]


def _list_index(node: list, part: str) -> int | None:
    if part.isdigit():
        return int(part) if int(part) < len(node) else None
    for i, entry in enumerate(node):
        if isinstance(entry, dict) and (entry.get("alias") == part or (entry.get("name") == part and "alias" not in entry)):
            return i
    return None


# ---- schema checking ----------------------------------------------------------------------------
class _Checker:
    def __init__(self, loc: _Located, file: str):
        self.loc, self.file = loc, file
        self.paths: dict[tuple, str] = {}  # key path -> the path as resolved (`resolve_path`)

    def fail(self, path: tuple, message: str) -> typing.NoReturn:
        file, line = self.loc.get(path, (self.file, 1))
        raise SuiteError(f"{file}:{line}: {_dotted(path) or '<top>'}: {message}")

    def mapping(self, value: Any, path: tuple, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping, got {_describe(value)}")
        for k in value:
            if k not in allowed:
                self.fail(path + (k,), f"unknown key; allowed: {', '.join(allowed)}")
        for k in required:
            if k not in value:
                self.fail(path, f"missing required key {k!r}")
        return value

    def registered(self, reg: Registry, name: Any, path: tuple) -> str:
        if not isinstance(name, str):
            self.fail(path, f"expected a {reg.kind} name, got {_describe(name)}; allowed: {', '.join(reg.names())}")
        if name not in reg:
            self.fail(path, f"unknown {reg.kind} {name!r}; allowed: {', '.join(reg.names())}")
        return name

    def dataclass_from(self, cls: type | None, value: Any, path: tuple, what: str) -> Any:
        if cls is None:
            if value not in (None, {}):
                self.fail(path, f"{what} takes no arguments")
            return None
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping of arguments, got {_describe(value)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for k in value:
            if k not in fields:
                self.fail(path + (k,), f"unknown argument of {what}; allowed: {', '.join(fields) or '(none)'}")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = self.coerce(value[name], hints[name], f.metadata, path + (name,))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.fail(path, f"missing required argument {name!r} of {what}")
        try:
            return cls(**kwargs)
        except (ValueError, TypeError, UserError) as err:
            self.fail(path, str(err))

    def coerce(self, value: Any, tp: Any, meta: typing.Mapping, path: tuple) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            inner = [a for a in args if a is not type(None)]
            errors = []
            for a in inner:
                try:
                    return self.coerce(value, a, meta, path)
                except SuiteError as err:
                    errors.append(err)
            raise errors[-1]
        if origin is typing.Literal:
            if value not in args:
                self.fail(path, f"got {value!r}; allowed: {', '.join(map(str, args))}")
            return value
        if origin in (tuple, list):
            if not isinstance(value, list):
                if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                    value = [value]  # a single value where a list is expected
                else:
                    self.fail(path, f"expected a list, got {_describe(value)}")
            elem = args[0] if args else Any
            out = [self.coerce(v, elem, meta, path + (i,)) for i, v in enumerate(value)]
            return tuple(out) if origin is tuple else out
        if origin is dict or tp is dict:
            if not isinstance(value, dict):
                self.fail(path, f"expected a mapping, got {_describe(value)}")
            return dict(value)
        if dataclasses.is_dataclass(tp):
            return self.dataclass_from(tp, value, path, _dotted(path))
        if tp is Any:
            return value
        if tp is bool:
            if not isinstance(value, bool):
                self.fail(path, f"expected true or false, got {_describe(value)}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(path, f"expected an integer, got {_describe(value)}")
            return self._bounded(value, meta, path)
        if tp is float:
            number = _number(value)
            if number is None:
                self.fail(path, f"expected a number, got {_describe(value)}")
            return self._bounded(number, meta, path)
        if tp is str:
            if not isinstance(value, str):
                self.fail(path, f"expected a string, got {_describe(value)}")
            if "choices" in meta and value not in meta["choices"]:
                self.fail(path, f"got {value!r}; allowed: {', '.join(meta['choices'])}")
            if meta.get("path"):
                return self.resolve_path(value, path, folder=meta["path"] == "dir")
            return value
        self.fail(path, f"unsupported argument type {tp!r} (a bug in the registered args class)")

    def resolve_path(self, value: str, path: tuple, folder: bool = False, kind: str = "") -> str:
        """Expand ~ and $VARS; a relative path is relative to where it was written: the suite file's folder, or the
        working directory for a `--set` value.

        A clip component's `NAME@PATH` (an open_clip architecture and its weights file, `split_model_path`)
        resolves the PATH part. A bare word without `/` or `.` stays as written (it may name a model or a hub
        tag), unless the argument is a `folder`.
        """
        import os

        value = os.path.expanduser(os.path.expandvars(value))
        model, rest = split_model_path(kind, value)
        prefix, sep = (model, "@") if model else ("", "")
        origin, _ = self.loc.get(path, (self.file, 1))
        unset = "$" in rest  # an environment variable that is not set: leave it for the resource check to name
        if rest and not unset and not os.path.isabs(rest) and (folder or "/" in rest or "." in rest):
            rest = str(((Path.cwd() if origin.startswith("--set") else Path(origin).parent) / rest).resolve())
        self.paths[path] = prefix + sep + rest
        return prefix + sep + rest

    def _bounded(self, value, meta, path):
        if "min" in meta and value < meta["min"]:
            self.fail(path, f"must be >= {meta['min']}, got {value}")
        if "max" in meta and value > meta["max"]:
            self.fail(path, f"must be <= {meta['max']}, got {value}")
        if "choices" in meta and value not in meta["choices"]:
            self.fail(path, f"got {value!r}; allowed: {', '.join(map(str, meta['choices']))}")
        return value


# Numbers with an exponent that PyYAML (YAML 1.1: a dot and a signed exponent) reads as text: 1e-3, 5E4, 2.5e3.
# Nobody means those as strings; YAML 1.2 reads them as numbers. Other text, quoted "27.1" included, stays text.
_EXPONENT_NUMBER = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+")


def _number(value: Any) -> float | None:
    """`value` as a float where a number was written (1e-3 included), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value):
        return float(value)
    return None


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


TOP_KEYS = ("suite", "version", "description", "dataset", "generation", "components", "systems", "metrics", "reported")


def _section(data: dict, key: str, empty: Any) -> Any:
    """A top-level section as written; `empty` only when it is absent or null (an empty list where a mapping belongs
    is a mistake the caller reports, not "none")."""
    value = data.get(key)
    return empty if value is None else value


def load_suite(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Suite:
    path = Path(path)
    loc = _Located()
    data = _resolve_includes(path, loc)
    for assignment in overrides:
        apply_override(data, assignment, loc)
    c = _Checker(loc, str(path))
    c.mapping(data, (), TOP_KEYS, required=("suite", "version", "dataset"))
    if not isinstance(data["suite"], str) or not data["suite"]:
        c.fail(("suite",), f"expected a non-empty name, got {_describe(data['suite'])}")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", data["suite"]) or data["suite"] in (".", ".."):
        c.fail(("suite",), f"{data['suite']!r} cannot name the run folder runs/<suite>: use letters, digits, '.', '_' "
                           "and '-' (not starting with '.' or '-')")
    if isinstance(data["version"], bool) or not isinstance(data["version"], int) or data["version"] < 1:
        c.fail(("version",), f"expected a positive integer, got {_describe(data['version'])}")
    if not isinstance(data.get("description", ""), str):
        c.fail(("description",), f"expected text, got {_describe(data['description'])}")

    dataset = _dataset_spec(c, data["dataset"], ("dataset",), inherit={})

    generation = c.dataclass_from(GenerationSpec, data.get("generation", {}), ("generation",), "generation")
    _check_seeds(c, generation.seeds, ("generation", "seeds"))

    components: dict[str, ComponentSpec] = {}
    raw_components = _section(data, "components", {})
    if not isinstance(raw_components, dict):
        c.fail(("components",), f"expected a mapping of name -> component, got {_describe(raw_components)}")
    for name, spec in raw_components.items():
        p = ("components", name)
        spec = c.mapping(spec, p, ("kind", "path", "train"), required=("kind",))
        kind = c.registered(COMPONENTS, spec["kind"], p + ("kind",))
        if ("path" in spec) == ("train" in spec):
            c.fail(p, "give exactly one of path: (load) or train: (train from a spec)")
        if "path" in spec:
            if not isinstance(spec["path"], str) or not spec["path"]:
                c.fail(p + ("path",), f"expected a file or directory path, got {_describe(spec['path'])}")
            components[name] = ComponentSpec(name, kind, c.resolve_path(spec["path"], p + ("path",), kind=kind), None)
        else:
            train = c.dataclass_from(COMPONENTS.get(kind).args, spec["train"], p + ("train",), f"{kind} training")
            # a component kind may check its training args against the dataset (e.g. a preset's resolution)
            problem = getattr(COMPONENTS.get(kind).factory, "check_dataset", lambda t, d: "")(train, dataset.args)
            if problem:
                c.fail(p + ("train",), problem)
            components[name] = ComponentSpec(name, kind, None, train)

    systems: list[SystemSpec] = []
    raw_systems = _section(data, "systems", [])
    if not isinstance(raw_systems, list):
        c.fail(("systems",), f"expected a list of systems, got {_describe(raw_systems)}")
    aliases: set[str] = set()
    for i, entry in enumerate(raw_systems):
        p = ("systems", i)
        entry = c.mapping(entry, p, ("name", "alias", "args", "seeds"), required=("name",))
        name = c.registered(SYSTEMS, entry["name"], p + ("name",))
        alias = entry.get("alias", name)
        if not isinstance(alias, str) or not alias:
            c.fail(p + ("alias",), f"expected a non-empty string, got {_describe(alias)}")
        if alias in aliases:
            c.fail(p + ("alias",), f"alias {alias!r} used twice; give each system a distinct alias:")
        aliases.add(alias)
        args = c.dataclass_from(SYSTEMS.get(name).args, entry.get("args"), p + ("args",), f"system {name}")
        seeds = None
        if "seeds" in entry:
            seeds = c.coerce(entry["seeds"], tuple[int, ...], {"min": 0, "max": MAX_SEED}, p + ("seeds",))
            _check_seeds(c, seeds, p + ("seeds",), within=generation.seeds)
            if seeds == generation.seeds:  # the suite's seeds written out: the same suite (and hash) as not at all
                seeds = None
        systems.append(SystemSpec(name, alias, args, seeds))
    if not systems:
        c.fail(("systems",), "the suite declares no systems")

    metrics: list[MetricSpec] = []
    raw_metrics = _section(data, "metrics", [])
    if not isinstance(raw_metrics, list):
        c.fail(("metrics",), f"expected a list of metrics, got {_describe(raw_metrics)}")
    for i, entry in enumerate(raw_metrics):
        p = ("metrics", i)
        entry = c.mapping(entry, p, ("name", "args"), required=("name",))
        name = c.registered(METRICS, entry["name"], p + ("name",))
        metrics.append(MetricSpec(name, c.dataclass_from(METRICS.get(name).args, entry.get("args"), p + ("args",),
                                                         f"metric {name}")))

    reported = _reported(c, _section(data, "reported", []))

    # references between sections: components by kind, systems by alias
    for i, s in enumerate(systems):
        _check_refs(c, s.args, ("systems", i, "args"), components, aliases - {s.alias})
    _check_system_cycles(c, systems)
    for i, m in enumerate(metrics):
        _check_refs(c, m.args, ("metrics", i, "args"), components, aliases)
    for name, comp in components.items():
        if comp.train is not None:
            _check_refs(c, comp.train, ("components", name, "train"), components, aliases)

    return Suite(suite=data["suite"], version=data["version"], path=str(path), description=data.get("description", ""),
                 dataset=dataset, generation=generation, components=components,
                 systems=tuple(systems), metrics=tuple(metrics), reported=reported,
                 resolved=_with_paths(data, c.paths),
                 overrides=tuple(overrides))


def _with_paths(data: dict, paths: dict[tuple, str]) -> dict:
    """A copy of the merged YAML with each path as resolved, so that it loads as the same suite from any folder
    (a run folder's suite.resolved.json)."""
    out = copy.deepcopy(data)
    for (*parents, last), value in paths.items():  # only written values are resolved, never defaults
        node = out
        for key in parents:
            node = node[key]
        node[last] = value
    return out


def _check_seeds(c: _Checker, seeds: tuple[int, ...], path: tuple, within: tuple[int, ...] | None = None) -> None:
    """At least one seed, none twice (each is a full generation pass), and all out of `within` when given."""
    if not seeds or len(set(seeds)) != len(seeds) or (within is not None and not set(seeds) <= set(within)):
        out_of = f" out of generation.seeds {list(within)}" if within is not None else ", e.g. [0, 1, 2]"
        c.fail(path, f"expected one or more distinct seeds{out_of}, got {list(seeds)}")


def _dataset_spec(c: _Checker, raw: Any, path: tuple, inherit: dict) -> DatasetSpec:
    """`dataset:` (path ("dataset",)) or its `train_source:`, which inherits the dataset's resolution."""
    outer = path == ("dataset",)
    extra = ("train_source",) if outer else ()
    ds = c.mapping(raw, path, _dataset_keys(raw) + extra, required=("name",))
    name = c.registered(DATASETS, ds["name"], path + ("name",))
    if outer and getattr(DATASETS.get(name).factory, "training_only", False):
        c.fail(path + ("name",), f"{name} has no captions to evaluate on: name a captioned dataset here and give "
                                 f"{name} as its train_source: (see `bench ls`)")
    values = {k: v for k, v in ds.items() if k not in ("name", "train_source")}
    args_cls = DATASETS.get(name).args
    fields = {f.name for f in dataclasses.fields(args_cls)} if args_cls else set()
    values.update({k: v for k, v in inherit.items() if k in fields and k not in values})
    args = c.dataclass_from(args_cls, values, path, f"dataset {name}")
    source = None
    if outer and ds.get("train_source") is not None:
        resolution = getattr(args, "resolution", None)
        source = _dataset_spec(c, ds["train_source"], path + ("train_source",),
                               inherit={"resolution": resolution} if resolution is not None else {})
        if getattr(source.args, "resolution", resolution) != resolution:
            c.fail(path + ("train_source", "resolution"), f"must equal the dataset's resolution {resolution} "
                                                          "(or be left out: it is inherited)")
    return DatasetSpec(name, args, source)


def _dataset_keys(ds: Any) -> tuple[str, ...]:
    if not isinstance(ds, dict) or "name" not in ds or not isinstance(ds["name"], str) or ds["name"] not in DATASETS:
        return tuple(ds) if isinstance(ds, dict) else ("name",)
    args = DATASETS.get(ds["name"]).args
    return ("name",) + tuple(f.name for f in dataclasses.fields(args)) if args else ("name",)


def args_dict(args: Any) -> dict:
    """A spec's arguments as a plain dict (a dataclass's fields; {} for none)."""
    if args is None:
        return {}
    return dataclasses.asdict(args) if dataclasses.is_dataclass(args) else dict(args)


def path_args(args: Any) -> list[tuple[str, str]]:
    """(field name, path) for every argument declared a path (registry metadata `path`) that is set."""
    if not dataclasses.is_dataclass(args):
        return []
    return [(f.name, getattr(args, f.name)) for f in dataclasses.fields(args)
            if f.metadata.get("path") and isinstance(getattr(args, f.name), str)]


def references(args: Any, path: tuple = ()) -> Iterator[tuple[tuple, str, str, Any]]:
    """The arguments that name another part of the suite: (path, "component" or "system", the component kind
    wanted or "", value), from registry field metadata, through nested dataclasses; unset (None) ones skipped."""
    if args is None or not dataclasses.is_dataclass(args):
        return
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        if dataclasses.is_dataclass(value):
            yield from references(value, path + (f.name,))
        elif value is not None and f.metadata.get("component"):
            yield path + (f.name,), "component", f.metadata["component"], value
        elif value is not None and f.metadata.get("system"):
            yield path + (f.name,), "system", "", value


def _check_system_cycles(c: _Checker, systems: list) -> None:
    """Systems that wrap each other in a ring (`a` of `b`, `b` of `a`) could never be built: name the ring."""
    wraps = {s.alias: [(where, value) for where, what, _, value in references(s.args) if what == "system"]
             for s in systems}
    index = {s.alias: i for i, s in enumerate(systems)}
    for start in wraps:
        trail, alias = [start], start
        while wraps.get(alias):
            where, alias = wraps[alias][0]
            if alias == start:
                c.fail(("systems", index[trail[-1]], "args", *where),
                       f"systems wrap each other in a ring: {' -> '.join(trail + [start])}")
            if alias in trail:
                break  # a ring that does not pass through `start`: reported from one of its own members
            trail.append(alias)


def _check_refs(c: _Checker, args: Any, path: tuple, components: dict[str, ComponentSpec], aliases: set[str]) -> None:
    for where, what, kind, value in references(args, path):
        if what == "component":
            if value not in components:
                c.fail(where, f"no component named {value!r} is declared under components:; "
                              f"allowed: {', '.join(components) or '(none declared)'}")
            if components[value].kind != kind:
                c.fail(where, f"component {value!r} is a {components[value].kind}, expected a {kind}")
        elif value not in aliases:
            c.fail(where, f"no other system with alias {value!r}; allowed: {', '.join(sorted(aliases)) or '(none)'}")


def _reported(c: _Checker, raw: Any) -> tuple[ReportedRow, ...]:
    if not isinstance(raw, list):
        c.fail(("reported",), f"expected a list of reported rows, got {_describe(raw)}")
    rows = []
    for i, entry in enumerate(raw):
        p = ("reported", i)
        entry = c.mapping(entry, p, ("system", "citation", "uses_captions", "values"),
                          required=("system", "citation", "values"))
        for key in ("system", "citation"):
            if not isinstance(entry[key], str) or not entry[key]:
                c.fail(p + (key,), f"expected a non-empty string, got {_describe(entry[key])}")
        uses = entry.get("uses_captions", True)
        if not isinstance(uses, bool):
            c.fail(p + ("uses_captions",), f"expected true or false, got {_describe(uses)}")
        values = entry["values"]
        if not isinstance(values, dict) or not values:
            c.fail(p + ("values",), "expected a mapping of 'metric' or 'metric/variant' -> number")
        parsed = []
        allowed = reportable_metric_names()
        for key, v in values.items():
            number = _number(v)
            if number is None:
                c.fail(p + ("values", key), f"expected a number, got {_describe(v)}")
            metric, _, variant = key.partition("/")
            if metric not in allowed:
                c.fail(p + ("values", key), f"unknown metric {metric!r}; allowed: {', '.join(allowed)}")
            parsed.append(ReportedValue(metric, variant, number))
        rows.append(ReportedRow(entry["system"], entry["citation"], uses, tuple(parsed)))
    return tuple(rows)


def split_model_path(kind: str, path: str) -> tuple[str, str]:
    """(model, file) of a clip component's 'MODEL@FILE' (an open_clip architecture and its weights, or a hub tag),
    else ("", path): an '@' anywhere else (a versioned folder 'ckpt@v2/', a 'user@host' mount) is part of the path."""
    if kind == "clip" and "@" in path:
        model, _, file = path.partition("@")
        if model and "/" not in model:
            return model, file
    return "", path


# the row names a reported value may carry (what the metrics emit; fd's and kid's are the values of
# bench.features.FD_METRIC_NAME, bench.metrics.kid.KID_METRIC_NAME and bench.features.OTHER_INCEPTION_NAME, and a
# test keeps them in step)
METRIC_NAMES_REPORTABLE = ("fid", "fd-effnet-lite0", "fd-clip", "fd-inception", "kid", "kid-effnet-lite0", "kid-clip",
                           "kid-inception", "clip-score", "caps", "caploss", "attribute-accuracy", "class-accuracy",
                           "throughput")


def reportable_metric_names() -> list[str]:
    """The built-in metrics' row names, then each plugin metric's registered name (the row name a plugin's
    reported values use: docs/plugins.md)."""
    plugins = [e.name for e in METRICS.entries() if not e.factory.__module__.startswith("bench.")]
    return [*METRIC_NAMES_REPORTABLE, *(n for n in plugins if n not in METRIC_NAMES_REPORTABLE)]
