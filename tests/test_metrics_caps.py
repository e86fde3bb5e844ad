"""CapLoss / CapS against hand-computed cross-entropies."""
from __future__ import annotations

import math

import pytest
import torch

from bench.api import SampleBatch
from bench.components.captioner import token_nll
from bench.metrics.caps import CapsArgs, build_caps
from metrics_testing import TensorDataset, make_ctx


def test_token_nll_by_hand():
    # one row, vocabulary of 3, two target positions and one padded position
    logits = torch.tensor([[[0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0], [5.0, -5.0, 0.0]]], dtype=torch.float64)
    targets = torch.tensor([[2, 0, 1]])
    mask = torch.tensor([[True, True, False]])
    expected = (-math.log(1 / 3) - math.log(3 / 5)) / 2  # uniform, then 3/(3+1+1)
    assert float(token_nll(logits, targets, mask)[0]) == pytest.approx(expected, rel=1e-12)


class ToyCaptioner:
    """Every next caption token gets probability p: 0.5 on bright images, 0.25 on dark ones (5 words)."""

    vocab = 5

    def caption_loss(self, images, captions):
        rows = []
        for img, cap in zip(images, captions):
            n_tokens = len(cap.split()) + 1  # the words, then EOT
            p = 0.5 if img.float().mean() > 127 else 0.25
            rest = (1 - p) / (self.vocab - 1)
            logits = torch.full((1, n_tokens, self.vocab), math.log(rest))
            logits[..., 0] = math.log(p)
            rows.append(token_nll(logits, torch.zeros(1, n_tokens, dtype=torch.long),
                                  torch.ones(1, n_tokens, dtype=torch.bool)))
        return torch.cat(rows)


def test_caps_rows_for_a_fixed_toy_captioner(tmp_path):
    bright = torch.full((3, 3, 8, 8), 250, dtype=torch.uint8)
    dark = torch.full((1, 3, 8, 8), 5, dtype=torch.uint8)
    images = torch.cat([bright, dark])
    infos = [{"split": "seen"}, {"split": "seen"}, {"split": "held-out"}, {"split": "held-out"}]
    ctx = make_ctx(TensorDataset(images), tmp_path, components={"cap": ToyCaptioner()})
    metric = build_caps(CapsArgs(captioner="cap", batch_size=3))
    metric.update(SampleBatch(images, ["a b", "c", "d e f", "g"], [0, 1, 2, 3], infos))
    rows = {(r.metric, r.variant): r for r in metric.compute(ctx)}
    l_bright, l_dark = -math.log(0.5), -math.log(0.25)
    assert rows[("caploss", "all")].value == pytest.approx((3 * l_bright + l_dark) / 4)
    assert rows[("caps", "all")].value == pytest.approx((3 * 0.5 + 0.25) / 4)
    assert rows[("caps", "seen")].value == pytest.approx(0.5) and rows[("caps", "seen")].n == 2
    assert rows[("caploss", "held-out")].value == pytest.approx((l_bright + l_dark) / 2)
    assert rows[("caps", "all")].extra["comparable_with_published"] is False
    assert ctx.per_caption[3]["caps"] == pytest.approx(0.25)


class ToyCaptionerWithVocabulary(ToyCaptioner):
    """The toy, knowing only single-letter words up to "c": the rest count as outside its vocabulary."""

    def unknown_tokens(self, captions):
        unknown = torch.tensor([sum(w > "c" for w in cap.split()) for cap in captions])
        return unknown, torch.tensor([len(cap.split()) + 1 for cap in captions])


def test_caps_rows_say_what_share_of_the_caption_tokens_was_outside_the_captioners_vocabulary(tmp_path):
    images = torch.full((4, 3, 8, 8), 250, dtype=torch.uint8)
    infos = [{"split": "seen"}, {"split": "seen"}, {"split": "held-out"}, {"split": "held-out"}]
    ctx = make_ctx(TensorDataset(images), tmp_path, components={"cap": ToyCaptionerWithVocabulary()})
    metric = build_caps(CapsArgs(captioner="cap", batch_size=3))
    metric.update(SampleBatch(images, ["a b", "c", "d e f", "g"], [0, 1, 2, 3], infos))
    rows = {(r.metric, r.variant): r for r in metric.compute(ctx)}
    assert rows[("caps", "seen")].extra["unknown_tokens_left_out"] == 0.0  # a, b, c: known; 5 tokens with EOT
    assert rows[("caploss", "held-out")].extra["unknown_tokens_left_out"] == pytest.approx(4 / 6)  # d e f g of 6
    assert rows[("caps", "all")].extra["unknown_tokens_left_out"] == pytest.approx(4 / 11)


def test_a_caption_generated_twice_gets_the_mean_of_its_images(tmp_path):
    """Two images of one caption (two candidates, or a run with repeated ids): its per-caption value, which the
    bootstrap intervals and paired claims resample, is their mean, not the first or the last."""
    images = torch.stack([torch.full((3, 8, 8), 250, dtype=torch.uint8), torch.full((3, 8, 8), 5, dtype=torch.uint8)])
    ctx = make_ctx(TensorDataset(images), tmp_path, components={"cap": ToyCaptioner()})
    metric = build_caps(CapsArgs(captioner="cap"))
    metric.update(SampleBatch(images, ["a b", "a b"], [7, 7], [{}, {}]))
    metric.compute(ctx)
    assert ctx.per_caption[7]["caps"] == pytest.approx((0.5 + 0.25) / 2)
