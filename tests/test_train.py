"""Training: never reads captions, checkpoints round-trip, exact resume, LAFITE noise, schedule, text baseline."""
import pytest
import torch
import torch.nn.functional as F

from reference.checkpoint import load_checkpoint, load_gpt, load_vqgan, read_config, save_gpt, save_vqgan
from reference.configs import get_preset, with_overrides
from reference.gpt import GPT
from reference.train import (lr_at, native_bf16, perturb_embeddings, precompute, train_clipgen, train_gpt,
                             train_vqgan)
from reference.vqgan import VQGAN

TINY = get_preset("tiny")
VQ16 = with_overrides(TINY.vqgan, resolution=16)  # 4x4 tokens
GPT16 = with_overrides(TINY.gpt, n_layer=2, n_embd=32, n_head=4, ffn_dim=64, cond_dim=8, grid=4, n_pos=16,
                       batch_size=8, warmup=3)


def images(n=32, res=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.full((n, 3, res, res), 20, dtype=torch.uint8)
    for i in range(n):
        y, x = (int(v) for v in torch.randint(0, res // 2, (2,), generator=g))
        img[i, :, y:y + res // 2, x:x + res // 2] = torch.randint(60, 255, (3, 1, 1), generator=g, dtype=torch.uint8)
    return img


class FakeClip:
    """ClipModel interface: a fixed random projection of the mean colour (image) or of a caption hash (text)."""

    embed_dim = 8
    image_size = 16

    def __init__(self):
        self.proj = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))

    def encode_image(self, imgs):
        assert imgs.dtype == torch.uint8
        return F.normalize(imgs.float().mean((2, 3)) @ self.proj + 1e-3, dim=-1)

    def encode_text(self, captions):
        g = [torch.Generator().manual_seed(len(c)) for c in captions]
        return F.normalize(torch.stack([torch.randn(8, generator=x) for x in g]), dim=-1)


class CaptionlessDataset:
    """train_images() works; every caption accessor raises."""

    def __init__(self, imgs):
        self._imgs = imgs

    def train_images(self):
        return self._imgs

    def pairs(self):
        raise AssertionError("language-free training read captions (pairs)")

    def eval_captions(self):
        raise AssertionError("language-free training read captions (eval_captions)")

    @property
    def captions(self):
        raise AssertionError("language-free training read captions")


def test_language_free_training_never_reads_captions():
    ds = CaptionlessDataset(images(24))
    vq, _ = train_vqgan(ds.train_images(), VQ16, steps=3, seed=0, progress=False, batch_size=8)
    gpt, stats = train_clipgen(ds, FakeClip(), vq, GPT16, steps=3, seed=0, progress=False)
    assert isinstance(gpt, GPT) and len(stats["history"]) == 3
    with pytest.raises(ValueError):
        train_clipgen(ds, FakeClip(), vq, GPT16, steps=1, captions=["a"] * 24, progress=False)


def test_text_conditioned_baseline_uses_caption_embeddings():
    imgs = images(16)
    caps = ["a red square" if i % 2 else "a blue circle" for i in range(16)]
    vq, _ = train_vqgan(imgs, VQ16, steps=2, seed=0, progress=False, batch_size=8)
    clip = FakeClip()
    tokens, emb = vq.encode(imgs), clip.encode_text(caps)
    a, _ = train_clipgen(imgs, clip, vq, GPT16, steps=4, seed=0, condition="text", captions=caps, progress=False)
    b, _ = train_gpt(tokens, emb, GPT16, steps=4, seed=0, progress=False)
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k
    with pytest.raises(ValueError):
        train_clipgen(imgs, clip, vq, GPT16, steps=1, condition="text", progress=False)


def test_gpt_learns_the_condition():
    """Two conditions, two constant token grids: the loss must fall far below the unconditional entropy."""
    n = 64
    cond = torch.zeros(n, 8)
    cond[::2, 0] = 1.0
    cond[1::2, 1] = 1.0
    tokens = torch.where(cond[:, :1] > 0, torch.full((n, 16), 3), torch.full((n, 16), 7))
    gpt, stats = train_gpt(tokens, cond, GPT16, steps=80, seed=0, progress=False, lr=3e-3)
    assert stats["history"][0] > 2.0 and stats["history"][-1] < 0.3
    first = gpt(cond[:2])[:, 0].argmax(-1)  # position 0 sees only the condition
    assert first.tolist() == [3, 7]


def test_bf16_training_on_the_cpu_tracks_fp32_and_is_deterministic():
    """bf16 autocast on a CPU (the fast path where `native_bf16`): the same data and seed as the fp32 run give a
    loss curve within bf16 rounding of it, and two bf16 runs are bit-identical."""
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(64, 8, generator=g)
    tokens = (emb[:, :4].argmax(1, keepdim=True) * 3 + torch.arange(16) % 3) % GPT16.vocab_size  # [64,16]
    kw = dict(steps=40, seed=1, progress=False, lr=3e-3)
    _, fp32 = train_gpt(tokens, emb, GPT16, bf16=False, **kw)
    model, bf16 = train_gpt(tokens, emb, GPT16, bf16=True, **kw)
    _, again = train_gpt(tokens, emb, GPT16, bf16=True, **kw)
    assert bf16["history"] == again["history"]
    assert bf16["history"] != fp32["history"], "bf16 autocast did not change any product"
    assert fp32["history"][-1] < 0.6 * fp32["history"][0]
    diffs = [abs(a - b) / b for a, b in zip(bf16["history"], fp32["history"])]
    assert max(diffs) < 0.02, max(diffs)
    assert all(p.dtype == torch.float32 for p in model.parameters()), "weights stay fp32 (autocast casts copies)"


def test_native_bf16_reads_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n")
    assert not native_bf16("cpu", info)
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")
    assert native_bf16("cpu", info)
    info.write_text("flags\t\t: fpu amx_bf16 amx_tile\n")
    assert native_bf16("cpu", info)
    assert not native_bf16("cpu", tmp_path / "missing")
    assert not native_bf16("meta", info)


def test_checkpoints_round_trip(tmp_path):
    torch.manual_seed(0)
    vq = VQGAN(VQ16).eval()
    gpt = GPT(GPT16).eval()
    save_vqgan(tmp_path / "vq", vq)
    save_gpt(tmp_path / "gpt", gpt, meta={"note": "x"})
    vq2, gpt2 = load_vqgan(tmp_path / "vq"), load_gpt(tmp_path / "gpt")
    assert vq2.cfg == vq.cfg and gpt2.cfg == gpt.cfg
    for a, b in [(vq, vq2), (gpt, gpt2)]:
        for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), k
    x = images(4)
    assert torch.equal(vq.encode(x), vq2.encode(x))
    kind, cfg, meta = read_config(tmp_path / "gpt")
    assert kind == "gpt" and cfg == GPT16 and meta == {"note": "x"}
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(FileNotFoundError):
        load_gpt(tmp_path / "missing")
    with pytest.raises(ValueError):
        load_gpt(tmp_path / "vq")


class _Planted:
    """A pickle that, unpickled, touches a file: what a hostile train_state.pt could do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoints_training_state_is_never_unpickled_for_inference(tmp_path):
    save_gpt(tmp_path / "gpt", GPT(GPT16), train_state={"step": 1})
    planted = tmp_path / "planted"
    torch.save({"step": 1, "payload": _Planted(planted)}, tmp_path / "gpt" / "train_state.pt")
    assert isinstance(load_gpt(tmp_path / "gpt"), GPT) and not planted.exists()
    _, state, _ = load_checkpoint(tmp_path / "gpt")
    assert state is None and not planted.exists()
    with pytest.raises(ValueError, match="restricted unpickler"):  # resuming reads it, with weights_only
        load_checkpoint(tmp_path / "gpt", train_state=True)
    assert not planted.exists()


def test_gpt_training_resumes_exactly(tmp_path):
    tokens = torch.randint(0, TINY.gpt.vocab_size, (40, 4, 4))
    emb = torch.randn(40, 8)
    kw = dict(cfg=GPT16, seed=3, noise=0.2, progress=False)
    straight, s1 = train_gpt(tokens, emb, steps=12, **kw)
    # interrupted after step 5 (periodic checkpoints every 5), then resumed to 12
    train_gpt(tokens, emb, steps=12, checkpoint_dir=tmp_path / "ck5", checkpoint_every=5, stop_after=5, **kw)
    assert load_checkpoint(tmp_path / "ck5", train_state=True)[1]["step"] == 5
    resumed, s2 = train_gpt(tokens, emb, steps=12, checkpoint_dir=tmp_path / "ck5", resume=True, **kw)
    for (k, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), k
    assert s1["history"] == s2["history"]
    _, state, _ = load_checkpoint(tmp_path / "ck5", train_state=True)
    assert state["step"] == 12 and "optimizer" in state


def test_vqgan_training_resumes_exactly(tmp_path):
    imgs = images(32)
    cfg = with_overrides(VQ16, restart_dead_every=2, restart_dead_until=100)
    straight, _ = train_vqgan(imgs, cfg, steps=6, seed=1, progress=False, batch_size=8)
    train_vqgan(imgs, cfg, steps=6, seed=1, progress=False, batch_size=8, checkpoint_dir=tmp_path / "v", stop_after=3)
    resumed, _ = train_vqgan(imgs, cfg, steps=6, seed=1, progress=False, batch_size=8,
                             checkpoint_dir=tmp_path / "v", resume=True)
    for (k, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), k


def test_the_clip_loss_aims_at_the_images_own_embedding_not_the_noisy_condition(monkeypatch):
    import reference.train

    targets = []

    def record(logits, vqgan, clip, target):
        targets.append(target.detach().clone())
        return logits.float().sum() * 0.0

    monkeypatch.setattr(reference.train, "clip_reconstruction_loss", record)
    tokens = torch.randint(0, GPT16.vocab_size, (16, 16))
    emb = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    train_gpt(tokens, emb, GPT16, steps=2, seed=0, noise=0.5, progress=False, vqgan=VQGAN(VQ16), clip=FakeClip(),
              clip_loss_weight=0.1)
    assert len(targets) == 2
    for target in targets:  # each row is one image's embedding exactly (the condition had noise 0.5 added)
        cosine = F.normalize(target, dim=-1) @ F.normalize(emb, dim=-1).T
        assert torch.allclose(cosine.max(-1).values, torch.ones(len(target)), atol=1e-6)


def test_lafite_perturbation():
    e = torch.randn(1000, 16) * 3
    assert torch.allclose(perturb_embeddings(e, 0.0), F.normalize(e, dim=-1))
    p = perturb_embeddings(e, 0.5, torch.Generator().manual_seed(0))
    assert torch.allclose(p.norm(dim=-1), torch.ones(1000), atol=1e-5)
    cos = (p * F.normalize(e, dim=-1)).sum(-1)
    # |e + 0.5 u| with u a random unit vector nearly orthogonal to e: cos ~ 1/sqrt(1.25) = 0.894
    assert abs(float(cos.mean()) - 0.894) < 0.02
    q = perturb_embeddings(e, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(p, q)


def test_lr_schedule():
    lrs = [lr_at(s, 1.0, 10, 100, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_precompute_cache(tmp_path):
    imgs = images(8)
    torch.manual_seed(0)
    vq = VQGAN(VQ16).eval()
    t1, e1 = precompute(imgs, FakeClip(), vq, tmp_path / "c.pt")
    t2, e2 = precompute(imgs, None, None, tmp_path / "c.pt")  # loaded: neither model is touched
    assert torch.equal(t1, t2) and torch.equal(e1, e2) and t1.shape == (8, 4, 4) and e1.shape == (8, 8)


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(ValueError):
        train_vqgan(images(4).float(), VQ16, steps=1, progress=False)
    with pytest.raises(ValueError):
        train_vqgan(images(4, res=32), VQ16, steps=1, progress=False)
    with pytest.raises(ValueError):
        train_gpt(torch.zeros(4, 5, dtype=torch.long), torch.randn(4, 8), GPT16, steps=1, progress=False)
    with pytest.raises(ValueError):
        train_gpt(torch.zeros(4, 16, dtype=torch.long), torch.randn(4, 7), GPT16, steps=1, progress=False)


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    """torchrun with 2 CPU (gloo) processes: same loss trajectory and weights as 1 process, same global batch."""
    import json
    import os
    import subprocess
    import sys

    tokens = torch.randint(0, TINY.gpt.vocab_size, (48, 4, 4))
    emb = torch.randn(48, 8)
    torch.save({"tokens": tokens, "embeddings": emb}, tmp_path / "data.pt")
    override = {"n_layer": 2, "n_embd": 32, "n_head": 4, "ffn_dim": 64, "cond_dim": 8, "grid": 4, "n_pos": 16,
                "warmup": 3}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "reference.distributed", "--data", str(tmp_path / "data.pt"), "--out", str(tmp_path / "ddp"),
           "--steps", "6", "--batch-size", "8", "--seed", "4", "--noise", "0.1", "--override", json.dumps(override)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ddp_history = json.loads((tmp_path / "ddp" / "history.json").read_text())
    single, stats = train_gpt(tokens, emb, GPT16, steps=6, batch_size=8, seed=4, noise=0.1, progress=False)
    assert len(ddp_history) == 6
    assert max(abs(a - b) for a, b in zip(ddp_history, stats["history"])) < 1e-4
    # the trained models agree in what they compute (Adam can magnify 1e-7 gradient differences on near-zero
    # gradients, so single weights are not compared bit for bit)
    ddp_model = load_gpt(tmp_path / "ddp")
    flat = tokens.reshape(48, -1)
    with torch.no_grad():
        assert abs(float(ddp_model.loss(emb, flat)) - float(single.loss(emb, flat))) < 1e-4
