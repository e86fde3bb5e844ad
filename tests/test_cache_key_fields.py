"""Cache-key fields that a mutation audit showed no test could fail on, each now checked by what it keys: the
resolved suite's hash (includes, --set overrides, not key order), the platform key's device type (not its index),
the bench version in artefact keys, the files stamp's paths, MS-COCO's captions files, Fashion-MNIST's caption
templates and seed, and an image folder's resize filter. Each test failed with its field removed from the key;
the converse (a file or option that changes no image or caption leaves the key alone, so nothing trains again for
nothing) is checked beside it."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bench
import bench.cache
import bench.datasets.fashion_mnist as fashion
from bench.cache import artefact_dir, cached_artefact, platform_key
from bench.datasets.fashion_mnist import FashionArgs, make_fashion_mnist
from bench.datasets.imagefolder import ImageFolderArgs, make_imagefolder
from bench.datasets.mscoco import CocoArgs, make_mscoco
from bench.suite import load_suite

try:  # tests/ as a package or as a plain folder on sys.path
    from tests.fixtures_coco import make_coco
    from tests.test_dataset_fashion import make_fashion_dir
except ImportError:
    from fixtures_coco import make_coco
    from test_dataset_fashion import make_fashion_dir


# ---- the resolved suite's hash (provenance of every results row) ---------------------------------------------
BASE = ("suite: keyed\nversion: 1\ndataset: {name: shapes, resolution: 32, num_captions: 8}\n"
        "generation: {batch_size: 8, seeds: [0]}\nsystems: [{name: noise}]\n")


def test_the_suite_hash_follows_the_resolved_suite_not_its_spelling(tmp_path):
    (tmp_path / "base.yaml").write_text(BASE)
    child = tmp_path / "child.yaml"
    child.write_text("include: base.yaml\nmetrics: [{name: throughput}]\n")
    h = load_suite(child).hash()
    assert load_suite(child).hash() == h
    assert load_suite(child, ["generation.batch_size=16"]).hash() != h  # an override is part of the suite
    assert load_suite(child, ["generation.batch_size=8"]).hash() == h  # setting what the file says changes nothing
    (tmp_path / "base.yaml").write_text(BASE.replace("resolution: 32", "resolution: 16"))
    assert load_suite(child).hash() != h  # an edit to an included file is an edit to the suite
    # the same suite written in one file, keys in another order: the same resolved suite
    (tmp_path / "flat.yaml").write_text("metrics: [{name: throughput}]\nsystems: [{name: noise}]\n"
                                        "generation: {seeds: [0], batch_size: 8}\n"
                                        "dataset: {num_captions: 8, resolution: 16, name: shapes}\n"
                                        "version: 1\nsuite: keyed\n")
    assert load_suite(tmp_path / "flat.yaml").hash() == load_suite(child).hash()


def test_the_suite_hash_names_the_folders_a_relative_path_leads_to(tmp_path):
    text = ("suite: folder\nversion: 1\n"
            "dataset: {name: shapes, resolution: 16, train_source: {name: imagefolder, root: imgs}}\n"
            "generation: {batch_size: 8, seeds: [0]}\nsystems: [{name: noise}]\n")
    for where in ("a", "b"):
        (tmp_path / where / "imgs").mkdir(parents=True)
        (tmp_path / where / "suite.yaml").write_text(text)
    a, b = (load_suite(tmp_path / where / "suite.yaml") for where in ("a", "b"))
    assert a.hash() != b.hash()  # one text, two image folders, which the resolved suites name
    assert [s.resolved["dataset"]["train_source"]["root"] for s in (a, b)] == \
        [str((tmp_path / where / "imgs").resolve()) for where in ("a", "b")]
    (tmp_path / "a" / "explicit.yaml").write_text(text.replace("root: imgs", "root: imgs, shuffle: true"))
    assert load_suite(tmp_path / "a" / "explicit.yaml").hash() == a.hash()  # a default written out is no change


# ---- the platform key and the bench version ------------------------------------------------------------------
def test_the_platform_key_names_the_device_type_but_not_its_index(monkeypatch):
    # a device that is no cuda device is named by the CPU's model, so only the device type tells MPS from the CPU
    assert bench.cache.machine_name("mps") == bench.cache.machine_name("cpu")
    assert platform_key("mps") != platform_key("cpu")
    monkeypatch.setattr(bench.cache, "machine_name", lambda device: "The Same GPU")
    assert platform_key("cuda:0") == platform_key("cuda:1") == platform_key("cuda")  # two of one model: one key
    assert platform_key("cuda") != platform_key("cpu")


def test_another_bench_version_trains_again(tmp_path, monkeypatch):
    """The version is the lever for a change of harness code that no code fingerprint names."""
    trained = []

    def cached() -> int:
        return cached_artefact(tmp_path, "thing", {"a": 1}, lambda: trained.append(1) or len(trained),
                               lambda obj, d: Path(d, "v").write_text(str(obj)),
                               lambda d: int(Path(d, "v").read_text()))

    assert [cached(), cached()] == [1, 1]
    released, first = bench.__version__, artefact_dir(tmp_path, "thing", {"a": 1})
    monkeypatch.setattr(bench, "__version__", released + ".post1")
    assert artefact_dir(tmp_path, "thing", {"a": 1}) != first
    assert [cached(), cached()] == [2, 2]
    records = sorted(json.loads(p.read_text())["bench_version"] for p in (tmp_path / "thing").glob("*/key.json"))
    assert records == [released, released + ".post1"]


# ---- files_stamp: the paths count, not only the sizes --------------------------------------------------------
def _noise(seed: int, size=(24, 20)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


def test_a_renamed_image_changes_the_folder_identity_though_every_size_is_the_same(tmp_path):
    for i, name in enumerate(("a.bmp", "b.bmp", "c.bmp")):  # BMPs of one size: equal byte sizes
        _noise(i).save(tmp_path / name)
    assert len({p.stat().st_size for p in tmp_path.iterdir()}) == 1

    def folder():
        return make_imagefolder(ImageFolderArgs(root=str(tmp_path), resolution=16, shuffle=False))

    before, images = folder().identity(), folder().train_images()
    os.rename(tmp_path / "a.bmp", tmp_path / "d.bmp")  # now streamed last
    after = folder()
    assert not torch.equal(after.train_images(), images)
    assert after.identity() != before


# ---- an image folder's resize filter ------------------------------------------------------------------------
def test_every_image_folder_option_that_changes_the_images_changes_the_identity(tmp_path):
    for i in range(4):
        _noise(i, size=(40 + 3 * i, 30)).save(tmp_path / f"{i}.png")
    base = {"root": str(tmp_path), "resolution": 16}
    ref = make_imagefolder(ImageFolderArgs(**base))
    changed = set()
    for arg, value in (("resample", "bilinear"), ("resample", "box"), ("seed", 1), ("shuffle", False),
                       ("max_images", 3), ("resolution", 12)):
        other = make_imagefolder(ImageFolderArgs(**{**base, arg: value}))
        if other.train_images().shape != ref.train_images().shape \
                or not torch.equal(other.train_images(), ref.train_images()):
            changed.add(arg)
            assert other.identity() != ref.identity(), f"{arg}={value!r} changes the images, not the identity"
    assert changed == {"resample", "seed", "shuffle", "max_images", "resolution"}
    # in a folder streamed in sorted order the seed orders nothing: the same images, the same identity
    unshuffled = [make_imagefolder(ImageFolderArgs(**base, shuffle=False, seed=seed)) for seed in (0, 1)]
    assert torch.equal(unshuffled[0].train_images(), unshuffled[1].train_images())
    assert unshuffled[0].identity() == unshuffled[1].identity()


# ---- MS-COCO: the captions files shape the captions, in the eval draw and in the pairs ------------------------
def _reword(path: str) -> None:
    """Every caption of a COCO captions file gets one more word: other captions, the same images."""
    with open(path) as f:
        data = json.load(f)
    for ann in data["annotations"]:
        ann["caption"] += " indeed"
    with open(path, "w") as f:
        json.dump(data, f)


def test_mscoco_eval_captions_file_keys_the_identity_not_the_reference_set(tmp_path):
    make_coco(str(tmp_path), "val2014", 16)

    def coco():  # training on the val images left over: the pairs' captions come from the val captions file
        return make_mscoco(CocoArgs(root=str(tmp_path), resolution=16, num_captions=6, train_split="val-rest",
                                    num_pairs=4))

    before = coco()
    captions, pair_captions = [it.caption for it in before.eval_captions()], before.pairs()[1]
    ident, pairs_ident, ref_key = before.identity(), before.split_identity("pairs"), before.reference_key()
    _reword(os.path.join(str(tmp_path), "annotations", "captions_val2014.json"))
    after = coco()
    assert [it.caption for it in after.eval_captions()] != captions and after.pairs()[1] != pair_captions
    assert after.identity() != ident and after.split_identity("pairs") != pairs_ident
    assert after.reference_key() == ref_key  # the reference images are the same images


def test_mscoco_train_captions_file_keys_the_pairs(tmp_path):
    make_coco(str(tmp_path), "val2014", 12)
    make_coco(str(tmp_path), "train2014", 10, seed=7)

    def coco():
        return make_mscoco(CocoArgs(root=str(tmp_path), resolution=16, num_captions=6, train_split="train2014",
                                    num_pairs=5))

    before = coco()
    pair_captions, pairs_ident = before.pairs()[1], before.split_identity("pairs")
    train_images, train_ident = torch.cat(list(before.iter_train_images())), before.split_identity("train")
    _reword(os.path.join(str(tmp_path), "annotations", "captions_train2014.json"))
    after = coco()
    assert after.pairs()[1] != pair_captions
    assert after.split_identity("pairs") != pairs_ident
    # image-only training reads no captions: the VQGAN and the language-free GPT are not trained again
    assert torch.equal(torch.cat(list(after.iter_train_images())), train_images)
    assert after.split_identity("train") == train_ident


# ---- Fashion-MNIST: caption templates and the seed -----------------------------------------------------------
@pytest.fixture
def fdir(tmp_path):
    make_fashion_dir(str(tmp_path))
    return str(tmp_path)


def _fashion(path, **kw):
    kw = {"resolution": 16, "num_captions": 40, "num_reference": 20, "num_pairs": 20, **kw}
    return make_fashion_mnist(FashionArgs(path=path, **kw))


@pytest.mark.parametrize("name, edit", [
    ("SEEN_TEMPLATES", lambda ts: ["a snapshot of {}", *ts[1:]]),
    ("HELD_OUT_TEMPLATES", lambda ts: ["a blurry photo of {}", *ts[1:]]),
    ("PHRASES", lambda ps: [p.replace("a ", "one ", 1) for p in ps]),
])
def test_fashion_caption_templates_key_the_captions_they_write(fdir, monkeypatch, name, edit):
    before = _fashion(fdir)
    captions, pair_captions = [it.caption for it in before.eval_captions()], before.pairs()[1]
    keys = (before.identity(), before.split_identity("pairs"), before.split_identity("train"), before.reference_key())
    monkeypatch.setattr(fashion, name, edit(getattr(fashion, name)))
    after = _fashion(fdir)
    assert [it.caption for it in after.eval_captions()] != captions
    assert after.identity() != keys[0]
    if after.pairs()[1] != pair_captions:  # the pairs use the seen templates and the phrases, not the held-out ones
        assert after.split_identity("pairs") != keys[1]
    else:  # the same pairs: what was trained on them stands
        assert name == "HELD_OUT_TEMPLATES" and after.split_identity("pairs") == keys[1]
    assert after.split_identity("train") == keys[2] and after.reference_key() == keys[3]  # no captions there


def test_fashion_seed_keys_the_reference_set_and_the_identity(fdir):
    a, b = _fashion(fdir), _fashion(fdir, seed=1)
    assert not torch.equal(torch.cat(list(a.iter_reference_images())), torch.cat(list(b.iter_reference_images())))
    assert a.reference_key() != b.reference_key()
    assert [it.caption for it in a.eval_captions()] != [it.caption for it in b.eval_captions()]
    assert a.identity() != b.identity()
    assert a.split_identity("train") == b.split_identity("train")  # the image-only train set is not drawn
