"""imagefolder: a training-only image source, streamed; WithTrainSource pairs it with a captioned dataset."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from bench.api import CaptionItem, UserError
from bench.datasets.base import Dataset
from bench.datasets.imagefolder import (ImageFolder, ImageFolderArgs, WithTrainSource, centre_crop_resize, list_images,
                                        make_imagefolder, missing_resources)
from bench.registry import DATASETS


def make_tree(root) -> dict[str, tuple[int, int, int]]:
    """Nested folders of flat-colour images in several modes/sizes; returns rel path -> RGB colour."""
    specs = {
        "n01/a.jpg": ("RGB", (60, 40), (200, 30, 30)),
        "n01/b.JPEG": ("RGB", (30, 70), (30, 200, 30)),
        "n02/sub/c.png": ("RGBA", (50, 50), (30, 30, 200, 255)),
        "n02/d.png": ("L", (90, 20), (128,)),
        "n03/e.bmp": ("RGB", (17, 33), (250, 250, 0)),
    }
    colours = {}
    for rel, (mode, size, colour) in specs.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.new(mode, size, colour).save(path)
        colours[rel] = colour[:3] if len(colour) >= 3 else colour * 3
    (root / "n01" / "notes.txt").write_text("not an image")
    os.makedirs(root / ".hidden")
    Image.new("RGB", (8, 8)).save(root / ".hidden" / "skip.jpg")
    return colours


def test_registered_and_missing(tmp_path):
    assert DATASETS._entries["imagefolder"].args is ImageFolderArgs
    assert "root:" in missing_resources(ImageFolderArgs())[0]
    assert "not found" in missing_resources(ImageFolderArgs(root=str(tmp_path / "x")))[0]
    assert missing_resources(ImageFolderArgs(root=str(tmp_path))) == []
    with pytest.raises(UserError, match="no images"):
        make_imagefolder(ImageFolderArgs(root=str(tmp_path))).train_images()
    (tmp_path / "one.png").write_bytes(b"")
    assert "one.png is a file, not a folder" in missing_resources(
        ImageFolderArgs(root=str(tmp_path / "one.png")))[0]


def test_lists_images_recursively(tmp_path):
    colours = make_tree(tmp_path)
    assert list_images(str(tmp_path)) == sorted(colours)


def test_centre_crop_keeps_the_middle():
    img = Image.new("RGB", (90, 30), (0, 0, 0))
    img.paste((255, 255, 255), (30, 0, 60, 30))  # white middle third, black sides
    out = np.asarray(centre_crop_resize(img, 10))
    assert out.shape == (10, 10, 3) and out.min() >= 250


def test_streams_uint8_batches_in_seeded_order(tmp_path):
    colours = make_tree(tmp_path)
    d = make_imagefolder(ImageFolderArgs(root=str(tmp_path), resolution=16, seed=0))
    batches = list(d.iter_train_images(batch_size=2))
    assert [b.shape for b in batches] == [(2, 3, 16, 16)] * 2 + [(1, 3, 16, 16)]
    x = torch.cat(batches)
    assert x.dtype == torch.uint8 and torch.equal(x, d.train_images())
    for img, path in zip(x, d.paths()):
        expected = torch.tensor(colours[os.path.relpath(path, str(tmp_path))], dtype=torch.int16)
        assert (img.to(torch.int16) - expected[:, None, None]).abs().max() <= 2  # flat colour survives JPEG
    other = make_imagefolder(ImageFolderArgs(root=str(tmp_path), resolution=16, seed=5)).paths()
    assert sorted(other) == sorted(d.paths())
    plain = make_imagefolder(ImageFolderArgs(root=str(tmp_path), resolution=16, shuffle=False)).paths()
    assert plain == sorted(plain)
    few = make_imagefolder(ImageFolderArgs(root=str(tmp_path), resolution=16, max_images=2))
    assert len(few) == 2 and few.identity() != d.identity()
    assert d.identity() == make_imagefolder(ImageFolderArgs(root=str(tmp_path), resolution=16, seed=0)).identity()


def test_identity_sees_replaced_files_not_a_copied_tree(tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    ident = make_imagefolder(ImageFolderArgs(root=str(src), resolution=16)).identity()
    copy = tmp_path / "copy"
    shutil.copytree(src, copy, copy_function=shutil.copyfile)  # new mtimes, same bytes
    assert make_imagefolder(ImageFolderArgs(root=str(copy), resolution=16)).identity() == ident
    Image.new("RGB", (61, 43), (9, 9, 9)).save(copy / "n01" / "a.jpg")  # same name, another image
    assert make_imagefolder(ImageFolderArgs(root=str(copy), resolution=16)).identity() != ident


def test_no_captions_anywhere(tmp_path):
    make_tree(tmp_path)
    d = make_imagefolder(ImageFolderArgs(root=str(tmp_path), resolution=16))
    for call in (d.eval_captions, d.pairs, d.reference_key, lambda: d.iter_reference_images(),
                 lambda: d.real_images([], [])):
        with pytest.raises(UserError, match="training-only source"):
            call()


def test_too_large_tensor_is_refused(tmp_path, monkeypatch):
    make_tree(tmp_path)
    import bench.datasets.imagefolder as mod

    monkeypatch.setattr(mod, "MAX_TENSOR_BYTES", 1000)
    d = make_imagefolder(ImageFolderArgs(root=str(tmp_path), resolution=16))
    with pytest.raises(UserError, match="iter_train_images"):
        d.train_images()
    assert sum(len(b) for b in d.iter_train_images(2)) == 5  # streaming still works


class _Captioned(Dataset):
    name = "toy"
    resolution = 16

    def identity(self): return {"name": "toy"}
    def eval_captions(self): return [CaptionItem(0, "a toy", {"split": "seen"})]
    def train_images(self): return torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    def pairs(self): return torch.zeros(1, 3, 16, 16, dtype=torch.uint8), ["a toy"], [{}]
    def real_images(self, items, seeds): return torch.ones(len(items), 3, 16, 16, dtype=torch.uint8)
    def iter_reference_images(self, batch_size=256): return iter([torch.ones(1, 3, 16, 16, dtype=torch.uint8)])
    def reference_key(self): return {"dataset": "toy"}
    def attributes(self): return {"kind": ["toy"]}


def test_with_train_source(tmp_path):
    make_tree(tmp_path)
    folder = ImageFolder(ImageFolderArgs(root=str(tmp_path), resolution=16))
    both = WithTrainSource(_Captioned(), folder)
    assert both.train_images().shape == (5, 3, 16, 16)
    assert sum(len(b) for b in both.iter_train_images(4)) == 5
    assert both.eval_captions()[0].caption == "a toy" and both.attributes() == {"kind": ["toy"]}
    assert both.reference_key() == {"dataset": "toy"}
    assert both.identity()["train_source"] == folder.identity()
    with pytest.raises(UserError, match="resolution"):
        WithTrainSource(_Captioned(), ImageFolder(ImageFolderArgs(root=str(tmp_path), resolution=32)))


@pytest.mark.slow
def test_a_suite_trains_vqgan_and_gpt_on_an_image_folder_and_evaluates_on_shapes(tmp_path, capsys):
    import json

    from click.testing import CliRunner

    from bench.cli import cli

    folder = tmp_path / "images" / "n01"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    suite = tmp_path / "folder.yaml"
    suite.write_text(
        "suite: folder\nversion: 1\n"
        "dataset: {name: shapes, resolution: 32, num_captions: 4, train_size: 64, pairs_size: 64,\n"
        "          train_source: {name: imagefolder, root: images}}\n"
        "generation: {batch_size: 4, warmup: false}\n"
        "components:\n"
        "  clip: {kind: clip, train: {preset: tiny, steps: 2, batch_size: 16}}\n"
        "  vqgan: {kind: vqgan, train: {preset: tiny, steps: 2, batch_size: 4}}\n"
        "systems:\n"
        "  - {name: clipgen, args: {clip: clip, vqgan: vqgan, train: {preset: tiny, steps: 2, batch_size: 4}}}\n"
        "  - {name: retrieval, args: {clip: clip}}\n"
        "metrics: [{name: throughput}]\n")
    cache = tmp_path / "cache"
    result = CliRunner().invoke(cli, ["run", str(suite), "--out", str(tmp_path / "run"), "--quiet"],
                                env={"BENCH_CACHE": str(cache)})
    assert result.exit_code == 0, result.output
    captured = capsys.readouterr()
    printed = result.output + captured.out + captured.err
    assert "training VQGAN" not in printed and "gpt:" not in printed and "clip tiny: step" not in printed  # --quiet
    keys = {p.parent.parent.name: json.loads(p.read_text()) for p in cache.glob("*/*/key.json")}
    for kind in ("vqgan", "clipgen-gpt"):  # they train on the folder's images alone: the key names only them
        assert list(keys[kind]["key"]["data"]) == ["train"]
        source = keys[kind]["key"]["data"]["train"]["train_source"]
        assert source["name"] == "imagefolder" and source["count"] == 24 and source["resolution"] == 32
    assert keys["clip"]["key"]["data"]["pairs"]["dataset"] == "shapes"  # the CLIP trains on the shapes pairs
    assert len(list((tmp_path / "run" / "samples" / "clipgen" / "seed0").glob("*.png"))) == 4
