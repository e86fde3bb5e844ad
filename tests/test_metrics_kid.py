"""KID against torchmetrics' KernelInceptionDistance on the same features."""
from __future__ import annotations

import pytest
import torch
from torchmetrics.image.kid import KernelInceptionDistance

from bench.api import SampleBatch
from bench.metrics.kid import KIDArgs, build_kid, kernel_distance
from metrics_testing import PixelClip, TensorDataset, make_ctx


class Identity(torch.nn.Module):
    """torchmetrics takes a feature module; ours are precomputed, so hand them through."""

    def forward(self, x):
        return x


def torchmetrics_kid(gen: torch.Tensor, ref: torch.Tensor, subsets: int, subset_size: int, seed: int):
    kid = KernelInceptionDistance(feature=Identity(), subsets=subsets, subset_size=subset_size, normalize=False)
    kid.update(ref.double(), real=True)
    kid.update(gen.double(), real=False)
    torch.manual_seed(seed)  # torchmetrics draws subsets from the global generator; ours from one seeded alike
    mean, std = kid.compute()
    return float(mean), float(std)


def feats(n: int, d: int, seed: int, shift: float) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


@pytest.mark.parametrize("gram", [True, False])  # the fast path (kernel matrices once) and its plain twin
def test_kid_equals_torchmetrics_on_full_sets(gram):
    gen, ref = feats(40, 16, 0, 0.3), feats(50, 16, 1, 0.0)
    ours, _, m, drawn = kernel_distance(gen.numpy(), ref.numpy(), subsets=3, subset_size=40, seed=0, gram=gram)
    theirs, _ = torchmetrics_kid(gen, ref, subsets=3, subset_size=40, seed=0)
    assert m == 40 and drawn == 3  # the reference side (50) still varies
    assert ours == pytest.approx(theirs, rel=1e-9)


@pytest.mark.parametrize("gram", [True, False])
def test_kid_equals_torchmetrics_with_subsets(gram):
    gen, ref = feats(60, 8, 2, 0.5), feats(70, 8, 3, 0.0)
    ours, ours_std, _, _ = kernel_distance(gen.numpy(), ref.numpy(), subsets=20, subset_size=25, seed=7, gram=gram)
    theirs, theirs_std = torchmetrics_kid(gen, ref, subsets=20, subset_size=25, seed=7)
    assert ours == pytest.approx(theirs, rel=1e-9)
    assert ours_std == pytest.approx(theirs_std, rel=1e-9)
    assert ours > 0.01


def test_kid_of_two_whole_sets_is_one_estimate_without_a_spread(tmp_path):
    """subset_size >= both set sizes: every subset would be both whole sets, so one estimate and no std (it
    reported 100 equal draws with a std of 1e-16)."""
    gen, ref = feats(30, 8, 2, 0.5), feats(30, 8, 3, 0.0)
    ours, std, m, drawn = kernel_distance(gen.numpy(), ref.numpy(), subsets=100, subset_size=1000, seed=0)
    theirs, _ = torchmetrics_kid(gen, ref, subsets=2, subset_size=30, seed=0)
    assert (std, m, drawn) == (None, 30, 1) and ours == pytest.approx(theirs, rel=1e-9)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 20, 3, 16, 16), generator=g, dtype=torch.uint8)
    metric = build_kid(KIDArgs(features="clip", clip="ev", blur=[0]))
    metric.update(SampleBatch(images[0], ["c"] * 20, list(range(20)), [{}] * 20))
    (row,) = metric.compute(make_ctx(TensorDataset(images[1]), tmp_path, components={"ev": PixelClip()}))
    assert row.extra["subsets"] == 1 and row.extra["kid_std"] is None and row.extra["subset_size"] == 20


def test_kid_gram_fast_path_equals_the_per_subset_twin_and_is_the_default_at_bench_sizes():
    gen, ref = feats(384, 1280, 4, 0.1), feats(500, 1280, 5, 0.0)
    fast = kernel_distance(gen.numpy(), ref.numpy(), subsets=10, subset_size=300, seed=1, gram=True)
    plain = kernel_distance(gen.numpy(), ref.numpy(), subsets=10, subset_size=300, seed=1, gram=False)
    assert fast[0] == pytest.approx(plain[0], rel=1e-9) and fast[1] == pytest.approx(plain[1], rel=1e-7)
    assert kernel_distance(gen.numpy(), ref.numpy(), subsets=10, subset_size=300, seed=1) == fast


def test_kid_metric_rows(tmp_path):
    g = torch.Generator().manual_seed(0)
    gen = torch.randint(0, 256, (30, 3, 16, 16), generator=g, dtype=torch.uint8)
    ref = torch.randint(0, 128, (20, 3, 16, 16), generator=g, dtype=torch.uint8)
    ctx = make_ctx(TensorDataset(ref), tmp_path, components={"ev": PixelClip()})
    metric = build_kid(KIDArgs(features="clip", clip="ev", blur=[0, 1], subsets=5))
    metric.update(SampleBatch(gen, ["c"] * 30, list(range(30)), [{}] * 30))
    rows = metric.compute(ctx)
    assert [(r.metric, r.variant) for r in rows] == [("kid-clip", "blur=0"), ("kid-clip", "blur=1")]
    assert rows[0].n == 30 and rows[0].extra["subsets"] == 5 and rows[0].extra["subset_size"] == 20
    clip = PixelClip()
    expected, _, _, _ = kernel_distance(clip.encode_image(gen).numpy(), clip.encode_image(ref).numpy(), 5, 1000, 0)
    assert rows[0].value == pytest.approx(expected, rel=1e-9)


class CountingClip(PixelClip):
    def __init__(self):
        super().__init__()
        self.images_seen = 0

    def encode_image(self, images):
        self.images_seen += len(images)
        return super().encode_image(images)


def test_fd_and_kid_of_one_system_and_seed_extract_each_batch_once(tmp_path):
    from bench.metrics.fd import FDArgs, build_fd

    g = torch.Generator().manual_seed(0)
    gen = torch.randint(0, 256, (30, 3, 16, 16), generator=g, dtype=torch.uint8)
    ref = torch.randint(0, 128, (20, 3, 16, 16), generator=g, dtype=torch.uint8)
    clip = CountingClip()
    ctx = make_ctx(TensorDataset(ref), tmp_path, components={"ev": clip})
    fd = build_fd(FDArgs(features="clip", clip="ev", blur=[0, 1]))
    kid = build_kid(KIDArgs(features="clip", clip="ev", blur=[0], subsets=5))
    for metric in (fd, kid):
        metric.start(ctx)
    for start in (0, 16):
        images = gen[start:start + 16]
        batch = SampleBatch(images, ["c"] * len(images), list(range(start, start + len(images))), [{}] * len(images))
        for metric in (fd, kid):
            metric.update(batch)
    assert clip.images_seen == 2 * 30  # blur 0 shared by fd and kid, blur 1 for fd only
    kid_rows, fd_rows = kid.compute(ctx), fd.compute(ctx)
    alone = build_kid(KIDArgs(features="clip", clip="ev", blur=[0], subsets=5))
    alone.update(SampleBatch(gen, ["c"] * 30, list(range(30)), [{}] * 30))
    assert kid_rows[0].value == pytest.approx(alone.compute(make_ctx(TensorDataset(ref), tmp_path,
                                                                     components={"ev": PixelClip()}))[0].value, rel=1e-9)
    assert len(fd_rows) == 2


def test_kid_metric_passes_its_subset_size_and_seed_on(tmp_path):
    g = torch.Generator().manual_seed(1)
    gen = torch.randint(0, 256, (30, 3, 16, 16), generator=g, dtype=torch.uint8)
    ref = torch.randint(0, 128, (24, 3, 16, 16), generator=g, dtype=torch.uint8)
    clip = PixelClip()

    def row(seed: int):
        metric = build_kid(KIDArgs(features="clip", clip="ev", blur=[0], subsets=5, subset_size=10, seed=seed))
        metric.update(SampleBatch(gen, ["c"] * 30, list(range(30)), [{}] * 30))
        (out,) = metric.compute(make_ctx(TensorDataset(ref), tmp_path, components={"ev": PixelClip()}))
        return out

    first = row(3)
    expected, std, _, _ = kernel_distance(clip.encode_image(gen).numpy(), clip.encode_image(ref).numpy(), 5, 10, 3)
    assert first.value == pytest.approx(expected, rel=1e-12) and first.extra["kid_std"] == pytest.approx(std)
    assert first.extra["subset_size"] == 10
    assert row(4).value != pytest.approx(first.value, rel=1e-9)  # another seed draws other subsets
