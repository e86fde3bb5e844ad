"""The contracts between the harness's parts: datasets, systems, metrics, components and the runner.

Datasets hand out images and captions, systems turn captions into images,
metrics stream over `SampleBatch`es and return `MetricValue`s; the runner turns
those into provenance-carrying result rows (bench/results.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import torch
from torch import Tensor


class UserError(Exception):
    """An error the user caused (bad suite, missing file, wrong shape).

    The CLI prints `str(err)` as one line and exits with status 2.
    """


@dataclass(frozen=True)
class CaptionItem:
    caption_id: int
    caption: str
    info: dict  # ground truth: attributes, class, split tag ("seen" / "held-out"), ...


@dataclass
class SampleBatch:
    """What metrics see: one batch of generated images and the captions behind them."""

    images: Tensor  # uint8 [B,3,H,W]
    captions: list[str]
    caption_ids: list[int]
    info: list[dict]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"SampleBatch.images must be uint8 [B,3,H,W], got {self.images.dtype} {tuple(self.images.shape)}")
        n = self.images.shape[0]
        if not (len(self.captions) == len(self.caption_ids) == len(self.info) == n):
            raise ValueError("SampleBatch fields disagree in length")


@runtime_checkable
class System(Protocol):
    uses_captions: bool  # True if any part was trained on captions other than the CLIP stand-in

    def generate(self, captions: list[str], caption_ids: list[int], seeds: list[int]) -> Tensor:
        """uint8 [B,3,H,W]; image b must depend only on (captions[b], caption_ids[b], seeds[b])."""
        ...

    # Optional: `check_captions(caption_ids) -> None` raises a UserError when the system cannot serve one of the
    # run's captions (e.g. samples-folder lacks its image); the runner asks before any system generates.


@dataclass(frozen=True)
class MetricValue:
    """One number a metric measured. The runner adds the provenance (suite, system, seed, ...)."""

    metric: str  # e.g. "fd-effnet-lite0", "kid", "clip-score", "attribute-accuracy"
    variant: str  # e.g. "blur=1", "held-out/colour", "" when there is none
    value: float
    n: int  # how many samples the number rests on
    extra: dict = field(default_factory=dict)  # metric-specific provenance (JSON-able)


@dataclass
class TimingRecord:
    """One timed `generate` call (after warm-up, device synchronised)."""

    seconds: float
    images: int
    tokens: int = 0  # tokens sampled, for autoregressive systems
    peak_memory_bytes: int = 0
    batch_size: int = 0
    device: str = "cpu"
    process: int = 0  # the generating process (shard rank; 0 when unsharded)
    threads: int = 0  # torch threads of that process (0 in records older than this field)
    start: float = 0.0  # wall clock (time.time()) when the call began; 0 in records older than this field


@dataclass
class RunContext:
    """What `Metric.compute` may use."""

    suite: str
    dataset: Any  # bench.datasets.base.Dataset
    device: str
    cache_dir: str
    system_alias: str
    system: Any  # the System being evaluated
    timings: list[TimingRecord]
    component: Callable[[str], Any]  # name -> built component (CLIP, VQGAN, judge, captioner, ...)
    per_caption: dict = field(default_factory=dict)  # metrics may leave per-caption values here (caption_id -> {metric: value})
    # values several metrics of this (system, seed) would otherwise compute twice, e.g. image features that
    # `fd` and `kid` share; keys must name everything that shapes the value
    memo: dict = field(default_factory=dict)
    # whether the system was built with component `name` (or another with the same key: the same weights under
    # another name), directly or through a system it wraps: a CLIP it was conditioned on, re-ranked or optimised with
    made_with: Callable[[str], bool] = lambda name: False

    def iter_reference_images(self, batch_size: int = 256) -> Iterator[Tensor]:
        """Real images behind the reference statistics, uint8 [B,3,H,W] batches."""
        return self.dataset.iter_reference_images(batch_size)

    def reference_key(self) -> dict:
        """Names the reference set: dataset, split, count, resolution (for cache keys)."""
        return self.dataset.reference_key()


class Metric(Protocol):
    """One fresh instance per (system, seed). The runner calls `start(ctx)` first when a metric defines it
    (metrics that need a component stream with it instead of buffering), then `update` per batch, then
    `compute` once. Per-caption values go into `ctx.per_caption[caption_id][metric_name]`."""

    def update(self, batch: SampleBatch) -> None: ...

    def compute(self, ctx: RunContext) -> list[MetricValue]: ...


@dataclass(frozen=True)
class ComponentSpec:
    """A named component from a suite's `components:` section."""

    name: str
    kind: str  # registry key in COMPONENTS: "clip", "vqgan", "attribute-judge", "captioner", ...
    path: str | None  # load from here ...
    train: Any  # ... or train from this (the kind's args dataclass instance), exactly one of the two


class BuildContext(Protocol):
    """What component and system factories get (bench/build.py's ItemContext), valid while the factory runs."""

    dataset: Any  # bench.datasets.base.Dataset; a ReadsOnly view of it for a factory that declares `reads`
    device: str
    cache_dir: str
    progress: bool  # training may show progress bars (False under `bench run --quiet`)

    def component(self, name: str) -> Any:
        """A declared component by name, built once and shared."""
        ...

    def cached(self, kind: str, key: dict, train: Callable[[], Any],
               save: Callable[[Any, str], None], load: Callable[[str], Any]) -> Any:
        """Load the artefact stored under hash(kind, key) in the cache, or train, save atomically, return.

        `key` must name everything else that shapes the artefact (spec, dependencies' keys); the data
        (the splits the factory declares in `factory.reads`, e.g. `("train",)`, else the whole
        dataset identity), the code, `kind` and where it is trained (device type, CPU thread count,
        library versions) are added for you. A factory that declares `reads` sees a `ctx.dataset` that
        refuses every other split, so its key cannot miss data it read.
        `save(obj, dir)` writes files into a fresh temp dir; `load(dir)` reads them.
        """
        ...

    def system(self, alias: str) -> Any:
        """A declared system by alias (for systems that wrap another), built once and shared."""
        ...

    def key_of(self, name: str) -> dict:
        """The cache key of a declared component (to fold into a dependent's key)."""
        ...
