"""Builds a suite's named components and systems once each (the BuildContext of bench/api.py)."""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import torch

from bench.api import UserError
from bench.cache import (artefact_dir, cached_artefact, code_fingerprint, code_home, key_hash, path_stamp,
                         platform_key)
from bench.datasets.base import ReadsOnly, check_reads
from bench.registry import COMPONENTS, SYSTEMS
from bench.suite import Suite, args_dict, path_args, split_model_path

Item = tuple[str, str]  # ("component", name) or ("system", alias)


class NeedsTraining(Exception):
    """Raised instead of training by a Builder that leaves training to build workers (bench/build_pool.py)."""

    def __init__(self, item: Item, artefact: str):
        super().__init__(f"{item[0]} {item[1]!r} needs training")
        self.item = item  # the innermost component or system whose artefact is missing
        self.artefact = artefact  # that artefact's folder: items sharing it (sampling variants of one GPT) train it once


class Builder:
    """Builds components and systems once each, loading trained artefacts from the cache or training them.

    Training threads change the numbers (float reduction order), so every artefact's key names where it was
    trained: the device type and, on a CPU, the thread count. `build_threads` is that count (default: this
    process's torch threads); `defer_training` makes a missing artefact raise NeedsTraining instead.
    Keys also name the code (`code_of`): editing the model, the training recipe or the dataset retrains.
    """

    def __init__(self, suite: Suite, dataset: Any, device: str, cache_dir: str, progress: bool = True,
                 build_threads: int | None = None, defer_training: bool = False):
        self.suite = suite
        self._dataset = dataset
        self.device = device
        self.cache_dir = cache_dir
        self.progress = progress
        self.build_threads = build_threads
        self.defer_training = defer_training
        self._components: dict[str, Any] = {}
        self._systems: dict[str, Any] = {}
        self._building: list[Item] = []
        self._made_of: dict[Item, set[str]] = {}  # item -> the artefacts (kind/key hash) it was built from

    def made_of(self, item: Item) -> list[str]:
        """What an item was built from, its own and that of everything it uses: cached artefacts by key, components
        by key (checkpoints by `path_stamp`), systems by name and arguments, the files their arguments name
        (`kind/hash` entries). Equal lists: the same weights and settings, unless a file was rewritten keeping
        its size and mtime."""
        return sorted(self._made_of.get(item, ()))

    def made_with(self, alias: str, component: str) -> bool:
        """Whether system `alias` was built from component `component` or from one with the same key (the same
        weights or training under another name), directly or through a system it wraps."""
        entry = f"/{key_hash(self.key_of(component))}"
        return any(e.startswith("component:") and e.endswith(entry) for e in self.made_of(("system", alias)))

    def _record(self, entries) -> None:
        for item in self._building:
            self._made_of.setdefault(item, set()).update(entries)

    def build(self, item: Item) -> Any:
        kind, name = item
        return self.component(name) if kind == "component" else self.system(name)

    def trained_on(self) -> dict:
        """Where training ran, as far as it changes the weights: the device type, the GPU or CPU model, the
        libraries' versions and, on a CPU, the threads."""
        if not self.device.startswith("cpu"):
            return platform_key(self.device)
        return {**platform_key(self.device), "threads": self.build_threads or torch.get_num_threads()}

    def code_of(self, *modules: str) -> str:
        """Fingerprint of the code behind an artefact: the reference package (models, training, sampling), the
        modules that build it (a component's or system's factory, its train function's) and the dataset's; for a
        plugin module, its whole package (`code_home`), so an edit to a helper module it imports retrains too."""
        return code_fingerprint("reference", *(code_home(m) for m in (*modules, *self._dataset.code_modules())))

    def _factory(self, item: Item) -> Callable:
        kind, name = item
        if kind == "component":
            return COMPONENTS.get(self.suite.components[name].kind).factory
        return SYSTEMS.get(self.suite.system(name).name).factory

    def _reads(self, item: Item) -> tuple[str, ...] | None:
        """The splits an item's factory declares it reads (checked), or None when it declares none."""
        reads = getattr(self._factory(item), "reads", None)
        return None if reads is None else check_reads(reads, f"{item[0]} {item[1]!r}")

    def data_key(self, item: Item) -> dict:
        """The data an item trains on: the identity of each split its factory declares in `reads` (so more eval
        captions retrain nothing, more pairs no VQGAN), or the whole dataset's identity for one that declares none."""
        reads = self._reads(item)
        if reads is None:
            return {"all": self._dataset.identity()}
        return {split: self._dataset.split_identity(split) for split in reads}

    def dataset_for(self, item: Item) -> Any:
        """The dataset as `item` may read it: only the splits its factory declares, if it does."""
        reads = self._reads(item)
        return self._dataset if reads is None else ReadsOnly(self._dataset, reads, f"{item[0]} {item[1]!r}")

    def context(self, item: Item) -> ItemContext:
        """The BuildContext that `item`'s factory gets."""
        return ItemContext(self, item)

    def _cycle(self, item: Item) -> str:
        return " -> ".join(name for _, name in self._building + [item])

    # ---- BuildContext ----------------------------------------------------------------------
    def component(self, name: str) -> Any:
        if name not in self._components:
            spec = self.suite.components.get(name)
            if spec is None:
                raise UserError(f"no component named {name!r}; declared: {', '.join(self.suite.components) or '(none)'}")
            item = ("component", name)
            if item in self._building:
                raise UserError(f"components depend on each other in a cycle: {self._cycle(item)}")
            self._building.append(item)
            ctx = self.context(item)
            try:
                self._components[name] = COMPONENTS.get(spec.kind).factory(spec, ctx)
            finally:
                ctx.close()
                self._building.pop()
        item = ("component", name)
        self._record(self._made_of.get(item, set()) | {f"component:{name}/{key_hash(self.key_of(name))}"})
        return self._components[name]

    def cached(self, kind: str, key: dict, train: Callable[[], Any], save: Callable[[Any, str], None],
               load: Callable[[str], Any], item: Item | None = None) -> Any:
        """BuildContext.cached for `item` (its factory's context passes it); with no item, keyed by the whole
        dataset and never deferred."""
        data = self.data_key(item) if item is not None else {"all": self._dataset.identity()}
        modules = {_module_of(train)} | ({self._factory(item).__module__} if item is not None else set())
        key = {**key, "data": data, "trained_on": self.trained_on(), "code": self.code_of(*sorted(modules))}
        self._record({artefact_dir("", kind, key).as_posix()})
        target = artefact_dir(self.cache_dir, kind, key)
        if self.defer_training and item is not None and not (target / "key.json").exists():
            raise NeedsTraining(item, str(target))
        return cached_artefact(self.cache_dir, kind, key, train, save, load)

    def key_of(self, name: str) -> dict:
        spec = self.suite.components[name]
        if spec.path is not None:  # "file" or "architecture@file": read from disk, no data
            prefix, file = split_model_path(spec.kind, spec.path)
            source = {"path_prefix": prefix, **path_stamp(file)}
        else:
            source = {"train": dataclasses.asdict(spec.train) if dataclasses.is_dataclass(spec.train) else spec.train,
                      "data": self.data_key(("component", name))}
        return {"kind": spec.kind, **source, "code": self.code_of(COMPONENTS.get(spec.kind).factory.__module__)}

    # ---- systems ---------------------------------------------------------------------------
    def system(self, alias: str) -> Any:
        """A system by alias (systems may wrap others, e.g. `random-caption` of `clipgen`)."""
        if alias not in self._systems:
            try:
                spec = self.suite.system(alias)
            except KeyError:
                raise UserError(f"no system with alias {alias!r}; declared: "
                                f"{', '.join(s.alias for s in self.suite.systems) or '(none)'}") from None
            item = ("system", alias)
            if item in self._building:
                raise UserError(f"systems refer to each other in a cycle: {self._cycle(item)}")
            factory = SYSTEMS.get(spec.name).factory
            code = self.code_of(factory.__module__)
            # the files it reads: arguments declared paths, and any its factory names (e.g. a samples-folder mapping)
            files = [path for _, path in path_args(spec.args)]
            files += getattr(factory, "read_files", lambda args: [])(spec.args)
            self._made_of.setdefault(item, set()).update(
                {f"system:{alias}/{key_hash({'name': spec.name, 'args': args_dict(spec.args), 'code': code})}"}
                | {f"file:{path}/{key_hash(path_stamp(path))}" for path in files})
            self._building.append(item)
            ctx = self.context(item)
            try:
                system = SYSTEMS.get(spec.name).factory(spec.args, ctx)
            finally:
                ctx.close()
                self._building.pop()
            self._systems[alias] = system
        self._record(self._made_of.get(("system", alias), set()))
        return self._systems[alias]


def _module_of(fn: Callable) -> str:
    """The module that defines `fn`'s code: a functools.partial's function's, not functools'."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__module__", None) or "__main__"


class ItemContext:
    """The BuildContext one item's factory gets: the Builder, bound to that item, so `dataset` and `cached` answer
    for it (its declared splits, its key) and not for whatever is being built when they are called. It is valid
    while the factory runs: a factory that kept it and called `cached`, `dataset`, `component` or `system` later
    (lazily, from a system's generate) would key, record and defer what it gets for whatever is being built then
    (or for nothing), so that raises."""

    def __init__(self, builder: Builder, item: Item):
        self._builder, self._item, self._open = builder, item, True
        self.device, self.cache_dir, self.progress = builder.device, builder.cache_dir, builder.progress

    def close(self) -> None:
        """The factory returned (a later build of the same item gets a new context)."""
        self._open = False

    def _live(self, what: str) -> None:
        if not self._open:
            kind, name = self._item
            raise RuntimeError(f"{kind} {name!r}: ctx.{what} used after its factory returned; build (and load) "
                               f"everything inside the factory")

    @property
    def dataset(self) -> Any:
        self._live("dataset")
        return self._builder.dataset_for(self._item)

    def cached(self, kind: str, key: dict, train: Callable[[], Any], save: Callable[[Any, str], None],
               load: Callable[[str], Any]) -> Any:
        self._live("cached")
        return self._builder.cached(kind, key, train, save, load, item=self._item)

    def component(self, name: str) -> Any:
        self._live("component")  # what it uses is recorded in made_of (provenance) while it builds
        return self._builder.component(name)

    def system(self, alias: str) -> Any:
        self._live("system")
        return self._builder.system(alias)

    def key_of(self, name: str) -> dict:
        return self._builder.key_of(name)


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
