"""attribute-accuracy / class-accuracy rows, with a judge that reads pixels exactly."""
from __future__ import annotations

import pytest
import torch

from bench.api import CaptionItem, SampleBatch
from bench.metrics.accuracy import AccuracyArgs, build_attribute_accuracy, build_class_accuracy
from metrics_testing import TensorDataset, make_ctx

ATTRS = {"colour": ["red", "green"], "size": ["small", "big"]}


class PixelJudge:
    """colour = argmax of the red/green channel means; size = big if more than a quarter of pixels are lit."""

    def predict(self, images, batch_size=256):
        means = images.float().mean((2, 3))
        lit = (images.float().amax(1) > 100).float().mean((1, 2))
        return {"colour": (means[:, 1] > means[:, 0]).long(), "size": (lit > 0.25).long()}

    def labels(self, infos):
        return {a: torch.tensor([v.index(i[a]) for i in infos]) for a, v in ATTRS.items()}


def render(colour: str, size: str) -> torch.Tensor:
    img = torch.zeros(3, 8, 8, dtype=torch.uint8)
    c = 0 if colour == "red" else 1
    side = 2 if size == "small" else 6
    img[c, :side, :side] = 200
    return img


def test_rows_per_split_attribute_and_judge_on_real(tmp_path):
    infos = [{"colour": "red", "size": "small", "split": "seen"}, {"colour": "green", "size": "big", "split": "seen"},
             {"colour": "red", "size": "big", "split": "held-out"}, {"colour": "green", "size": "small", "split": "held-out"}]
    items = [CaptionItem(i, f"cap {i}", info) for i, info in enumerate(infos)]
    real = torch.stack([render(i["colour"], i["size"]) for i in infos])
    # generated: seen both right; held-out: first has the wrong size, second the wrong colour
    gen = torch.stack([render("red", "small"), render("green", "big"), render("red", "small"), render("red", "small")])
    ds = TensorDataset(real, items=items, real=real, attributes=ATTRS)
    ctx = make_ctx(ds, tmp_path, components={"j": PixelJudge()})
    metric = build_attribute_accuracy(AccuracyArgs(judge="j"))
    metric.update(SampleBatch(gen[:3], ["c"] * 3, [0, 1, 2], infos[:3]))
    metric.update(SampleBatch(gen[3:], ["c"], [3], infos[3:]))
    rows = {r.variant: r for r in metric.compute(ctx)}
    assert rows["seen/all"].value == 1.0 and rows["seen/all"].n == 2
    assert rows["held-out/all"].value == 0.0
    assert rows["held-out/colour"].value == 0.5 and rows["held-out/size"].value == 0.5
    assert rows["all/all"].value == 0.5 and rows["all/colour"].value == 0.75
    assert rows["judge-on-real/all"].value == 1.0 and rows["judge-on-real/all"].n == 4
    assert rows["seen/all"].extra["judge_on_real"] == 1.0 and rows["seen/all"].extra["judge_ok"] is True
    assert {v: ctx.per_caption[v]["attribute-accuracy"] for v in range(4)} == {0: 1.0, 1: 1.0, 2: 0.0, 3: 0.0}


def test_class_accuracy_single_attribute(tmp_path):
    attrs = {"class": ["dark", "bright"]}

    class Judge:
        def predict(self, images, batch_size=256):
            return {"class": (images.float().mean((1, 2, 3)) > 127).long()}

        def labels(self, infos):
            return {"class": torch.tensor([attrs["class"].index(i["class"]) for i in infos])}

    infos = [{"class": "dark", "split": "test"}, {"class": "bright", "split": "test"}]
    imgs = torch.stack([torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(3, 4, 4, dtype=torch.uint8)])
    real = torch.stack([torch.zeros(3, 4, 4, dtype=torch.uint8), torch.full((3, 4, 4), 255, dtype=torch.uint8)])
    items = [CaptionItem(i, "c", info) for i, info in enumerate(infos)]
    ctx = make_ctx(TensorDataset(real, items=items, real=real, attributes=attrs), tmp_path, components={"j": Judge()})
    metric = build_class_accuracy(AccuracyArgs(judge="j"))
    metric.update(SampleBatch(imgs, ["c", "c"], [0, 1], infos))
    rows = {r.variant: r for r in metric.compute(ctx)}
    assert set(rows) == {"test/all", "all/all", "judge-on-real/all"}
    assert rows["test/all"].value == pytest.approx(0.5) and rows["test/all"].metric == "class-accuracy"
    assert rows["judge-on-real/all"].value == 1.0 and rows["test/all"].extra["judge_ok"]


def test_judge_ok_follows_the_suites_floor(tmp_path):
    """The judge reads one of two real images right: judge_ok under a floor of 0.5, not under the default 0.98."""
    attrs = {"class": ["dark", "bright"]}

    class DarkJudge:  # calls everything dark
        def predict(self, images, batch_size=256):
            return {"class": torch.zeros(len(images), dtype=torch.long)}

        def labels(self, infos):
            return {"class": torch.tensor([attrs["class"].index(i["class"]) for i in infos])}

    infos = [{"class": "dark", "split": "test"}, {"class": "bright", "split": "test"}]
    real = torch.stack([torch.zeros(3, 4, 4, dtype=torch.uint8), torch.full((3, 4, 4), 255, dtype=torch.uint8)])
    items = [CaptionItem(i, "c", info) for i, info in enumerate(infos)]
    for floor, ok in ((None, False), (0.5, True), (0.51, False)):
        ctx = make_ctx(TensorDataset(real, items=items, real=real, attributes=attrs), tmp_path,
                       components={"j": DarkJudge()})
        metric = build_class_accuracy(AccuracyArgs(judge="j") if floor is None else
                                      AccuracyArgs(judge="j", judge_floor=floor))
        metric.update(SampleBatch(real, ["c", "c"], [0, 1], infos))
        rows = {r.variant: r for r in metric.compute(ctx)}
        assert rows["judge-on-real/all"].value == 0.5
        assert rows["test/all"].extra["judge_ok"] is ok and rows["test/all"].extra["judge_floor"] == (floor or 0.98)


def test_judge_on_real_follows_the_eval_captions_not_only_the_identity(tmp_path):
    """shapes' identity leaves out num_captions (its captions are prefixes of one cycle): the judge's real-image
    accuracy, memoised on the judge, must still be the one of the captions asked for."""
    from bench.datasets.shapes import ShapesDataset
    from bench.metrics.accuracy import judge_on_real

    class ShapeJudge:
        def predict(self, images, batch_size=256):
            return {"colour": torch.zeros(len(images), dtype=torch.long)}

        def labels(self, infos):
            return {"colour": torch.tensor([0 if i["colour"] == "red" else 1 for i in infos])}

    judge = ShapeJudge()
    small, large = ShapesDataset(resolution=16, num_captions=4), ShapesDataset(resolution=16, num_captions=12)
    assert small.identity() == large.identity()
    assert len(judge_on_real(judge, make_ctx(small, tmp_path))["all"]) == 4
    assert len(judge_on_real(judge, make_ctx(large, tmp_path))["all"]) == 12


def test_a_caption_generated_twice_gets_the_mean_of_its_images(tmp_path):
    info = {"colour": "red", "size": "small", "split": "seen"}
    items = [CaptionItem(5, "cap", info)]
    real = render("red", "small")[None]
    gen = torch.stack([render("red", "small"), render("green", "small"), render("red", "small")])  # right, wrong, right
    ctx = make_ctx(TensorDataset(real, items=items, real=real, attributes=ATTRS), tmp_path,
                   components={"j": PixelJudge()})
    metric = build_attribute_accuracy(AccuracyArgs(judge="j"))
    metric.update(SampleBatch(gen, ["cap"] * 3, [5, 5, 5], [info] * 3))
    metric.compute(ctx)
    assert ctx.per_caption[5]["attribute-accuracy"] == pytest.approx(2 / 3)
