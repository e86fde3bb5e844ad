"""reference/clip.py (the open_clip wrapper, tiny CLIP training) and the `clip` component kind."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bench.api import ComponentSpec, UserError
from bench.components.clip_component import ClipTrainArgs, build_clip, parse_clip_path
from bench.registry import COMPONENTS
from reference.clip import (CONFIG_FILE, PRESETS, WEIGHTS_FILE, ClipModel, clip_loss, init_clip, load_clip,
                            load_saved_clip, modality_gap, save_clip, train_clip, zero_shot_accuracy)

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 220, 40)}


def toy_pairs(n: int, seed: int = 0, size: int = 32) -> tuple[torch.Tensor, list[str]]:
    """n renders of a coloured square, left or right half, on a jittered dark background; 8 captions."""
    gen = torch.Generator().manual_seed(seed)
    names = list(COLOURS)
    images = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    captions = []
    for i in range(n):
        colour = names[int(torch.randint(4, (1,), generator=gen))]
        side = "left" if int(torch.randint(2, (1,), generator=gen)) == 0 else "right"
        images[i] = int(torch.randint(10, 40, (1,), generator=gen))
        half = size // 2
        x0 = int(torch.randint(1, half - size // 4, (1,), generator=gen)) + (0 if side == "left" else half)
        y0 = int(torch.randint(1, size - size // 4, (1,), generator=gen))
        images[i, :, y0:y0 + size // 4, x0:x0 + size // 4] = torch.tensor(COLOURS[colour])[:, None, None]
        captions.append(f"a {colour} square on the {side}")
    return images, captions


# tiny models gain nothing from a second thread, and on a shared, oversubscribed 2-core machine OpenMP's
# spin-waiting made them ~15x slower (unless OMP_WAIT_POLICY=PASSIVE)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained() -> ClipModel:
    images, captions = toy_pairs(512)
    return train_clip(images, captions, preset="tiny", steps=40, batch_size=32, seed=0, progress=False)


@pytest.fixture(scope="module")
def untrained() -> ClipModel:
    torch.manual_seed(0)
    return init_clip("tiny")


# ---- encoders --------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", list(PRESETS))
def test_encoders_give_unit_norm_embeddings_of_the_declared_size(preset):
    clip = init_clip(preset)
    images, captions = toy_pairs(5)
    img, txt = clip.encode_image(images), clip.encode_text(captions)
    assert img.shape == (5, clip.embed_dim) and txt.shape == (5, clip.embed_dim)
    assert clip.embed_dim == PRESETS[preset].model_cfg["embed_dim"] and clip.image_size == 32
    torch.testing.assert_close(img.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(txt.norm(dim=1), torch.ones(5))
    assert not img.requires_grad and not txt.requires_grad
    assert clip.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)  # open_clip's initial temperature


def test_encode_image_batching_does_not_change_results(untrained):
    images, _ = toy_pairs(7)
    torch.testing.assert_close(untrained.encode_image(images, batch_size=3), untrained.encode_image(images))


def test_encode_rejects_wrong_inputs(untrained):
    with pytest.raises(ValueError, match="uint8"):
        untrained.encode_image(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="list of captions"):
        untrained.encode_text("a red square")


@pytest.mark.parametrize("h,w", [(32, 32), (48, 48), (40, 56)])
def test_preprocessing_matches_open_clips_own_transform(untrained, h, w):
    gen = torch.Generator().manual_seed(h * w)
    images = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8, generator=gen)
    images = F.avg_pool2d(images.float(), 3, 1, 1).round().to(torch.uint8)  # smooth: resamplers agree better
    pp = untrained.preprocess_cfg
    transform = open_clip.image_transform(pp["size"], is_train=False, mean=pp["mean"], std=pp["std"],
                                          resize_mode=pp["resize_mode"], interpolation=pp["interpolation"])
    theirs = torch.stack([transform(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in images])
    ours = untrained.preprocess(images.float() / 255)
    assert ours.shape == theirs.shape == (2, 3, 32, 32)
    if (h, w) == (32, 32):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)  # no resampling: exactly the same
    else:  # PIL's bicubic vs torchvision's antialiased tensor bicubic: within a few grey levels
        err = (ours - theirs).abs() * torch.tensor(pp["std"])[:, None, None] * 255
        assert err.mean() < 1.5 and err.max() < 12
    # and the embedding is open_clip's own encode_image on open_clip's own preprocessing, normalised
    with torch.no_grad():
        reference = F.normalize(untrained.model.encode_image(theirs), dim=-1)
    got = untrained.encode_image(images)
    assert F.cosine_similarity(got, reference).min() > (0.99999 if (h, w) == (32, 32) else 0.98)


def test_demo_quirk_path_is_bilinear_resize_without_normalisation(trained):
    images, _ = toy_pairs(3, size=48)
    x = images.float() / 127.5 - 1  # a decoder output in [-1,1]
    quirk = trained.encode_image_unnormalised(x)
    with torch.no_grad():
        by_hand = F.normalize(trained.model.encode_image(
            F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)), dim=-1)
        proper = trained.encode_image_float((x + 1) / 2)
    torch.testing.assert_close(quirk, by_hand)
    assert F.cosine_similarity(quirk, proper).max() < 0.99


def test_float_path_is_differentiable_and_matches_the_uint8_path(untrained):
    images, _ = toy_pairs(4)
    x = (images.float() / 255).requires_grad_(True)
    emb = untrained.encode_image_float(x)
    torch.testing.assert_close(emb.detach(), untrained.encode_image(images))
    emb[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in untrained.model.parameters())  # the CLIP stays frozen


# ---- training --------------------------------------------------------------------------------
def test_clip_loss_is_lowest_for_matching_pairs():
    emb = F.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    matched = clip_loss(emb, emb, torch.tensor(20.0))
    shuffled = clip_loss(emb, emb.roll(1, dims=0), torch.tensor(20.0))
    assert matched < shuffled
    # by hand: mean of the two cross-entropies, pair i the only positive
    logits = 20.0 * emb @ emb.t()
    want = 0.5 * (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.t(), torch.arange(6)))
    torch.testing.assert_close(matched, want)


def test_training_lowers_the_loss_and_learns_the_captions(trained):
    losses = trained.meta["losses"]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    images, captions = toy_pairs(256, seed=99)  # fresh renders
    assert zero_shot_accuracy(trained, images, captions) > 0.5  # 8 captions: chance is 0.125
    assert not trained.model.training and all(not p.requires_grad for p in trained.model.parameters())


def test_train_clip_rejects_bad_input():
    images, captions = toy_pairs(8)
    with pytest.raises(ValueError, match="preset"):
        train_clip(images, captions, preset="huge", steps=1)
    with pytest.raises(ValueError, match="captions"):
        train_clip(images, captions[:-1], steps=1)


def test_training_is_deterministic_under_a_seed():
    images, captions = toy_pairs(64)
    a = train_clip(images, captions, steps=3, batch_size=16, seed=5, progress=False)
    b = train_clip(images, captions, steps=3, batch_size=16, seed=5, progress=False)
    assert a.meta["losses"] == b.meta["losses"]
    torch.testing.assert_close(a.encode_image(images[:4]), b.encode_image(images[:4]))


def test_modality_gap_reports_the_documented_keys_in_range(trained):
    images, captions = toy_pairs(64, seed=7)
    gap = modality_gap(trained, images, captions)
    assert set(gap) == {"image_text_cosine", "image_image_cosine", "mean_difference_norm", "n"}
    assert gap["n"] == 64
    assert -1 <= gap["image_text_cosine"] <= 1 and -1 <= gap["image_image_cosine"] <= 1
    assert 0 <= gap["mean_difference_norm"] <= 2
    # the plain twin: explicit loops over pairs
    img, txt = trained.encode_image(images), trained.encode_text(captions)
    same = [float(img[i] @ img[j]) for i in range(64) for j in range(64) if i != j and captions[i] == captions[j]]
    assert gap["image_image_cosine"] == pytest.approx(np.mean(same), abs=1e-4)
    assert gap["image_text_cosine"] == pytest.approx(float((img * txt).sum(1).mean()), abs=1e-5)
    assert gap["mean_difference_norm"] == pytest.approx(float((img.mean(0) - txt.mean(0)).norm()), abs=1e-5)


# ---- save / load -----------------------------------------------------------------------------
def test_save_and_load_round_trip_gives_identical_embeddings(trained, tmp_path):
    save_clip(trained, str(tmp_path))
    assert (tmp_path / CONFIG_FILE).is_file() and (tmp_path / WEIGHTS_FILE).is_file()
    loaded = load_saved_clip(str(tmp_path))
    images, captions = toy_pairs(6, seed=3)
    torch.testing.assert_close(loaded.encode_image(images), trained.encode_image(images), atol=0, rtol=0)
    torch.testing.assert_close(loaded.encode_text(captions), trained.encode_text(captions), atol=0, rtol=0)
    assert loaded.name == trained.name and loaded.embed_dim == trained.embed_dim
    assert loaded.logit_scale == trained.logit_scale and loaded.meta["losses"] == trained.meta["losses"]
    assert loaded.preprocess_cfg == trained.preprocess_cfg
    # plain open_clip reads the same directory
    model, _, _ = open_clip.create_model_and_transforms("local-dir:" + str(tmp_path))
    with torch.no_grad():
        x = trained.preprocess(images.float() / 255)
        torch.testing.assert_close(F.normalize(model.eval().encode_image(x), dim=-1), trained.encode_image(images))


def test_load_saved_clip_explains_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_clip"):
        load_saved_clip(str(tmp_path))


@pytest.fixture(scope="module")
def registered_arch(tmp_path_factory) -> str:
    """A tiny open_clip architecture registered by name, as a user's model JSON would be."""
    d = tmp_path_factory.mktemp("configs")
    name = "clipgen-test-tiny"
    cfg = {"embed_dim": 32,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (d / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(d))
    return name


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_load_clip_reads_a_local_state_dict(registered_arch, tmp_path, suffix):
    torch.manual_seed(0)
    original = open_clip.create_model(registered_arch).eval()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pt":
        torch.save(original.state_dict(), path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in original.state_dict().items()}, str(path))
    clip = load_clip(registered_arch, str(path))
    assert clip.name == registered_arch and clip.embed_dim == 32 and clip.image_size == 32
    images, captions = toy_pairs(3)
    tokens = open_clip.get_tokenizer(registered_arch)(captions)
    with torch.no_grad():
        torch.testing.assert_close(clip.encode_text(captions), F.normalize(original.encode_text(tokens), dim=-1))
        x = clip.preprocess(images.float() / 255)
        torch.testing.assert_close(clip.encode_image(images), F.normalize(original.encode_image(x), dim=-1))


def test_load_clip_explains_user_mistakes(registered_arch, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_clip(registered_arch, str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="unknown open_clip model"):
        load_clip("ViT-Q-99", str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="no pretrained tag"):
        load_clip("ViT-B-32", None, pretrained_tag="no-such-tag")
    with pytest.raises(ValueError, match="weights path"):
        load_clip("ViT-B-32", None)
    torch.save({"logit_scale": torch.zeros(())}, tmp_path / "other.pt")  # weights of something else
    with pytest.raises(ValueError, match="could not load") as info:
        load_clip(registered_arch, str(tmp_path / "other.pt"))
    assert "\n" not in str(info.value)


def test_hub_tag_fails_fast_offline_naming_the_local_path(monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(ValueError) as info:
        load_clip("ViT-B-32", None, pretrained_tag="openai")
    assert time.perf_counter() - start < 20  # no 5 x 8 s retries
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message and "weights_path" in message and "ViT-B-32@" in message
    assert "\n" not in message


# ---- the `clip` component kind ---------------------------------------------------------------
class ToyDataset:
    def __init__(self, n: int = 64):
        self.images, self.captions = toy_pairs(n)

    def identity(self) -> dict:
        return {"dataset": "toy", "n": len(self.captions)}

    def pairs(self):
        return self.images, self.captions, [{} for _ in self.captions]


class ToyContext:
    """The BuildContext contract in miniature: cache under a hash of the key in a directory."""

    def __init__(self, cache_dir: str):
        self.dataset, self.device, self.cache_dir, self.progress = ToyDataset(), "cpu", cache_dir, False
        self.trained = 0

    def cached(self, kind, key, train, save, load):
        d = os.path.join(self.cache_dir, kind + "-" + str(abs(hash(json.dumps(key, sort_keys=True)))))
        if not os.path.isdir(d):
            obj = train()
            self.trained += 1
            save(obj, d)
        return load(d)


def test_clip_kind_is_registered():
    entry = COMPONENTS.get("clip")
    assert entry.factory is build_clip and entry.args is ClipTrainArgs
    assert ClipTrainArgs.__dataclass_fields__["preset"].metadata["choices"] == tuple(PRESETS)
    assert ClipTrainArgs.__dataclass_fields__["steps"].metadata["min"] == 1


def test_build_clip_trains_once_then_loads_from_the_cache(tmp_path):
    ctx = ToyContext(str(tmp_path))
    spec = ComponentSpec("clip", "clip", None, ClipTrainArgs(steps=3, batch_size=16))
    first = build_clip(spec, ctx)
    second = build_clip(spec, ctx)
    assert ctx.trained == 1 and isinstance(second, ClipModel)
    images = ctx.dataset.images[:4]
    torch.testing.assert_close(first.encode_image(images), second.encode_image(images))
    other = ComponentSpec("clip", "clip", None, ClipTrainArgs(steps=3, batch_size=16, seed=1))
    build_clip(other, ctx)
    assert ctx.trained == 2


def test_build_clip_loads_paths(trained, registered_arch, tmp_path):
    ctx = ToyContext(str(tmp_path / "cache"))
    save_clip(trained, str(tmp_path / "saved"))
    loaded = build_clip(ComponentSpec("c", "clip", str(tmp_path / "saved"), None), ctx)
    images, _ = toy_pairs(2)
    torch.testing.assert_close(loaded.encode_image(images), trained.encode_image(images))
    torch.save(open_clip.create_model(registered_arch).state_dict(), tmp_path / "w.pt")
    by_name = build_clip(ComponentSpec("c", "clip", f"{registered_arch}@{tmp_path / 'w.pt'}", None), ctx)
    assert by_name.name == registered_arch and ctx.trained == 0


def test_clip_path_syntax_and_errors(tmp_path):
    assert parse_clip_path("/abs/dir") == ("/abs/dir", None, None)
    assert parse_clip_path("ViT-B-32@/abs/w.pt") == ("ViT-B-32", "/abs/w.pt", None)
    assert parse_clip_path("ViT-B-32@w.safetensors") == ("ViT-B-32", "w.safetensors", None)
    assert parse_clip_path("ViT-B-32@openai") == ("ViT-B-32", None, "openai")
    ctx = ToyContext(str(tmp_path))
    for path, match in [(str(tmp_path / "nope"), "neither a saved CLIP"), ("ViT-B-32@/no/such.pt", "not found"),
                        ("@x.pt", "expected"), (str(tmp_path), "save_clip")]:
        with pytest.raises(UserError, match=match):
            build_clip(ComponentSpec("c", "clip", path, None), ctx)
