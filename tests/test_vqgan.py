"""VQGAN: checkpoint layout of the paper preset, quantiser = plain argmin, straight-through, EMA, dead codes, losses."""
import pytest
import torch
import torch.nn.functional as F

from reference.configs import get_preset, with_overrides
from reference.vqgan import (VQGAN, PerceptualLoss, VectorQuantizer, codebook_stats, foreground_mask,
                             reconstruction_loss, to_float, to_uint8)

TINY = get_preset("tiny").vqgan


def shapes_like(n: int, res: int = 32, seed: int = 0) -> torch.Tensor:
    """Coloured squares on a dark background, uint8 [n,3,res,res]."""
    g = torch.Generator().manual_seed(seed)
    img = torch.full((n, 3, res, res), 20, dtype=torch.uint8)
    for i in range(n):
        s = int(torch.randint(res // 4, res // 2, (1,), generator=g))
        y, x = (int(v) for v in torch.randint(0, res - s, (2,), generator=g))
        img[i, :, y:y + s, x:x + s] = torch.randint(60, 255, (3, 1, 1), generator=g, dtype=torch.uint8)
    return img


def test_paper_layout_matches_hfailab_checkpoint():
    with torch.device("meta"):
        model = VQGAN(get_preset("paper").vqgan)
    sd = model.state_dict()
    count = lambda prefix: sum(v.numel() for k, v in sd.items()  # noqa: E731
                               if k.startswith(prefix) and "running" not in k and "num_batches" not in k)
    # numbers from tests/data/formats/hfailab-clipgen-vqgan.json (param_counts)
    assert count("encoder.") == 29363968
    assert count("decoder.") == 42515587
    assert count("quantizer.") == 4194304
    assert count("discriminator.") == 2765633
    assert sd["encoder.down.13.attn.in_proj_weight"].shape == (1536, 512)
    assert sd["encoder.final.3.weight"].shape == (256, 256, 1, 1)
    assert sd["decoder.up.6.conv.weight"].shape == (512, 512, 3, 3)
    assert sd["decoder.up.15.shortcut.weight"].shape == (128, 256, 1, 1)
    assert sd["decoder.up.21.block.6.weight"].shape == (128, 128, 3, 3)
    assert sd["discriminator.features.9.running_var"].shape == (512,)
    assert sd["discriminator.head.weight"].shape == (1, 512, 4, 4)
    assert len(sd) == 337
    assert model.cfg.grid == 16


def test_shapes_and_ranges():
    torch.manual_seed(0)
    model = VQGAN(TINY).eval()
    x = shapes_like(4)
    tokens = model.encode(x)
    assert tokens.shape == (4, 8, 8) and tokens.dtype == torch.long
    assert 0 <= int(tokens.min()) and int(tokens.max()) < TINY.codebook_size
    out = model.decode_tokens(tokens)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(model.decode_tokens(tokens.reshape(4, -1)), out)  # flat row-major tokens decode the same
    assert torch.equal(to_uint8(to_float(x)), x)
    with pytest.raises(ValueError):
        model.encode(shapes_like(1, res=16))
    with pytest.raises(ValueError):
        model.decode_tokens(torch.full((1, 8, 8), TINY.codebook_size))


@pytest.mark.parametrize("l2", [False, True])
def test_quantiser_indices_equal_plain_argmin(l2):
    torch.manual_seed(1)
    q = VectorQuantizer(with_overrides(TINY, codebook="learned", l2_codes=l2))
    with torch.no_grad():
        q.embedding.weight.normal_()
    z = torch.randn(3, TINY.embed_dim, 8, 8)
    q.eval()
    _, idx, _ = q(z)
    z_flat = z.permute(0, 2, 3, 1).reshape(-1, TINY.embed_dim)
    codes = q.embedding.weight
    if l2:
        z_flat, codes = F.normalize(z_flat, dim=1), F.normalize(codes, dim=1)
    plain = torch.cdist(z_flat, codes).argmin(1)
    assert torch.equal(idx.flatten(), plain)
    # quantising a code returns that code
    assert torch.equal(q.lookup(q.codes()[plain]), plain)


def test_straight_through_and_quantiser_loss():
    torch.manual_seed(2)
    cfg = with_overrides(TINY, codebook="learned")
    q = VectorQuantizer(cfg).train()
    z = torch.randn(2, cfg.embed_dim, 4, 4, requires_grad=True)
    z_q, idx, loss = q(z)
    # forward value is the code, gradient passes straight through to z
    assert torch.allclose(z_q.detach(), q.embedding.weight[idx].permute(0, 3, 1, 2).detach(), atol=1e-6)
    (z_q * 3.0).sum().backward(retain_graph=True)
    assert torch.allclose(z.grad, torch.full_like(z, 3.0))
    zq_flat = q.embedding.weight[idx.flatten()]
    z_flat = z.permute(0, 2, 3, 1).reshape(-1, cfg.embed_dim)
    expect = cfg.commitment_weight * F.mse_loss(z_flat, zq_flat) + cfg.codebook_weight * F.mse_loss(z_flat, zq_flat)
    assert torch.allclose(loss, expect)
    # each weight on its own side: beta (commitment) pulls the encoder to its code, the codebook term pulls the code
    cfg = with_overrides(cfg, commitment_weight=0.3, codebook_weight=1.7)
    q = VectorQuantizer(cfg).train()
    z = torch.randn(2, cfg.embed_dim, 4, 4, requires_grad=True)
    _, idx, loss = q(z)
    loss.backward()
    z_flat = z.detach().permute(0, 2, 3, 1).reshape(-1, cfg.embed_dim)
    zq_flat = q.embedding.weight.detach()[idx.flatten()]
    n = z_flat.numel()
    z_grad = (0.3 * 2 * (z_flat - zq_flat) / n).reshape(2, 4, 4, cfg.embed_dim).permute(0, 3, 1, 2)
    codebook_grad = torch.zeros_like(q.embedding.weight).index_add_(0, idx.flatten(), 1.7 * 2 * (zq_flat - z_flat) / n)
    assert torch.allclose(z.grad, z_grad, atol=1e-7) and torch.allclose(q.embedding.weight.grad, codebook_grad, atol=1e-7)


def test_ema_codebook_moves_towards_assigned_encodings():
    torch.manual_seed(3)
    cfg = with_overrides(TINY, codebook="ema", ema_decay=0.5, codebook_size=4, embed_dim=2)
    q = VectorQuantizer(cfg).train()
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0], [10.0, -10.0]]))
        q.ema_sum.copy_(q.embedding.weight)
    target = torch.tensor([1.0, 1.0])
    z = target.view(1, 2, 1, 1).expand(1, 2, 4, 4).contiguous()  # every vector = (1,1): all go to code 0
    before = (q.embedding.weight[0] - target).norm()
    for _ in range(5):
        q(z)
    assert (q.embedding.weight[0] - target).norm() < 0.1 * before
    assert not q.embedding.weight.requires_grad


def test_dead_code_restart_moves_unused_codes_onto_worst_encodings():
    torch.manual_seed(4)
    cfg = with_overrides(TINY, codebook="learned", codebook_size=8, embed_dim=2)
    q = VectorQuantizer(cfg).train()
    with torch.no_grad():
        q.embedding.weight.zero_()
        q.embedding.weight[1:] += 100.0  # only code 0 is ever nearest
    z = torch.randn(1, 2, 4, 4)
    q(z)
    z_flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    n = q.restart_dead(z_flat, torch.Generator().manual_seed(0))
    assert n == 7
    assert q.usage.sum() == 0
    # the restarted codes sit (up to jitter) on the 7 encodings farthest from code 0
    far = z_flat[z_flat.norm(dim=1).argsort(descending=True)[:7]]
    d = torch.cdist(q.embedding.weight[1:].detach(), far)
    assert d.min(dim=1).values.max() < 0.01


def test_foreground_weighted_reconstruction_loss():
    x = to_float(shapes_like(2))
    mask = foreground_mask(x)
    assert 0 < mask.mean() < 0.5
    err_bg = x.clone()
    err_bg[:, :, 0, 0] += 0.5  # corner: background
    fg = mask[0, 0].nonzero()[0]
    err_fg = x.clone()
    err_fg[:, :, fg[0], fg[1]] += 0.5
    cfg = with_overrides(TINY, recon_loss="l2", foreground_weight=4.0)
    assert reconstruction_loss(x, err_fg, cfg) > 4 * reconstruction_loss(x, err_bg, cfg)
    plain = with_overrides(cfg, foreground_weight=0.0)
    assert torch.allclose(reconstruction_loss(x, err_fg, plain), reconstruction_loss(x, err_bg, plain))


def test_codebook_stats():
    s = codebook_stats(torch.tensor([0, 1, 2, 3]), 8)
    assert s["usage"] == 0.5 and abs(s["perplexity"] - 4.0) < 1e-5
    assert abs(codebook_stats(torch.zeros(10, dtype=torch.long), 8)["perplexity"] - 1.0) < 1e-6


def test_training_learns_and_encode_decode_encode_is_stable():
    from reference.train import train_vqgan

    cfg = with_overrides(TINY, resolution=16, codebook_size=64, restart_dead_every=20, restart_dead_until=80)
    images = shapes_like(128, res=16)
    model, stats = train_vqgan(images, cfg, steps=120, seed=0, progress=False, batch_size=16)
    assert stats["history"][-1]["rec"] < 0.3 * stats["history"][0]["rec"]
    assert stats["usage"] > 0.3 and stats["perplexity"] > 5  # dead-code restarts keep the codebook alive
    tokens = model.encode(images[:64])
    again = model.encode(model.decode_tokens(tokens))
    assert (again == tokens).float().mean() > 0.6  # measured 0.73 after 120 steps


def test_gan_step_updates_discriminator():
    from reference.train import train_vqgan

    images = shapes_like(8)
    torch.manual_seed(0)
    before = VQGAN(TINY).discriminator.features[0].weight.detach().clone()
    model, _ = train_vqgan(images, "tiny", steps=2, seed=0, progress=False, batch_size=4, gan_weight=0.8,
                           gan_start=1)
    assert not torch.allclose(model.discriminator.features[0].weight, before)


def test_the_gan_can_start_after_an_epoch_and_the_learning_rate_can_stay_constant(monkeypatch):
    """The paper preset's VQGAN recipe (HFAiLab's): no GAN for the first pass over the images, constant lr."""
    from reference.train import train_vqgan

    lrs = []
    real_step = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    images = shapes_like(12)  # 3 full batches of 4 per epoch
    cfg = with_overrides(TINY, gan_weight=0.8, gan_start_epochs=1.0, lr_schedule="constant")
    torch.manual_seed(0)
    before = VQGAN(cfg).discriminator.features[0].weight.detach().clone()  # train_vqgan's init under seed 0
    model, stats = train_vqgan(images, cfg, steps=3, seed=0, progress=False, batch_size=4, lr=1e-3)
    assert stats["gan_start_step"] == 3 and lrs == [1e-3] * 3  # three generator steps, no discriminator step
    assert torch.equal(model.discriminator.features[0].weight, before)
    lrs.clear()
    model, stats = train_vqgan(images, cfg, steps=4, seed=0, progress=False, batch_size=4, lr=1e-3)
    assert len(lrs) == 5 and not torch.equal(model.discriminator.features[0].weight, before)  # + one of D
    lrs.clear()
    train_vqgan(images, TINY, steps=20, seed=0, progress=False, batch_size=4, lr=1e-3)  # the default: warm-up, cosine
    assert lrs[0] < lrs[1] == max(lrs) == 1e-3 > lrs[-1]
    with pytest.raises(ValueError, match="lr_schedule"):
        with_overrides(TINY, lr_schedule="linear")


def test_effnet_perceptual_loss_uses_real_weights():
    loss = PerceptualLoss("effnet-lite0")
    x = to_float(shapes_like(2))
    assert float(loss(x, x)) < 1e-6
    assert float(loss(x, x.flip(-1))) > 0.01
    with pytest.raises(FileNotFoundError):
        PerceptualLoss("lpips-vgg", "/nonexistent/vgg.pth")


VGG_CUTS = [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]  # LPIPS's slices of vgg16().features


def _vgg_files(tmp_path):
    """A seeded VGG16 with LPIPS lins saved in torchvision's layout and in an LPIPS module's (net.sliceK.N.*)."""
    from torchvision.models import vgg16

    torch.manual_seed(0)
    features = vgg16().features
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate([64, 128, 256, 512, 512])}
    torchvision_layout = {f"features.{k}": v for k, v in features.state_dict().items()} | lins
    lpips_layout = {f"net.slice{s}.{i}.{name}": t for s, (a, b) in enumerate(VGG_CUTS, 1) for i in range(a, b)
                    for name, t in features[i].state_dict().items()} | lins
    lpips_layout["scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)  # buffers an LPIPS module saves too
    paths = {}
    for name, sd in {"torchvision": torchvision_layout, "lpips": lpips_layout, "lins-only": lins}.items():
        paths[name] = str(tmp_path / f"{name}.pth")
        torch.save(sd, paths[name])
    return features, lins, paths


def test_lpips_vgg_loads_the_backbone_and_lins_from_either_layout(tmp_path):
    features, lins, paths = _vgg_files(tmp_path)
    x = to_float(shapes_like(2))
    values = []
    for layout in ("torchvision", "lpips"):
        loss = PerceptualLoss("lpips-vgg", paths[layout])
        convs = [m for stage in loss.net.stages for m in stage if isinstance(m, torch.nn.Conv2d)]
        originals = [m for m in features if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == len(originals) == 13
        assert all(torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) for a, b in zip(convs, originals))
        assert all(torch.equal(w, lins[f"lin{i}.model.1.weight"].flatten()) for i, w in enumerate(loss.lins))
        values.append(float(loss(x, x.flip(-1))))
    assert values[0] == values[1] > 0


def test_lpips_vgg_refuses_a_file_without_the_backbone_or_with_broken_lins(tmp_path):
    _, lins, paths = _vgg_files(tmp_path)
    with pytest.raises(ValueError, match="only LPIPS lin weights"):
        PerceptualLoss("lpips-vgg", paths["lins-only"])  # taming's vgg.pth: no VGG in it
    sd = torch.load(paths["torchvision"], weights_only=True)
    torch.save({**sd, "features.28.weight": torch.zeros(3, 3, 3, 3)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="not VGG16's weights"):
        PerceptualLoss("lpips-vgg", str(tmp_path / "wrong.pth"))
    torch.save({k: v for k, v in sd.items() if k != "lin4.model.1.weight"}, tmp_path / "four-lins.pth")
    with pytest.raises(ValueError, match="all five"):
        PerceptualLoss("lpips-vgg", str(tmp_path / "four-lins.pth"))
    plain = {k: v for k, v in sd.items() if not k.startswith("lin")}  # torchvision's VGG file: no lins, plain distance
    torch.save(plain, tmp_path / "plain.pth")
    assert PerceptualLoss("lpips-vgg", str(tmp_path / "plain.pth")).lins is None
