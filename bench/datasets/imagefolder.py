"""`imagefolder`: any folder tree of images as an image-only training source.

This is the language-free training source at scale (e.g. an ImageNet train
folder): images only, no captions at all. Images stream out as uint8 batches,
centre-cropped to a square and resized to the suite's resolution.

It has no captions, so it cannot be evaluated on: `eval_captions`, `pairs`,
`real_images` and the reference images raise a `UserError` saying so. To train
on a folder and evaluate on a captioned dataset, wrap the two with
`WithTrainSource(eval_dataset, ImageFolder(...))`: everything comes from the
captioned dataset except `train_images` / `iter_train_images`, which come from
the folder (and the folder's identity joins the cache key). A suite says so with
`dataset: {name: shapes, ..., train_source: {name: imagefolder, root: DIR}}`
(the source inherits the dataset's resolution).

The image helpers here (`list_images`, `load_image`, `iter_image_batches`) are
shared with the MS-COCO dataset.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from bench.api import CaptionItem, UserError
from bench.datasets.base import Dataset
from bench.registry import DATASETS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif")
RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
              "lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX}
# train_images() refuses to build a tensor larger than this; iter_train_images() streams instead.
MAX_TENSOR_BYTES = 6 * 2**30


# ---------------------------------------------------------------- image helpers (shared with mscoco)

def list_images(root: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Every image file under `root` (recursively, following no symlinked dirs), as sorted relative paths."""
    exts = tuple(e.lower() for e in extensions)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, root)
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(exts):
                found.append(name if rel == "." else os.path.join(rel, name))
    return sorted(found)


def files_stamp(paths: Sequence[str], root: str) -> str:
    """A hash of the files' paths relative to `root`, in order, and their byte sizes: a file replaced by another
    image changes it, a folder copied or moved elsewhere does not (mtimes are left out on purpose, so a copied
    dataset does not retrain everything). Only a replacement of exactly the same byte size goes unseen."""
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{os.path.relpath(p, root)}\t{os.path.getsize(p)}\n".encode())
    return h.hexdigest()[:16]


def centre_crop_resize(img: Image.Image, resolution: int, resample: str = "bicubic") -> Image.Image:
    """The largest centred square, resized to resolution x resolution (RGB)."""
    img = img.convert("RGB")
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s))
    if s != resolution:
        img = img.resize((resolution, resolution), RESAMPLING[resample])
    return img


def load_image(path: str, resolution: int, resample: str = "bicubic") -> Tensor:
    """uint8 [3,resolution,resolution] from an image file; a broken file is a UserError naming it."""
    try:
        with Image.open(path) as img:
            img.load()
            out = centre_crop_resize(img, resolution, resample)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot read image {path}: {err}") from None
    arr = np.asarray(out, dtype=np.uint8)  # [H,W,3]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # [3,H,W]


def iter_image_batches(paths: Iterable[str], resolution: int, batch_size: int = 256,
                       resample: str = "bicubic", workers: int = 0) -> Iterator[Tensor]:
    """Decode `paths` in order into uint8 [B,3,r,r] batches (threads decode; PIL releases the GIL)."""
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    workers = workers or min(4, os.cpu_count() or 1)
    paths = list(paths)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            images = list(pool.map(lambda p: load_image(p, resolution, resample), chunk))
            yield torch.stack(images)  # [B,3,r,r]


def stack_or_refuse(paths: Sequence[str], resolution: int, what: str, hint: str,
                    resample: str = "bicubic") -> Tensor:
    """All of `paths` as one uint8 tensor, or a UserError when it would exceed MAX_TENSOR_BYTES."""
    nbytes = len(paths) * 3 * resolution * resolution
    if nbytes > MAX_TENSOR_BYTES:
        raise UserError(f"{what}: {len(paths)} images at {resolution}px need {nbytes / 2**30:.1f} GiB "
                        f"as one tensor (limit {MAX_TENSOR_BYTES / 2**30:.0f} GiB); {hint}")
    out = torch.empty(len(paths), 3, resolution, resolution, dtype=torch.uint8)
    i = 0
    for batch in iter_image_batches(paths, resolution, 256, resample):
        out[i:i + len(batch)] = batch
        i += len(batch)
    return out


# ---------------------------------------------------------------- the dataset

@dataclass(frozen=True)
class ImageFolderArgs:
    root: str = field(default="", metadata={"help": "folder tree of images (required), e.g. ImageNet train/",
                                            "path": "dir"})
    resolution: int = field(default=64, metadata={"help": "images are centre-cropped and resized to this", "min": 8, "max": 1024})
    num_captions: int = field(default=0, metadata={"help": "unused: an image folder has no captions", "min": 0, "max": 0})
    seed: int = field(default=0, metadata={"help": "shuffles the image order (fixed per seed)"})
    max_images: int = field(default=0, metadata={"help": "use at most this many images (0 = all)", "min": 0})
    shuffle: bool = field(default=True, metadata={"help": "stream in a seeded random order (else sorted by path)"})
    resample: str = field(default="bicubic", metadata={"help": "resize filter", "choices": sorted(RESAMPLING)})


def missing_resources(args: ImageFolderArgs) -> list[str]:
    if not args.root:
        return ["imagefolder needs a folder: set `root:` in the dataset args"]
    if os.path.isfile(args.root):
        return [f"{args.root} is a file, not a folder: set `root:` to the folder tree of images it belongs to"]
    if not os.path.isdir(args.root):
        return [f"image folder not found at {args.root}: set `root:` to a folder tree of images"]
    return []


class ImageFolder(Dataset):
    """Images under `root`, streamed; no captions (a training-only source)."""

    name = "imagefolder"

    def __init__(self, args: ImageFolderArgs):
        missing = missing_resources(args)
        if missing:
            raise UserError(missing[0])
        self.args = args
        self.root = args.root
        self.resolution = args.resolution
        self._paths: list[str] | None = None
        self._stamp: str | None = None  # files_stamp of paths(), on first identity()

    def paths(self) -> list[str]:
        """Absolute paths in streaming order (seeded shuffle or sorted), cut to max_images."""
        if self._paths is None:
            rel = list_images(self.root)
            if not rel:
                raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}")
            if self.args.shuffle:
                order = np.random.default_rng([self.args.seed, 11]).permutation(len(rel))
                rel = [rel[i] for i in order]
            if self.args.max_images:
                rel = rel[: self.args.max_images]
            self._paths = [os.path.join(self.root, p) for p in rel]
        return self._paths

    def __len__(self) -> int:
        return len(self.paths())

    def identity(self) -> dict:
        if self._stamp is None:
            self._stamp = files_stamp(self.paths(), self.root)
        return {"name": self.name, "resolution": self.resolution,
                "seed": self.args.seed if self.args.shuffle else None,  # the seed only orders a shuffled folder
                "count": len(self.paths()), "files_sha256": self._stamp, "shuffle": self.args.shuffle,
                "resample": self.args.resample}

    def iter_train_images(self, batch_size: int = 256) -> Iterator[Tensor]:
        """uint8 [B,3,r,r] batches over the whole folder, in the fixed order of `paths()`."""
        return iter_image_batches(self.paths(), self.resolution, batch_size, self.args.resample)

    def train_images(self) -> Tensor:
        return stack_or_refuse(self.paths(), self.resolution, "imagefolder train_images",
                               "set max_images or stream with iter_train_images()", self.args.resample)

    def _no_captions(self, what: str):
        return UserError(f"imagefolder is a training-only source (images without captions), so it has no {what}: "
                         "evaluate with a captioned dataset (fashion-mnist, mscoco, shapes) and use the folder as its train source")

    def eval_captions(self) -> list[CaptionItem]:
        raise self._no_captions("eval captions")

    def pairs(self) -> tuple[Tensor, list[str], list[dict]]:
        raise self._no_captions("captioned pairs")

    def real_images(self, items: list[CaptionItem], seeds: list[int]) -> Tensor:
        raise self._no_captions("real images for captions")

    def iter_reference_images(self, batch_size: int = 256) -> Iterator[Tensor]:
        raise self._no_captions("reference images")

    def reference_key(self) -> dict:
        raise self._no_captions("reference set")


class WithTrainSource(Dataset):
    """A captioned dataset whose image-only training set comes from another source (e.g. an ImageFolder).

    Evaluation (captions, pairs, real and reference images, attributes) is the
    captioned dataset's; `train_images` / `iter_train_images` are the source's.
    """

    def __init__(self, dataset: Dataset, train_source: Dataset):
        self.dataset = dataset
        self.train_source = train_source
        self.name = dataset.name
        self.resolution = dataset.resolution
        if train_source.resolution != dataset.resolution:
            raise UserError(f"train source resolution {train_source.resolution} differs from the dataset's "
                            f"{dataset.resolution}: set both to the same value")

    def identity(self) -> dict:
        return {**self.dataset.identity(), "train_source": self.train_source.identity()}

    def split_identity(self, split: str) -> dict:
        if split == "train":
            return {"train_source": self.train_source.split_identity("train")}
        return self.dataset.split_identity(split)

    def code_modules(self) -> list[str]:
        return [__name__, *self.dataset.code_modules(), *self.train_source.code_modules()]

    def train_images(self) -> Tensor:
        return self.train_source.train_images()

    def iter_train_images(self, batch_size: int = 256) -> Iterator[Tensor]:
        it = getattr(self.train_source, "iter_train_images", None)
        if it is not None:
            return it(batch_size)
        return iter(self.train_source.train_images().split(batch_size))

    def eval_captions(self) -> list[CaptionItem]:
        return self.dataset.eval_captions()

    def pairs(self) -> tuple[Tensor, list[str], list[dict]]:
        return self.dataset.pairs()

    def real_images(self, items: list[CaptionItem], seeds: list[int]) -> Tensor:
        return self.dataset.real_images(items, seeds)

    def iter_reference_images(self, batch_size: int = 256) -> Iterator[Tensor]:
        return self.dataset.iter_reference_images(batch_size)

    def reference_key(self) -> dict:
        # the reference set is the captioned dataset's, whatever the train source
        return self.dataset.reference_key()

    def attributes(self) -> dict[str, list[str]]:
        return self.dataset.attributes()


@DATASETS.register("imagefolder", "any folder tree of images, streamed, no captions: a training-only source",
                   args=ImageFolderArgs)
def make_imagefolder(args: ImageFolderArgs) -> ImageFolder:
    return ImageFolder(args)


make_imagefolder.training_only = True  # `bench validate` refuses it as the evaluated dataset


make_imagefolder.missing_resources = missing_resources
