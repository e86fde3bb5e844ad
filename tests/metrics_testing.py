"""Small stand-ins for tests of metrics: a dataset over given tensors, a RunContext builder, a pixel "CLIP"."""
from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.api import CaptionItem, RunContext, TimingRecord


class TensorDataset:
    """The few Dataset methods metrics call, over tensors held in memory."""

    name = "tensors"

    def __init__(self, reference: Tensor, items: list[CaptionItem] | None = None, real: Tensor | None = None,
                 attributes: dict | None = None, tag: str = "t0"):
        self.reference = reference
        self.resolution = int(reference.shape[-1])
        self.items = items or []
        self.real = real  # one real render per item, in item order
        self._attributes = attributes or {}
        self.tag = tag

    def identity(self) -> dict:
        return {"dataset": self.name, "tag": self.tag, "resolution": self.resolution}

    def reference_key(self) -> dict:
        return {**self.identity(), "split": "reference", "count": int(self.reference.shape[0])}

    def iter_reference_images(self, batch_size: int = 256) -> Iterator[Tensor]:
        for s in range(0, self.reference.shape[0], batch_size):
            yield self.reference[s:s + batch_size]

    def eval_captions(self) -> list[CaptionItem]:
        return list(self.items)

    def real_images(self, items: list[CaptionItem], seeds: list[int]) -> Tensor:
        pos = {it.caption_id: i for i, it in enumerate(self.items)}
        return self.real[[pos[it.caption_id] for it in items]]

    def attributes(self) -> dict:
        return dict(self._attributes)

    def code_modules(self) -> list[str]:
        return [__name__]


def make_ctx(dataset: Any, cache_dir: str, components: dict | None = None, system: Any = None,
             timings: list[TimingRecord] | None = None) -> RunContext:
    comps = components or {}
    return RunContext(suite="test", dataset=dataset, device="cpu", cache_dir=str(cache_dir), system_alias="sys",
                      system=system, timings=timings or [], component=lambda name: comps[name])


class PixelClip:
    """A deterministic stand-in evaluator: unit-norm random projection of 8x8-pooled pixels (images only)."""

    def __init__(self, dim: int = 16, seed: int = 0):
        self.proj = torch.randn(3 * 8 * 8, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def encode_image(self, images: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(images.double() / 255.0, 8).flatten(1)  # [B,192]
        return F.normalize(x @ self.proj, dim=-1).float()  # [B,dim]
