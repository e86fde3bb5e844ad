"""Fréchet distance: the formula, the pipeline (blur, batching, streaming), the reference-statistics cache."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import linalg

from bench.api import SampleBatch, UserError
from bench.features import EffNetLite0, gaussian_blur, missing_feature_resources
from bench.metrics.fd import FDArgs, build_fd, missing_resources
from bench.metrics.stats import (feature_stats, frechet_distance, frechet_distance_of, trace_sqrt_product,
                                 trace_sqrt_product_of_features, trace_sqrt_product_sqrtm)
from metrics_testing import PixelClip, TensorDataset, make_ctx


def shapes_like(n: int, seed: int, res: int = 32) -> torch.Tensor:
    """Bright squares of random colour and place on a dark background: uint8 [n,3,res,res]."""
    g = torch.Generator().manual_seed(seed)
    img = torch.full((n, 3, res, res), 20, dtype=torch.uint8)
    for i in range(n):
        x, y = torch.randint(0, res // 2, (2,), generator=g).tolist()
        img[i, :, y:y + res // 3, x:x + res // 3] = torch.randint(80, 256, (3, 1, 1), generator=g, dtype=torch.uint8)
    return img


def noise(n: int, seed: int, res: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, res, res), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def batch_of(images: torch.Tensor) -> SampleBatch:
    n = images.shape[0]
    return SampleBatch(images, [f"c{i}" for i in range(n)], list(range(n)), [{"split": "seen"} for _ in range(n)])


def run_fd(args: FDArgs, ctx, images: torch.Tensor, chunk: int = 1000, start: bool = False):
    metric = build_fd(args)
    if start:
        metric.start(ctx)
    for s in range(0, images.shape[0], chunk):
        metric.update(batch_of(images[s:s + chunk]))
    return metric.compute(ctx)


def scipy_fd(f1: np.ndarray, f2: np.ndarray) -> float:
    """The independent computation: float64 numpy statistics, scipy sqrtm."""
    f1, f2 = f1.astype(np.float64), f2.astype(np.float64)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singular when n < d; the test sets keep the answer well defined
        covmean = np.real(linalg.sqrtm(s1 @ s2))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_cov(d: int, n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)) @ np.random.default_rng(seed + 1).normal(size=(d, d))
    return np.cov(x, rowvar=False)


def test_trace_sqrt_eigen_equals_sqrtm_twin():
    s1, s2 = random_cov(40, 200, 0), random_cov(40, 200, 5)
    assert trace_sqrt_product(s1, s2) == pytest.approx(trace_sqrt_product_sqrtm(s1, s2), rel=1e-9)
    # rank-deficient (n < d) still agrees
    s3, s4 = random_cov(40, 20, 1), random_cov(40, 25, 7)
    assert trace_sqrt_product(s3, s4) == pytest.approx(trace_sqrt_product_sqrtm(s3, s4), rel=1e-6)
    # one singular, one positive definite: the Cholesky of the second serves
    assert trace_sqrt_product(s3, s2) == pytest.approx(trace_sqrt_product_sqrtm(s3, s2), rel=1e-6)
    assert trace_sqrt_product(s1, s4) == pytest.approx(trace_sqrt_product_sqrtm(s1, s4), rel=1e-6)


def test_trace_sqrt_of_features_equals_the_covariance_routes():
    rng = np.random.default_rng(3)
    mix = rng.normal(size=(40, 40))
    for n1, n2 in ((20, 25), (25, 300), (200, 300)):  # below the dimension on both sides, on one, on none
        x1, x2 = rng.normal(size=(n1, 40)) @ mix, rng.normal(size=(n2, 40)) @ mix + 0.5
        s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
        fast = trace_sqrt_product_of_features(x1, x2)
        assert fast == pytest.approx(trace_sqrt_product_sqrtm(s1, s2), rel=1e-6)
        assert fast == pytest.approx(trace_sqrt_product(s1, s2), rel=1e-6 if min(n1, n2) < 40 else 1e-9)
        a, b = feature_stats(x1), feature_stats(x2)
        assert frechet_distance_of(a, b) == pytest.approx(frechet_distance(a.mu, a.sigma, b.mu, b.sigma), rel=1e-7)


def test_frechet_distance_of_takes_the_covariance_route_when_the_svd_fails(monkeypatch):
    """LAPACK's SVD returned NaN on a wide [500, 5000] product of real EfficientNet features once denormals were
    flushed to zero (bench flushes them for training); the features' route must then give way to the twin."""
    import bench.metrics.stats as stats

    rng = np.random.default_rng(4)
    a, b = feature_stats(rng.normal(size=(12, 40))), feature_stats(rng.normal(size=(30, 40)) + 0.3)
    expected = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    assert frechet_distance_of(a, b) == pytest.approx(expected, rel=1e-7)
    shapes = []

    def failing_svd(m, compute_uv=True):
        shapes.append(m.shape)
        return np.full(min(m.shape), np.nan)

    monkeypatch.setattr(stats.np.linalg, "svd", failing_svd)
    assert frechet_distance_of(a, b) == pytest.approx(expected, rel=1e-7)
    assert shapes == [(30, 12)]  # the tall orientation of the [12, 30] cross product


def test_frechet_distance_of_known_gaussians():
    # N(0, I) vs N(m, 4I) in d dims: |m|^2 + d + 4d - 2*2d = |m|^2 + d
    d = 7
    m = np.arange(d, dtype=np.float64)
    assert frechet_distance(np.zeros(d), np.eye(d), m, 4 * np.eye(d)) == pytest.approx(m @ m + d, rel=1e-12)


@pytest.mark.slow
def test_fd_effnet_equals_independent_scipy_computation(tmp_path):
    shapes, rnd = shapes_like(16, 0), noise(16, 1)
    ctx = make_ctx(TensorDataset(noise(16, 1)), tmp_path)
    rows = run_fd(FDArgs(features="effnet-lite0", blur=[0], batch_size=8), ctx, shapes)
    (row,) = rows
    net = EffNetLite0()
    expected = scipy_fd(net(shapes).numpy(), net(rnd).numpy())
    assert expected > 10.0  # clearly different sets
    assert row.metric == "fd-effnet-lite0" and row.variant == "blur=0" and row.n == 16
    assert row.value == pytest.approx(expected, rel=1e-6)
    assert row.extra["rank_deficient"] is True and row.extra["feature_dim"] == 1280  # 16 < 1280


@pytest.mark.slow
def test_effnet_fast_path_equals_the_plain_network():
    import torch.nn.functional as F
    from timm.layers.norm_act import BatchNormAct2d

    ext = EffNetLite0()
    images = shapes_like(6, 2)
    plain = ext.plain()
    # the twin is timm's graph: contiguous weights, every batch norm still there; the fast one has none left
    assert next(plain.parameters()).is_contiguous()
    assert sum(isinstance(m, BatchNormAct2d) for m in plain.modules()) == 49
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in ext.net.modules())
    x = F.interpolate(images.float() / 255.0, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        expected = plain(((x - 0.5) / 0.5).contiguous())
    torch.testing.assert_close(ext(images), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def clip_ctx(tmp_path, reference: torch.Tensor, tag: str = "t0"):
    return make_ctx(TensorDataset(reference, tag=tag), tmp_path, components={"ev": PixelClip()})


def test_fd_of_a_set_with_itself_is_zero(tmp_path):
    x = shapes_like(60, 3)
    (row,) = run_fd(FDArgs(features="clip", clip="ev"), clip_ctx(tmp_path, x), x)
    assert row.metric == "fd-clip"
    assert abs(row.value) < 1e-8
    (other,) = run_fd(FDArgs(features="clip", clip="ev"), clip_ctx(tmp_path, x), noise(60, 4))
    assert other.value > 0.1


def test_fd_invariant_to_batch_size_and_streaming(tmp_path):
    gen, ref = shapes_like(50, 5), noise(40, 6)
    ctx = clip_ctx(tmp_path, ref)
    a = run_fd(FDArgs(features="clip", clip="ev", blur=[0, 2], batch_size=64), ctx, gen, chunk=50)
    b = run_fd(FDArgs(features="clip", clip="ev", blur=[0, 2], batch_size=3), ctx, gen, chunk=7)
    c = run_fd(FDArgs(features="clip", clip="ev", blur=[0, 2], batch_size=5), ctx, gen, chunk=11, start=True)
    for ra, rb, rc in zip(a, b, c):
        assert ra.variant == rb.variant == rc.variant
        assert rb.value == pytest.approx(ra.value, rel=1e-6)
        assert rc.value == pytest.approx(ra.value, rel=1e-6)


def test_blur_zero_is_no_blur_and_blur_changes_the_number(tmp_path):
    gen, ref = shapes_like(30, 7), shapes_like(30, 8)
    x = gen.clone()
    assert torch.equal(gaussian_blur(x, 0), gen)
    rows = run_fd(FDArgs(features="clip", clip="ev", blur=[0, 4]), clip_ctx(tmp_path, ref), gen)
    assert [r.variant for r in rows] == ["blur=0", "blur=4"]
    clip = PixelClip()
    expected = scipy_fd(clip.encode_image(gen).numpy(), clip.encode_image(ref).numpy())
    assert rows[0].value == pytest.approx(expected, rel=1e-6)
    assert rows[1].value != pytest.approx(rows[0].value, rel=1e-3)
    assert rows[1].extra["blur_radius"] == 4
    # FID-k: both sets blurred (PIL's Gaussian of radius 4, each image on its own), then the plain distance
    blurred = scipy_fd(clip.encode_image(pil_blur(gen, 4)).numpy(), clip.encode_image(pil_blur(ref, 4)).numpy())
    assert rows[1].value == pytest.approx(blurred, rel=1e-6)


def pil_blur(images: torch.Tensor, radius: float) -> torch.Tensor:
    from PIL import Image, ImageFilter

    out = [np.asarray(Image.fromarray(im.permute(1, 2, 0).numpy()).filter(ImageFilter.GaussianBlur(radius=radius)))
           for im in images]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def test_gaussian_blur_is_pil_gaussian_blur():
    from PIL import Image, ImageFilter

    img = shapes_like(1, 9)[0]
    pil = Image.fromarray(img.permute(1, 2, 0).numpy()).filter(ImageFilter.GaussianBlur(radius=2))
    assert torch.equal(gaussian_blur(img[None], 2)[0], torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1))


def test_reference_cache_hit_equals_recompute(tmp_path):
    gen, ref = shapes_like(30, 10), noise(30, 11)
    args = FDArgs(features="clip", clip="ev", blur=[0, 1])
    first = run_fd(args, clip_ctx(tmp_path, ref), gen)
    second = run_fd(args, clip_ctx(tmp_path, ref), gen)
    assert [r.extra["reference_stats_cached"] for r in first] == [False, False]
    assert [r.extra["reference_stats_cached"] for r in second] == [True, True]
    assert [r.value for r in first] == [r.value for r in second]
    assert len(list((tmp_path / "stats").glob("*.npz"))) == 2  # one per blur radius
    # a different reference set (another key) is not served from that cache
    third = run_fd(args, clip_ctx(tmp_path, shapes_like(30, 12), tag="t1"), gen)
    assert [r.extra["reference_stats_cached"] for r in third] == [False, False]
    assert third[0].value != pytest.approx(first[0].value, rel=1e-3)


def test_args_errors_and_missing_resources(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="clip"):
        FDArgs(features="clip")
    with pytest.raises(UserError, match="repeat"):
        FDArgs(features="effnet-lite0", blur=[1, 1])
    assert missing_resources(FDArgs(features="effnet-lite0")) == []
    absent = tmp_path / "nope" / "w.pth"
    lines = missing_resources(FDArgs(feature_extractor_weights_path=str(absent)))
    assert len(lines) == 1 and str(absent) in lines[0]
    monkeypatch.setenv("BENCH_INCEPTION_WEIGHTS", str(tmp_path / "env.pth"))
    (line,) = missing_feature_resources("inception-v3-compat")
    assert "env.pth" in line
    (tmp_path / "env.pth").write_bytes(b"x")
    assert missing_feature_resources("inception-v3-compat") == []


def test_bench_run_asks_the_fd_and_kid_factories_for_missing_weights(tmp_path):
    from bench.runner import check_resources
    from bench.suite import load_suite

    fd_weights, kid_weights = tmp_path / "nope" / "fd.pth", tmp_path / "nope" / "kid.pth"
    (tmp_path / "s.yaml").write_text(
        "suite: s\nversion: 1\ndataset: {name: shapes, resolution: 16, num_captions: 4}\nsystems: [{name: noise}]\n"
        "metrics:\n"
        f"  - {{name: fd, args: {{features: inception-v3-compat, feature_extractor_weights_path: {fd_weights}}}}}\n"
        f"  - {{name: kid, args: {{features: inception-v3-compat, feature_extractor_weights_path: {kid_weights}}}}}\n")
    problems = check_resources(load_suite(tmp_path / "s.yaml"))
    assert len(problems) == 2 and str(fd_weights) in problems[0] and str(kid_weights) in problems[1], problems


def test_a_set_against_itself_is_never_below_zero():
    """Rounding makes tr(S) + tr(S) - 2 tr sqrt(S S) a little negative for a low-rank S (seen: -9e-10 here): the
    distance is 0, not a negative number a table would print as -0.000."""
    rng = np.random.default_rng(0)
    factor = rng.standard_normal((64, 8))
    s = factor @ factor.T + 1e-12 * np.eye(64)
    mu = rng.standard_normal(64)
    raw = 2 * np.trace(s) - 2 * trace_sqrt_product(s, s)
    assert raw < 0  # the case the clamp is for
    assert frechet_distance(mu, s, mu, s) == 0.0


def test_the_mean_term_is_float64_even_from_float32_means():
    """Features near 1e4 that differ by 1e-3 (float32 cannot hold that difference): |mu1 - mu2|^2 in float64."""
    d = 8
    mu1 = np.full(d, 1e4)
    mu2 = mu1 + 1e-3
    expected = d * (mu2[0] - mu1[0]) ** 2  # S1 = S2 = I: the trace terms cancel
    assert frechet_distance(mu1, np.eye(d), mu2, np.eye(d)) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("n, flagged", [(16, True), (17, False)])  # PixelClip features are 16-d
def test_rank_deficient_is_flagged_up_to_n_equal_to_the_feature_dimension(tmp_path, n, flagged):
    (row,) = run_fd(FDArgs(features="clip", clip="ev"), clip_ctx(tmp_path, noise(n, 8)), shapes_like(n, 9))
    assert row.extra.get("rank_deficient", False) is flagged
