"""`mscoco`: MS-COCO captions, the paper's evaluation protocol.

Layout under the root (`root:` in the suite, else env `BENCH_COCO_ROOT`), as the
official archives unpack (`bench data mscoco --root DIR` fetches val2014):
    annotations/captions_val2014.json   val2014/COCO_val2014_*.jpg
    annotations/captions_val2017.json   val2017/*.jpg              (the 2017 split works the same)
    train2014/ or train2017/            (only for train_split: train2014 / train2017)

Protocol (CLIP-GEN, after DALL-E / GLIDE): `num_captions` (30,000) distinct val
images are drawn with a fixed seed, one of each image's captions is drawn with the
same seed. The reference statistics use exactly those images, centre-cropped and
resized to `resolution` (256). `real_images` answers with *other* val images
(disjoint from the reference set), so the real-images row is a floor, not zero;
with 30,000 of val2014's 40,504 images drawn, 10,504 remain and are reused in a
seeded cycle when there are more captions than remaining images.

Training (language-free) uses images only: `iter_train_images` streams the train
split (or `val-rest`: the val images outside the reference set); `train_images`
returns one tensor only for sets that fit in memory.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from torch import Tensor

from bench.api import CaptionItem, UserError
from bench.datasets.base import Dataset
from bench.datasets.imagefolder import RESAMPLING, files_stamp, iter_image_batches, list_images, stack_or_refuse
from bench.registry import DATASETS

ENV_ROOT = "BENCH_COCO_ROOT"
EVAL_SPLITS = ["val2014", "val2017"]
TRAIN_SPLITS = ["train2014", "train2017", "val-rest"]


@dataclass(frozen=True)
class CocoArgs:
    resolution: int = field(default=256, metadata={"help": "centre crop, then resize to this", "min": 8, "max": 1024})
    num_captions: int = field(default=30000, metadata={"help": "eval captions, one per distinct val image", "min": 1})
    seed: int = field(default=0, metadata={"help": "fixes the drawn images and captions"})
    root: str = field(default="", metadata={"help": f"COCO root with annotations/ and val2014/ (default ${ENV_ROOT})",
                                            "path": "dir"})
    eval_split: str = field(default="val2014", metadata={"help": "where eval captions and reference images come from", "choices": EVAL_SPLITS})
    train_split: str = field(default="train2014", metadata={"help": "image-only training set; val-rest = val images outside the reference set", "choices": TRAIN_SPLITS})
    max_train_images: int = field(default=0, metadata={"help": "use at most this many training images (0 = all)", "min": 0})
    num_pairs: int = field(default=10000, metadata={"help": "captioned pairs for the CLIP stand-in and evaluators (0 = one per image)", "min": 0})
    resample: str = field(default="bicubic", metadata={"help": "resize filter", "choices": sorted(RESAMPLING)})


def resolve_root(args: CocoArgs) -> str:
    return args.root or os.environ.get(ENV_ROOT, "")


def captions_json(root: str, split: str) -> str:
    return os.path.join(root, "annotations", f"captions_{split}.json")


def missing_resources(args: CocoArgs) -> list[str]:
    root = resolve_root(args)
    fetch = f"run `bench data mscoco --root DIR --split {args.eval_split}`"
    if not root:
        return [f"MS-COCO root not set: set `root:` in the dataset args or env {ENV_ROOT}, after `bench data mscoco --root DIR`"]
    missing = []
    year = args.eval_split[-4:]
    if not os.path.isfile(captions_json(root, args.eval_split)):
        missing.append(f"MS-COCO captions not found at {captions_json(root, args.eval_split)}: {fetch} "
                       f"(or unpack annotations_trainval{year}.zip under {root})")
    if not os.path.isdir(os.path.join(root, args.eval_split)):
        missing.append(f"MS-COCO images not found at {os.path.join(root, args.eval_split)}/: {fetch} "
                       f"(or unpack {args.eval_split}.zip under {root})")
    if args.train_split != "val-rest":
        t = args.train_split
        if not os.path.isdir(os.path.join(root, t)):
            missing.append(f"MS-COCO training images not found at {os.path.join(root, t)}/: "
                           f"run `bench data mscoco --root DIR --split {args.eval_split} --with-train`, "
                           f"or set `train_split: val-rest`")
        if not os.path.isfile(captions_json(root, t)):
            missing.append(f"MS-COCO captions not found at {captions_json(root, t)}: unpack annotations_trainval{t[-4:]}.zip "
                           f"under {root} ({fetch} fetches it), or set `train_split: val-rest`")
    return missing


class CaptionIndex:
    """One split's captions file: image id -> file name, image id -> [(annotation id, caption)]."""

    def __init__(self, path: str):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise UserError(f"MS-COCO captions not found at {path}: run `bench data mscoco --root DIR`") from None
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read {path} as JSON: {err}") from None
        problem = check_captions_structure(data)
        if problem:
            raise UserError(f"{path} is not a COCO captions file: {problem}")
        self.file_names: dict[int, str] = {int(im["id"]): im["file_name"] for im in data["images"]}
        caps: dict[int, list[tuple[int, str]]] = {}
        for ann in data["annotations"]:
            caps.setdefault(int(ann["image_id"]), []).append((int(ann["id"]), " ".join(str(ann["caption"]).split())))
        self.captions = {k: sorted(v) for k, v in caps.items()}
        self.image_ids = sorted(k for k in self.captions if k in self.file_names)  # images with a caption


def check_captions_structure(data) -> str:
    """'' if `data` looks like a COCO captions file, else what is wrong (one phrase)."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        return "expected a JSON object with lists 'images' and 'annotations'"
    ids = set()
    for im in data["images"]:
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
            return "an entry of 'images' lacks an integer 'id' or a string 'file_name'"
        ids.add(im["id"])
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or not isinstance(ann.get("image_id"), int) or not isinstance(ann.get("caption"), str) \
                or not isinstance(ann.get("id"), int):
            return "an entry of 'annotations' lacks an integer 'id', an integer 'image_id' or a string 'caption'"
        if ann["image_id"] not in ids:
            return f"annotation {ann['id']} names image {ann['image_id']}, which is not in 'images'"
    return ""


class MSCOCO(Dataset):
    name = "mscoco"

    def __init__(self, args: CocoArgs):
        missing = missing_resources(args)
        if missing:
            raise UserError(missing[0])
        self.args = args
        self.root = resolve_root(args)
        self.resolution = args.resolution
        self._eval_index: CaptionIndex | None = None
        self._draw: tuple[list[CaptionItem], list[int], list[int]] | None = None
        self._real_perm: dict[int, np.ndarray] = {}
        self._train_paths: list[str] | None = None
        self._stamps: dict[str, str] = {}

    # -- annotations and the seeded draw, on first use
    def eval_index(self) -> CaptionIndex:
        if self._eval_index is None:
            self._eval_index = CaptionIndex(captions_json(self.root, self.args.eval_split))
        return self._eval_index

    def _drawn(self) -> tuple[list[CaptionItem], list[int], list[int]]:
        """(eval captions, their image ids = the reference set, the remaining val image ids)."""
        if self._draw is None:
            idx = self.eval_index()
            ids = idx.image_ids
            n = self.args.num_captions
            if n > len(ids):
                raise UserError(f"num_captions={n} but {self.args.eval_split} has only {len(ids)} captioned images "
                                f"(one caption per distinct image): lower num_captions")
            rng = np.random.default_rng([self.args.seed, 21])
            order = rng.permutation(len(ids))
            chosen = [ids[i] for i in order[:n]]
            rest = sorted(ids[i] for i in order[n:])
            items = []
            for pos, image_id in enumerate(chosen):
                caps = idx.captions[image_id]
                ann_id, text = caps[int(rng.integers(len(caps)))]
                items.append(CaptionItem(pos, text, {"image_id": image_id, "annotation_id": ann_id,
                                                     "file_name": idx.file_names[image_id],
                                                     "split": self.args.eval_split}))
            self._draw = (items, chosen, rest)
        return self._draw

    def _eval_path(self, image_id: int) -> str:
        return os.path.join(self.root, self.args.eval_split, self.eval_index().file_names[image_id])

    def _files_stamp(self, which: str) -> str:
        """files_stamp (relative path and size) of the reference images ("reference"), of a training split other
        than val-rest ("train": its image folder; "pairs": its captions file too) or of every file the dataset
        reads ("all": captions files, captioned eval images, the training folder), computed once."""
        if which not in self._stamps:
            a = self.args
            paths = []
            if which == "reference":
                paths = [self._eval_path(i) for i in self._drawn()[1]]
            if which == "all":
                paths = [captions_json(self.root, a.eval_split)]
                paths += [self._eval_path(i) for i in self.eval_index().image_ids]
            if which in ("train", "pairs", "all") and a.train_split != "val-rest":
                folder = os.path.join(self.root, a.train_split)
                if which != "train":  # image-only training never reads the training split's captions
                    paths += [captions_json(self.root, a.train_split)]
                paths += [os.path.join(folder, p) for p in list_images(folder)]
            try:
                self._stamps[which] = files_stamp(paths, self.root)
            except OSError as err:
                raise UserError(f"MS-COCO file missing or unreadable: {err}") from None
        return self._stamps[which]

    # -- the Dataset contract
    def code_modules(self) -> list[str]:
        return [__name__, "bench.datasets.imagefolder"]  # the image helpers live there

    def identity(self) -> dict:
        a = self.args
        _, chosen, _ = self._drawn()
        drawn = hashlib.sha256(",".join(map(str, chosen)).encode()).hexdigest()[:16]
        return {"name": self.name, "resolution": a.resolution, "seed": a.seed, "num_captions": a.num_captions,
                "eval_split": a.eval_split, "train_split": a.train_split, "max_train_images": a.max_train_images,
                "num_pairs": a.num_pairs, "resample": a.resample, "crop": "centre", "drawn_images_sha": drawn,
                "files_sha256": self._files_stamp("all")}

    def split_identity(self, split: str) -> dict:
        a = self.args
        if a.train_split == "val-rest":  # training images are the val images the eval draw left
            return self.identity()
        size = {"train": ("max_train_images", a.max_train_images), "pairs": ("num_pairs", a.num_pairs)}[split]
        return {"name": self.name, "split": split, "resolution": a.resolution, "seed": a.seed,
                "train_split": a.train_split, size[0]: size[1], "resample": a.resample, "crop": "centre",
                "files_sha256": self._files_stamp(split)}

    def eval_captions(self) -> list[CaptionItem]:
        return list(self._drawn()[0])

    def iter_reference_images(self, batch_size: int = 256) -> Iterator[Tensor]:
        _, chosen, _ = self._drawn()
        return iter_image_batches([self._eval_path(i) for i in chosen], self.resolution, batch_size, self.args.resample)

    def reference_key(self) -> dict:
        ident = self.identity()
        return {"dataset": self.name, "split": f"{self.args.eval_split}/caption-images", "count": self.args.num_captions,
                "resolution": self.resolution, "seed": self.args.seed, "crop": "centre", "resample": self.args.resample,
                "drawn_images_sha": ident["drawn_images_sha"], "files_sha256": self._files_stamp("reference")}

    def real_images(self, items: list[CaptionItem], seeds: list[int]) -> Tensor:
        """For caption position p and seed s: the p-th image of a seed-s permutation of the non-reference val images."""
        if len(items) != len(seeds):
            raise ValueError("real_images: items and seeds differ in length")
        _, _, rest = self._drawn()
        if not rest:
            raise UserError(f"num_captions={self.args.num_captions} uses every captioned {self.args.eval_split} image, "
                            "so none is left for real_images: lower num_captions")
        paths = []
        for item, s in zip(items, seeds):
            if s not in self._real_perm:
                self._real_perm[s] = np.random.default_rng([self.args.seed, 22, s]).permutation(len(rest))
            paths.append(self._eval_path(rest[int(self._real_perm[s][item.caption_id % len(rest)])]))
        return stack_or_refuse(paths, self.resolution, "mscoco real_images", "ask for fewer captions at once",
                               self.args.resample)

    # -- training images (no captions) and captioned pairs
    def train_paths(self) -> list[str]:
        """Training image files in streaming order (seeded shuffle), cut to max_train_images."""
        if self._train_paths is None:
            t = self.args.train_split
            if t == "val-rest":
                paths = [self._eval_path(i) for i in self._drawn()[2]]
            else:
                folder = os.path.join(self.root, t)
                paths = [os.path.join(folder, p) for p in list_images(folder)]
            if not paths:
                raise UserError(f"no training images for train_split={t} under {self.root}")
            order = np.random.default_rng([self.args.seed, 23]).permutation(len(paths))
            paths = [paths[i] for i in order]
            if self.args.max_train_images:
                paths = paths[: self.args.max_train_images]
            self._train_paths = paths
        return self._train_paths

    def iter_train_images(self, batch_size: int = 256) -> Iterator[Tensor]:
        return iter_image_batches(self.train_paths(), self.resolution, batch_size, self.args.resample)

    def train_images(self) -> Tensor:
        return stack_or_refuse(self.train_paths(), self.resolution, "mscoco train_images",
                               "set max_train_images or stream with iter_train_images()", self.args.resample)

    def pairs(self) -> tuple[Tensor, list[str], list[dict]]:
        """num_pairs images of the training split, one seeded caption each (val-rest: never the reference images)."""
        t = self.args.train_split
        if t == "val-rest":
            idx, ids, folder = self.eval_index(), self._drawn()[2], self.args.eval_split
        else:
            idx = CaptionIndex(captions_json(self.root, t))
            ids, folder = idx.image_ids, t
        rng = np.random.default_rng([self.args.seed, 24])
        n = self.args.num_pairs or len(ids)
        if n < len(ids):
            ids = sorted(ids[i] for i in rng.choice(len(ids), n, replace=False))
        paths, captions, info = [], [], []
        for image_id in ids:
            caps = idx.captions[image_id]
            ann_id, text = caps[int(rng.integers(len(caps)))]
            paths.append(os.path.join(self.root, folder, idx.file_names[image_id]))
            captions.append(text)
            info.append({"image_id": image_id, "annotation_id": ann_id, "split": t})
        images = stack_or_refuse(paths, self.resolution, "mscoco pairs", "lower num_pairs", self.args.resample)
        return images, captions, info


@DATASETS.register("mscoco", "MS-COCO val captions (30k, one per image) and centre-cropped real images; train images streamed",
                   args=CocoArgs)
def make_mscoco(args: CocoArgs) -> MSCOCO:
    return MSCOCO(args)


make_mscoco.missing_resources = missing_resources
