"""What every dataset offers the harness. Only bench/datasets/ reads image or caption files."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator

from torch import Tensor

from bench.api import CaptionItem


# The splits a trained artefact may read (a factory's `reads`), by the Dataset methods that read them. Eval data
# (captions, real and reference images) never shapes a trained artefact.
SPLITS = ("train", "pairs")
SPLIT_OF = {"train_images": "train", "iter_train_images": "train", "train_info": "train", "pairs": "pairs"}
# what any factory may ask of the dataset besides its declared splits: descriptions, not data
DESCRIPTIONS = ("name", "resolution", "attributes", "identity", "split_identity", "code_modules")


def check_reads(reads, who: str) -> tuple[str, ...]:
    """A factory's `reads`, checked: a tuple of SPLITS."""
    if not isinstance(reads, (tuple, list)) or not all(split in SPLITS for split in reads):
        raise ValueError(f"{who}: reads={reads!r}; a tuple of the splits {SPLITS} (eval data may not shape a trained "
                         "artefact; a factory without `reads` is keyed by the whole dataset identity)")
    return tuple(reads)


class ReadsOnly:
    """The dataset as a factory that declares the splits it reads (`factory.reads`) sees it: the methods of those
    splits and the descriptions (name, resolution, attributes, identities); everything else raises, so a trained
    artefact's key (which names the declared splits) cannot miss data it read."""

    def __init__(self, dataset, reads: tuple[str, ...], who: str):
        self._dataset, self._reads, self._who = dataset, tuple(reads), who

    def __getattr__(self, name: str):
        split = SPLIT_OF.get(name)
        if name in DESCRIPTIONS or split in self._reads:
            return getattr(self._dataset, name)
        what = f"the {split} split ({name})" if split else f"{name!r}, which is no split it may read"
        raise RuntimeError(f"{self._who} reads {what} but declares reads={self._reads}"
                           + (f": add {split!r} to its factory's `reads`" if split else ""))


class Dataset(ABC):
    name: str
    resolution: int  # images come out uint8 [.,3,resolution,resolution]

    @abstractmethod
    def identity(self) -> dict:
        """Everything that shapes the data (name, resolution, seed, sizes, held-out set): part of every cache key."""

    def split_identity(self, split: str) -> dict:
        """Everything that shapes one split's data, for the keys of what trains on it: "train" (train_images,
        iter_train_images) or "pairs" (pairs()). It may leave out what only other splits depend on (the number of
        eval captions, say), never what changes this split. Default: the whole identity."""
        return self.identity()

    @abstractmethod
    def eval_captions(self) -> list[CaptionItem]:
        """The captions systems generate for; each `info` carries the ground truth and a `split` tag."""

    @abstractmethod
    def train_images(self) -> Tensor:
        """Image-only training set (VQGAN, language-free GPT): uint8 [N,3,H,W]. No captions, ever."""

    @abstractmethod
    def pairs(self) -> tuple[Tensor, list[str], list[dict]]:
        """Captioned pairs for the CLIP stand-in and the evaluators: images uint8 [N,3,H,W], captions, info."""

    @abstractmethod
    def real_images(self, items: list[CaptionItem], seeds: list[int]) -> Tensor:
        """Real images for these captions, disjoint from the reference set (the `real-images` floor)."""

    @abstractmethod
    def iter_reference_images(self, batch_size: int = 256) -> Iterator[Tensor]:
        """The real images behind the reference statistics (FD, KID), uint8 batches."""

    @abstractmethod
    def reference_key(self) -> dict:
        """Names the reference set: dataset identity, split, count, resolution."""

    def attributes(self) -> dict[str, list[str]]:
        """Attribute name -> its values, for judges (empty for datasets without attributes)."""
        return {}

    def code_modules(self) -> list[str]:
        """The modules whose code makes this dataset's images and captions (their code joins the cache keys)."""
        return [type(self).__module__]


def build_dataset(spec) -> Dataset:
    """The suite's `dataset:` (a `bench.suite.DatasetSpec`) as a Dataset; with a `train_source:` the image-only
    training set comes from that source (`WithTrainSource`) and evaluation stays on the captioned dataset."""
    from bench.datasets.imagefolder import WithTrainSource
    from bench.registry import DATASETS

    dataset = DATASETS.get(spec.name).factory(spec.args)
    if spec.train_source is None:
        return dataset
    return WithTrainSource(dataset, build_dataset(spec.train_source))
