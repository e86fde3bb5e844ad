"""Trained artefacts are keyed by the splits they read: a split's identity changes whenever its data does, and
stays put for what only other splits depend on (more eval captions retrain nothing)."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from bench.build import Builder
from bench.components.vqgan_component import build_vqgan
from bench.datasets.base import build_dataset
from bench.datasets.fashion_mnist import FashionArgs, make_fashion_mnist
from bench.datasets.imagefolder import ImageFolderArgs, WithTrainSource, make_imagefolder
from bench.datasets.mscoco import CocoArgs, make_mscoco
from bench.datasets.shapes import ShapesDataset
from bench.suite import load_suite

try:  # tests/ as a package or as a plain folder on sys.path
    from tests.fixtures_coco import make_coco
    from tests.test_dataset_fashion import make_fashion_dir
except ImportError:
    from fixtures_coco import make_coco
    from test_dataset_fashion import make_fashion_dir

SPLITS = ("train", "pairs")


def split_data(dataset, split: str) -> str:
    """A hash of everything a training run reads from one split."""
    h = hashlib.sha256()
    if split == "train":
        h.update(dataset.train_images().numpy().tobytes())
    else:
        images, captions, info = dataset.pairs()
        h.update(images.numpy().tobytes() + json.dumps([captions, info], sort_keys=True).encode())
    return h.hexdigest()


def unchanged_identities(make, base: dict, variations: dict[str, list]) -> dict[str, set[str]]:
    """Checks that every variation that changes a split's data changes that split's identity; returns, per split,
    the arguments whose variations left both the data and the identity alone."""
    ref = make(**base)
    kept = {split: set() for split in SPLITS}
    for split in SPLITS:
        ref_data, ref_identity = split_data(ref, split), ref.split_identity(split)
        for arg, values in variations.items():
            for value in values:
                other = make(**{**base, arg: value})
                if split_data(other, split) != ref_data:
                    assert other.split_identity(split) != ref_identity, f"{arg}={value!r} changes the {split} data, not its identity"
                elif other.split_identity(split) == ref_identity:
                    kept[split].add(arg)
    return kept


def test_shapes_splits():
    kept = unchanged_identities(
        lambda **kw: ShapesDataset(**kw),
        {"resolution": 16, "num_captions": 8, "seed": 0, "train_size": 12, "pairs_size": 10},
        {"resolution": [24], "num_captions": [16], "seed": [1], "train_size": [13], "pairs_size": [11],
         "held_out": [("red circle",)]})
    assert kept == {"train": {"num_captions", "pairs_size"}, "pairs": {"num_captions", "train_size"}}


def test_fashion_splits(tmp_path):
    make_fashion_dir(str(tmp_path / "a"))
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    make_fashion_dir(str(tmp_path / "other"), seed=1)
    kept = unchanged_identities(
        lambda **kw: make_fashion_mnist(FashionArgs(**kw)),
        {"path": str(tmp_path / "a"), "resolution": 16, "num_captions": 20, "num_reference": 20, "num_pairs": 20},
        {"path": [str(tmp_path / "copy"), str(tmp_path / "other")], "resolution": [20], "num_captions": [30],
         "seed": [1], "held_out_fraction": [0.25], "num_reference": [15], "train_limit": [50], "num_pairs": [10],
         "resize": ["nearest"]})
    assert kept["train"] == {"path", "num_captions", "seed", "held_out_fraction", "num_reference"}
    assert kept["pairs"] == {"path", "num_captions", "held_out_fraction", "num_reference"}


def test_mscoco_splits(tmp_path):
    for root, seed in (("a", 0), ("other", 1)):
        make_coco(str(tmp_path / root), "val2014", 24, seed=seed)
        make_coco(str(tmp_path / root), "train2014", 12, seed=seed + 7)
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    base = {"root": str(tmp_path / "a"), "resolution": 16, "num_captions": 10, "train_split": "train2014", "num_pairs": 6}
    kept = unchanged_identities(
        lambda **kw: make_mscoco(CocoArgs(**kw)), base,
        {"root": [str(tmp_path / "copy"), str(tmp_path / "other")], "resolution": [20], "num_captions": [12],
         "seed": [1], "max_train_images": [8], "num_pairs": [5], "resample": ["bilinear"]})
    assert kept == {"train": {"root", "num_captions", "num_pairs"}, "pairs": {"root", "num_captions", "max_train_images"}}
    # training on the val images the eval draw leaves: the draw shapes the training data
    kept = unchanged_identities(lambda **kw: make_mscoco(CocoArgs(**kw)), {**base, "train_split": "val-rest", "num_pairs": 0},
                                {"num_captions": [12]})
    assert kept == {"train": set(), "pairs": set()}


def test_a_train_source_replaces_only_the_train_split(tmp_path):
    from PIL import Image
    import numpy as np

    for i in range(5):
        Image.fromarray(np.full((20, 20, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")

    def make(**kw):
        return WithTrainSource(ShapesDataset(resolution=16, train_size=12, pairs_size=10, **kw),
                               make_imagefolder(ImageFolderArgs(root=str(tmp_path), resolution=16)))

    kept = unchanged_identities(make, {"num_captions": 8}, {"num_captions": [16], "seed": [1]})
    assert kept == {"train": {"num_captions", "seed"}, "pairs": {"num_captions"}}


SUITE = """suite: keys
version: 1
dataset: {name: shapes, resolution: 32, num_captions: 8, train_size: 64, pairs_size: 64}
components:
  clip: {kind: clip, train: {preset: tiny, steps: 2, batch_size: 16}}
  vqgan: {kind: vqgan, train: {preset: tiny, steps: 2, batch_size: 4}}
  judge: {kind: attribute-judge, train: {steps: 2, batch_size: 8}}
systems:
  - {name: clipgen, alias: lf, args: {clip: clip, vqgan: vqgan, train: {preset: tiny, steps: 2, batch_size: 4}}}
metrics: [{name: throughput}]
"""


def test_component_keys_name_the_splits_their_factories_read(tmp_path):
    (tmp_path / "keys.yaml").write_text(SUITE)

    def keys(*overrides):
        suite = load_suite(tmp_path / "keys.yaml", overrides)
        builder = Builder(suite, build_dataset(suite.dataset), "cpu", str(tmp_path / "cache"), progress=False)
        return {name: builder.key_of(name) for name in ("clip", "vqgan", "judge")}

    base = keys()
    assert list(base["vqgan"]["data"]) == ["train"] and list(base["clip"]["data"]) == ["pairs"]
    assert keys("dataset.num_captions=16") == base
    more_pairs = keys("dataset.pairs_size=80")
    assert more_pairs["vqgan"] == base["vqgan"] and more_pairs["clip"] != base["clip"] != more_pairs["judge"]
    more_train = keys("dataset.train_size=80")
    assert more_train["vqgan"] != base["vqgan"] and more_train["clip"] == base["clip"]


def test_a_factory_reading_an_undeclared_split_fails_before_training(tmp_path, monkeypatch):
    (tmp_path / "keys.yaml").write_text(SUITE)
    suite = load_suite(tmp_path / "keys.yaml")
    builder = Builder(suite, build_dataset(suite.dataset), "cpu", str(tmp_path / "cache"), progress=False)
    monkeypatch.setattr(build_vqgan, "reads", ("pairs",))
    with pytest.raises(RuntimeError, match=r"component 'vqgan' reads the train split \(train_images\)"):
        builder.component("vqgan")
    assert not any((tmp_path / "cache").glob("vqgan/*/key.json"))
    # the language-free GPT's factory may read neither captions nor eval data
    monkeypatch.setattr(build_vqgan, "reads", ("train",))
    builder.system("lf")
    guarded = builder.context(("system", "lf"))  # what the factory of system 'lf' gets
    builder._building.append(("system", "lf"))  # as while its factory runs
    for read in (lambda d: d.pairs(), lambda d: d.eval_captions(), lambda d: d._eval, lambda d: d.num_captions):
        with pytest.raises(RuntimeError, match="declares reads=\\('train',\\)"):
            read(guarded.dataset)
    assert guarded.dataset.resolution == 32 and guarded.dataset.train_images().shape[0] == 64
    # eval data may not shape a trained artefact, and a misspelt split is no split
    for reads in (("eval",), ("pair",), "train"):
        monkeypatch.setattr(build_vqgan, "reads", reads)
        with pytest.raises(ValueError, match="component 'vqgan': reads="):
            builder.key_of("vqgan")


def test_a_factory_context_used_after_the_factory_returned_raises(tmp_path, monkeypatch):
    """A system that kept its ctx and trained lazily, at its first generate, would be keyed by the splits of
    whatever was being built then (or the whole dataset) and recorded in no item's provenance."""
    from bench.registry import SYSTEMS, Entry

    (tmp_path / "keys.yaml").write_text(SUITE.replace("systems:\n", "systems:\n  - {name: noise, alias: keeper}\n"))
    suite = load_suite(tmp_path / "keys.yaml")
    builder = Builder(suite, build_dataset(suite.dataset), "cpu", str(tmp_path / "cache"), progress=False)
    kept = []

    def keeper(args, ctx):  # a factory that keeps its ctx, and while it runs builds a component
        kept.append(ctx)
        assert ctx.dataset.train_images().shape[0] == 64
        ctx.component("clip")  # CLIP trains on the pairs: while it builds, this ctx still answers for 'keeper'
        if len(kept) == 2:  # built again: the first build's ctx stays closed, though 'keeper' is building
            with pytest.raises(RuntimeError, match="used after its factory returned"):
                kept[0].dataset
        return len(kept)

    monkeypatch.setitem(SYSTEMS._entries, "noise", Entry("noise", keeper, "test", None))
    monkeypatch.setattr(keeper, "reads", ("train",), raising=False)
    assert builder.system("keeper") == 1
    (ctx,) = kept
    save, load = (lambda obj, d: None), (lambda d: 1)
    late_calls = (lambda: ctx.cached("thing", {}, lambda: 1, save, load), lambda: ctx.dataset,
                  lambda: ctx.component("vqgan"), lambda: ctx.system("lf"))
    for late in late_calls:
        with pytest.raises(RuntimeError, match=r"system 'keeper': ctx\.\w+ used after its factory returned"):
            late()
    del builder._systems["keeper"]  # built again, as the build pool does after a worker trained what it needed
    assert builder.system("keeper") == 2
    assert not list((tmp_path / "cache").glob("thing"))


def test_the_language_free_parts_may_read_no_caption():
    """What makes CLIP-GEN language-free, enforced: the VQGAN and the GPT train on the image-only split, and a read
    of the pairs (or of eval captions) while building them raises (test above)."""
    from bench.systems.clipgen import build_clipgen, build_clipgen_text

    assert build_vqgan.reads == ("train",) and build_clipgen.reads == ("train",)
    assert build_clipgen_text.reads == ("pairs",)  # the text-supervised upper bound does read captions
