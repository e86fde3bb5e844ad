"""Training semantics pinned against hand-written references (a mutation audit of vqgan.py, train.py, clip.py).

Each test recomputes what one training step must do from the definitions (straight-through VQ, hinge GAN, the
adaptive GAN weight, LAFITE noise, next-token cross-entropy, InfoNCE in both directions) on tiny tensors, and
compares it with what the loops actually hand the optimizer (gradients, learning rates, parameter groups). The
loops run at lr=0 where the gradients of later steps are checked, so every step sees the initial weights.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import reference.clip
import reference.train
from reference.clip import ClipModel, clip_loss, train_clip
from reference.configs import get_preset, with_overrides
from reference.gpt import GPT
from reference.train import (clip_reconstruction_loss, lr_at, perturb_embeddings, train_clipgen, train_gpt,
                             train_vqgan)
from reference.vqgan import VQGAN, VectorQuantizer, adaptive_gan_weight, hinge_d_loss, reconstruction_loss

try:  # tests/ as a package or as a plain folder on sys.path
    from tests.test_train import images  # a coloured square on a dark background per image, uint8 [n,3,res,res]
except ImportError:
    from test_train import images

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = get_preset("tiny")
VQ16 = with_overrides(TINY.vqgan, resolution=16)  # 4x4 tokens
GPT16 = with_overrides(TINY.gpt, n_layer=2, n_embd=32, n_head=4, ffn_dim=64, cond_dim=8, grid=4, n_pos=16,
                       batch_size=8, warmup=3)


def record_steps(monkeypatch, optimizer_cls):
    """Patch optimizer_cls.step to record, per call, every parameter's gradient (None kept) and its group's lr/wd."""
    calls = []
    real_step = optimizer_cls.step

    def step(self, *args, **kwargs):
        grads, groups = {}, {}
        for group in self.param_groups:
            for p in group["params"]:
                grads[id(p)] = None if p.grad is None else p.grad.detach().clone()
                groups[id(p)] = (group["lr"], group["weight_decay"])
        calls.append({"grads": grads, "groups": groups})
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(optimizer_cls, "step", step)
    return calls


def assert_grads(recorded: dict, params: list, expected: list, rtol: float = 1e-4, what: str = ""):
    assert set(recorded) == {id(p) for p in params}, f"{what}: the optimizer holds other parameters"
    for i, (p, want) in enumerate(zip(params, expected)):
        got = recorded[id(p)]
        if want is None or float(want.abs().max()) == 0:
            assert got is None or float(got.abs().max()) == 0, f"{what}: parameter {i} got a gradient"
            continue
        assert got is not None, f"{what}: parameter {i} got no gradient"
        err = float((got - want).norm())
        assert err <= rtol * float(want.norm()) + 1e-9, f"{what}: parameter {i} {tuple(p.shape)}: error {err}"


# ---------------------------------------------------------------------------------------------------------------
# the quantiser
# ---------------------------------------------------------------------------------------------------------------

def test_l2_codes_quantise_and_penalise_the_normalised_encoding():
    """Cosine codebook: z is l2-normalised before the lookup, the losses and the straight-through output."""
    cfg = with_overrides(VQ16, codebook="learned", l2_codes=True, embed_dim=4, codebook_size=8,
                         commitment_weight=0.3, codebook_weight=1.7)
    torch.manual_seed(0)
    q = VectorQuantizer(cfg).train()
    with torch.no_grad():
        q.embedding.weight.normal_()
    z = (3.0 * torch.randn(2, 4, 3, 3)).requires_grad_(True)
    z_q, idx, loss = q(z)
    zn = F.normalize(z.detach().permute(0, 2, 3, 1).reshape(-1, 4), dim=1)  # [18,4]
    codes = F.normalize(q.embedding.weight.detach(), dim=1)
    want_idx = (zn @ codes.T).argmax(1)  # cosine nearest
    assert torch.equal(idx.flatten(), want_idx)
    chosen = codes[want_idx]
    torch.testing.assert_close(z_q.detach().permute(0, 2, 3, 1).reshape(-1, 4), chosen)
    torch.testing.assert_close(loss.detach(), (0.3 + 1.7) * (zn - chosen).pow(2).mean())


def test_ema_update_is_an_exponential_moving_average_of_counts_and_sums():
    decay = 0.9
    cfg = with_overrides(VQ16, codebook="ema", ema_decay=decay, codebook_size=3, embed_dim=2)
    q = VectorQuantizer(cfg).train()
    codes0 = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    with torch.no_grad():
        q.embedding.weight.copy_(codes0)
        q.ema_sum.copy_(codes0)
    vecs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -0.5], [4.0, 4.0], [6.0, 5.0]])  # 4 -> 0, 2 -> 1
    q(vecs.T.reshape(1, 2, 1, 6))
    count = np.array([1.0, 1.0, 1.0]) * decay + (1 - decay) * np.array([4.0, 2.0, 0.0])
    sums = codes0.numpy() * decay + (1 - decay) * torch.stack([vecs[:4].sum(0), vecs[4:].sum(0), torch.zeros(2)]).numpy()
    np.testing.assert_allclose(q.ema_count.numpy(), count, rtol=1e-6)
    np.testing.assert_allclose(q.embedding.weight.detach().numpy(), sums / count[:, None], rtol=1e-4, atol=1e-5)
    assert torch.equal(q.usage, torch.tensor([4.0, 2.0, 0.0]))


def test_eval_mode_forward_changes_neither_the_codebook_nor_the_usage():
    cfg = with_overrides(VQ16, codebook="ema", ema_decay=0.5, codebook_size=4, embed_dim=2)
    q = VectorQuantizer(cfg).eval()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q(torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(0)))
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert q.usage.sum() == 0


def test_a_restarted_ema_code_stays_where_it_was_restarted():
    """Restarting an EMA code must restart its running sum and count too, or the next update pulls it back."""
    cfg = with_overrides(VQ16, codebook="ema", ema_decay=0.99, codebook_size=4, embed_dim=2)
    q = VectorQuantizer(cfg).train()
    with torch.no_grad():
        far = torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, 100.0], [100.0, -100.0]])
        q.embedding.weight.copy_(far)
        q.ema_sum.copy_(far)
    z = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))  # all nearest to code 0
    q(z)
    assert q.restart_dead(z.permute(0, 2, 3, 1).reshape(-1, 2), torch.Generator().manual_seed(0)) == 3
    restarted = q.embedding.weight[1:].clone()
    assert restarted.abs().max() < 10  # moved onto the encodings
    q(torch.zeros(1, 2, 2, 2))  # another EMA update that assigns nothing to the restarted codes
    torch.testing.assert_close(q.embedding.weight[1:], restarted, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# VQGAN losses
# ---------------------------------------------------------------------------------------------------------------

def test_hinge_discriminator_loss_by_hand():
    real = torch.tensor([2.0, 0.5, -1.0, 0.9])
    fake = torch.tensor([-2.0, 0.3, 1.5])
    want = 0.5 * (np.maximum(0, 1 - real.numpy()).mean() + np.maximum(0, 1 + fake.numpy()).mean())
    assert float(hinge_d_loss(real, fake)) == pytest.approx(want, rel=1e-6)


def test_adaptive_gan_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    w = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    a, b = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([0.3, 0.1, 0.2])
    nll = (w * a).sum() ** 2  # d/dw = 2 (w.a) a
    g_loss = (w * b).sum()  # d/dw = b
    want = (2 * float(w.detach() @ a) * a).norm() / (b.norm() + 1e-4)
    got = adaptive_gan_weight(nll, g_loss, w)
    assert float(got) == pytest.approx(float(want), rel=1e-5) and not got.requires_grad
    assert float(adaptive_gan_weight((w * a).sum() * 1e6, (w * b).sum() * 1e-6, w, max_weight=7.0)) == 7.0


def _square_scene():
    """x: a uniform border colour with a known foreground square; x_rec: x plus noise. Returns x, x_rec, mask."""
    g = torch.Generator().manual_seed(0)
    x = torch.full((2, 3, 8, 8), -0.6)
    mask = torch.zeros(2, 1, 8, 8)
    x[0, :, 2:5, 3:7] = torch.tensor([0.8, 0.1, -0.2])[:, None, None]
    mask[0, :, 2:5, 3:7] = 1
    x[1, :, 4:7, 1:3] = torch.tensor([0.5, 0.9, 0.3])[:, None, None]
    mask[1, :, 4:7, 1:3] = 1
    return x, x + 0.3 * torch.randn(x.shape, generator=g), mask


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_reconstruction_loss_is_a_foreground_weighted_mean_over_pixels_and_channels(kind):
    x, x_rec, mask = _square_scene()
    d = (x_rec - x).abs() if kind == "l1" else (x_rec - x) ** 2
    weight = (1 + 4.0 * mask).expand_as(d)  # each channel of a pixel weighs as the pixel
    want = float((d * weight).sum() / weight.sum())
    got = reconstruction_loss(x, x_rec, with_overrides(VQ16, recon_loss=kind, foreground_weight=4.0))
    assert float(got) == pytest.approx(want, rel=1e-5)
    plain = reconstruction_loss(x, x_rec, with_overrides(VQ16, recon_loss=kind, foreground_weight=0.0))
    assert float(plain) == pytest.approx(float(d.mean()), rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# the VQGAN training step
# ---------------------------------------------------------------------------------------------------------------

class _SquaredPerceptual(nn.Module):
    """Stand-in for PerceptualLoss(kind, path): mean squared difference."""

    def __init__(self, kind, path=None):
        super().__init__()

    def forward(self, x, y):
        return (x - y).pow(2).mean()


def test_vqgan_step_gradients_match_a_hand_written_loss(monkeypatch):
    """Two steps at lr=0 over the full batch: the generator's gradients are those of
    |x_rec - x|_1 + 0.5 perceptual + 0.3 |z - sg(z_q)|^2 + 0.7 |sg(z) - z_q|^2 - 0.6 lambda D(x_rec), with
    lambda = |grad_last nll| / |grad_last g|; the discriminator's are those of the hinge loss on sg(x_rec)."""
    monkeypatch.setattr(reference.train, "PerceptualLoss", _SquaredPerceptual)
    adam = record_steps(monkeypatch, torch.optim.Adam)
    cfg = with_overrides(VQ16, codebook="learned", commitment_weight=0.3, codebook_weight=0.7, recon_loss="l1",
                         foreground_weight=0.0, perceptual="effnet-lite0", perceptual_weight=0.5, gan_weight=0.6,
                         gan_start=0, disc_layers=2, restart_dead_every=0, lr_schedule="constant")
    imgs = images(4)
    model, stats = train_vqgan(imgs, cfg, steps=2, seed=0, progress=False, batch_size=4, lr=0.0)
    assert not model.training and stats["gan_start_step"] == 0
    assert len(adam) == 4  # generator, discriminator, generator, discriminator

    model.train()
    gen = [p for n, p in model.named_parameters() if not n.startswith("discriminator.") and p.requires_grad]
    disc = list(model.discriminator.parameters())
    x = imgs.float() / 127.5 - 1
    z = model.encoder(x)
    b, d, h, w = z.shape
    zf = z.permute(0, 2, 3, 1).reshape(-1, d)
    codes = model.quantizer.embedding.weight
    zq = codes[torch.cdist(zf.detach(), codes.detach()).argmin(1)]
    qloss = 0.3 * (zf - zq.detach()).pow(2).mean() + 0.7 * (zf.detach() - zq).pow(2).mean()
    x_rec = model.decoder((zf + (zq - zf).detach()).reshape(b, h, w, d).permute(0, 3, 1, 2))
    nll = (x_rec - x).abs().mean() + 0.5 * (x_rec - x).pow(2).mean()
    g_loss = -model.discriminator(x_rec).mean()
    last = model.decoder.final[-1].weight  # the conv that outputs the image
    g_nll = torch.autograd.grad(nll, last, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
    lam = (g_nll.norm() / (g_gan.norm() + 1e-4)).detach()
    want_gen = torch.autograd.grad(nll + qloss + 0.6 * lam * g_loss, gen, allow_unused=True)
    real, fake = model.discriminator(x), model.discriminator(x_rec.detach())
    d_loss = 0.5 * ((1 - real).clamp(min=0).mean() + (1 + fake).clamp(min=0).mean())
    want_disc = torch.autograd.grad(d_loss, disc)
    for step in range(2):  # the second step starts from zeroed gradients, not the first step's
        assert_grads(adam[2 * step]["grads"], gen, want_gen, what=f"generator step {step}")
        assert_grads(adam[2 * step + 1]["grads"], disc, want_disc, what=f"discriminator step {step}")


def _resumed_equals_straight(cfg, tmp_path):
    """Train 4 steps straight, and 2 + 2 with a checkpoint between: the same weights, exactly. Returns the first."""
    imgs = images(8)
    kw = dict(steps=4, seed=2, progress=False, batch_size=4, lr=1e-3)
    straight, _ = train_vqgan(imgs, cfg, **kw)
    train_vqgan(imgs, cfg, checkpoint_dir=tmp_path / "v", stop_after=2, **kw)
    resumed, _ = train_vqgan(imgs, cfg, checkpoint_dir=tmp_path / "v", resume=True, **kw)
    for (k, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), k
    return straight


def test_vqgan_resume_with_the_gan_is_exact(tmp_path):
    """Resuming restores the discriminator's optimizer too (its Adam moments shape every later D step)."""
    _resumed_equals_straight(with_overrides(VQ16, gan_weight=0.5, gan_start=0, disc_layers=2, restart_dead_every=0),
                             tmp_path)


def test_vqgan_resume_with_dropout_is_exact(tmp_path):
    """Dropout masks come from a generator seeded by (seed, step), as the GPT's do, so a resumed run draws the masks
    the uninterrupted run drew."""
    cfg = with_overrides(VQ16, dropout=0.3, restart_dead_every=0)
    straight = _resumed_equals_straight(cfg, tmp_path)
    without, _ = train_vqgan(images(8), with_overrides(cfg, dropout=0.0), steps=4, seed=2, progress=False,
                             batch_size=4, lr=1e-3)
    assert not torch.equal(without.decoder.final[-1].weight, straight.decoder.final[-1].weight)  # dropout acts


def test_vqgan_cosine_schedule_drives_the_discriminator_too(monkeypatch):
    """With the GAN on and a cosine schedule, each step's generator and discriminator updates share one lr."""
    adam = record_steps(monkeypatch, torch.optim.Adam)
    cfg = with_overrides(VQ16, gan_weight=0.5, gan_start=0, disc_layers=2, restart_dead_every=0, lr_schedule="cosine")
    steps = 20  # warm-up: 2 steps
    train_vqgan(images(8), cfg, steps=steps, seed=0, progress=False, batch_size=4, lr=1e-3)
    lrs = [{lr for lr, _ in call["groups"].values()} for call in adam]
    assert len(lrs) == 2 * steps and all(len(s) == 1 for s in lrs)
    want = [lr_at(step, 1e-3, 2, steps) for step in range(steps)]
    assert [s.pop() for s in lrs] == pytest.approx([w for w in want for _ in range(2)])


def test_lr_schedule_anchors():
    """Linear warm-up reaching lr on its last step, cosine from lr down to min_ratio * lr at `total`."""
    lr, warmup, total, r = 2.0, 4, 24, 0.25
    assert lr_at(0, lr, warmup, total, r) == pytest.approx(lr / warmup)
    assert lr_at(warmup - 1, lr, warmup, total, r) == pytest.approx(lr)
    assert lr_at(warmup, lr, warmup, total, r) == pytest.approx(lr)  # the cosine starts at its peak
    assert lr_at(warmup + (total - warmup) // 2, lr, warmup, total, r) == pytest.approx(lr * (1 + r) / 2)
    assert lr_at(total, lr, warmup, total, r) == pytest.approx(lr * r)
    assert lr_at(total + 7, lr, warmup, total, r) == pytest.approx(lr * r)


# ---------------------------------------------------------------------------------------------------------------
# the GPT training step
# ---------------------------------------------------------------------------------------------------------------

class _Stub:
    """Stands in for the VQGAN / CLIP that train_gpt only passes to the (patched) CLIP loss."""

    def eval(self):
        return self

    def requires_grad_(self, flag):
        return self


def _record_forward(monkeypatch):
    seen = []
    real = GPT.forward

    def forward(self, cond, tokens=None, cache=None):
        seen.append({"training": self.training, "cond": cond.detach().clone()})
        return real(self, cond, tokens, cache)

    monkeypatch.setattr(GPT, "forward", forward)
    return seen


def test_gpt_step_gradients_are_next_token_cross_entropy_plus_the_weighted_clip_loss(monkeypatch):
    """Two full-batch steps at lr=0: each hands AdamW the gradient of the mean cross-entropy of every image token
    i given the condition and tokens < i (evaluated prefix by prefix), plus clip_loss_weight x the CLIP loss."""
    adamw = record_steps(monkeypatch, torch.optim.AdamW)
    seen = _record_forward(monkeypatch)
    monkeypatch.setattr(reference.train, "clip_reconstruction_loss",
                        lambda logits, vqgan, clip, target: logits.float().pow(2).mean())
    cfg = with_overrides(GPT16, dropout=0.0, grad_clip=1e6, weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    n = 6
    tokens = torch.randint(0, cfg.vocab_size, (n, cfg.n_pos), generator=g)
    emb = 2.0 * torch.randn(n, cfg.cond_dim, generator=g)
    model, _ = train_gpt(tokens, emb, cfg, steps=2, seed=0, noise=0.0, batch_size=n, lr=0.0, progress=False,
                         vqgan=_Stub(), clip=_Stub(), clip_loss_weight=0.3)
    assert [s["training"] for s in seen] == [True, True] and not model.training
    params = list(model.parameters())
    cond = F.normalize(emb, dim=-1)
    model.train()
    with torch.no_grad():  # rows of the batch may come in any order: compare conditions as sets
        got = seen[0]["cond"]
        assert torch.allclose(got[(got @ cond.T).argmax(0)], cond, atol=1e-6)
    ce = sum(F.cross_entropy(model(cond, tokens[:, :i])[:, i], tokens[:, i]) for i in range(cfg.n_pos)) / cfg.n_pos
    extra = model(cond, tokens[:, :-1]).pow(2).mean()
    want = torch.autograd.grad(ce + 0.3 * extra, params)
    for step in range(2):
        assert_grads(adamw[step]["grads"], params, want, what=f"step {step}")

    # weight decay on the matrices of the linear layers and attention projections only
    names = {id(p): name for name, p in model.named_parameters()}
    matrices = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    matrices |= {id(m.in_proj_weight) for m in model.modules() if hasattr(m, "in_proj_weight")}  # fused q,k,v
    for pid, (_, wd) in adamw[0]["groups"].items():
        assert wd == (0.05 if pid in matrices else 0.0), names[pid]


def test_gpt_gradients_are_clipped_to_the_configured_norm(monkeypatch):
    adamw = record_steps(monkeypatch, torch.optim.AdamW)
    cfg = with_overrides(GPT16, dropout=0.0, grad_clip=1e-3)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.vocab_size, (4, cfg.n_pos), generator=g)
    emb = torch.randn(4, cfg.cond_dim, generator=g)
    model, _ = train_gpt(tokens, emb, cfg, steps=1, seed=0, noise=0.0, batch_size=4, lr=0.0, progress=False)
    params = list(model.parameters())
    model.train()
    want = torch.autograd.grad(model.loss(emb, tokens), params)
    norm = torch.cat([w.flatten() for w in want]).norm()
    assert norm > 1e-2  # far above the clip
    assert_grads(adamw[0]["grads"], params, [w * (1e-3 / norm) for w in want], rtol=1e-3)


def test_gpt_learning_rate_follows_warm_up_and_cosine_to_min_lr_ratio(monkeypatch):
    adamw = record_steps(monkeypatch, torch.optim.AdamW)
    cfg = with_overrides(GPT16, warmup=2, min_lr_ratio=0.3, dropout=0.0)
    tokens = torch.randint(0, cfg.vocab_size, (4, cfg.n_pos), generator=torch.Generator().manual_seed(0))
    train_gpt(tokens, torch.randn(4, 8), cfg, steps=6, seed=0, batch_size=4, lr=1e-3, progress=False)
    lrs = [next(iter(c["groups"].values()))[0] for c in adamw]
    # warm-up 1/2, 2/2 of the peak; the cosine starts at the peak and is half-way (4 of 6) at (1 + 0.3) / 2
    assert lrs[:3] == pytest.approx([0.5e-3, 1e-3, 1e-3]) and lrs[4] == pytest.approx(1e-3 * 1.3 / 2)
    assert all(len({lr for lr, _ in c["groups"].values()}) == 1 for c in adamw)


def test_condition_noise_is_lafite_shaped():
    """noise=s: the perturbed embedding is unit norm and lies within asin(s) of the normalised embedding
    (e + s u with |u| = 1, renormalised), never exactly on it."""
    e = 3 * torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    p = perturb_embeddings(e, 0.5, torch.Generator().manual_seed(1))
    torch.testing.assert_close(p.norm(dim=-1), torch.ones(500))
    cos = (p * F.normalize(e, dim=-1)).sum(-1)
    assert cos.min() >= math.sqrt(1 - 0.5 ** 2) - 1e-5 and cos.max() < 1 - 1e-4


def test_train_gpt_draws_fresh_condition_noise_and_dropout_every_step(monkeypatch):
    """One training example, lr=0: every step feeds a new noisy condition near its embedding, and with dropout
    every step's gradient differs (fresh masks); without noise the condition is the normalised embedding."""
    seen = _record_forward(monkeypatch)
    adamw = record_steps(monkeypatch, torch.optim.AdamW)
    tokens = torch.randint(0, GPT16.vocab_size, (1, GPT16.n_pos), generator=torch.Generator().manual_seed(0))
    emb = 2 * torch.randn(1, 8, generator=torch.Generator().manual_seed(1))
    own = F.normalize(emb, dim=-1)
    train_gpt(tokens, emb, GPT16, steps=3, seed=0, noise=0.5, batch_size=1, lr=0.0, dropout=0.0, progress=False)
    conds = torch.cat([s["cond"] for s in seen])  # [3,8]
    cos = (F.normalize(conds, dim=-1) * own).sum(-1)
    assert (cos >= math.sqrt(0.75) - 1e-5).all() and (cos < 1 - 1e-4).all(), cos
    assert all(not torch.allclose(conds[i], conds[j]) for i, j in [(0, 1), (0, 2), (1, 2)])
    seen.clear()
    adamw.clear()
    train_gpt(tokens, emb, GPT16, steps=2, seed=0, noise=0.0, batch_size=1, lr=0.0, dropout=0.5, progress=False)
    assert all(torch.allclose(s["cond"], own, atol=1e-6) for s in seen)
    g0, g1 = (torch.cat([v.flatten() for v in c["grads"].values() if v is not None]) for c in adamw)
    assert not torch.allclose(g0, g1)


def test_language_free_clipgen_trains_the_gpt_on_image_embeddings_with_the_given_noise():
    class ImageClip:
        def __init__(self):
            self.proj = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))

        def encode_image(self, imgs):
            return F.normalize(imgs.float().mean((2, 3)) @ self.proj + 1e-3, dim=-1)

    imgs = images(12)
    torch.manual_seed(0)
    vq = VQGAN(VQ16).eval()
    clip = ImageClip()
    kw = dict(steps=3, seed=1, noise=0.4, batch_size=4, progress=False)
    a, _ = train_clipgen(imgs, clip, vq, GPT16, **kw)
    b, _ = train_gpt(vq.encode(imgs), clip.encode_image(imgs), GPT16, **kw)
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k


# ---------------------------------------------------------------------------------------------------------------
# the paper's CLIP-reconstruction loss
# ---------------------------------------------------------------------------------------------------------------

class _PixelClip:
    """encode_image_float on [0,1] images: a fixed random linear map of every pixel, normalised."""

    def __init__(self, res=16, dim=8):
        self.w = torch.randn(3 * res * res, dim, generator=torch.Generator().manual_seed(3))

    def encode_image_float(self, x01):
        return F.normalize(x01.flatten(1) @ self.w, dim=-1)


def test_clip_reconstruction_loss_value_and_straight_through_gradient():
    torch.manual_seed(0)
    vq = VQGAN(VQ16).eval().requires_grad_(False)
    with torch.no_grad():
        vq.quantizer.embedding.weight.normal_()
    clip = _PixelClip()
    logits = torch.randn(2, 16, VQ16.codebook_size, generator=torch.Generator().manual_seed(1), requires_grad=True)
    target = 3.0 * torch.randn(2, 8, generator=torch.Generator().manual_seed(2))  # not unit norm
    loss = clip_reconstruction_loss(logits, vq, clip, target)

    tokens = logits.detach().argmax(-1)
    emb = clip.encode_image_float(((vq.decode_codes(tokens) + 1) / 2).clamp(0, 1))  # the argmax image, in [0,1]
    want = 1 - (emb * F.normalize(target, dim=-1)).sum(-1)
    assert float(loss.detach()) == pytest.approx(float(want.mean()), rel=1e-5)

    # straight-through: the gradient of the one-hot path, carried back through the softmax
    onehot = F.one_hot(tokens, VQ16.codebook_size).float().requires_grad_(True)
    z_q = torch.einsum("bnv,vd->bnd", onehot, vq.quantizer.codes()).reshape(2, 4, 4, -1).permute(0, 3, 1, 2)
    emb = clip.encode_image_float(((vq.decoder(z_q) + 1) / 2).clamp(0, 1))
    (1 - (emb * F.normalize(target, dim=-1)).sum(-1)).mean().backward()
    probs = logits.softmax(-1)
    want_grad = torch.autograd.grad(probs, logits, onehot.grad)[0]
    got_grad = torch.autograd.grad(loss, logits)[0]
    assert float(want_grad.norm()) > 0
    assert float((got_grad - want_grad).norm()) < 1e-4 * float(want_grad.norm())


# ---------------------------------------------------------------------------------------------------------------
# the tiny CLIP
# ---------------------------------------------------------------------------------------------------------------

def _info_nce(img: np.ndarray, txt: np.ndarray, scale: float) -> float:
    """Mean of the image->text and text->image cross-entropies, pair i the positive of row i and column i."""
    logits = scale * img @ txt.T
    m = logits.max()
    lse_rows = m + np.log(np.exp(logits - m).sum(1))
    lse_cols = m + np.log(np.exp(logits - m).sum(0))
    diag = np.diag(logits)
    return 0.5 * (float((lse_rows - diag).mean()) + float((lse_cols - diag).mean()))


def test_clip_loss_is_symmetric_info_nce_with_a_multiplied_scale():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(5, 6, generator=g), dim=-1)
    txt = F.normalize(torch.randn(5, 6, generator=g), dim=-1)
    got = clip_loss(img, txt, torch.tensor(7.0))
    assert float(got) == pytest.approx(_info_nce(img.double().numpy(), txt.double().numpy(), 7.0), rel=1e-5)


CLIP_CAPTIONS = [f"a {c} square number {i}" for i, c in enumerate(["red", "green", "blue", "yellow"] * 2)]
CLIP_LR = 2e-3


@pytest.fixture(scope="module")
def clip_run():
    """train_clip for 11 steps of 4 of 8 pairs (warm-up: 1 step), its temperature started at 150 (above the clamp),
    recording the images each step preprocessed and what each AdamW step was handed."""
    imgs = images(8, res=32, seed=5)
    seen = []
    real_preprocess, real_init = ClipModel.preprocess, reference.clip.init_clip

    def preprocess(self, x01, normalise=True):
        seen.append(x01.detach().clone())
        return real_preprocess(self, x01, normalise)

    def init_hot(preset="tiny"):
        clip = real_init(preset)
        with torch.no_grad():
            clip.model.logit_scale.fill_(math.log(150.0))
        return clip

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ClipModel, "preprocess", preprocess)
        mp.setattr(reference.clip, "init_clip", init_hot)
        adamw = record_steps(mp, torch.optim.AdamW)
        clip = train_clip(imgs, CLIP_CAPTIONS, steps=11, batch_size=4, lr=CLIP_LR, seed=0, progress=False)
    flat = (imgs.float() / 255).flatten(1)
    batches = [[int((flat == row).all(1).nonzero()) for row in x.flatten(1)] for x in seen]  # image ids per step
    return {"images": imgs, "clip": clip, "batches": batches, "adamw": adamw, "init": init_hot}


def test_train_clip_reshuffles_every_epoch(clip_run):
    batches = clip_run["batches"]
    assert len(batches) == 11 and all(len(b) == 4 for b in batches)
    epochs = [batches[0] + batches[1], batches[2] + batches[3], batches[4] + batches[5]]
    assert all(sorted(e) == list(range(8)) for e in epochs)  # each epoch sees every pair once
    assert len({tuple(sorted(e[:4])) for e in epochs}) > 1, "the same batches every epoch"


def test_train_clip_first_loss_is_info_nce_of_normalised_train_mode_embeddings(clip_run):
    torch.manual_seed(0)  # as train_clip seeds its initial weights
    ref = clip_run["init"]("tiny")
    model = ref.model.train()  # BatchNorm on batch statistics, as in training
    first = clip_run["batches"][0]
    with torch.no_grad():
        x = ClipModel.preprocess(ref, clip_run["images"][first].float() / 255)
        img = F.normalize(model.encode_image(x), dim=-1).double().numpy()
        txt = F.normalize(model.encode_text(ref.tokenize([CLIP_CAPTIONS[i] for i in first])), dim=-1).double().numpy()
    assert clip_run["clip"].meta["losses"][0] == pytest.approx(_info_nce(img, txt, 150.0), rel=1e-4)


def test_train_clip_temperature_is_learned_and_clamped_at_100(clip_run):
    clip = clip_run["clip"]
    grads = [c["grads"][id(clip.model.logit_scale)] for c in clip_run["adamw"]]
    assert all(g is not None and float(g.abs()) > 0 for g in grads)
    assert clip.logit_scale <= 100.0 * (1 + 1e-6)  # started at 150


def test_train_clip_learning_rate_warms_up_to_the_peak_then_cosine_to_zero(clip_run):
    lrs = [next(iter(c["groups"].values()))[0] for c in clip_run["adamw"]]
    assert all(len({lr for lr, _ in c["groups"].values()}) == 1 for c in clip_run["adamw"])
    assert lrs[0] == pytest.approx(CLIP_LR)  # the one warm-up step reaches the peak
    assert lrs[1] == pytest.approx(CLIP_LR)  # the cosine starts there ...
    assert lrs[6] == pytest.approx(CLIP_LR / 2)  # ... is half-way after 5 of its 10 steps ...
    assert lrs[10] == pytest.approx(CLIP_LR * 0.5 * (1 + math.cos(math.pi * 0.9)))  # ... on its way to 0


def test_train_clip_decays_weight_matrices_only(clip_run):
    from reference.clip import PRESETS

    model = clip_run["clip"].model
    names = {id(p): n for n, p in model.named_parameters()}
    matrices = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    groups = clip_run["adamw"][0]["groups"]
    assert set(groups) == set(names)
    for pid, (_, decay) in groups.items():
        name = names[pid]
        if pid in matrices:
            assert decay == PRESETS["tiny"].weight_decay, name
        if name == "logit_scale" or "embedding" in name or model.get_parameter(name).ndim < 2:
            assert decay == 0.0, name
