"""What each system's samples are, checked against an independent computation: clipgen trains its GPT on the CLIP
image embeddings of the train split and samples from the CLIP text embeddings of the captions (clipgen-text on the
text embeddings of the pairs' captions, both times); random-caption hands the wrapped system another caption (by
text, with that caption's own id, from the row's seed); vqgan-recon is the VQGAN reconstruction and real-images the
real image of the row's caption and seed; retrieval is the train image of highest cosine similarity (numpy brute
force, across the 1024-image encoding chunks; CPU images whatever device the CLIP is on); noise is uniform and seeded
per row; samples-folder's file naming, mapping and resize + centre crop (pixels checked against numpy slicing and
PIL); vqgan-clip's initial codes from (seed, "vqgan-clip"), its step count, Adam learning rate, clamping and
per-caption text encoding; and every system's rows depend only on (seed, caption id), not on the batch."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from bench.api import CaptionItem, UserError
from bench.datasets.base import ReadsOnly
from bench.datasets.shapes import ShapesDataset
from bench.systems.around import RandomCaption, Retrieval, VQGANRecon
from bench.systems.clipgen import ClipGen, ClipGenArgs, GPTTrainArgs, build_clipgen, build_clipgen_text
from bench.systems.samples_folder import SamplesFolder, SamplesFolderArgs, load_resized, scan_folder
from bench.systems.simple import Noise, RealImages
from bench.systems.vqgan_clip import VQGANClip, VQGANClipArgs, optimise_latents
from reference.clip import init_clip
from reference.configs import get_preset, with_overrides
from reference.gpt import GPT
from reference.sample import mix_seed
from reference.train import native_bf16
from reference.vqgan import VQGAN

try:  # tests/ as a package or as a plain folder on sys.path
    from tests.test_vqgan_clip import CAPTIONS, parts  # noqa: F401  (the module fixture: tiny VQGAN + CLIP)
except ImportError:
    from test_vqgan_clip import CAPTIONS, parts  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def shapes():
    return ShapesDataset(resolution=32, num_captions=12, train_size=6, pairs_size=5)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    clip = init_clip("tiny")
    vqgan = VQGAN(TINY.vqgan).eval()
    gpt = GPT(with_overrides(TINY.gpt, n_layer=1, n_embd=32, n_head=2, ffn_dim=64, cond_dim=clip.embed_dim)).eval()
    return clip, vqgan, gpt


# ---- clipgen / clipgen-text: what the GPT is conditioned on ----------------------------------------------------
class RecordingClip:
    """A CLIP that records what it is asked to encode and forwards everything else."""

    def __init__(self, inner):
        self.inner, self.texts, self.images = inner, [], []

    def encode_text(self, captions, *a, **k):
        self.texts.append(list(captions))
        return self.inner.encode_text(captions, *a, **k)

    def encode_image(self, images, *a, **k):
        self.images.append(images.clone())
        return self.inner.encode_image(images, *a, **k)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class FakeBuildContext:
    """What a system factory gets (bench.api.BuildContext), its dataset guarded by the factory's `reads`."""

    def __init__(self, dataset, components, reads):
        self.dataset = ReadsOnly(dataset, reads, "system 'x'")
        self.device, self.progress, self.cache_dir = "cpu", False, ""
        self.components, self.keys = components, []

    def component(self, name):
        return self.components[name]

    def key_of(self, name):
        return {"component": name}

    def cached(self, kind, key, train, save, load):
        self.keys.append((kind, key))
        return train()


@pytest.mark.parametrize("factory, condition", [(build_clipgen, "image"), (build_clipgen_text, "text")])
def test_clipgen_trains_on_image_embeddings_and_clipgen_text_on_caption_embeddings(shapes, monkeypatch, factory,
                                                                                   condition):
    import reference.train

    clip = RecordingClip(init_clip("tiny-eval"))  # 96-d: the preset's GPT takes the CLIP's width
    vqgan = VQGAN(TINY.vqgan).eval()
    seen = {}

    def fake_train_gpt(tokens, emb, cfg, **kwargs):
        seen.update(tokens=tokens, emb=emb, cfg=cfg, kwargs=kwargs)
        return GPT(with_overrides(cfg, n_layer=1, n_embd=32, n_head=2, ffn_dim=64)), {"steps": 0, "final_loss": 0.0}

    monkeypatch.setattr(reference.train, "train_gpt", fake_train_gpt)
    ctx = FakeBuildContext(shapes, {"clip": clip, "vqgan": vqgan}, factory.reads)
    args = ClipGenArgs(train=GPTTrainArgs(steps=3, seed=4))  # precision: auto
    system = factory(args, ctx)
    precision = "bf16" if native_bf16("cpu") else "fp32"

    if condition == "image":
        expected = clip.inner.encode_image(shapes.train_images())
        assert clip.texts == [], "the language-free GPT saw a caption"
        assert len(seen["emb"]) == len(shapes.train_images())
    else:
        _, captions, _ = shapes.pairs()
        expected = clip.inner.encode_text(captions)
        assert clip.texts == [list(captions)] and clip.images == []
    emb = seen["emb"].numpy()
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)  # unit norm, as CLIP's embeddings
    assert torch.allclose(seen["emb"], expected.float(), atol=1e-6)
    assert seen["cfg"].cond_dim == 96 and seen["kwargs"]["steps"] == 3 and seen["kwargs"]["seed"] == 4
    ((kind, key),) = ctx.keys
    assert kind == "clipgen-gpt" and key["condition"] == condition and key["cond_dim"] == 96
    assert key["clip"] == {"component": "clip"} and key["vqgan"] == {"component": "vqgan"}
    assert key["train"]["steps"] == 3 and key["train"]["seed"] == 4 and key["train"]["precision"] == precision
    assert seen["kwargs"]["bf16"] is (precision == "bf16")
    assert system.uses_captions is (condition == "text")
    assert system.training["condition"] == condition and system.training["precision"] == precision


@pytest.mark.parametrize("factory, uses_captions", [(build_clipgen, False), (build_clipgen_text, True)])
def test_a_loaded_gpt_is_used_as_it_is_and_says_so(models, shapes, tmp_path, factory, uses_captions):
    from reference.checkpoint import save_gpt

    clip, vqgan, gpt = models
    save_gpt(tmp_path / "gpt", gpt)
    ctx = FakeBuildContext(shapes, {"clip": clip, "vqgan": vqgan}, factory.reads)
    system = factory(ClipGenArgs(path=str(tmp_path / "gpt")), ctx)
    assert ctx.keys == [] and system.training == {"loaded_from": str(tmp_path / "gpt")}
    assert system.uses_captions is uses_captions
    assert torch.equal(system.gpt.head.weight, gpt.head.weight)


def test_clipgen_samples_from_the_text_embeddings_with_its_sampling_settings(models, monkeypatch):
    import reference.sample

    clip, vqgan, gpt = models
    real_generate, calls = reference.sample.generate, []

    def recording_generate(gpt_, vqgan_, cond, seeds, **kwargs):
        calls.append((cond.clone(), list(seeds), kwargs))
        return real_generate(gpt_, vqgan_, cond, seeds, **kwargs)

    monkeypatch.setattr(reference.sample, "generate", recording_generate)
    rerank = init_clip("tiny-eval")
    args = ClipGenArgs(top_k=7, top_p=0.9, temperature=0.7, candidates=2, rerank_clip="other", rerank_input="demo")
    system = ClipGen(gpt, vqgan, clip, args, rerank, False, {})
    images = system.generate(CAPTIONS[:2], [0, 1], [5, 6])
    (cond, seeds, kw), = calls
    text = clip.encode_text(CAPTIONS[:2]).numpy()
    assert np.allclose(cond.numpy(), text / np.linalg.norm(text, axis=1, keepdims=True), atol=1e-6)
    assert seeds == [5, 6]
    assert (kw["top_k"], kw["top_p"], kw["temperature"], kw["candidates"]) == (7, 0.9, 0.7, 2)
    assert kw["rerank_clip"] is rerank and kw["captions"] == CAPTIONS[:2] and kw["rerank_input"] == "demo"
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 32, 32)
    assert system.tokens_per_image == vqgan.grid ** 2 * 2
    assert system.provenance()["rerank_clip"] == "other"
    one = ClipGen(gpt, vqgan, clip, ClipGenArgs(candidates=1, rerank_clip="other"), rerank, False, {})
    one.generate(CAPTIONS[:2], [0, 1], [5, 6])
    assert calls[-1][2]["rerank_clip"] is None and one.provenance()["rerank_clip"] is None


# ---- random-caption ---------------------------------------------------------------------------------------------
class RecordingSystem:
    uses_captions, tokens_per_image = True, 17

    def __init__(self):
        self.calls = []

    def generate(self, captions, caption_ids, seeds):
        self.calls.append((list(captions), list(caption_ids), list(seeds)))
        return torch.zeros(len(captions), 3, 2, 2, dtype=torch.uint8)


def test_random_caption_hands_over_another_caption_with_its_own_id_from_the_rows_seed():
    items = [CaptionItem(i, f"caption {i % 5}", {}) for i in range(10)]  # each text twice: ids i and i+5
    text_of = {it.caption_id: it.caption for it in items}
    inner = RecordingSystem()
    system = RandomCaption(inner, items)
    assert system.uses_captions is True and system.tokens_per_image == 17
    ids, seeds = list(range(10)), [100 + i for i in range(10)]
    system.generate([text_of[i] for i in ids], ids, seeds)
    captions, given_ids, given_seeds = inner.calls[-1]
    assert given_seeds == seeds  # the row's own stream: only the caption is swapped
    for cid, cap, other_id in zip(ids, captions, given_ids):
        assert cap != text_of[cid]  # another text, not the same text under another id
        assert text_of[other_id] == cap  # the id belongs with the caption handed over
    picks = set()
    for seed in range(30):  # seeded by the row's seed: the same pick in any batch, other seeds other picks
        system.generate([text_of[3], text_of[0]], [3, 0], [seed, seed + 1000])
        pair = inner.calls[-1]
        system.generate([text_of[0]], [0], [seed + 1000])
        assert inner.calls[-1][0] == pair[0][1:] and inner.calls[-1][1] == pair[1][1:]
        picks.add(pair[0][0])
    assert len(picks) >= 3 and "caption 3" not in picks


def test_random_caption_rows_name_how_the_misled_system_was_made():
    class Made(RecordingSystem):
        def provenance(self):
            return {"training": {"steps": 12}, "candidates": 3}

    items = [CaptionItem(i, f"caption {i}", {}) for i in range(3)]
    assert RandomCaption(Made(), items).provenance() == {"training": {"steps": 12}, "candidates": 3}
    assert RandomCaption(RecordingSystem(), items).provenance() == {}


def test_random_caption_of_an_id_keyed_system_gives_another_captions_image(shapes):
    """real-images (like vqgan-recon and samples-folder) reads the caption id, not its text: misled, it must show
    another caption's real image, not the right one."""
    items = shapes.eval_captions()
    system = RandomCaption(RealImages(shapes), items)
    ids, seeds = [0, 1, 2, 3], [7, 8, 9, 10]
    images = system.generate([items[i].caption for i in ids], ids, seeds)
    for row, (cid, seed) in enumerate(zip(ids, seeds)):
        own = shapes.real_images([items[cid]], [seed])[0]
        assert not torch.equal(images[row], own)
        others = [it for it in items if it.caption != items[cid].caption]
        assert any(torch.equal(images[row], shapes.real_images([it], [seed])[0]) for it in others)


# ---- vqgan-recon, real-images, noise, retrieval -----------------------------------------------------------------
def test_real_images_and_vqgan_recon_are_the_rows_real_image_and_its_reconstruction(shapes, models):
    _, vqgan, _ = models
    items = {it.caption_id: it for it in shapes.eval_captions()}
    ids, seeds = [5, 2, 9], [3, 3, 11]
    real = RealImages(shapes).generate(["ignored"] * 3, ids, seeds)
    for row, (cid, seed) in enumerate(zip(ids, seeds)):
        assert torch.equal(real[row], shapes.real_images([items[cid]], [seed])[0])
    assert not torch.equal(RealImages(shapes).generate(["x"], [5], [4])[0], real[0])  # the seed matters
    recon = VQGANRecon(vqgan, shapes).generate(["ignored"] * 3, ids, seeds)
    expected = vqgan.decode_tokens(vqgan.encode(shapes.real_images([items[i] for i in ids], seeds)))
    assert torch.equal(recon, expected)


def test_noise_is_uniform_and_seeded_per_row():
    noise = Noise(32)
    a = noise.generate(["a", "b", "c"], [0, 1, 2], [11, 12, 13])
    assert a.dtype == torch.uint8 and a.shape == (3, 3, 32, 32)
    assert torch.equal(noise.generate(["z"], [9], [12])[0], a[1])  # the seed, not the caption or the row
    assert not torch.equal(a[0], a[1])
    values = a.flatten().numpy()
    assert values.min() == 0 and values.max() == 255 and abs(values.mean() - 127.5) < 3
    assert np.bincount(values, minlength=256).min() > 0


class TableClip:
    """A CLIP whose embeddings are read from tables (an image's index is written in its first two bytes), answered
    on its device as a real CLIP does."""

    def __init__(self, image_table, text_table, device):
        self.image_table, self.text_table, self.device = image_table, text_table, device
        self.image_calls = []

    def encode_image(self, images):
        self.image_calls.append(len(images))
        idx = images[:, 0, 0, 0].long() * 256 + images[:, 1, 0, 0].long()
        return torch.from_numpy(self.image_table[idx.numpy()]).to(self.device)

    def encode_text(self, captions):
        return torch.from_numpy(self.text_table[[int(c) for c in captions]]).to(self.device)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_retrieval_returns_the_train_image_of_highest_cosine_similarity(device):
    rng = np.random.default_rng(0)
    n, d = 1100, 8  # more than one 1024-image chunk
    pool = torch.from_numpy(rng.integers(0, 256, (n, 3, 4, 4), dtype=np.uint8))
    pool[:, 0, 0, 0], pool[:, 1, 0, 0] = torch.arange(n) // 256, torch.arange(n) % 256
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    images = unit(rng.normal(size=(n, d)))
    texts = unit(np.concatenate([images[[1050, 3, 1099]] + 0.05 * rng.normal(size=(3, d)),
                                 rng.normal(size=(5, d))]))
    clip = TableClip(images, texts, device)  # the pool stays on the CPU, where the dataset made it
    system = Retrieval(clip, pool)
    assert clip.image_calls == [1024, n - 1024]
    captions = [str(i) for i in range(8)]
    out = system.generate(captions, list(range(8)), [0] * 8)
    best = np.argmax(texts @ images.T, axis=1)  # cosine: both unit norm
    assert list(best[:3]) == [1050, 3, 1099]
    assert out.device.type == "cpu" and torch.equal(out, pool[torch.from_numpy(best)])
    assert torch.equal(system.generate(captions[2:4], [2, 3], [5, 6]), out[2:4])  # seeds and batch play no part
    assert system.uses_captions is False


# ---- samples-folder ---------------------------------------------------------------------------------------------
def _noise_image(path, w, h, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": None}[mode]
    shape = (h, w) if channels is None else (h, w, channels)
    arr = rng.integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(arr, mode).save(path, format=None if path.suffix.lower() in (".png", ".jpeg", ".webp", ".gif")
                                    else "PNG")
    return arr


@pytest.mark.parametrize("w, h", [(16, 41), (40, 16), (16, 16)])
def test_samples_folder_crops_the_centre_when_the_shorter_side_fits(tmp_path, w, h):
    arr = _noise_image(tmp_path / "0.png", w, h)
    top, left = (h - 16) // 2, (w - 16) // 2  # 12 / 12 / 0: the odd pixel goes to the bottom
    got = load_resized(tmp_path / "0.png", 16).permute(1, 2, 0).numpy()
    assert np.array_equal(got, arr[top:top + 16, left:left + 16])


@pytest.mark.parametrize("w, h, mode", [(64, 30, "RGB"), (27, 50, "RGBA"), (9, 12, "L")])
def test_samples_folder_resizes_the_shorter_side_bicubic_then_crops(tmp_path, w, h, mode):
    _noise_image(tmp_path / "0.png", w, h, mode, seed=w)
    r = 16
    with Image.open(tmp_path / "0.png") as im:
        rgb = im.convert("RGB")
    nw, nh = (round(w * r / h), r) if w > h else (r, round(h * r / w))
    big = np.asarray(rgb.resize((nw, nh), Image.BICUBIC))  # PIL's bicubic, antialiased when shrinking
    top, left = (nh - r) // 2, (nw - r) // 2
    got = load_resized(tmp_path / "0.png", r).permute(1, 2, 0).numpy()
    assert got.shape == (r, r, 3) and np.array_equal(got, big[top:top + r, left:left + r])
    if mode == "L":
        assert np.array_equal(got[..., 0], got[..., 2])


def test_samples_folder_names_only_digits_and_known_extensions(tmp_path):
    for name in ("1.PNG", "0002.jpeg", "3.webp", "12b.png", "x4.png", "5.gif", "6.png.bak", "-7.png"):
        _noise_image(tmp_path / name, 8, 8)
    (tmp_path / "8.png").mkdir()  # a folder is no image
    assert {k: p.name for k, p in scan_folder(tmp_path).items()} == {1: "1.PNG", 2: "0002.jpeg", 3: "3.webp"}


def test_a_mapping_replaces_the_names_and_its_paths_are_relative_to_the_folder(tmp_path):
    folder, elsewhere = tmp_path / "samples", tmp_path / "maps"
    (folder / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    a = _noise_image(folder / "sub" / "a.png", 16, 16, seed=1)
    _noise_image(folder / "3.png", 16, 16, seed=2)
    mapping = elsewhere / "m.json"
    mapping.write_text(json.dumps({"007": "sub/a.png", "4": "gone.png"}))
    system = SamplesFolder(SamplesFolderArgs(path=str(folder), mapping=str(mapping)), 16)
    assert np.array_equal(system.generate(["x"], [7], [0])[0].permute(1, 2, 0).numpy(), a)
    with pytest.raises(UserError, match="no image for caption id 3"):  # not in the mapping: 3.png is not read
        system.generate(["x"], [3], [0])
    with pytest.raises(UserError, match=r"caption id 4 maps to .*gone\.png, which does not exist \(2 of the 3"):
        system.check_captions([7, 4, 3])
    system.check_captions([7])


@pytest.mark.parametrize("name, text", [("m.json", "[\"a.png\"]"), ("m.json", "{\"x\": \"a.png\"}"),
                                        ("m.json", "{not json"), ("m.csv", "caption_id,file\nseven,a.png\n")])
def test_a_malformed_mapping_is_one_user_error(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=f"cannot read mapping .*{name}"):
        SamplesFolder(SamplesFolderArgs(path=str(tmp_path), mapping=name), 16)


def test_an_unreadable_sample_is_a_user_error_naming_it(tmp_path):
    (tmp_path / "0.png").write_bytes(b"not a png")
    system = SamplesFolder(SamplesFolderArgs(path=str(tmp_path)), 16)
    with pytest.raises(UserError, match=r"cannot read image .*0\.png"):
        system.generate(["x"], [0], [0])


# ---- vqgan-clip -------------------------------------------------------------------------------------------------
def test_vqgan_clip_starts_from_codes_drawn_from_the_rows_seed(parts):
    vqgan, clip = parts
    g, k = vqgan.grid, vqgan.cfg.codebook_size
    expected = torch.stack([torch.randint(k, (g * g,), generator=torch.Generator().manual_seed(
        mix_seed(s, "vqgan-clip"))).reshape(g, g) for s in (3, 4)])
    tokens, _ = optimise_latents(vqgan, clip, clip.encode_text(CAPTIONS[:2]), [3, 4], steps=0)
    assert torch.equal(tokens, expected)
    images = VQGANClip(vqgan, clip, VQGANClipArgs(steps=0)).generate(CAPTIONS[:2], [0, 1], [3, 4])
    assert torch.equal(images, torch.cat([vqgan.decode_tokens(expected[b:b + 1]) for b in range(2)]))


@pytest.mark.parametrize("batched", [False, True])
def test_vqgan_clip_takes_exactly_its_steps_and_keeps_the_latents_in_the_codebooks_range(parts, monkeypatch,
                                                                                        batched):
    import bench.systems.vqgan_clip as vc

    vqgan, clip = parts
    calls, finals = [], []

    class CountingClip(RecordingClip):
        def encode_image_float(self, x):
            calls.append(x.shape[0])
            return self.inner.encode_image_float(x)

    real_nearest = vc.nearest_tokens
    monkeypatch.setattr(vc, "nearest_tokens", lambda v, z: finals.append(z.detach().clone()) or real_nearest(v, z))
    rec = CountingClip(clip)
    system = VQGANClip(vqgan, rec, VQGANClipArgs(steps=3, lr=5.0, cutouts=2, batched=batched))
    system.generate(CAPTIONS, [0, 1, 2], [0, 1, 2])
    assert calls == ([6] * 3 if batched else [2] * 9)  # one CLIP pass per step (and per row unless batched)
    # captions are encoded one per call unless batched (a batch of texts rounds differently)
    assert rec.texts == ([CAPTIONS] if batched else [[c] for c in CAPTIONS])
    codes = vqgan.quantizer.codes().detach().numpy()
    z = finals[-1].numpy()  # [B,D,h,w] after the last step
    lo, hi = codes.min(0)[None, :, None, None], codes.max(0)[None, :, None, None]
    assert (z >= lo - 1e-6).all() and (z <= hi + 1e-6).all()  # lr 5 throws them far outside unclamped


def test_vqgan_clip_takes_adam_steps_of_its_learning_rate_from_the_initial_codes(parts, monkeypatch):
    """Adam's first step moves every latent with a gradient by lr (m/sqrt(v) = sign of the gradient)."""
    import bench.systems.vqgan_clip as vc

    vqgan, clip = parts
    finals = []
    real_nearest = vc.nearest_tokens
    monkeypatch.setattr(vc, "nearest_tokens", lambda v, z: finals.append(z.detach().clone()) or real_nearest(v, z))
    g, k = vqgan.grid, vqgan.cfg.codebook_size
    tokens = torch.randint(k, (g * g,), generator=torch.Generator().manual_seed(mix_seed(8, "vqgan-clip")))
    z0 = vqgan.quantizer.codes().detach().numpy()[tokens.numpy()].reshape(g, g, -1).transpose(2, 0, 1)  # [D,h,w]
    optimise_latents(vqgan, clip, clip.encode_text(CAPTIONS[:1]), [8], steps=1, lr=1e-3, n_cutouts=2)
    moved = np.abs(finals[-1][0].numpy() - z0)
    assert moved.max() <= 1e-3 + 1e-6 and moved.max() > 0.99e-3


def test_vqgan_clip_encodes_each_caption_alone_unless_batched(parts):
    _, clip = parts
    system = VQGANClip(None, clip, VQGANClipArgs())
    alone = torch.cat([clip.encode_text([c]) for c in CAPTIONS])
    assert torch.equal(system.text_embeddings(CAPTIONS), alone)


# ---- batch composition ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["noise", "real-images", "vqgan-recon", "random-caption", "retrieval",
                                  "samples-folder", "clipgen", "vqgan-clip"])
def test_a_rows_sample_depends_only_on_its_seed_and_caption_not_on_the_batch(name, shapes, models, parts,
                                                                            tmp_path):
    """Rows 2 and 0 of a batch of four, asked for again as a batch of two in the other order (the runner never
    asks for a batch of one: convolutions round it differently), come out bit for bit the same."""
    clip, vqgan, gpt = models
    if name == "noise":
        system = Noise(32)
    elif name == "real-images":
        system = RealImages(shapes)
    elif name == "vqgan-recon":
        system = VQGANRecon(vqgan, shapes)
    elif name == "random-caption":
        system = RandomCaption(RealImages(shapes), shapes.eval_captions())
    elif name == "retrieval":
        system = Retrieval(clip, shapes.train_images())
    elif name == "samples-folder":
        for i in range(4):
            _noise_image(tmp_path / f"{i}.png", 20 + i, 30, seed=i)
        system = SamplesFolder(SamplesFolderArgs(path=str(tmp_path)), 32)
    elif name == "clipgen":
        system = ClipGen(gpt, vqgan, clip, ClipGenArgs(top_k=None), clip, False, {})
    else:
        system = VQGANClip(parts[0], parts[1], VQGANClipArgs(steps=2, cutouts=2))
    items = shapes.eval_captions()[:4]
    caps, ids, seeds = [it.caption for it in items], [it.caption_id for it in items], [21, 22, 23, 24]
    four = system.generate(caps, ids, seeds)
    two = system.generate([caps[2], caps[0]], [ids[2], ids[0]], [seeds[2], seeds[0]])
    assert four.dtype == torch.uint8 and four.shape == (4, 3, 32, 32)
    assert torch.equal(two[0], four[2]) and torch.equal(two[1], four[0])
