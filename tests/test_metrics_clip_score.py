"""clip-score against a direct open_clip computation, with a tiny random-weight open_clip model."""
from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from bench.api import SampleBatch
from bench.metrics.clip_score import ClipScoreArgs, build_clip_score
from metrics_testing import TensorDataset, make_ctx

MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)


class OpenClipAdapter:
    """encode_image(uint8) / encode_text(list[str]) over an open_clip model, like reference/clip.py's wrapper."""

    def __init__(self, model):
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer("ViT-B-32")

    @torch.no_grad()
    def encode_image(self, images):
        x = F.interpolate(images.float() / 255, size=(32, 32), mode="bilinear", antialias=True)
        return self.model.encode_image((x - MEAN) / STD, normalize=True)

    @torch.no_grad()
    def encode_text(self, captions):
        return self.model.encode_text(self.tokenizer(captions), normalize=True)


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(7)  # a seed whose random model gives both signs of cosine on the test pairs
    model = open_clip.CLIP(embed_dim=16, vision_cfg=dict(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
                           text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    return OpenClipAdapter(model)


class UnnormalisedAdapter(OpenClipAdapter):
    """A plugin CLIP whose embeddings are not unit vectors (each image's scaled differently): the score is cosine."""

    def encode_image(self, images):
        out = super().encode_image(images)
        return out * torch.arange(1, len(out) + 1, dtype=out.dtype)[:, None]

    def encode_text(self, captions):
        return 7 * super().encode_text(captions)


@pytest.mark.parametrize("unit", [True, False])
def test_clip_score_equals_direct_open_clip(tiny_clip, tmp_path, unit):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (10, 3, 24, 24), generator=g, dtype=torch.uint8)
    captions = [f"a {c} thing number {i}" for i, c in enumerate(["red", "blue"] * 5)]
    ids = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]  # each caption id seen twice
    evaluator = tiny_clip if unit else UnnormalisedAdapter(tiny_clip.model)
    ctx = make_ctx(TensorDataset(images), tmp_path, components={"ev": evaluator})
    metric = build_clip_score(ClipScoreArgs(clip="ev", batch_size=3))
    metric.update(SampleBatch(images[:6], captions[:6], ids[:6], [{}] * 6))
    metric.update(SampleBatch(images[6:], captions[6:], ids[6:], [{}] * 4))
    (row,) = metric.compute(ctx)

    with torch.no_grad():
        x = F.interpolate(images.float() / 255, size=(32, 32), mode="bilinear", antialias=True)
        img = tiny_clip.model.encode_image((x - MEAN) / STD)
        txt = tiny_clip.model.encode_text(open_clip.get_tokenizer("ViT-B-32")(captions))
    cos = F.cosine_similarity(img.double(), txt.double(), dim=-1)
    per_image = 100 * cos.clamp(min=0)
    assert (cos < 0).any() and (cos > 0).any()  # the clamp at 0 is exercised
    assert row.metric == "clip-score" and row.n == 10
    assert row.value == pytest.approx(float(per_image.mean()), rel=1e-5)
    assert row.extra["std"] == pytest.approx(float(np.std(per_image.numpy())), rel=1e-5)  # over images, ddof 0
    assert row.extra["evaluator_used_by_system"] is False
    assert ctx.per_caption[0]["clip-score"] == pytest.approx(float((per_image[0] + per_image[5]) / 2), rel=1e-5)


def test_clip_score_flags_an_evaluator_the_system_was_built_with(tiny_clip, tmp_path):
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    ctx = make_ctx(TensorDataset(images), tmp_path, components={"clip-cond": tiny_clip})
    ctx.made_with = lambda name: name == "clip-cond"  # what Builder.made_with answers (tests/test_clipgen_loaded.py)
    metric = build_clip_score(ClipScoreArgs(clip="clip-cond"))
    metric.update(SampleBatch(images, ["a", "b"], [0, 1], [{}, {}]))
    (row,) = metric.compute(ctx)
    assert row.extra["evaluator_used_by_system"] is True
