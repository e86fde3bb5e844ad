"""A small COCO-format fixture: captions JSON + JPEGs of varied sizes and aspect ratios.

`make_coco(root, split="val2014", n_images=24)` writes
    root/annotations/captions_<split>.json
    root/<split>/<file names as COCO spells them>.jpg
and returns the parsed JSON. `make_coco_archives(site, ...)` writes the same
content as the official download site lays it out (zips/<split>.zip and
annotations/annotations_trainval<year>.zip) for the downloader's tests.
"""
from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
from PIL import Image

WORDS = ["a", "dog", "cat", "red", "bus", "on", "the", "street", "sitting", "near", "two", "people", "table", "green", "field"]
SIZES = [(320, 240), (240, 320), (250, 166), (213, 320), (150, 150), (32, 100), (100, 32), (512, 384)]


def file_name(split: str, image_id: int) -> str:
    return f"COCO_{split}_{image_id:012d}.jpg" if split.endswith("2014") else f"{image_id:012d}.jpg"


def image_bytes(rng: np.random.Generator, size: tuple[int, int]) -> bytes:
    """A JPEG with a random gradient, a random rectangle and noise: distinct per image."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, 3)
    slope = rng.uniform(-1, 1, (2, 3))
    img = base + xx[..., None] / w * slope[0] * 200 + yy[..., None] / h * slope[1] * 200
    x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
    img[y0:y0 + h // 3, x0:x0 + w // 3] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 12, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def coco_content(split: str = "val2014", n_images: int = 24, seed: int = 0, first_id: int = 9):
    """(captions JSON dict, {file name: JPEG bytes}); images get 1-5 captions, one image gets none."""
    rng = np.random.default_rng(seed)
    images, annotations, files = [], [], {}
    ann_id = 1000
    for k in range(n_images):
        image_id = first_id + 7 * k
        size = SIZES[k % len(SIZES)]
        name = file_name(split, image_id)
        files[name] = image_bytes(rng, size)
        images.append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
        n_caps = 0 if k == n_images - 1 else int(rng.integers(1, 6))  # the last image has no caption
        for _ in range(n_caps):
            words = rng.choice(WORDS, size=int(rng.integers(4, 9)))
            annotations.append({"id": ann_id, "image_id": image_id, "caption": " ".join(words) + (" \n" if ann_id % 5 == 0 else "")})
            ann_id += 1
    rng.shuffle(annotations)  # COCO files are not sorted by image
    data = {"info": {"description": "test fixture"}, "images": images, "annotations": annotations}
    return data, files


def make_coco(root: str, split: str = "val2014", n_images: int = 24, seed: int = 0) -> dict:
    data, files = coco_content(split, n_images, seed)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    os.makedirs(os.path.join(root, split), exist_ok=True)
    with open(os.path.join(root, "annotations", f"captions_{split}.json"), "w") as f:
        json.dump(data, f)
    for name, blob in files.items():
        with open(os.path.join(root, split, name), "wb") as f:
            f.write(blob)
    return data


def make_coco_archives(site: str, split: str = "val2014", n_images: int = 12, seed: int = 0) -> dict:
    """The official site layout under `site`: zips/<split>.zip and annotations/annotations_trainval<year>.zip."""
    data, files = coco_content(split, n_images, seed)
    year = split[-4:]
    train_data, _ = coco_content(f"train{year}", 3, seed + 1)
    os.makedirs(os.path.join(site, "zips"), exist_ok=True)
    os.makedirs(os.path.join(site, "annotations"), exist_ok=True)
    with zipfile.ZipFile(os.path.join(site, "zips", f"{split}.zip"), "w", zipfile.ZIP_STORED) as z:
        for name, blob in files.items():
            z.writestr(f"{split}/{name}", blob)
    with zipfile.ZipFile(os.path.join(site, "annotations", f"annotations_trainval{year}.zip"), "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"annotations/captions_{split}.json", json.dumps(data))
        z.writestr(f"annotations/captions_train{year}.json", json.dumps(train_data))
        z.writestr(f"annotations/instances_{split}.json", json.dumps({"images": [], "annotations": [], "categories": []}))
    return data
