"""Builds a suite's named components and systems once each (the BuildContext of bench/api.py)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

from bench.api import UserError
from bench.cache import cached_artefact
from bench.registry import COMPONENTS, SYSTEMS
from bench.suite import Suite


class Builder:
    def __init__(self, suite: Suite, dataset: Any, device: str, cache_dir: str, progress: bool = True):
        self.suite = suite
        self.dataset = dataset
        self.device = device
        self.cache_dir = cache_dir
        self.progress = progress
        self._components: dict[str, Any] = {}
        self._systems: dict[str, Any] = {}
        self._building: list[str] = []

    # ---- BuildContext ----------------------------------------------------------------------
    def component(self, name: str) -> Any:
        if name not in self._components:
            spec = self.suite.components.get(name)
            if spec is None:
                raise UserError(f"no component named {name!r}; declared: {', '.join(self.suite.components) or '(none)'}")
            if name in self._building:
                raise UserError(f"components depend on each other in a cycle: {' -> '.join(self._building + [name])}")
            self._building.append(name)
            try:
                self._components[name] = COMPONENTS.get(spec.kind).factory(spec, self)
            finally:
                self._building.pop()
        return self._components[name]

    def cached(self, kind: str, key: dict, train: Callable[[], Any], save: Callable[[Any, str], None],
               load: Callable[[str], Any]) -> Any:
        return cached_artefact(self.cache_dir, kind, key, train, save, load)

    def key_of(self, name: str) -> dict:
        spec = self.suite.components[name]
        if spec.path is not None:
            path = Path(spec.path).expanduser()
            stat = path.stat() if path.exists() else None
            source = {"path": str(path.resolve()), "size": stat.st_size if stat else None,
                      "mtime_ns": stat.st_mtime_ns if stat else None}
        else:
            source = {"train": dataclasses.asdict(spec.train) if dataclasses.is_dataclass(spec.train) else spec.train}
        return {"kind": spec.kind, **source, "dataset": self.dataset.identity()}

    # ---- systems ---------------------------------------------------------------------------
    def system(self, alias: str) -> Any:
        """A system by alias (systems may wrap others, e.g. `random-caption` of `clipgen`)."""
        if alias not in self._systems:
            spec = self.suite.system(alias)
            if alias in self._building:
                raise UserError(f"systems refer to each other in a cycle: {' -> '.join(self._building + [alias])}")
            self._building.append(alias)
            try:
                system = SYSTEMS.get(spec.name).factory(spec.args, self)
            finally:
                self._building.pop()
            self._systems[alias] = system
        return self._systems[alias]


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
