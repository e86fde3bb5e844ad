"""`shapes`: one coloured shape on a plain background, rendered procedurally.

6 colours x 4 shapes x 4 positions (the cells of a 2x2 grid), captions like
"a red circle in the top left". Position, size, colour and background are
jittered, so no two renders are identical; everything is deterministic from
(seed, stream, index). A few (colour, shape) pairs are held out: the VQGAN,
the generators and the retrieval pool never see them, so evaluating on them
measures compositional generalisation.

Splits:
  train      images only (held-out pairs excluded): VQGAN and generator training
  pairs      image-caption pairs over all combinations: the CLIP stand-in and evaluators
  test       the eval captions, half `seen` and half `held-out` (when pairs are held out),
             with fresh renders behind the reference statistics, and another disjoint
             stream of renders for the `real-images` system
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.api import CaptionItem, UserError
from bench.datasets.base import Dataset
from bench.registry import DATASETS

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "green": (45, 175, 70),
    "blue": (55, 95, 235),
    "yellow": (235, 215, 45),
    "purple": (155, 65, 205),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle", "cross")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
DEFAULT_HELD_OUT = ("red square", "green triangle", "blue cross", "yellow circle")
SUPERSAMPLE = 4  # render at 4x and average-pool: anti-aliased edges


@dataclass(frozen=True)
class ShapesArgs:
    resolution: int = field(default=32, metadata={"min": 16, "max": 512, "help": "image side in pixels"})
    num_captions: int = field(default=384, metadata={"min": 1, "help": "eval captions (half seen, half held-out)"})
    seed: int = field(default=0, metadata={"help": "seeds every render"})
    train_size: int = field(default=16000, metadata={"min": 1, "help": "image-only training renders"})
    pairs_size: int = field(default=12000, metadata={"min": 1, "help": "captioned renders for CLIP and evaluators"})
    held_out: tuple[str, ...] = field(default=DEFAULT_HELD_OUT, metadata={"help": "'colour shape' pairs never trained on"})


def caption_of(colour: str, shape: str, position: str) -> str:
    return f"a {colour} {shape} in the {position}"


def _stream_seed(*parts) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class ShapesDataset(Dataset):
    name = "shapes"

    def __init__(self, resolution: int = 32, num_captions: int = 384, seed: int = 0, train_size: int = 16000,
                 pairs_size: int = 12000, held_out: tuple[str, ...] | list[str] = DEFAULT_HELD_OUT):
        self.resolution = resolution
        self.num_captions = num_captions
        self.seed = seed
        self.train_size = train_size
        self.pairs_size = pairs_size
        for pair in held_out:
            words = pair.split()
            if len(words) != 2 or words[0] not in COLOURS or words[1] not in SHAPES:
                raise UserError(f"shapes: held_out entry {pair!r} is not 'colour shape'; colours: "
                                f"{', '.join(COLOURS)}; shapes: {', '.join(SHAPES)}")
        held = {tuple(p.split()) for p in held_out}
        self._held = held
        # one spelling per set of pairs ("red  square" is "red square"; order and repeats change nothing)
        self.held_out = tuple(sorted(" ".join(pair) for pair in held))
        combos = [(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS]
        self.all_combos = combos
        # eval captions cycle through a fixed shuffle, so any prefix (--limit) is varied
        order = torch.randperm(len(combos), generator=torch.Generator().manual_seed(_stream_seed(seed, "order")))
        shuffled = [combos[i] for i in order.tolist()]
        self.seen_combos = [x for x in shuffled if (x[0], x[1]) not in held]
        self.held_out_combos = [x for x in shuffled if (x[0], x[1]) in held]

    # ---- identity -------------------------------------------------------------------------
    def identity(self) -> dict:
        return {"dataset": self.name, "resolution": self.resolution, "seed": self.seed,
                "train_size": self.train_size, "pairs_size": self.pairs_size,
                "held_out": list(self.held_out)}  # the renderer's code joins the keys (Dataset.code_modules)

    def split_identity(self, split: str) -> dict:
        # train renders draw from the seen pairs; pairs from all, tagged seen / held-out in their info
        size = {"train": "train_size", "pairs": "pairs_size"}[split]
        return {"dataset": self.name, "split": split, "resolution": self.resolution, "seed": self.seed,
                size: getattr(self, size), "held_out": list(self.held_out)}

    def attributes(self) -> dict[str, list[str]]:
        return {"colour": list(COLOURS), "shape": list(SHAPES), "position": list(POSITIONS)}

    # ---- splits ---------------------------------------------------------------------------
    def train_images(self) -> Tensor:
        return self._train[0]

    def train_info(self) -> list[dict]:
        """Ground truth of the train renders (for diagnostics only; generators never read it)."""
        return self._train[1]

    @cached_property
    def _train(self) -> tuple[Tensor, list[dict]]:
        combos = self._draw_combos(self.seen_combos, self.train_size, "train")
        return self._render_combos(combos, [("train", i) for i in range(len(combos))]), [self._info(*c) for c in combos]

    @cached_property
    def _pairs(self) -> tuple[Tensor, list[str], list[dict]]:
        combos = self._draw_combos(self.all_combos, self.pairs_size, "pairs")
        images = self._render_combos(combos, [("pairs", i) for i in range(len(combos))])
        return images, [caption_of(*c) for c in combos], [self._info(*c) for c in combos]

    def pairs(self) -> tuple[Tensor, list[str], list[dict]]:
        return self._pairs

    @cached_property
    def _eval(self) -> list[CaptionItem]:
        items = []
        for i in range(self.num_captions):
            # alternate seen / held-out so both cells get the same count
            pool = self.held_out_combos if (self.held_out_combos and i % 2 == 1) else self.seen_combos
            k = i // 2 if self.held_out_combos else i
            combo = pool[k % len(pool)]
            items.append(CaptionItem(i, caption_of(*combo), self._info(*combo)))
        return items

    def eval_captions(self) -> list[CaptionItem]:
        return list(self._eval)

    def real_images(self, items: list[CaptionItem], seeds: list[int]) -> Tensor:
        combos = [(it.info["colour"], it.info["shape"], it.info["position"]) for it in items]
        return self._render_combos(combos, [("real", it.caption_id, s) for it, s in zip(items, seeds)])

    def iter_reference_images(self, batch_size: int = 256) -> Iterator[Tensor]:
        items = self._eval
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            combos = [(it.info["colour"], it.info["shape"], it.info["position"]) for it in chunk]
            yield self._render_combos(combos, [("reference", it.caption_id) for it in chunk])

    def reference_key(self) -> dict:
        return {**self.identity(), "split": "test", "count": self.num_captions}

    # ---- rendering ------------------------------------------------------------------------
    def _info(self, colour: str, shape: str, position: str) -> dict:
        split = "held-out" if (colour, shape) in self._held else "seen"
        return {"colour": colour, "shape": shape, "position": position, "split": split}

    def _draw_combos(self, pool: list, n: int, stream: str) -> list:
        gen = torch.Generator().manual_seed(_stream_seed(self.seed, stream, "combos"))
        idx = torch.randint(len(pool), (n,), generator=gen).tolist()
        return [pool[i] for i in idx]

    def _render_combos(self, combos: list[tuple[str, str, str]], keys: list[tuple]) -> Tensor:
        """Render one image per combo; image i's jitter depends only on (seed, keys[i])."""
        params = torch.stack([self._jitter(key) for key in keys]) if keys else torch.zeros(0, 8)
        colours = torch.tensor([COLOURS[c[0]] for c in combos], dtype=torch.float32).reshape(-1, 3)
        shapes = torch.tensor([SHAPES.index(c[1]) for c in combos], dtype=torch.long)
        positions = torch.tensor([POSITIONS.index(c[2]) for c in combos], dtype=torch.long)
        out = []
        for start in range(0, len(combos), 512):
            sl = slice(start, start + 512)
            out.append(render(self.resolution, colours[sl], shapes[sl], positions[sl], params[sl]))
        return torch.cat(out) if out else torch.zeros(0, 3, self.resolution, self.resolution, dtype=torch.uint8)

    def _jitter(self, key: tuple) -> Tensor:
        gen = torch.Generator().manual_seed(_stream_seed(self.seed, *key))
        return torch.rand(8, generator=gen)


def _circle(x: Tensor, y: Tensor) -> Tensor:
    return x ** 2 + y ** 2 <= 1.0


def _square(x: Tensor, y: Tensor) -> Tensor:
    return torch.maximum(x.abs(), y.abs()) <= 0.85


def _triangle(x: Tensor, y: Tensor) -> Tensor:  # upward: apex at y=-1, base at y=+0.8, half-width 1 at the base
    return (y >= -1.0) & (y <= 0.8) & (x.abs() <= (y + 1.0) / 1.8)


def _cross(x: Tensor, y: Tensor) -> Tensor:
    ax, ay = x.abs(), y.abs()
    return ((ax <= 0.34) & (ay <= 1.0)) | ((ay <= 0.34) & (ax <= 1.0))


SHAPE_MASKS = (_circle, _square, _triangle, _cross)  # in SHAPES order: (x, y in radius units) -> inside


def render(resolution: int, colours: Tensor, shapes: Tensor, positions: Tensor, jitter: Tensor) -> Tensor:
    """colours float [N,3] (0..255), shapes/positions long [N], jitter U(0,1) [N,8] -> uint8 [N,3,R,R]."""
    n, r = colours.shape[0], resolution
    s = r * SUPERSAMPLE
    cell = s / 2
    col = (positions % 2).float()  # 0 left, 1 right
    row = (positions // 2).float()  # 0 top, 1 bottom
    radius = cell * (0.28 + 0.12 * jitter[:, 0])  # half-extent of the shape
    slack = (cell / 2 - radius - SUPERSAMPLE).clamp(min=0)
    cx = cell * col + cell / 2 + slack * (2 * jitter[:, 1] - 1)
    cy = cell * row + cell / 2 + slack * (2 * jitter[:, 2] - 1)
    coords = torch.arange(s, dtype=torch.float32) + 0.5
    x = (coords[None, None, :] - cx[:, None, None]) / radius[:, None, None]  # [N,1,S], unit = radius
    y = (coords[None, :, None] - cy[:, None, None]) / radius[:, None, None]  # [N,S,1]
    mask = torch.empty(n, s, s)
    for k, inside in enumerate(SHAPE_MASKS):  # each image's own shape only (all four for every image: 2.5x slower)
        chosen = (shapes == k).nonzero().squeeze(1)
        if len(chosen):
            mask[chosen] = inside(x[chosen], y[chosen]).float()
    mask = F.avg_pool2d(mask[:, None], SUPERSAMPLE)  # [N,1,R,R] anti-aliased coverage
    fg = (colours + 40 * (jitter[:, 3:6] - 0.5)).clamp(0, 255)  # [N,3]
    bg = (18 + 16 * jitter[:, 6:7]).expand(n, 3)  # dark grey, jittered
    img = bg[:, :, None, None] * (1 - mask) + fg[:, :, None, None] * mask  # [N,3,R,R]
    return img.round().clamp(0, 255).to(torch.uint8)


@DATASETS.register("shapes", "procedural coloured shapes (6 colours x 4 shapes x 4 positions), held-out pairs; offline",
                   args=ShapesArgs)
def build_shapes(args: ShapesArgs) -> ShapesDataset:
    return ShapesDataset(resolution=args.resolution, num_captions=args.num_captions, seed=args.seed,
                         train_size=args.train_size, pairs_size=args.pairs_size, held_out=args.held_out)


