"""Pins what bench/metrics/stats.py and reference/configs.py promise beyond the existing metric and loader tests:
float64 statistics with ddof=1 (checked against numpy by hand) and the refusal of fewer than two vectors; the
Fréchet distance through every trace route (Cholesky, singular covariances, the features' cross product) against
independent computations with known answers, the features' route taken whenever either side is below the dimension,
and a genuinely negative distance left visible; `extract` blurring each image before the extractor and giving the
same features at any batch size; the reference-statistics cache serving a file only under its own key and refusing
an empty reference set; `StreamingMetric`'s buffering, order and single setup; `get_extractor`'s one extractor per
(features, weights, environment, device, CLIP object); and for the configs: the presets' documented layouts and
their mutual consistency, JSON round trips of every preset config, the zero-means-off int fields covering every
shipped 0, `with_overrides` replacing exactly what it is given and refusing unknown names, and `config_from_dict`
refusing unknown and wrongly typed fields with one ValueError that names the field."""
from __future__ import annotations

import dataclasses
import json
import typing

import numpy as np
import pytest
import torch

import bench.metrics.stats as stats
from bench.api import SampleBatch
from bench.metrics.stats import (StreamingMetric, extract, feature_stats, frechet_distance, frechet_distance_of,
                                 get_extractor, reference_stats, trace_sqrt_product, trace_sqrt_product_of_features)
from metrics_testing import PixelClip, TensorDataset, make_ctx
from reference.checkpoint import read_config
from reference.configs import (PRESETS, ClipSpec, GPTConfig, VQGANConfig, config_from_dict, config_to_dict, get_preset,
                               with_overrides)
from test_metrics_fd import batch_of, noise, pil_blur, scipy_fd, shapes_like


# ---- statistics ---------------------------------------------------------------------------------
def test_feature_stats_are_float64_mean_and_ddof1_covariance_of_the_features_as_extracted():
    rng = np.random.default_rng(0)
    feats = (1e4 + rng.normal(size=(9, 5))).astype(np.float32)  # a float32 mean would lose ~1e-3 here
    st = feature_stats(torch.from_numpy(feats))
    x = feats.astype(np.float64)
    mu = x.sum(axis=0) / 9
    centred = x - mu
    assert st.mu.dtype == np.float64 and st.sigma.dtype == np.float64
    np.testing.assert_allclose(st.mu, mu, rtol=1e-13, atol=0)
    np.testing.assert_allclose(st.sigma, centred.T @ centred / 8, rtol=1e-9, atol=1e-12)
    assert st.features.dtype == np.float32 and np.array_equal(st.features, feats)  # kept as extracted (for KID)
    assert (st.n, st.dim) == (9, 5)


@pytest.mark.parametrize("shape", [(1, 4), (0, 4), (6,)])
def test_feature_stats_refuse_fewer_than_two_vectors(shape):
    with pytest.raises(ValueError, match="at least 2 feature vectors"):
        feature_stats(np.zeros(shape, dtype=np.float32))


def _rotated(diagonals: list[np.ndarray], seed: int) -> list[np.ndarray]:
    """Q diag(d) Q^T for one random orthogonal Q: the matrices commute, so tr sqrt(S1 S2) = sum sqrt(d1 d2)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(diagonals[0]),) * 2))
    return [(q * d) @ q.T for d in diagonals]


@pytest.mark.parametrize("zeros1, zeros2", [(0, 0), (3, 0), (0, 4), (3, 5)])  # PD, one singular, the other, both
def test_trace_sqrt_product_has_the_closed_form_answer_on_commuting_covariances(zeros1, zeros2):
    rng = np.random.default_rng(zeros1 * 10 + zeros2)
    d1, d2 = rng.uniform(0.5, 3.0, 12), rng.uniform(0.5, 3.0, 12)
    d1[:zeros1] = 0.0
    d2[len(d2) - zeros2:] = 0.0
    s1, s2 = _rotated([d1, d2], seed=7)
    expected = np.sqrt(d1 * d2).sum()
    assert trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-7)
    assert trace_sqrt_product(s2, s1) == pytest.approx(expected, rel=1e-7)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    fd = ((mu1 - mu2) ** 2).sum() + d1.sum() + d2.sum() - 2 * expected
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(fd, rel=1e-7)


@pytest.mark.parametrize("n1, n2", [(8, 11), (8, 40), (30, 40)])  # d=16: below on both sides, on one, on none
def test_frechet_distance_of_feature_sets_equals_scipy(n1, n2):
    rng = np.random.default_rng(n1 + n2)
    mix = rng.normal(size=(16, 16))
    x1, x2 = rng.normal(size=(n1, 16)) @ mix, rng.normal(size=(n2, 16)) @ mix * 0.7 + 0.3
    a, b = feature_stats(x1), feature_stats(x2)
    assert frechet_distance_of(a, b) == pytest.approx(scipy_fd(x1, x2), rel=1e-6)
    assert frechet_distance_of(b, a) == pytest.approx(scipy_fd(x1, x2), rel=1e-6)
    if min(n1, n2) < 16:  # the route through the features agrees with the covariance route
        assert trace_sqrt_product_of_features(x1, x2) == pytest.approx(trace_sqrt_product(a.sigma, b.sigma), rel=1e-7)


def test_a_rank_one_pair_has_the_closed_form_trace():
    """Two samples a side, u_i their difference: S_i = u_i u_i^T / 2 (ddof=1), so S1 S2 has the one nonzero
    eigenvalue (u1 . u2)^2 / 4 and tr sqrt(S1 S2) = |u1 . u2| / 2; tr S_i = |u_i|^2 / 2."""
    x1 = np.array([[1.0, 2.0, 0.0], [3.0, -1.0, 2.0]])
    x2 = np.array([[0.0, 1.0, 1.0], [2.0, 2.0, -1.0]])
    u1, u2 = x1[1] - x1[0], x2[1] - x2[0]
    expected = abs(u1 @ u2) / 2
    assert trace_sqrt_product_of_features(x1, x2) == pytest.approx(expected, rel=1e-12)
    a, b = feature_stats(x1), feature_stats(x2)
    assert trace_sqrt_product(a.sigma, b.sigma) == pytest.approx(expected, rel=1e-6)
    mean_term = ((x1.mean(0) - x2.mean(0)) ** 2).sum()
    assert frechet_distance_of(a, b) == pytest.approx(mean_term + (u1 @ u1 + u2 @ u2) / 2 - 2 * expected, rel=1e-9)


@pytest.mark.parametrize("n1, n2, through_features", [(12, 30, True), (12, 60, True), (60, 12, True),
                                                     (40, 60, False)])
def test_frechet_distance_of_uses_the_features_trace_when_either_side_is_below_the_dimension(monkeypatch, n1, n2,
                                                                                           through_features):
    """The small SVD of the features' cross product is the documented fast route whenever min(n1, n2) < D (d=40);
    its trace is the one used (a marked +0.5 shows as -1.0 on the distance)."""
    rng = np.random.default_rng(n1 * n2)
    x1, x2 = rng.normal(size=(n1, 40)), rng.normal(size=(n2, 40)) + 0.2
    a, b = feature_stats(x1), feature_stats(x2)
    plain = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    real, calls = stats.trace_sqrt_product_of_features, []
    monkeypatch.setattr(stats, "trace_sqrt_product_of_features", lambda f1, f2: calls.append(1) or real(f1, f2) + 0.5)
    got = frechet_distance_of(a, b)
    assert len(calls) == int(through_features)
    assert got == pytest.approx(plain - 1.0 if through_features else plain, rel=1e-7)


def test_a_clearly_negative_distance_is_not_clamped_to_zero():
    """Only rounding-sized negatives become 0: a wrong trace_sqrt must show, not read as a perfect score."""
    d = 4
    assert frechet_distance(np.zeros(d), np.eye(d), np.zeros(d), np.eye(d), trace_sqrt=5.0) == pytest.approx(-2.0)
    assert frechet_distance(np.zeros(d), np.eye(d), np.zeros(d), np.eye(d), trace_sqrt=4.0) == 0.0


# ---- extraction --------------------------------------------------------------------------------
def _pixels(images: torch.Tensor) -> torch.Tensor:
    """An 'extractor' whose features are the pixels themselves: what it was handed is read back exactly."""
    return images.double().flatten(1)


def test_extract_blurs_each_image_before_the_extractor_at_any_batch_size():
    images = shapes_like(7, 3, res=16)
    expected = _pixels(pil_blur(images, 2))
    for batch_size in (1, 3, 7, 64):  # 3 does not divide 7
        got = extract(_pixels, images, 2, batch_size)
        assert got.shape == (7, 3 * 16 * 16) and torch.equal(got, expected), batch_size
    assert torch.equal(extract(_pixels, images, 0, 3), _pixels(images))


# ---- cached reference statistics ----------------------------------------------------------------
class Pixels:
    def identity(self) -> dict:
        return {"features": "pixels"}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return _pixels(images)


def test_reference_stats_are_the_blurred_reference_and_a_file_is_served_only_under_its_own_key(tmp_path):
    ref_a, ref_b = noise(5, 1, res=4), noise(6, 2, res=4)
    ctx_a = make_ctx(TensorDataset(ref_a, tag="a"), tmp_path)
    ctx_b = make_ctx(TensorDataset(ref_b, tag="b"), tmp_path)
    a, cached = reference_stats(ctx_a, Pixels(), 1, 2)
    assert cached is False
    expected = _pixels(pil_blur(ref_a, 1)).numpy()
    np.testing.assert_array_equal(a.features, expected)
    np.testing.assert_allclose(a.mu, expected.mean(0), rtol=1e-12)
    np.testing.assert_allclose(a.sigma, np.cov(expected, rowvar=False), rtol=1e-9, atol=1e-9)
    (path_a,) = (tmp_path / "stats").glob("*.npz")
    b, _ = reference_stats(ctx_b, Pixels(), 1, 2)
    (path_b,) = set((tmp_path / "stats").glob("*.npz")) - {path_a}
    # a file copied under another key's name (a restore, a rename, a collision) is not served as that key's
    path_b.write_bytes(path_a.read_bytes())
    again, cached = reference_stats(ctx_b, Pixels(), 1, 2)
    assert cached is False and again.n == 6 and np.array_equal(again.features, b.features)
    assert reference_stats(ctx_b, Pixels(), 1, 2)[1] is True  # rewritten under its own key


def test_an_empty_reference_set_is_one_clear_error(tmp_path):
    ctx = make_ctx(TensorDataset(torch.zeros(0, 3, 4, 4, dtype=torch.uint8)), tmp_path)
    with pytest.raises(ValueError, match="reference set is empty"):
        reference_stats(ctx, Pixels(), 0, 4)


# ---- streaming ---------------------------------------------------------------------------------
class Recording(StreamingMetric):
    def __init__(self):
        super().__init__()
        self.log = []

    def _setup(self, ctx):
        self.log.append(("setup", ctx.suite))

    def _consume(self, batch):
        self.log.append(("consume", batch.caption_ids[0]))

    def _finish(self, ctx):
        self.log.append(("finish", ctx.suite))
        return list(self.log)


def _batch(i: int) -> SampleBatch:
    b = batch_of(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))
    return dataclasses.replace(b, caption_ids=[f"b{i}"])


def test_streaming_metric_buffers_until_start_then_consumes_on_arrival_in_order(tmp_path):
    ctx = make_ctx(TensorDataset(noise(2, 0, res=4)), tmp_path)
    m = Recording()
    m.update(_batch(0))
    m.update(_batch(1))
    assert m.log == []  # nothing can be consumed before the run context
    m.start(ctx)
    assert m.log == [("setup", "test"), ("consume", "b0"), ("consume", "b1")]
    m.update(_batch(2))
    assert m.log[-1] == ("consume", "b2")
    assert m.compute(ctx) == [("setup", "test"), ("consume", "b0"), ("consume", "b1"), ("consume", "b2"),
                              ("finish", "test")]  # set up once: compute does not start it again

    lazy = Recording()  # never started: compute starts it, and the buffered batches count once, in order
    for i in range(3):
        lazy.update(_batch(i))
    assert lazy.compute(ctx) == [("setup", "test"), ("consume", "b0"), ("consume", "b1"), ("consume", "b2"),
                                 ("finish", "test")]


# ---- one extractor per identity ----------------------------------------------------------------
def test_get_extractor_builds_one_per_features_weights_environment_device_and_clip_object(tmp_path, monkeypatch):
    built = []

    def fake_build(features, *, weights_path, clip, clip_name, device):
        built.append((features, weights_path, clip, clip_name, device))
        return object()

    monkeypatch.setattr(stats, "build_extractor", fake_build)
    monkeypatch.setattr(stats, "_EXTRACTORS", {})
    monkeypatch.delenv("BENCH_INCEPTION_WEIGHTS", raising=False)
    clip_a, clip_b = PixelClip(seed=0), PixelClip(seed=1)
    comps = {"ev": clip_a}
    ctx = make_ctx(TensorDataset(noise(2, 0, res=4)), tmp_path, components=comps)
    first = get_extractor("inception-v3-compat", ctx, weights_path="w1", clip_name=None)
    assert get_extractor("inception-v3-compat", ctx, weights_path="w1", clip_name=None) is first
    assert len(built) == 1
    others = [get_extractor("inception-v3-compat", ctx, weights_path="w2", clip_name=None),
              get_extractor("effnet-lite0", ctx, weights_path="w1", clip_name=None),
              get_extractor("inception-v3-compat", dataclasses.replace(ctx, device="cuda"), weights_path="w1",
                            clip_name=None)]
    monkeypatch.setenv("BENCH_INCEPTION_WEIGHTS", str(tmp_path / "other.pth"))
    others.append(get_extractor("inception-v3-compat", ctx, weights_path="w1", clip_name=None))
    assert len(built) == 5 and len({id(e) for e in [first, *others]}) == 5
    assert built[3][4] == "cuda"
    # clip: keyed by the component object, so a component rebuilt under the same name gets its own extractor
    ev = get_extractor("clip", ctx, weights_path=None, clip_name="ev")
    assert get_extractor("clip", ctx, weights_path=None, clip_name="ev") is ev and built[-1][2] is clip_a
    comps["ev"] = clip_b
    assert get_extractor("clip", ctx, weights_path=None, clip_name="ev") is not ev and built[-1][2] is clip_b


# ---- configs -----------------------------------------------------------------------------------
def test_presets_have_the_documented_layouts():
    assert set(PRESETS) == {"paper", "small", "tiny"}
    for name, preset in PRESETS.items():
        assert get_preset(name) is preset and preset.name == name
    paper, small, tiny = get_preset("paper"), get_preset("small"), get_preset("tiny")
    vq = paper.vqgan
    assert (vq.resolution, vq.grid, vq.codebook_size, vq.embed_dim) == (256, 16, 16384, 256)
    assert (paper.clip.name, paper.clip.embed_dim) == ("ViT-B-32", 512)
    assert (paper.gpt.n_layer, paper.gpt.n_embd, paper.gpt.n_head, paper.gpt.n_pos) == (24, 1024, 16, 256)
    assert (small.vqgan.resolution, small.vqgan.grid, small.gpt.n_layer, small.gpt.n_embd) == (64, 16, 8, 512)
    assert (tiny.vqgan.resolution, tiny.vqgan.grid, tiny.gpt.n_layer, tiny.gpt.n_embd) == (32, 8, 4, 128)


@pytest.mark.parametrize("name", ["paper", "small", "tiny"])
def test_each_preset_fits_together(name):
    p = get_preset(name)
    assert p.gpt.grid == p.vqgan.grid and p.gpt.n_pos == p.vqgan.grid ** 2
    assert p.gpt.vocab_size == p.vqgan.codebook_size
    assert p.gpt.cond_dim == p.clip.embed_dim


def test_every_int_field_that_a_default_or_a_preset_sets_to_zero_may_be_zero():
    """ZERO_MEANS_OFF is the range rule the loaders' overrides use (0 allowed, else >= 1): a value the code itself
    ships must pass it, or `--set gan_start=0` (the default) is refused."""
    configs = [VQGANConfig(), GPTConfig()] + [c for p in PRESETS.values() for c in (p.vqgan, p.gpt)]
    for cfg in configs:
        hints = typing.get_type_hints(type(cfg))
        ints = {f.name for f in dataclasses.fields(cfg) if hints[f.name] is int}
        assert type(cfg).ZERO_MEANS_OFF <= ints
        zeros = {name for name in ints if getattr(cfg, name) == 0}
        assert zeros <= type(cfg).ZERO_MEANS_OFF, (type(cfg).__name__, zeros - type(cfg).ZERO_MEANS_OFF)


@pytest.mark.parametrize("name", ["paper", "small", "tiny"])
def test_every_preset_config_survives_a_json_round_trip(name):
    p = get_preset(name)
    for cls, cfg in ((VQGANConfig, p.vqgan), (GPTConfig, p.gpt), (ClipSpec, p.clip)):
        d = config_to_dict(cfg)
        assert set(d) == {f.name for f in dataclasses.fields(cls)}
        assert all(not isinstance(v, tuple) for v in d.values())  # plain JSON values: tuples become lists
        back = config_from_dict(cls, json.loads(json.dumps(d)))
        assert back == cfg and hash(back) == hash(cfg)  # equal, tuple fields tuples again (hashable)
    assert isinstance(config_from_dict(VQGANConfig, {"ch_mult": [1, 2]}).ch_mult, tuple)
    assert config_from_dict(GPTConfig, {}) == GPTConfig()  # absent fields take the defaults


def test_with_overrides_replaces_exactly_the_given_fields_and_refuses_unknown_names():
    base = get_preset("tiny").gpt
    new = with_overrides(base, dropout=0.3, n_layer=2, betas=(0.8, 0.9))
    assert (new.dropout, new.n_layer, new.betas) == (0.3, 2, (0.8, 0.9))
    assert dataclasses.replace(new, dropout=base.dropout, n_layer=base.n_layer, betas=base.betas) == base
    assert base.dropout == 0.0  # the original is untouched
    with pytest.raises(ValueError, match=r"unknown GPTConfig field\(s\) \['n_heads'\]"):
        with_overrides(base, n_heads=2, dropout=0.1)
    with pytest.raises(ValueError, match="unknown preset 'huge'; known presets: paper, small, tiny"):
        get_preset("huge")


def test_config_from_dict_refuses_an_unknown_field_by_name():
    with pytest.raises(ValueError, match="unknown GPTConfig field 'n_heads'"):
        config_from_dict(GPTConfig, {"n_heads": 4})
    with pytest.raises(ValueError, match="a saved GPTConfig must be a JSON object, got list"):
        config_from_dict(GPTConfig, [["n_layer", 2]])


@pytest.mark.parametrize("cls, field_name, value", [
    (VQGANConfig, "resolution", "32"),  # accepted before, then failed deep inside the model
    (GPTConfig, "n_embd", "128"),  # failed as "not all arguments converted during string formatting"
    (GPTConfig, "n_layer", 4.0),
    (GPTConfig, "n_layer", True),
    (GPTConfig, "dropout", True),
    (GPTConfig, "dropout", "0.1"),
    (VQGANConfig, "ch_mult", ["1", "2"]),
    (VQGANConfig, "ch_mult", 3),
    (VQGANConfig, "betas", [0.5]),
    (VQGANConfig, "l2_codes", "no"),
    (VQGANConfig, "perceptual_path", 3),
    (VQGANConfig, "codebook", None),
])
def test_config_from_dict_refuses_a_wrongly_typed_field_with_one_value_error_naming_it(cls, field_name, value):
    with pytest.raises(ValueError, match=rf"{cls.__name__} field '{field_name}' must be ") as e:
        config_from_dict(cls, {field_name: value})
    assert "\n" not in str(e.value) and repr(value) in str(e.value)


def test_config_from_dict_takes_json_numbers_and_nulls_where_they_fit():
    cfg = config_from_dict(VQGANConfig, {"dropout": 0, "perceptual_path": None, "betas": [1, 0.9], "lr": 1})
    assert (cfg.dropout, cfg.perceptual_path, cfg.betas, cfg.lr) == (0, None, (1, 0.9), 1)
    assert config_from_dict(VQGANConfig, {"perceptual_path": "/w/vgg.pth"}).perceptual_path == "/w/vgg.pth"


def test_a_checkpoint_config_with_a_string_for_an_int_names_the_file_and_the_field(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"kind": "vqgan", "config": {"resolution": "32"}}))
    with pytest.raises(ValueError, match=r"config\.json: not a valid vqgan config: VQGANConfig field 'resolution' "
                                         r"must be an integer, got '32'"):
        read_config(tmp_path)
