"""Dataclass configs and named presets for the reference CLIP-GEN.

Three presets:
- ``paper``: the layouts of the public HFAiLab CLIP-GEN checkpoints (see tests/data/formats/): VQGAN 256 px -> 16x16
  tokens with a 16384 x 256 codebook, CLIP ViT-B/32 (512-d), GPT-2 medium (24 x 1024, 16 heads, 256 positions).
- ``small``: benchmarkable on a CPU (64 px, 16x16 tokens, 8 layers x 512).
- ``tiny``: 32 px, 8x8 tokens, 4 layers x 128; the recipe behind the quickstart and every test.

Every number that differs between sources (norm epsilons, quantiser loss weights) is a field, so each source's
values can be reproduced. Training recipes (steps, lr, batch) live next to the architecture so a preset is the
whole recipe.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from types import UnionType
from typing import Any, ClassVar, Union, get_args, get_origin, get_type_hints


@dataclass(frozen=True)
class VQGANConfig:
    # architecture (taming / HFAiLab layout)
    resolution: int = 256
    in_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    z_channels: int = 256
    embed_dim: int = 256  # codebook vector size
    codebook_size: int = 16384
    norm_groups: int = 32
    norm_eps: float = 1e-5  # HFAiLab 1e-5, taming 1e-6
    dropout: float = 0.0
    # quantiser
    codebook: str = "learned"  # "learned" (codebook loss) or "ema"
    commitment_weight: float = 1.0  # weight of |z - sg(z_q)|^2   (HFAiLab: 1.0)
    codebook_weight: float = 0.2  # weight of |sg(z) - z_q|^2   (HFAiLab: 0.2; taming legacy 0.25); unused with EMA
    ema_decay: float = 0.99
    l2_codes: bool = False  # l2-normalise z and the codes before the lookup (cosine codebook)
    restart_dead_every: int = 0  # steps between dead-code restarts (0: never)
    restart_dead_until: int = 0  # stop restarting after this step
    lookup_backend: str = "auto"  # reference.kernels.vq_lookup backend
    # losses
    recon_loss: str = "l1"  # "l1" or "l2"
    foreground_weight: float = 0.0  # extra weight on pixels that differ from the image's border colour
    perceptual: str = "none"  # "none", "lpips-vgg" (weights by path), "effnet-lite0" (pip package weights)
    perceptual_weight: float = 1.0
    perceptual_path: str | None = None  # VGG16 / LPIPS weights for "lpips-vgg"
    gan_weight: float = 0.0  # 0: no discriminator loss (the discriminator still exists for checkpoint layout)
    gan_start: int = 0  # first step with the GAN loss (and discriminator updates)
    gan_start_epochs: float = 0.0  # or later: after this many passes over the training images (HFAiLab: 1)
    disc_ch: int = 64
    disc_layers: int = 3
    # training recipe
    batch_size: int = 8
    lr: float = 4.5e-6 * 8
    lr_schedule: str = "cosine"  # "cosine" (warm-up, then cosine decay) or "constant" (HFAiLab, taming)
    betas: tuple[float, float] = (0.5, 0.9)
    steps: int = 100_000

    # int fields where 0 means "off" or "from the start"; every other int field is a size or a count (>= 1)
    ZERO_MEANS_OFF: ClassVar[frozenset[str]] = frozenset({"restart_dead_every", "restart_dead_until", "gan_start"})

    def __post_init__(self):
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")

    @property
    def grid(self) -> int:
        """Tokens per side of the latent grid."""
        return self.resolution // 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 16384
    n_layer: int = 24
    n_embd: int = 1024
    n_head: int = 16
    n_pos: int = 256  # positions: the CLIP prefix + image tokens 0..n_pos-2 (the last token is never fed)
    cond_dim: int = 512
    ffn_dim: int = 4096
    dropout: float = 0.1
    ln_eps: float = 1e-5
    grid: int = 16  # image tokens per side; n_pos == grid * grid
    decode_backend: str = "sdpa"  # reference.kernels.decode_attention backend for cached decoding
    # training recipe
    batch_size: int = 8
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup: int = 1000
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    steps: int = 100_000
    noise: float = 0.0  # LAFITE-style Gaussian perturbation of the normalised embedding (0: off)
    clip_loss_weight: float = 0.0  # the paper's CLIP-embedding reconstruction loss (0: off, as in HFAiLab)

    # int fields where 0 means "off"; every other int field is a size or a count (>= 1)
    ZERO_MEANS_OFF: ClassVar[frozenset[str]] = frozenset({"warmup"})

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.grid * self.grid != self.n_pos:
            raise ValueError(f"n_pos={self.n_pos} must equal grid*grid={self.grid * self.grid}")


@dataclass(frozen=True)
class ClipSpec:
    """What the GPT expects from its CLIP (the model itself lives in reference/clip.py)."""

    name: str = "ViT-B-32"
    embed_dim: int = 512
    image_size: int = 224


@dataclass(frozen=True)
class Preset:
    name: str
    vqgan: VQGANConfig
    gpt: GPTConfig
    clip: ClipSpec = field(default_factory=ClipSpec)
    sampling: dict[str, Any] = field(default_factory=dict)


PAPER = Preset(
    name="paper",
    # VQGAN as HFAiLab/clip-gen trains it: LPIPS, the GAN from the second epoch on, a constant learning rate.
    # The GPT recipe is minGPT's (AdamW 3e-4, 1000 warm-up steps, cosine to 0.1x, gradients clipped at 1), not
    # HFAiLab's (5e-4 per 256 images of batch, 20 of 200 epochs of warm-up, cosine to 0, no clipping), which at this
    # preset's batch of 8 would be a learning rate of 1.6e-5.
    vqgan=VQGANConfig(
        perceptual="lpips-vgg",
        gan_weight=0.8,
        gan_start_epochs=1.0,
        lr_schedule="constant",
    ),
    gpt=GPTConfig(),
    clip=ClipSpec("ViT-B-32", 512, 224),
    sampling=dict(temperature=1.0, top_k=500, top_p=0.95, candidates=64),
)

SMALL = Preset(
    name="small",
    vqgan=VQGANConfig(
        resolution=64, ch=64, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(16,), z_channels=64,
        embed_dim=64, codebook_size=1024, codebook="ema", commitment_weight=0.25, restart_dead_every=100,
        restart_dead_until=2000, recon_loss="l2", foreground_weight=4.0, batch_size=32, lr=1e-3,
        betas=(0.9, 0.99), steps=4000,
    ),
    gpt=GPTConfig(
        vocab_size=1024, n_layer=8, n_embd=512, n_head=8, n_pos=256, cond_dim=128, ffn_dim=2048, dropout=0.0,
        grid=16, batch_size=32, lr=6e-4, warmup=200, steps=5000,
    ),
    clip=ClipSpec("tiny", 128, 64),
    sampling=dict(temperature=1.0, top_k=50, top_p=1.0, candidates=1),
)

# The tiny recipe (shapes, 32 px), tuned for the quickstart target on a 2-core CPU: with the tiny CLIP stand-in
# (300 steps), VQGAN 800 steps x 16 and GPT 800 steps x 64 with LAFITE noise 0.25, conditioned on CLIP *text*
# embeddings at temperature 1, top-k 50: all-correct attribute accuracy 0.84 seen / 0.53 held-out (mean of seeds
# 0-2, 320 captions per cell); stage times per seed on 2 pinned cores: CLIP 44 s, VQGAN 93 s, precompute 9 s,
# GPT 135 s, sampling 640 captions 3 s.
TINY = Preset(
    name="tiny",
    vqgan=VQGANConfig(
        resolution=32, ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=(), z_channels=32,
        embed_dim=32, codebook_size=256, norm_groups=8, codebook="ema", commitment_weight=0.25,
        restart_dead_every=50, restart_dead_until=600, recon_loss="l2", foreground_weight=4.0, batch_size=16,
        lr=2e-3, betas=(0.9, 0.99), steps=800,
    ),
    gpt=GPTConfig(
        vocab_size=256, n_layer=4, n_embd=128, n_head=4, n_pos=64, cond_dim=128, ffn_dim=512, dropout=0.0, grid=8,
        batch_size=64, lr=2e-3, warmup=100, weight_decay=0.01, steps=800, noise=0.25,
    ),
    clip=ClipSpec("tiny", 128, 32),
    sampling=dict(temperature=1.0, top_k=50, top_p=1.0, candidates=1),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (PAPER, SMALL, TINY)}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def with_overrides(cfg, **overrides):
    """A copy of a config dataclass with some fields replaced; unknown field names are a ValueError."""
    known = {f.name for f in fields(cfg)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown {type(cfg).__name__} field(s) {bad}; known: {', '.join(sorted(known))}")
    return replace(cfg, **overrides)


def config_to_dict(cfg) -> dict:
    return {f.name: (list(v) if isinstance(v := getattr(cfg, f.name), tuple) else v) for f in fields(cfg)}


def config_from_dict(cls, d: dict):
    """The ``cls`` config of a saved dict (JSON values: lists for tuples); absent fields take their defaults. An
    unknown field, or a value of the wrong type (a string for an int, true for a float), is a ValueError naming it."""
    if not isinstance(d, dict):
        raise ValueError(f"a saved {cls.__name__} must be a JSON object, got {type(d).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for k, v in d.items():
        if k not in known:
            raise ValueError(f"unknown {cls.__name__} field {k!r} in saved config")
        if not value_fits(v, hints[k]):
            raise ValueError(f"{cls.__name__} field {k!r} must be {describe_type(hints[k])}, got {v!r}")
        kwargs[k] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


def value_fits(value: Any, tp: Any, least: int | None = None) -> bool:
    """Whether ``value`` (a JSON value) can stand for a field of type ``tp``: bool is not a number, an int is a
    float, a list of the right length and element types is a tuple. ``least``: also bounds, ints >= ``least``
    (their list elements >= 1) and floats finite and >= 0; None: types only."""
    args = get_args(tp)
    if get_origin(tp) in (Union, UnionType):
        return any(value_fits(value, a, least) for a in args)
    if get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        elems = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        inner = None if least is None else 1
        return len(elems) == len(value) and all(value_fits(v, a, inner) for v, a in zip(value, elems))
    if tp is Any:
        return True
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool) and (least is None or value >= least)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) \
            and (least is None or (math.isfinite(value) and value >= 0))
    if tp is type(None):
        return value is None
    return isinstance(value, get_origin(tp) or tp)  # bool, str


def describe_type(tp: Any, least: int | None = None, plural: bool = False) -> str:
    """What ``value_fits`` wants, in words: 'an integer >= 1', 'a list of 2 numbers', 'a string or null'."""
    args = get_args(tp)
    if get_origin(tp) in (Union, UnionType):
        return " or ".join(describe_type(a, least, plural) for a in args)
    if get_origin(tp) is tuple:
        count = "" if args[-1] is Ellipsis else f"{len(args)} "
        return f"a list of {count}{describe_type(args[0], None if least is None else 1, plural=True)}"
    words = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"),
             str: ("a string", "strings"), type(None): ("null", "nulls")}
    bounds = {} if least is None else {int: f" >= {least}", float: " >= 0"}
    name = getattr(get_origin(tp) or tp, "__name__", str(tp))
    return words.get(tp, (f"a {name}", f"{name} values"))[plural] + bounds.get(tp, "")
