"""What the shapes dataset and the attribute judge promise, checked from the outside: held-out pairs never reach
training, captions / infos / pixels agree (colour read off the pixels, shape and quadrant measured on the mask),
the eval draw alternates seen and held-out, seeds matter, and the judge's val accuracy is measured on images it
never trained on."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.components.judge import JudgeTrainArgs, AttributeJudge, train_judge
from bench.datasets.shapes import COLOURS, POSITIONS, SHAPES, ShapesDataset

pytestmark = pytest.mark.usefixtures("one_thread")

HELD = {("red", "square"), ("green", "triangle"), ("blue", "cross"), ("yellow", "circle")}


def make(**kw) -> ShapesDataset:
    base = dict(resolution=16, num_captions=16, seed=0, train_size=300, pairs_size=300,
                held_out=tuple(f"{c} {s}" for c, s in sorted(HELD)))
    return ShapesDataset(**{**base, **kw})


# ---- reading an image without the renderer -----------------------------------------------------------
def read_image(img: torch.Tensor) -> dict:
    """uint8 [3,R,R] -> colour (nearest palette entry to the solid foreground), quadrant, shape and the lit mask."""
    a = img.permute(1, 2, 0).numpy().astype(np.float64)  # [R,R,3]
    r = a.shape[0]
    bg = np.median(a.reshape(-1, 3), axis=0)  # the shape fills at most one quadrant: the median pixel is background
    dist = np.abs(a - bg).sum(-1)
    solid = dist >= 0.9 * dist.max()
    lit = dist >= 0.5 * dist.max()
    fg = a[solid].mean(0)
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float64)
    colour = names[int(np.argmin(((palette - fg) ** 2).sum(-1)))]
    ys, xs = np.nonzero(lit)
    quadrant = ("bottom" if ys.mean() >= r / 2 else "top") + " " + ("right" if xs.mean() >= r / 2 else "left")
    # shape: triangle if its bounding box's row 80% down is much wider than the row 20% down, square if it fills
    # nearly all its box (a circle fills pi/4), else circle or cross by the width of that upper row
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    h, w = y1 - y0 + 1, x1 - x0 + 1
    w_top = lit[y0 + int(0.2 * h)].sum() / w
    w_bot = lit[y0 + int(0.8 * h)].sum() / w
    if w_bot - w_top > 0.3:
        shape = "triangle"
    elif lit[y0:y1 + 1, x0:x1 + 1].mean() > 0.9:
        shape = "square"
    elif w_top > 0.55:
        shape = "circle"
    else:
        shape = "cross"
    return {"colour": colour, "fg": fg, "bg": bg, "quadrant": quadrant, "shape": shape, "lit": lit,
            "box": (y0, y1, x0, x1)}


def test_held_out_pairs_never_reach_the_training_images_but_every_other_pair_does():
    ds = make(train_size=400)
    images, info = ds.train_images(), ds.train_info()
    assert images.shape[0] == len(info) == 400
    trained = {(i["colour"], i["shape"]) for i in info}
    every = {(c, s) for c in COLOURS for s in SHAPES}
    assert trained == every - HELD
    assert all(i["split"] == "seen" for i in info)
    for img, i in zip(images[:24], info[:24]):  # the pixels are the pair the info names
        got = read_image(img)
        assert (got["colour"], got["quadrant"]) == (i["colour"], i["position"])


def test_pairs_cover_every_combination_and_captions_infos_pixels_agree():
    ds = make(pairs_size=500)
    images, captions, infos = ds.pairs()
    assert len(captions) == len(infos) == images.shape[0] == 500
    assert {(i["colour"], i["shape"]) for i in infos} == {(c, s) for c in COLOURS for s in SHAPES}
    for cap, i in zip(captions, infos):
        assert cap == f"a {i['colour']} {i['shape']} in the {i['position']}"
        assert i["split"] == ("held-out" if (i["colour"], i["shape"]) in HELD else "seen")
    for img, i in zip(images[:32], infos[:32]):
        got = read_image(img)
        assert (got["colour"], got["quadrant"]) == (i["colour"], i["position"])


def test_every_combination_renders_as_itself():
    """Each of the 96 (colour, shape, position) combos: colour near its palette entry, the
    whole shape inside its quadrant, shape readable from its mask, and big enough to read."""
    ds = make(resolution=64)
    combos = [(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS]
    from bench.api import CaptionItem

    items = [CaptionItem(k, "x", {"colour": c, "shape": s, "position": p}) for k, (c, s, p) in enumerate(combos)]
    images = ds.real_images(items, [3] * len(items))
    r = 64
    palette = {n: np.array(v, dtype=np.float64) for n, v in COLOURS.items()}
    margin = {n: min(np.linalg.norm(v - w) for m, w in palette.items() if m != n) for n, v in palette.items()}
    for img, (c, s, p) in zip(images, combos):
        got = read_image(img)
        assert got["colour"] == c and got["shape"] == s and got["quadrant"] == p, (c, s, p, got["shape"])
        # jittered, but nearer its own palette entry than half the way to the nearest other one
        assert np.linalg.norm(got["fg"] - np.array(COLOURS[c])) < margin[c] / 2, (c, got["fg"])
        ys, xs = np.nonzero(np.abs(img.permute(1, 2, 0).numpy().astype(float) - got["bg"]).sum(-1) > 6)
        top, left = p.startswith("top"), p.endswith("left")
        assert (ys < r // 2).all() if top else (ys >= r // 2).all()
        assert (xs < r // 2).all() if left else (xs >= r // 2).all()
        y0, y1, x0, x1 = got["box"]
        assert min(y1 - y0, x1 - x0) + 1 >= r // 8  # a shape spans a fair part of its quadrant


def test_eval_captions_alternate_seen_and_held_out_and_cover_both():
    ds = make(num_captions=40)
    items = ds.eval_captions()
    assert [it.caption_id for it in items] == list(range(40))
    held_combos = {(c, s, p) for c, s in HELD for p in POSITIONS}
    for k, it in enumerate(items):
        i = it.info
        assert it.caption == f"a {i['colour']} {i['shape']} in the {i['position']}"
        is_held = (i["colour"], i["shape"]) in HELD
        assert i["split"] == ("held-out" if is_held else "seen")
        assert is_held == (k % 2 == 1)
    splits = [it.info["split"] for it in items]
    assert splits.count("seen") == splits.count("held-out") == 20
    # the first 2 * 16 captions name each of the 16 held-out combos once, and 16 distinct seen ones
    first = [(it.info["colour"], it.info["shape"], it.info["position"]) for it in items[:2 * len(held_combos)]]
    assert set(first[1::2]) == held_combos
    assert len(set(first[0::2])) == len(held_combos)


def test_without_held_out_pairs_every_caption_is_seen():
    items = make(held_out=(), num_captions=96).eval_captions()
    combos = {(it.info["colour"], it.info["shape"], it.info["position"]) for it in items}
    assert len(combos) == 96 and all(it.info["split"] == "seen" for it in items)


def test_a_held_out_pair_is_one_pair_however_it_is_spelled():
    """Extra spaces, repeats or another order name the same held-out set: the same captions, tagged held-out, and
    the same identity (cache keys)."""
    plain = make(held_out=("red square", "blue circle"), num_captions=16)
    for spelling in (("red  square", " blue circle"), ("blue circle", "red square", "red square")):
        other = make(held_out=spelling, num_captions=16)
        assert [(it.caption, it.info) for it in other.eval_captions()] == \
            [(it.caption, it.info) for it in plain.eval_captions()]
        assert other.identity() == plain.identity() and other.split_identity("pairs") == plain.split_identity("pairs")
    tagged = {(it.info["colour"], it.info["shape"]) for it in plain.eval_captions() if it.info["split"] == "held-out"}
    assert tagged == {("red", "square"), ("blue", "circle")}


def test_seed_decides_everything_and_nothing_else_does():
    a, b, c = make(), make(), make(seed=1)
    assert [it.caption for it in a.eval_captions()] == [it.caption for it in b.eval_captions()]
    assert torch.equal(a.train_images(), b.train_images()) and torch.equal(a.pairs()[0], b.pairs()[0])
    assert a.pairs()[1] == b.pairs()[1]
    assert [it.caption for it in a.eval_captions()] != [it.caption for it in c.eval_captions()]
    assert [i["colour"] + i["shape"] for i in a.train_info()] != [i["colour"] + i["shape"] for i in c.train_info()]
    assert a.pairs()[1] != c.pairs()[1]
    # same combos, different seed: the renders (jitter) differ too
    items = a.eval_captions()[:6]
    assert not torch.equal(a.real_images(items, [0] * 6), c.real_images(items, [0] * 6))


def test_real_images_follow_their_seeds_and_are_not_the_reference_renders():
    ds = make(num_captions=8)
    items = ds.eval_captions()
    r0, r0b, r1 = ds.real_images(items, [0] * 8), ds.real_images(items, [0] * 8), ds.real_images(items, [1] * 8)
    assert torch.equal(r0, r0b)
    assert all(not torch.equal(x, y) for x, y in zip(r0, r1))
    (ref,) = list(ds.iter_reference_images())
    assert ref.shape == r0.shape
    for seed in (0, 1):
        real = ds.real_images(items, [seed] * 8)
        assert all(not torch.equal(x, y) for x, y in zip(real, ref))
    for img, it in zip(ref, items):  # the reference renders are of the eval captions
        got = read_image(img)
        assert (got["colour"], got["quadrant"]) == (it.info["colour"], it.info["position"])
    # captions naming the same combo still get their own renders under one seed
    from bench.api import CaptionItem

    twins = [CaptionItem(k, items[0].caption, dict(items[0].info)) for k in range(4)]
    renders = ds.real_images(twins, [0] * 4)
    assert len({bytes(im.numpy().tobytes()) for im in renders}) == 4


# ---- the judge ---------------------------------------------------------------------------------------
class Recorder:
    """Wraps AttributeJudge.forward: which images it saw with gradients (training) and without (measuring)."""

    def __init__(self, monkeypatch):
        self.trained, self.measured = set(), []
        original = AttributeJudge.forward

        def forward(judge, images):
            rows = [bytes(im.numpy().tobytes()) for im in images]
            if torch.is_grad_enabled():
                self.trained.update(rows)
            else:
                self.measured.extend(rows)
            return original(judge, images)

        monkeypatch.setattr(AttributeJudge, "forward", forward)


def test_judge_val_accuracy_is_all_correct_on_images_it_never_trained_on(monkeypatch):
    ds = make(resolution=16, pairs_size=60)
    images, _, infos = ds.pairs()
    by_bytes = {bytes(im.numpy().tobytes()): k for k, im in enumerate(images)}
    assert len(by_bytes) == 60
    rec = Recorder(monkeypatch)
    args = JudgeTrainArgs(steps=3, batch_size=16, input_size=16, width=4, val_fraction=0.25)
    judge, report = train_judge(images, infos, ds.attributes(), args)
    val = [by_bytes[b] for b in rec.measured]
    assert report["val_n"] == len(val) == len(set(val)) == 15
    assert rec.trained and not (rec.trained & set(rec.measured))
    assert len(rec.trained) <= 60 - 15
    # recompute: all attributes right, with the value order the dataset declares
    pred = judge.predict(images[val])
    attrs = ds.attributes()
    ok = [all(attrs[a][int(pred[a][j])] == infos[k][a] for a in attrs) for j, k in enumerate(val)]
    assert report["val_accuracy"] == pytest.approx(sum(ok) / len(ok))


def test_judge_labels_follow_the_declared_value_order():
    ds = make(pairs_size=8)
    images, _, infos = ds.pairs()
    judge, _ = train_judge(images, infos, ds.attributes(), JudgeTrainArgs(steps=1, batch_size=4, input_size=16,
                                                                          width=4, val_fraction=0.0))
    labels = judge.labels(infos)
    for a, values in ds.attributes().items():
        assert [values[int(v)] for v in labels[a]] == [i[a] for i in infos]
        assert list(judge.config.attributes[a]) == list(values)


def test_judge_split_and_init_follow_its_seed(monkeypatch):
    ds = make(pairs_size=40)
    images, _, infos = ds.pairs()
    rec = Recorder(monkeypatch)
    runs = []
    for seed in (0, 0, 1):
        rec.trained, rec.measured = set(), []
        args = JudgeTrainArgs(steps=2, batch_size=8, input_size=16, width=4, val_fraction=0.25, seed=seed)
        judge, _ = train_judge(images, infos, ds.attributes(), args)
        runs.append((set(rec.measured), judge.state_dict()))
    (v0, s0), (v0b, s0b), (v1, s1) = runs
    assert v0 == v0b and all(torch.equal(s0[k], s0b[k]) for k in s0)
    assert v0 != v1  # another seed holds back other images
    assert any(not torch.equal(s0[k], s1[k]) for k in s0 if s0[k].is_floating_point())


def test_judge_predicts_each_image_on_its_own_and_leaves_its_mode_and_statistics():
    ds = make(pairs_size=40)
    images, _, infos = ds.pairs()
    judge, _ = train_judge(images, infos, ds.attributes(), JudgeTrainArgs(steps=4, batch_size=16, input_size=16,
                                                                          width=4, val_fraction=0.0))
    judge.train()
    before = {k: v.clone() for k, v in judge.state_dict().items()}
    whole = judge.predict(images[:12])
    alone = [judge.predict(images[j:j + 1]) for j in range(12)]
    three = judge.predict(images[:12], batch_size=3)
    assert judge.training  # the caller's mode comes back
    after = judge.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm running statistics untouched
    # the logits too: an image's scores do not depend on the rest of its batch
    judge.eval()
    with torch.no_grad():
        big = judge(images[:12])
        for j in (0, 5):
            small = judge(images[j:j + 1])
            for a in big:
                assert torch.allclose(big[a][j], small[a][0], atol=1e-5)
    for a in whole:
        assert torch.equal(whole[a], torch.cat([x[a] for x in alone]))
        assert torch.equal(whole[a], three[a])
