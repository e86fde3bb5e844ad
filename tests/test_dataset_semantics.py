"""What the MS-COCO, image-folder and Fashion-MNIST datasets yield, checked against independent readings of the files
(PIL crops and resizes, hand-parsed JSON and IDX bytes): the MS-COCO eval draw (distinct images, one caption per image
drawn uniformly and independently of the annotations' order in the file, a smaller num_captions being a prefix of a
larger one), the captioned pairs (each image the file its info names, an exact num_pairs, a seeded subset and
caption), the seeded training order, malformed captions files refused; hidden files skipped in an image folder and a
train source that replaces only the training images; Fashion-MNIST pixels (orientation, PIL-equivalent bilinear
resizing with rounding), the labels in info and in the data hash, real images drawn per caption, malformed IDX files
(counts, labels, a corrupted gzip body) refused with one UserError, class names and templates; and which arguments
each dataset's identity and reference key name (every one that changes an output changes the identity; the reference
key moves exactly when the reference images do)."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from bench.api import UserError
from bench.datasets.fashion_mnist import (CLASSES, DEBIAN_PATH, HELD_OUT_TEMPLATES, PHRASES, SEEN_TEMPLATES, FashionArgs,
                                          find_files, make_fashion_mnist, read_idx)
from bench.datasets.imagefolder import ImageFolderArgs, WithTrainSource, list_images, make_imagefolder
from bench.datasets.mscoco import CocoArgs, make_mscoco

try:  # tests/ as a package or as a plain folder on sys.path
    from tests.fixtures_coco import make_coco
    from tests.test_dataset_fashion import make_fashion_dir, write_idx
    from tests.test_dataset_imagefolder import _Captioned, make_tree
except ImportError:
    from fixtures_coco import make_coco
    from test_dataset_fashion import make_fashion_dir, write_idx
    from test_dataset_imagefolder import _Captioned, make_tree


def _hash(*tensors_or_objects) -> str:
    h = hashlib.sha256()
    for x in tensors_or_objects:
        h.update(x.numpy().tobytes() if isinstance(x, torch.Tensor) else json.dumps(x, sort_keys=True).encode())
    return h.hexdigest()


def pil_centre_crop_resize(path: str, r: int, resample=Image.Resampling.BICUBIC) -> torch.Tensor:
    """uint8 [3,r,r]: the largest centred square of the file, resized by PIL (independent of bench's helpers)."""
    with Image.open(path) as im:
        w, h = im.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        out = im.convert("RGB").crop(box).resize((r, r), resample)
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)


# ---------------------------------------------------------------- MS-COCO

N_SYN, N_CAPS = 200, 5  # a synthetic captions file: 200 images with 5 captions each


def make_synthetic_coco(root: str, n_images: int = N_SYN, with_images: bool = False) -> dict:
    """captions_val2014.json with n_images images of N_CAPS captions each (annotation ids in shuffled file order);
    with_images: 8x8 flat-colour PNGs whose colour encodes the image id."""
    rng = np.random.default_rng(5)
    images = [{"id": 100 + k, "file_name": f"img_{100 + k}.png"} for k in range(n_images)]
    anns = [{"id": 10_000 + N_CAPS * k + j, "image_id": 100 + k, "caption": f"image {100 + k} caption {j}"}
            for k in range(n_images) for j in range(N_CAPS)]
    anns = [anns[i] for i in rng.permutation(len(anns))]
    data = {"images": images, "annotations": anns}
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    os.makedirs(os.path.join(root, "val2014"), exist_ok=True)
    with open(os.path.join(root, "annotations", "captions_val2014.json"), "w") as f:
        json.dump(data, f)
    if with_images:
        for im in images:
            Image.new("RGB", (8, 8), (im["id"] % 256, 7, 3)).save(os.path.join(root, "val2014", im["file_name"]))
    return data


def coco(root, **kw):
    kw = {"resolution": 16, "num_captions": 10, "train_split": "val-rest", "num_pairs": 0, **kw}
    return make_mscoco(CocoArgs(root=str(root), **kw))


def caption_position(item_caption: str) -> int:
    return int(item_caption.rsplit(" ", 1)[1])  # "image <id> caption <j>" -> j, the rank of its annotation id


def test_coco_eval_draw_one_uniform_caption_per_distinct_image_and_prefix_stable(tmp_path):
    make_synthetic_coco(str(tmp_path))
    items = coco(tmp_path, num_captions=120).eval_captions()
    ids = [it.info["image_id"] for it in items]
    assert len(set(ids)) == 120 and set(ids) <= set(range(100, 100 + N_SYN))
    for it in items:  # the caption is one of that image's, and the annotation id is that caption's
        assert it.caption.startswith(f"image {it.info['image_id']} caption ")
        assert it.info["annotation_id"] == 10_000 + N_CAPS * (it.info["image_id"] - 100) + caption_position(it.caption)
    # the caption is drawn among the image's five, not always its first: each rank is picked about 24 times of 120
    counts = np.bincount([caption_position(it.caption) for it in items], minlength=N_CAPS)
    assert counts.min() >= 10, counts
    # the drawn images are a uniform subset, not the lowest ids: about half from each half of the ids
    assert 40 <= sum(i < 100 + N_SYN // 2 for i in ids) <= 80
    # a smaller draw is the start of a larger one (a quick run evaluates a prefix of the full protocol)
    assert coco(tmp_path, num_captions=30).eval_captions() == items[:30]


def test_coco_caption_draw_ignores_the_annotations_order_in_the_file(tmp_path):
    make_coco(str(tmp_path), "val2014", 24)
    before = coco(tmp_path, num_captions=15, num_pairs=6)
    captions, pairs = [it.caption for it in before.eval_captions()], before.pairs()[1:]
    path = tmp_path / "annotations" / "captions_val2014.json"
    data = json.loads(path.read_text())
    data["annotations"] = data["annotations"][::-1]  # the same file, annotations listed in another order
    path.write_text(json.dumps(data))
    after = coco(tmp_path, num_captions=15, num_pairs=6)
    assert [it.caption for it in after.eval_captions()] == captions and after.pairs()[1:] == pairs


def test_coco_caption_whitespace_is_collapsed(tmp_path):
    data = make_synthetic_coco(str(tmp_path), n_images=3)
    for ann in data["annotations"]:
        ann["caption"] = "  a\tred  bus\n on the   street \n"
    (tmp_path / "annotations" / "captions_val2014.json").write_text(json.dumps(data))
    assert {it.caption for it in coco(tmp_path, num_captions=3).eval_captions()} == {"a red bus on the street"}


@pytest.mark.parametrize("data, problem", [
    ({"annotations": []}, "lists 'images' and 'annotations'"),
    ({"images": [{"file_name": "a.jpg"}], "annotations": []}, "integer 'id'"),
    ({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 2, "image_id": 1, "caption": None}]},
     "string 'caption'"),
])
def test_coco_malformed_captions_file_is_one_user_error(tmp_path, data, problem):
    make_synthetic_coco(str(tmp_path), n_images=1)
    (tmp_path / "annotations" / "captions_val2014.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=f"is not a COCO captions file: .*{problem}"):
        coco(tmp_path, num_captions=1).eval_captions()


def test_coco_pairs_are_the_images_their_info_names(tmp_path):
    data = make_coco(str(tmp_path), "val2014", 12)
    train = make_coco(str(tmp_path), "train2014", 12, seed=3)  # 11 captioned images
    for split, captions_file, n_pairs, expect in (("train2014", train, 10, 10), ("val-rest", data, 0, 11 - 4)):
        d = coco(tmp_path, num_captions=4, train_split=split, num_pairs=n_pairs)
        images, captions, info = d.pairs()
        assert len(images) == len(captions) == len(info) == expect  # num_pairs exactly, 0 = every image
        anns = {a["id"]: a for a in captions_file["annotations"]}
        names = {im["id"]: im["file_name"] for im in captions_file["images"]}
        folder = "train2014" if split == "train2014" else "val2014"
        for img, cap, inf in zip(images, captions, info):
            ann = anns[inf["annotation_id"]]
            assert ann["image_id"] == inf["image_id"] and cap == " ".join(ann["caption"].split())
            assert torch.equal(img, pil_centre_crop_resize(str(tmp_path / folder / names[inf["image_id"]]), 16))


def test_coco_pairs_are_a_seeded_subset_with_uniform_captions(tmp_path):
    make_synthetic_coco(str(tmp_path), n_images=120, with_images=True)
    d = coco(tmp_path, resolution=8, num_captions=40, num_pairs=30)
    rest = d._drawn()[2]  # the 80 val images outside the reference set
    images, captions, info = d.pairs()
    ids = [i["image_id"] for i in info]
    assert len(set(ids)) == 30 and set(ids) <= set(rest) and ids != rest[:30]
    assert [int(v) for v in images[:, 0, 0, 0]] == [i % 256 for i in ids]  # each image is its id's file
    _, all_captions, all_info = coco(tmp_path, resolution=8, num_captions=40, num_pairs=0).pairs()
    assert [i["image_id"] for i in all_info] == rest
    counts = np.bincount([caption_position(c) for c in all_captions], minlength=N_CAPS)
    assert counts.min() >= 6, counts  # each of the five captions is drawn about 16 times of 80


def test_coco_training_images_stream_in_a_seeded_shuffle(tmp_path):
    make_coco(str(tmp_path), "val2014", 8)
    make_coco(str(tmp_path), "train2014", 12, seed=3)
    folder = str(tmp_path / "train2014")
    every = [os.path.join(folder, p) for p in list_images(folder)]
    orders = [coco(tmp_path, num_captions=4, train_split="train2014", seed=s).train_paths() for s in (0, 1)]
    assert all(sorted(o) == every for o in orders)
    assert orders[0] != every and orders[1] != every and orders[0] != orders[1]
    assert coco(tmp_path, num_captions=4, train_split="train2014", seed=0).train_paths() == orders[0]


def test_coco_identity_names_every_argument_and_the_reference_key_only_the_reference_set(tmp_path):
    make_coco(str(tmp_path), "val2014", 24)
    make_coco(str(tmp_path), "train2014", 12, seed=3)
    base = {"num_captions": 10, "train_split": "train2014", "num_pairs": 6}

    def outputs(d):
        ref = _hash(torch.cat(list(d.iter_reference_images())))
        rest = _hash([it.caption for it in d.eval_captions()], torch.cat(list(d.iter_train_images())),
                     d.pairs()[0], d.pairs()[1], d.real_images(d.eval_captions()[:3], [0, 0, 0]))
        return ref, rest

    ref0 = coco(tmp_path, **base)
    ref_out, rest_out = outputs(ref0)
    moved = set()
    for arg, value in (("resample", "bilinear"), ("resolution", 20), ("num_captions", 12), ("seed", 1),
                       ("max_train_images", 8), ("num_pairs", 5), ("train_split", "val-rest")):
        d = coco(tmp_path, **{**base, arg: value})
        ref, rest = outputs(d)
        assert (ref, rest) != (ref_out, rest_out), arg
        assert d.identity() != ref0.identity(), f"{arg}={value!r} changes the data, not the identity"
        assert (d.reference_key() != ref0.reference_key()) == (ref != ref_out), arg
        if ref != ref_out:
            moved.add(arg)
    assert moved == {"resample", "resolution", "num_captions", "seed"}


# ---------------------------------------------------------------- image folder and train source

def test_imagefolder_skips_hidden_files(tmp_path):
    colours = make_tree(tmp_path)
    (tmp_path / "n01" / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork, not an image
    (tmp_path / ".cover.png").write_bytes(b"")
    assert list_images(str(tmp_path)) == sorted(colours)
    assert make_imagefolder(ImageFolderArgs(root=str(tmp_path), resolution=8)).train_images().shape == (5, 3, 8, 8)


def test_a_train_source_replaces_only_the_training_images(tmp_path):
    make_tree(tmp_path / "imgs")
    folder = make_imagefolder(ImageFolderArgs(root=str(tmp_path / "imgs"), resolution=16))
    captioned = _Captioned()
    both = WithTrainSource(captioned, folder)
    items = captioned.eval_captions()
    assert torch.equal(both.real_images(items, [0]), captioned.real_images(items, [0]))
    assert torch.equal(torch.cat(list(both.iter_reference_images(4))), torch.cat(list(captioned.iter_reference_images())))
    assert both.pairs()[1] == captioned.pairs()[1]
    # the train source's code shapes the training images: its module joins the keys, whatever the source
    make_fashion_dir(str(tmp_path / "fashion"))
    fashion = make_fashion_mnist(FashionArgs(path=str(tmp_path / "fashion"), resolution=16, num_reference=20,
                                             num_pairs=20))
    assert "bench.datasets.fashion_mnist" in WithTrainSource(captioned, fashion).code_modules()
    assert captioned.code_modules()[0] in WithTrainSource(captioned, fashion).code_modules()


# ---------------------------------------------------------------- Fashion-MNIST

def random_fashion_dir(folder, n_train=60, n_test=100, seed=0) -> dict[str, np.ndarray]:
    """IDX files of random (asymmetric) 28x28 images and shuffled balanced labels; returns what was written."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        out[f"{split}-images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        out[f"{split}-labels"] = rng.permutation(np.arange(n) % 10).astype(np.uint8)  # balanced classes
        write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte"), out[f"{split}-images"], gz=True)
        write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte"), out[f"{split}-labels"], gz=True)
    return out


def fashion(path, **kw):
    kw = {"resolution": 16, "num_captions": 20, "num_reference": 20, "num_pairs": 20, **kw}
    return make_fashion_mnist(FashionArgs(path=str(path), **kw))


def test_fashion_pixels_are_the_idx_images_resized_as_pil_does(tmp_path):
    written = random_fashion_dir(tmp_path)
    raw = written["train-images"][:40]  # the image-only train set: all but the last num_pairs=20
    same = fashion(tmp_path, resolution=28).train_images()
    assert torch.equal(same[:, 0], torch.from_numpy(raw)) and torch.equal(same[:, 2], same[:, 0])  # row-major, unscaled
    for r in (16, 20, 32):  # down (antialiased) and up
        x = fashion(tmp_path, resolution=r).train_images()[:, 1].numpy().astype(int)
        pil = np.stack([np.asarray(Image.fromarray(im).resize((r, r), Image.Resampling.BILINEAR)) for im in raw])
        diff = x - pil.astype(int)
        assert np.abs(diff).max() <= 1 and abs(diff.mean()) < 0.25, (r, np.abs(diff).max(), diff.mean())


def test_fashion_labels_in_info_are_the_files_labels(tmp_path):
    written = random_fashion_dir(tmp_path)
    d = fashion(tmp_path)
    _, captions, info = d.pairs()
    true = written["train-labels"][40:]
    assert [i["label"] for i in info] == true.tolist() and [i["class"] for i in info] == [CLASSES[k] for k in true]
    assert all(c == i["template"].format(PHRASES[i["label"]]) for c, i in zip(captions, info))
    assert all(it.info["label"] == CLASSES.index(it.info["class"]) == it.caption_id % 10 for it in d.eval_captions())


def test_fashion_relabelled_files_change_the_data_hash(tmp_path):
    written = random_fashion_dir(tmp_path)
    before = fashion(tmp_path)
    keys, captions = (before.identity(), before.split_identity("pairs")), before.pairs()[1]
    write_idx(str(tmp_path / "train-labels-idx1-ubyte"), (written["train-labels"] + 1) % 10, gz=True)  # same images
    after = fashion(tmp_path)
    assert after.pairs()[1] != captions
    assert after.identity() != keys[0] and after.split_identity("pairs") != keys[1]


def test_fashion_real_images_are_drawn_per_caption(tmp_path):
    random_fashion_dir(tmp_path, n_test=200)
    d = fashion(tmp_path, resolution=28, num_captions=40, num_reference=100)
    items = d.eval_captions()
    real = d.real_images(items, [0] * 40)
    distinct = {img[0].numpy().tobytes() for img in real}
    assert len(distinct) > 10  # four captions per class do not all get their class's one image


@pytest.mark.parametrize("edit, message", [
    (lambda w: ("train-labels", w["train-labels"][:-1]), "60 images but 59 labels"),
    (lambda w: ("t10k-labels", np.where(np.arange(100) == 3, 10, w["t10k-labels"])), "labels go up to 10, expected 0-9"),
])
def test_fashion_inconsistent_files_are_one_user_error(tmp_path, edit, message):
    written = random_fashion_dir(tmp_path)
    name, array = edit(written)
    write_idx(str(tmp_path / f"{name}-idx1-ubyte"), array, gz=True)
    with pytest.raises(UserError, match=message):
        fashion(tmp_path).train_images()


def test_fashion_corrupted_gzip_body_is_one_user_error(tmp_path):
    written = random_fashion_dir(tmp_path)
    labels = written["train-labels"]
    blob = (0x801).to_bytes(4, "big") + len(labels).to_bytes(4, "big") + labels.tobytes()
    # a gzip header, then a stored deflate block whose NLEN is not the complement of LEN: zlib's error, not gzip's
    body = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\x01" + struct.pack("<HH", len(blob), len(blob)) + blob
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(body + b"\x00" * 8)
    with pytest.raises(UserError, match="cannot read .*train-labels-idx1-ubyte.gz"):
        fashion(tmp_path).train_images()


def test_fashion_class_names_phrases_and_templates():
    # Fashion-MNIST's label order (Xiao et al. 2017): 0 T-shirt/top ... 9 Ankle boot
    assert CLASSES == ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
    assert all(name in phrase for name, phrase in zip(CLASSES, PHRASES))
    assert not set(SEEN_TEMPLATES) & set(HELD_OUT_TEMPLATES)  # a held-out caption is never a training template
    assert all(t.count("{}") == 1 for t in SEEN_TEMPLATES + HELD_OUT_TEMPLATES)


def test_fashion_identity_names_every_argument_and_the_reference_key_only_the_reference_set(tmp_path):
    random_fashion_dir(tmp_path)

    def outputs(d):
        ref = _hash(torch.cat(list(d.iter_reference_images())))
        items = d.eval_captions()
        rest = _hash([it.caption for it in items], d.train_images(), d.pairs()[0], d.pairs()[1],
                     d.real_images(items[:10], [0] * 10))
        return ref, rest

    ref0 = fashion(tmp_path)
    ref_out, rest_out = outputs(ref0)
    moved = set()
    for arg, value in (("resolution", 20), ("seed", 1), ("num_captions", 30), ("held_out_fraction", 0.25),
                       ("num_reference", 15), ("train_limit", 50), ("num_pairs", 10), ("resize", "nearest"),
                       ("resize", "bicubic")):
        d = fashion(tmp_path, **{arg: value})
        ref, rest = outputs(d)
        assert (ref, rest) != (ref_out, rest_out), arg
        assert d.identity() != ref0.identity(), f"{arg}={value!r} changes the data, not the identity"
        if ref != ref_out:
            moved.add(arg)
            assert d.reference_key() != ref0.reference_key(), arg
        else:
            assert d.reference_key() == ref0.reference_key(), arg
    assert moved == {"resolution", "seed", "num_reference", "resize"}


@pytest.mark.skipif(find_files(DEBIAN_PATH) is None,
                    reason=f"Debian package dataset-fashion-mnist not installed ({DEBIAN_PATH} absent)")
def test_debian_idx_files_read_as_hand_parsed():
    files = find_files(DEBIAN_PATH)
    with gzip.open(files["test-labels"], "rb") as f:
        blob = f.read()
    magic, n = struct.unpack(">II", blob[:8])
    assert (magic, n) == (0x801, 10000)
    labels = read_idx(files["test-labels"], 0x801)
    assert np.array_equal(labels, np.frombuffer(blob[8:], dtype=np.uint8))
    assert labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]  # the published test set's first labels
    assert read_idx(files["train-labels"], 0x801)[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
