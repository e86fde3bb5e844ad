"""fashion-mnist: IDX reading, roles of the splits, captions, and the real Debian files when present."""
from __future__ import annotations

import dataclasses
import gzip
import os

import numpy as np
import pytest
import torch

from bench.api import UserError
from bench.datasets.fashion_mnist import (CLASSES, DEBIAN_PATH, HELD_OUT_TEMPLATES, PHRASES, SEEN_TEMPLATES, FashionArgs,
                                          FashionMNIST, find_files, make_fashion_mnist, missing_resources, read_idx)
from bench.registry import DATASETS

N_TRAIN, N_TEST = 60, 40
N_PAIRS = 20  # the last 20 train images are the captioned pairs; the first 40 the image-only train set


def write_idx(path: str, array: np.ndarray, gz: bool) -> None:
    magic = 0x800 | array.ndim  # unsigned bytes
    blob = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path + (".gz" if gz else ""), "wb") as f:
        f.write(blob)


def make_fashion_dir(folder, gz=True, sub="", n_train=N_TRAIN, n_test=N_TEST, seed=0):
    """Tiny IDX files: image i of class k is filled with value 20*k + (i % 7) so tests can read labels back."""
    rng = np.random.default_rng(seed)
    d = os.path.join(folder, sub)
    os.makedirs(d, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = (20 * labels[:, None, None] + (np.arange(n) % 7)[:, None, None]) * np.ones((1, 28, 28), dtype=np.int64)
        write_idx(os.path.join(d, f"{split}-images-idx3-ubyte"), images, gz)
        write_idx(os.path.join(d, f"{split}-labels-idx1-ubyte"), labels, gz)
        out[split] = (images.astype(np.uint8), labels.astype(np.uint8))
    return out


def label_of(img: torch.Tensor) -> int:
    return int(img[0, 14, 14]) // 20  # the centre pixel survives resizing of a flat image exactly


@pytest.fixture
def fdir(tmp_path):
    make_fashion_dir(str(tmp_path))
    return str(tmp_path)


def ds(path, **kw) -> FashionMNIST:
    kw = {"resolution": 32, "num_captions": 40, "num_reference": 20, "num_pairs": N_PAIRS, **kw}
    return make_fashion_mnist(FashionArgs(path=path, **kw))


def test_registered_with_args():
    entry = DATASETS._entries["fashion-mnist"]  # registration happens at import; no load_all needed
    assert entry.args is FashionArgs and entry.factory is make_fashion_mnist
    names = {f.name for f in dataclasses.fields(FashionArgs)}
    assert {"resolution", "num_captions", "seed"} <= names
    assert dataclasses.fields(FashionArgs)[0].metadata["min"] == 8


@pytest.mark.parametrize("gz,sub", [(True, ""), (False, ""), (False, "raw"), (True, os.path.join("FashionMNIST", "raw"))])
def test_finds_layouts(tmp_path, gz, sub):
    written = make_fashion_dir(str(tmp_path), gz=gz, sub=sub)
    files = find_files(str(tmp_path))
    assert files is not None and all(p.endswith(".gz") == gz for p in files.values())
    imgs = read_idx(files["train-images"], 0x803)
    assert imgs.shape == (N_TRAIN, 28, 28) and np.array_equal(imgs, written["train"][0])
    assert np.array_equal(read_idx(files["test-labels"], 0x801), written["t10k"][1])


def test_bad_idx_is_user_error(tmp_path):
    p = str(tmp_path / "x-idx3-ubyte")
    write_idx(p, np.zeros((2, 28, 28)), gz=False)
    with open(p, "ab") as f:
        f.write(b"\0")
    with pytest.raises(UserError, match="truncated or padded"):
        read_idx(p, 0x803)
    with pytest.raises(UserError, match="bad header"):
        read_idx(p, 0x801)


def test_missing_resources_lines(tmp_path):
    lines = missing_resources(FashionArgs(path=str(tmp_path / "nope")))
    assert len(lines) == 1 and "nope" in lines[0] and "apt-get install dataset-fashion-mnist" in lines[0]
    make_fashion_dir(str(tmp_path / "ok"))
    assert missing_resources(FashionArgs(path=str(tmp_path / "ok"))) == []
    with pytest.raises(UserError, match="not found"):
        ds(str(tmp_path / "nope")).train_images()


def test_images_are_rgb_uint8_at_resolution(fdir):
    d = ds(fdir, resolution=56)
    x = d.train_images()
    assert x.shape == (N_TRAIN - N_PAIRS, 3, 56, 56) and x.dtype == torch.uint8
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    batches = list(d.iter_train_images(batch_size=25))
    assert [len(b) for b in batches] == [25, 15] and torch.equal(torch.cat(batches), x)
    assert ds(fdir, resolution=28).train_images().shape[-1] == 28


def test_upsampling_keeps_content(fdir):
    raw = read_idx(find_files(fdir)["train-images"], 0x803)
    x = ds(fdir, resolution=56, resize="nearest").train_images()
    assert torch.equal(x[:, 0, ::2, ::2], torch.from_numpy(raw[: N_TRAIN - N_PAIRS]))  # 2x nearest: every other pixel is the original


def test_eval_captions(fdir):
    d = ds(fdir, num_captions=200, held_out_fraction=0.25)
    items = d.eval_captions()
    assert [it.caption_id for it in items] == list(range(200))
    assert sum(it.info["split"] == "held-out" for it in items) == 50
    counts = np.bincount([CLASSES.index(it.info["class"]) for it in items], minlength=10)
    assert counts.tolist() == [20] * 10
    for it in items:
        templates = HELD_OUT_TEMPLATES if it.info["split"] == "held-out" else SEEN_TEMPLATES
        assert it.info["template"] in templates
        assert it.caption == it.info["template"].format(PHRASES[CLASSES.index(it.info["class"])])
    assert {it.info["template"] for it in items} == set(SEEN_TEMPLATES) | set(HELD_OUT_TEMPLATES)
    assert d.attributes() == {"class": CLASSES}
    assert [it.caption for it in ds(fdir, num_captions=200, held_out_fraction=0.25).eval_captions()] == [it.caption for it in items]
    assert [it.caption for it in ds(fdir, num_captions=200, held_out_fraction=0.25, seed=1).eval_captions()] != [it.caption for it in items]


def test_pairs_use_seen_templates_and_true_labels(fdir):
    images, captions, info = ds(fdir).pairs()
    assert images.shape == (N_PAIRS, 3, 32, 32) and len(captions) == len(info) == N_PAIRS
    for img, cap, inf in zip(images, captions, info):
        assert inf["template"] in SEEN_TEMPLATES and inf["split"] == "seen"
        assert CLASSES[label_of(img)] == inf["class"]
        assert cap.endswith(inf["class"].replace("trouser", "trousers"))
    sub_images, sub_captions, _ = ds(fdir, num_pairs=10).pairs()
    assert len(sub_images) == len(sub_captions) == 10


def test_pairs_are_held_apart_from_the_image_only_train_set(tmp_path):
    make_fashion_dir(str(tmp_path), n_train=N_TRAIN)
    distinct = np.arange(N_TRAIN)[:, None, None] * np.ones((1, 28, 28), dtype=np.int64)  # image i is filled with i
    write_idx(str(tmp_path / "train-images-idx3-ubyte"), distinct, gz=True)
    d = ds(str(tmp_path), resolution=28)
    train = {int(v) for v in d.train_images()[:, 0, 0, 0]}
    pairs = {int(v) for v in d.pairs()[0][:, 0, 0, 0]}
    assert train == set(range(N_TRAIN - N_PAIRS)) and pairs == set(range(N_TRAIN - N_PAIRS, N_TRAIN))
    assert sum(len(b) for b in d.iter_train_images(batch_size=7)) == N_TRAIN - N_PAIRS
    with pytest.raises(UserError, match="num_pairs=60 leaves no image-only train images"):
        ds(str(tmp_path), num_pairs=60).train_images()


def test_reference_and_real_images_are_disjoint_test_images(tmp_path):
    written = make_fashion_dir(str(tmp_path), n_test=200)
    test_imgs = torch.from_numpy(written["t10k"][0])
    d = ds(str(tmp_path), resolution=28, num_reference=100)
    ref = torch.cat(list(d.iter_reference_images(batch_size=30)))
    assert ref.shape == (100, 3, 28, 28)
    ref_index, pools = d._test_split()
    assert torch.equal(ref[:, 0], test_imgs[ref_index])
    assert set(ref_index).isdisjoint(np.concatenate(pools)) and len(ref_index) + sum(map(len, pools)) == 200
    items = d.eval_captions()
    real = d.real_images(items, [0] * len(items))
    assert real.shape == (len(items), 3, 28, 28)
    pool_set = {tuple(np.asarray(test_imgs[i]).ravel()) for i in np.concatenate(pools)}
    for it, img in zip(items, real):
        assert CLASSES[label_of(img)] == it.info["class"]
        assert tuple(img[0].numpy().ravel()) in pool_set
    assert torch.equal(d.real_images(items[:5], [3] * 5), d.real_images(items[:5], [3] * 5))
    assert not torch.equal(d.real_images(items, [0] * len(items)), d.real_images(items, [1] * len(items)))
    key = d.reference_key()
    assert key["count"] == 100 and key["resolution"] == 28 and key["split"] == "test"


def test_identity_names_what_shapes_the_data(fdir):
    a, b = ds(fdir).identity(), ds(fdir, held_out_fraction=0.3).identity()
    assert a != b and a["name"] == "fashion-mnist" and a == ds(fdir).identity()
    assert ds(fdir).reference_key() == ds(fdir, num_captions=7).reference_key()  # captions don't shape the reference set


def test_identity_and_reference_key_name_the_data_read(tmp_path):
    """Other IDX files under the same names and sizes (MNIST's, say) are other data: other keys."""
    one, other = tmp_path / "one", tmp_path / "other"
    make_fashion_dir(str(one), gz=False, seed=0)
    make_fashion_dir(str(other), gz=False, seed=1)  # labels shuffled differently: same names, same sizes
    assert [(p.name, p.stat().st_size) for p in sorted(one.iterdir())] == \
        [(p.name, p.stat().st_size) for p in sorted(other.iterdir())]
    assert ds(str(one)).identity() != ds(str(other)).identity()
    assert ds(str(one)).reference_key() != ds(str(other)).reference_key()
    assert ds(str(one)).identity() == ds(str(one)).identity()


def test_num_reference_must_leave_real_images(fdir):
    with pytest.raises(UserError, match="lower num_reference"):
        ds(fdir, num_reference=N_TEST).train_images()


def test_env_path_and_download_fallback(tmp_path, monkeypatch):
    make_fashion_dir(str(tmp_path / "env"))
    monkeypatch.setenv("BENCH_FASHION_MNIST", str(tmp_path / "env"))
    assert ds("").arrays()["train-images"].shape == (N_TRAIN, 28, 28)
    # download: torchvision's class is replaced by one that writes its raw/ layout (no network in tests)
    monkeypatch.setenv("BENCH_FASHION_MNIST", str(tmp_path / "empty"))
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    import bench.datasets.fashion_mnist as mod
    import torchvision.datasets

    monkeypatch.setattr(mod, "DEBIAN_PATH", str(tmp_path / "no-debian"))
    calls = []

    class FakeTV:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            make_fashion_dir(root, gz=False, sub=os.path.join("FashionMNIST", "raw"), n_train=30)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeTV)
    assert missing_resources(FashionArgs()) != [] and missing_resources(FashionArgs(download=True)) == []
    d = make_fashion_mnist(FashionArgs(download=True, num_reference=20, num_pairs=10))
    assert d.arrays()["train-images"].shape == (30, 28, 28)
    assert calls[0][0] == str(tmp_path / "cache" / "datasets" / "fashion-mnist") and calls[0][2] is True

    class NoNetwork:
        def __init__(self, root, train, download):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", NoNetwork)
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache2"))
    with pytest.raises(UserError, match="could not download Fashion-MNIST.*apt-get install"):
        make_fashion_mnist(FashionArgs(download=True)).train_images()


@pytest.mark.skipif(find_files(DEBIAN_PATH) is None,
                    reason=f"Debian package dataset-fashion-mnist not installed ({DEBIAN_PATH} absent)")
def test_real_debian_files():
    d = FashionMNIST(FashionArgs(resolution=32, num_captions=20, train_limit=1000, num_pairs=200))
    assert missing_resources(FashionArgs()) == []
    arrays = d.arrays()
    assert arrays["test-images"].shape == (10000, 28, 28) and arrays["train-images"].shape == (1000, 28, 28)
    assert np.bincount(arrays["test-labels"], minlength=10).tolist() == [1000] * 10
    x = d.train_images()
    assert x.shape == (800, 3, 32, 32) and 0.15 < x.float().mean().item() / 255 < 0.5  # dark backgrounds, bright garments
    real = d.real_images(d.eval_captions(), list(range(20)))
    assert real.shape == (20, 3, 32, 32)
