"""mscoco on a small generated COCO-format fixture: the paper protocol, disjoint real images, streaming."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from bench.api import UserError
from bench.datasets.imagefolder import load_image
from bench.datasets.mscoco import MSCOCO, CocoArgs, make_mscoco, missing_resources
from bench.registry import DATASETS

try:  # tests/ as a package or as a plain folder on sys.path
    from tests.fixtures_coco import make_coco
except ImportError:
    from fixtures_coco import make_coco

N_IMAGES = 24  # 23 of them captioned


@pytest.fixture
def root(tmp_path):
    make_coco(str(tmp_path), "val2014", N_IMAGES)
    return str(tmp_path)


def ds(root, **kw) -> MSCOCO:
    kw = {"resolution": 32, "num_captions": 10, "train_split": "val-rest", "num_pairs": 0, **kw}
    return make_mscoco(CocoArgs(root=root, **kw))


def test_registered():
    entry = DATASETS._entries["mscoco"]
    assert entry.args is CocoArgs and entry.factory is make_mscoco
    assert CocoArgs().resolution == 256 and CocoArgs().num_captions == 30000 and CocoArgs().eval_split == "val2014"


def test_missing_resources(tmp_path, monkeypatch):
    monkeypatch.delenv("BENCH_COCO_ROOT", raising=False)
    assert "BENCH_COCO_ROOT" in missing_resources(CocoArgs())[0]
    lines = missing_resources(CocoArgs(root=str(tmp_path)))
    assert len(lines) == 4  # captions + images for val2014, train folder + train captions for train2014
    assert all("bench data mscoco" in line or "val-rest" in line for line in lines)
    make_coco(str(tmp_path), "val2014", 4)
    assert missing_resources(CocoArgs(root=str(tmp_path), train_split="val-rest")) == []
    monkeypatch.setenv("BENCH_COCO_ROOT", str(tmp_path))
    assert missing_resources(CocoArgs(train_split="val-rest")) == []
    with pytest.raises(UserError, match="train2014"):
        make_mscoco(CocoArgs(root=str(tmp_path)))


def test_eval_captions_one_per_distinct_image(root):
    data = json.load(open(os.path.join(root, "annotations", "captions_val2014.json")))
    by_id = {a["id"]: a for a in data["annotations"]}
    items = ds(root, num_captions=15).eval_captions()
    assert [it.caption_id for it in items] == list(range(15))
    assert len({it.info["image_id"] for it in items}) == 15
    for it in items:
        ann = by_id[it.info["annotation_id"]]
        assert ann["image_id"] == it.info["image_id"] and it.caption == " ".join(ann["caption"].split())
        assert it.info["split"] == "val2014" and "\n" not in it.caption
    again = ds(root, num_captions=15).eval_captions()
    assert again == items
    assert [it.info["image_id"] for it in ds(root, num_captions=15, seed=1).eval_captions()] != [it.info["image_id"] for it in items]
    with pytest.raises(UserError, match="only 23 captioned images"):
        ds(root, num_captions=24).eval_captions()


def test_reference_images_are_the_caption_images_centre_cropped(root):
    d = ds(root, resolution=40)
    items = d.eval_captions()
    ref = torch.cat(list(d.iter_reference_images(batch_size=4)))
    assert ref.shape == (10, 3, 40, 40) and ref.dtype == torch.uint8
    for it, img in zip(items, ref):
        path = os.path.join(root, "val2014", it.info["file_name"])
        with Image.open(path) as im:
            w, h = im.size
            s = min(w, h)
            expected = im.convert("RGB").crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((40, 40), Image.Resampling.BICUBIC)
        assert torch.equal(img, torch.from_numpy(np.asarray(expected).copy()).permute(2, 0, 1))
    key = d.reference_key()
    assert key["count"] == 10 and key["resolution"] == 40 and key["split"].startswith("val2014")


def test_real_images_come_from_disjoint_val_images(root):
    d = ds(root, num_captions=18)  # 23 captioned -> 5 left
    items = d.eval_captions()
    ref = torch.cat(list(d.iter_reference_images()))
    real = d.real_images(items, [0] * len(items))
    assert real.shape == (18, 3, 32, 32)
    ref_set = {img.numpy().tobytes() for img in ref}
    assert all(img.numpy().tobytes() not in ref_set for img in real)
    rest = d._drawn()[2]
    rest_set = {load_image(d._eval_path(i), 32).numpy().tobytes() for i in rest}
    assert {img.numpy().tobytes() for img in real} == rest_set  # 18 captions cycle through all 5 remaining images
    assert torch.equal(real[:5], d.real_images(items[:5], [0] * 5))
    assert not torch.equal(real, d.real_images(items, [1] * len(items)))
    with pytest.raises(UserError, match="none is left"):
        ds(root, num_captions=23).real_images(items[:1], [0])


def test_val_rest_training_is_image_only_and_disjoint(root):
    d = ds(root, num_captions=15)
    paths = d.train_paths()
    assert len(paths) == 23 - 15 + 0  # captioned images outside the reference set
    chosen_files = {it.info["file_name"] for it in d.eval_captions()}
    assert not chosen_files & {os.path.basename(p) for p in paths}
    x = d.train_images()
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(torch.cat(list(d.iter_train_images(batch_size=3))), x)
    assert ds(root, num_captions=15, max_train_images=3).train_images().shape[0] == 3
    images, captions, info = d.pairs()
    assert len(images) == len(captions) == 8 and all(isinstance(c, str) and c for c in captions)
    assert not chosen_files & {os.path.basename(d._eval_path(i["image_id"])) for i in info}


def test_train_split_folder_streams(root):
    make_coco(root, "train2014", 7)
    d = ds(root, train_split="train2014", num_pairs=3)
    assert missing_resources(d.args) == []
    assert sum(len(b) for b in d.iter_train_images(batch_size=4)) == 7
    images, captions, info = d.pairs()
    assert images.shape == (3, 3, 32, 32) and all(i["split"] == "train2014" for i in info)


def test_identity_and_errors(root, tmp_path):
    a = ds(root).identity()
    assert a == ds(root).identity() and a != ds(root, seed=3).identity() and a != ds(root, resolution=64).identity()
    with open(os.path.join(root, "annotations", "captions_val2014.json"), "w") as f:
        json.dump({"images": [], "annotations": [{"id": 1, "image_id": 5, "caption": "x"}]}, f)
    with pytest.raises(UserError, match="not in 'images'"):
        ds(root).eval_captions()
    with open(os.path.join(root, "annotations", "captions_val2014.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(UserError, match="cannot read"):
        ds(root).eval_captions()


def test_identity_and_reference_key_see_replaced_images(root):
    d = ds(root, num_captions=4, train_split="val-rest")
    ident, ref = d.identity(), d.reference_key()
    chosen, rest = d._drawn()[1], d._drawn()[2]
    with open(d._eval_path(rest[0]), "ab") as f:  # a training image changes: the training data, not the reference set
        f.write(b"\0")
    after = ds(root, num_captions=4, train_split="val-rest")
    assert after.identity() != ident and after.reference_key() == ref
    with open(d._eval_path(chosen[0]), "ab") as f:  # a reference image changes: both
        f.write(b"\0")
    again = ds(root, num_captions=4, train_split="val-rest")
    assert again.reference_key() != ref and again.identity() != after.identity()


def test_broken_jpeg_is_user_error(root):
    d = ds(root, num_captions=2)
    with open(d._eval_path(d.eval_captions()[0].info["image_id"]), "wb") as f:
        f.write(b"\xff\xd8 not a jpeg")
    with pytest.raises(UserError, match="cannot read image"):
        list(d.iter_reference_images())


def test_val2017_layout(tmp_path):
    make_coco(str(tmp_path), "val2017", 6)
    d = ds(str(tmp_path), eval_split="val2017", num_captions=4)
    items = d.eval_captions()
    assert all(it.info["split"] == "val2017" and not it.info["file_name"].startswith("COCO_") for it in items)
    assert torch.cat(list(d.iter_reference_images())).shape == (4, 3, 32, 32)
    assert d.real_images(items[:2], [0, 0]).shape == (2, 3, 32, 32)
