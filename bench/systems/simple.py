"""Systems with no model: the floor (`real-images`) and the ceiling of badness (`noise`)."""
from __future__ import annotations

import torch
from torch import Tensor

from bench.registry import SYSTEMS


class RealImages:
    """Real images of each caption, rendered/drawn disjoint from the reference set: the floor."""

    uses_captions = False

    def __init__(self, dataset):
        self.dataset = dataset
        self.items = {it.caption_id: it for it in dataset.eval_captions()}

    def generate(self, captions: list[str], caption_ids: list[int], seeds: list[int]) -> Tensor:
        return self.dataset.real_images([self.items[i] for i in caption_ids], seeds)


@SYSTEMS.register("real-images", "real images of each caption, disjoint from the reference set (the floor)")
def build_real_images(args, ctx) -> RealImages:
    return RealImages(ctx.dataset)


class Noise:
    """Uniform noise: what every metric looks like with no signal at all."""

    uses_captions = False

    def __init__(self, resolution: int):
        self.resolution = resolution

    def generate(self, captions: list[str], caption_ids: list[int], seeds: list[int]) -> Tensor:
        out = torch.empty(len(seeds), 3, self.resolution, self.resolution, dtype=torch.uint8)
        for b, seed in enumerate(seeds):
            gen = torch.Generator().manual_seed(seed)
            out[b] = torch.randint(0, 256, (3, self.resolution, self.resolution), generator=gen, dtype=torch.uint8)
        return out


@SYSTEMS.register("noise", "uniform random pixels (no signal: a sanity floor for every metric)")
def build_noise(args, ctx) -> Noise:
    return Noise(ctx.dataset.resolution)
