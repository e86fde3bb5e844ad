"""`fashion-mnist`: the 70,000 real Fashion-MNIST images with template captions.

Where the files come from (first that exists): `path:` in the suite, env
`BENCH_FASHION_MNIST`, Debian's `dataset-fashion-mnist` package
(/usr/share/datasets/fashion-mnist, four gzipped IDX files), or, with
`download: true`, torchvision's download into $BENCH_CACHE/datasets.
A directory may hold the IDX files gzipped or not, directly or under `raw/`
or `FashionMNIST/raw/` (torchvision's layout).

Roles of the splits:
  train_images         the train images outside the pairs (48k by default; no captions)
  pairs                the last `num_pairs` train images (12k by default), each with one caption from a
                       *seen* template; held apart from train_images, so a judge or CLIP trained on the pairs
                       never saw a candidate of the `retrieval` baseline (which draws from train_images)
  reference images     `num_reference` test images (a seeded subset)
  real_images          test images of the caption's class, outside the reference subset
  eval_captions        balanced over the 10 classes; a `held_out_fraction` of them use
                       templates never used for pairs (info["split"] = "held-out", else "seen")

Images are 28x28 grayscale, resized to the suite's resolution and repeated to 3 channels.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bench.api import CaptionItem, UserError
from bench.datasets.base import Dataset
from bench.registry import DATASETS

DEBIAN_PATH = "/usr/share/datasets/fashion-mnist"
ENV_PATH = "BENCH_FASHION_MNIST"
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
# the noun phrase each class takes in a caption
PHRASES = ["a t-shirt", "a pair of trousers", "a pullover", "a dress", "a coat", "a sandal", "a shirt",
           "a sneaker", "a bag", "an ankle boot"]
SEEN_TEMPLATES = [
    "a photo of {}",
    "a black and white picture of {}",
    "a picture of {}",
    "an image of {}",
    "a grayscale photo of {}",
    "a product photo of {}",
]
HELD_OUT_TEMPLATES = [
    "a low resolution photo of {}",
    "a catalogue image of {}",
    "a small picture of {}",
]
FILES = {  # role -> (IDX file stem, magic number)
    "train-images": ("train-images-idx3-ubyte", 0x803),
    "train-labels": ("train-labels-idx1-ubyte", 0x801),
    "test-images": ("t10k-images-idx3-ubyte", 0x803),
    "test-labels": ("t10k-labels-idx1-ubyte", 0x801),
}
SUBDIRS = ("", "raw", os.path.join("FashionMNIST", "raw"))


@dataclass(frozen=True)
class FashionArgs:
    resolution: int = field(default=32, metadata={"help": "images are resized from 28px to this", "min": 8, "max": 1024})
    num_captions: int = field(default=1000, metadata={"help": "eval captions, balanced over the 10 classes", "min": 1})
    seed: int = field(default=0, metadata={"help": "fixes caption templates, subsets and real-image picks"})
    path: str = field(default="", metadata={"help": f"folder with the IDX files (default ${ENV_PATH}, then {DEBIAN_PATH})",
                                            "path": "dir"})
    download: bool = field(default=False, metadata={"help": "if no files are found, download with torchvision (needs network)"})
    held_out_fraction: float = field(default=0.5, metadata={"help": "share of eval captions using held-out templates", "min": 0.0, "max": 1.0})
    num_reference: int = field(default=5000, metadata={"help": "test images behind the reference statistics; the rest feed real_images", "min": 10, "max": 9990})
    train_limit: int = field(default=0, metadata={"help": "use only the first N train images, pairs included (0 = all 60,000)", "min": 0})
    num_pairs: int = field(default=12000, metadata={"help": "captioned pairs: the last N train images, held apart "
                                                             "from the image-only train_images", "min": 1})
    resize: str = field(default="bilinear", metadata={"help": "upsampling filter", "choices": ["bilinear", "bicubic", "nearest"]})


# ---------------------------------------------------------------- finding and reading the IDX files

def _cache_dir() -> str:
    return os.path.join(os.environ.get("BENCH_CACHE", os.path.expanduser("~/.cache/clipgen-bench")), "datasets")


def _find_file(folder: str, stem: str) -> str | None:
    for sub in SUBDIRS:
        for name in (stem, stem + ".gz"):
            p = os.path.join(folder, sub, name)
            if os.path.isfile(p):
                return p
    return None


def find_files(folder: str) -> dict[str, str] | None:
    """role -> file path for all four IDX files in `folder`, or None if any is missing."""
    found = {role: _find_file(folder, stem) for role, (stem, _) in FILES.items()}
    return None if any(v is None for v in found.values()) else found  # type: ignore[return-value]


def candidate_folders(args: FashionArgs) -> list[str]:
    if args.path:
        return [args.path]
    folders = [os.environ[ENV_PATH]] if os.environ.get(ENV_PATH) else []
    folders.append(DEBIAN_PATH)
    if args.download:
        folders.append(os.path.join(_cache_dir(), "fashion-mnist"))
    return folders


def missing_resources(args: FashionArgs) -> list[str]:
    for folder in candidate_folders(args):
        if os.path.isdir(folder) and find_files(folder):
            return []
    if args.download:
        return []  # fetched on first use (fails then with one line if the network is closed)
    where = args.path or (os.environ.get(ENV_PATH) or DEBIAN_PATH)
    stems = ", ".join(stem + "[.gz]" for stem, _ in FILES.values())
    if args.path:
        return [f"Fashion-MNIST not found at {where} (needs {stems}): fix `path:`, "
                f"or run `apt-get install dataset-fashion-mnist` (root) and drop `path:`"]
    return [f"Fashion-MNIST not found at {where}: run `apt-get install dataset-fashion-mnist` (root), "
            f"or set `path:` to a folder with {stems}, or set `download: true` where the network allows"]


def read_idx(path: str, magic: int) -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array; a malformed file is a UserError naming it."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:  # zlib.error: a corrupted gzip body
        raise UserError(f"cannot read {path}: {err}") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        raise UserError(f"{path} is not an IDX file of type {magic:#06x} (bad header)")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(data) - header != int(np.prod(dims)):
        raise UserError(f"{path} is truncated or padded: header says {dims}, body has {len(data) - header} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()  # [N] or [N,28,28], writable


def _download(folder: str) -> None:
    try:
        from torchvision.datasets import FashionMNIST as TVFashion
    except ImportError as err:  # pragma: no cover - torchvision is a dependency
        raise UserError(f"download: true needs torchvision ({err})") from None
    try:
        for train in (True, False):
            TVFashion(folder, train=train, download=True)
    except Exception as err:  # network errors come in many types; report one line
        raise UserError(f"could not download Fashion-MNIST into {folder} ({type(err).__name__}: {err}); "
                        f"run `apt-get install dataset-fashion-mnist` (root) or set `path:`") from None


def load_arrays(args: FashionArgs) -> dict[str, np.ndarray]:
    """role -> array: train/test images uint8 [N,28,28] and labels uint8 [N]."""
    files = None
    for folder in candidate_folders(args):
        if os.path.isdir(folder):
            files = find_files(folder)
            if files:
                break
    if files is None and args.download:
        folder = os.path.join(_cache_dir(), "fashion-mnist")
        _download(folder)
        files = find_files(folder)
    if files is None:
        raise UserError(missing_resources(args)[0])
    arrays = {role: read_idx(files[role], FILES[role][1]) for role in FILES}
    for split in ("train", "test"):
        imgs, labels = arrays[f"{split}-images"], arrays[f"{split}-labels"]
        if len(imgs) != len(labels):
            raise UserError(f"Fashion-MNIST {split}: {len(imgs)} images but {len(labels)} labels in {files[split + '-images']}")
        if labels.size and labels.max() >= len(CLASSES):
            raise UserError(f"Fashion-MNIST {split} labels go up to {labels.max()}, expected 0-9 ({files[split + '-labels']})")
    return arrays


# ---------------------------------------------------------------- the dataset

def caption_for(label: int, template: str) -> str:
    return template.format(PHRASES[label])


def _templates_sha(*templates: list[str]) -> str:
    """A hash of the phrases and the `templates` that write captions (the evaluation uses both sets, the training
    pairs only the seen templates)."""
    return hashlib.sha256(repr((PHRASES, *templates)).encode()).hexdigest()[:12]


class FashionMNIST(Dataset):
    name = "fashion-mnist"

    def __init__(self, args: FashionArgs):
        self.args = args
        self.resolution = args.resolution
        self._arrays: dict[str, np.ndarray] | None = None
        self._captions: list[CaptionItem] | None = None
        self._split_test: tuple[np.ndarray, list[np.ndarray]] | None = None
        self._data_sha: dict[tuple[str, ...], str] = {}

    # -- raw data, loaded once on first use
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            arrays = load_arrays(self.args)
            if self.args.train_limit:
                arrays["train-images"] = arrays["train-images"][: self.args.train_limit]
                arrays["train-labels"] = arrays["train-labels"][: self.args.train_limit]
            n_train = len(arrays["train-images"])
            if self.args.num_pairs >= n_train:
                raise UserError(f"num_pairs={self.args.num_pairs} leaves no image-only train images (the train split "
                                f"has {n_train}{' after train_limit' if self.args.train_limit else ''}): lower num_pairs")
            n_test = len(arrays["test-images"])
            if self.args.num_reference >= n_test:
                raise UserError(f"num_reference={self.args.num_reference} leaves no test images for real_images "
                                f"(the test split has {n_test}): lower num_reference")
            self._arrays = arrays
        return self._arrays

    def to_rgb(self, gray: np.ndarray) -> Tensor:
        """uint8 [N,28,28] -> uint8 [N,3,r,r] (resized, channel repeated)."""
        x = torch.from_numpy(np.ascontiguousarray(gray)).unsqueeze(1)  # [N,1,28,28]
        r = self.resolution
        if x.shape[-1] != r or x.shape[-2] != r:
            mode = self.args.resize
            kwargs = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
            x = F.interpolate(x.float(), size=(r, r), mode=mode, **kwargs)  # [N,1,r,r]
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        return x.expand(-1, 3, -1, -1).contiguous()  # [N,3,r,r]

    def _test_split(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """(reference test indices, per-class test indices outside the reference)."""
        if self._split_test is None:
            labels = self.arrays()["test-labels"]
            order = np.random.default_rng([self.args.seed, 3]).permutation(len(labels))
            ref = np.sort(order[: self.args.num_reference])
            rest = np.sort(order[self.args.num_reference:])
            pools = [rest[labels[rest] == k] for k in range(len(CLASSES))]
            self._split_test = (ref, pools)
        return self._split_test

    # -- the Dataset contract
    def identity(self) -> dict:
        a = self.args
        return {"name": self.name, "resolution": a.resolution, "seed": a.seed, "num_captions": a.num_captions,
                "held_out_fraction": a.held_out_fraction, "num_reference": a.num_reference,
                "train_limit": a.train_limit, "num_pairs": a.num_pairs, "pairs_split": "last-num_pairs-of-train", "resize": a.resize,
                "templates_sha": _templates_sha(SEEN_TEMPLATES, HELD_OUT_TEMPLATES), "data_sha256": self.data_sha256()}

    def split_identity(self, split: str) -> dict:
        # both splits are slices of the train arrays; pairs add seeded captions from the seen templates
        a = self.args
        if split not in ("train", "pairs"):
            raise ValueError(f"fashion-mnist has no split {split!r} to train on")
        ident = {"name": self.name, "split": split, "resolution": a.resolution, "resize": a.resize,
                 "train_limit": a.train_limit, "num_pairs": a.num_pairs, "data_sha256": self.data_sha256()}
        if split == "pairs":
            ident.update(seed=a.seed, templates_sha=_templates_sha(SEEN_TEMPLATES))
        return ident

    def data_sha256(self, roles: tuple[str, ...] = ()) -> str:
        """A hash of the images and labels read (MNIST's IDX files have Fashion-MNIST's names and sizes), or of
        only the named arrays (`roles`, e.g. ("test-images",))."""
        roles = tuple(sorted(roles or self.arrays()))
        if roles not in self._data_sha:
            h = hashlib.sha256()
            for role in roles:
                h.update(role.encode() + np.ascontiguousarray(self.arrays()[role]).tobytes())
            self._data_sha[roles] = h.hexdigest()[:16]
        return self._data_sha[roles]

    def attributes(self) -> dict[str, list[str]]:
        return {"class": list(CLASSES)}

    def eval_captions(self) -> list[CaptionItem]:
        if self._captions is None:
            n = self.args.num_captions
            rng = np.random.default_rng([self.args.seed, 1])
            held = np.zeros(n, dtype=bool)
            held[rng.permutation(n)[: int(round(n * self.args.held_out_fraction))]] = True
            items = []
            for i in range(n):
                label = i % len(CLASSES)
                templates = HELD_OUT_TEMPLATES if held[i] else SEEN_TEMPLATES
                template = templates[int(rng.integers(len(templates)))]
                items.append(CaptionItem(i, caption_for(label, template),
                                         {"class": CLASSES[label], "label": label, "template": template,
                                          "split": "held-out" if held[i] else "seen"}))
            self._captions = items
        return self._captions

    def _pairs_start(self) -> int:
        return len(self.arrays()["train-images"]) - self.args.num_pairs

    def train_images(self) -> Tensor:
        return self.to_rgb(self.arrays()["train-images"][: self._pairs_start()])

    def iter_train_images(self, batch_size: int = 256) -> Iterator[Tensor]:
        imgs = self.arrays()["train-images"][: self._pairs_start()]
        for start in range(0, len(imgs), batch_size):
            yield self.to_rgb(imgs[start:start + batch_size])

    def pairs(self) -> tuple[Tensor, list[str], list[dict]]:
        arrays = self.arrays()
        imgs, labels = arrays["train-images"], arrays["train-labels"]
        rng = np.random.default_rng([self.args.seed, 2])
        idx = np.arange(self._pairs_start(), len(imgs))
        captions, info = [], []
        for i in idx:
            label = int(labels[i])
            template = SEEN_TEMPLATES[int(rng.integers(len(SEEN_TEMPLATES)))]
            captions.append(caption_for(label, template))
            info.append({"class": CLASSES[label], "label": label, "template": template, "split": "seen"})
        return self.to_rgb(imgs[idx]), captions, info

    def real_images(self, items: list[CaptionItem], seeds: list[int]) -> Tensor:
        if len(items) != len(seeds):
            raise ValueError("real_images: items and seeds differ in length")
        _, pools = self._test_split()
        test = self.arrays()["test-images"]
        picks = []
        for item, s in zip(items, seeds):
            label = CLASSES.index(item.info["class"])
            pool = pools[label]
            if len(pool) == 0:
                raise UserError(f"no test images of class {item.info['class']!r} outside the reference subset: lower num_reference")
            rng = np.random.default_rng([self.args.seed, 4, item.caption_id, s])
            picks.append(int(pool[rng.integers(len(pool))]))
        return self.to_rgb(test[np.asarray(picks, dtype=np.int64)])

    def iter_reference_images(self, batch_size: int = 256) -> Iterator[Tensor]:
        ref, _ = self._test_split()
        test = self.arrays()["test-images"]
        for start in range(0, len(ref), batch_size):
            yield self.to_rgb(test[ref[start:start + batch_size]])

    def reference_key(self) -> dict:
        a = self.args
        # the reference images are test images only: train_limit or the train files do not move them
        return {"dataset": self.name, "split": "test", "count": a.num_reference, "resolution": a.resolution,
                "seed": a.seed, "resize": a.resize, "test_images_sha256": self.data_sha256(("test-images",))}


@DATASETS.register("fashion-mnist", "70k real Fashion-MNIST images (IDX), template captions with held-out templates",
                   args=FashionArgs)
def make_fashion_mnist(args: FashionArgs) -> FashionMNIST:
    return FashionMNIST(args)


make_fashion_mnist.missing_resources = missing_resources
