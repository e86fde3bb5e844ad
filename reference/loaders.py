"""Load the public pretrained checkpoints, by local path, into our own models (the ``paper`` preset).

Entry point: ``load_pretrained(kind, path, device="cpu")`` with kind one of

- ``hfailab-vqgan``  HFAiLab CLIP-GEN ``vqgan_coco.pt``: plain ``torch.save`` dict, weights under ``model``
- ``hfailab-gpt``    HFAiLab CLIP-GEN ``gpt_coco.pt``: plain dict, weights under ``model``
- ``taming-vqgan``   taming-transformers ``vqgan_imagenet_f16_16384`` ``last.ckpt`` (PyTorch Lightning)
- ``checkpoint``     our own folder (reference/checkpoint.py: model.safetensors + config.json [+ SHA256SUMS])
- ``clip``           open_clip weights: ``NAME@/path/file.pt`` (e.g. ``ViT-B-32@...`` conditioning, ``ViT-L-14@...``
                     evaluator; ``ViT-B-32-quickgelu@...`` for OpenAI's own weights) or a saved-CLIP folder; returns
                     reference.clip.ClipModel with open_clip's preprocessing (see reference/clip.py ``load_clip``)
- ``auto``           the above told apart from the folder / the container's contents

and ``convert(kind, src, dst)`` writes a foreign checkpoint once into our folder format (safetensors, so later runs
read it without unpickling, plus a SHA256SUMS file). Files are read with reference/safe_unpickle.py (weights-only
torch.load, else a restricted unpickler that stubs framework classes): never a blind pickle.load.

Every architectural number is read from the tensor shapes, except those the file cannot tell (overridable with
``overrides``): GPT heads (n_embd // 64: head width 64 as in GPT-2 medium/large, 16 heads for the release),
VQGAN GroupNorm groups (32) and the latent grid (16x16 -> 256 px for f16; both releases work at 256 px).

Mapping decisions, source by source (formats: tests/data/formats/*.json):

HFAiLab VQGAN -> reference.vqgan.VQGAN
    Key names are ours already (our module tree copies HFAiLab's flat ``encoder.down.N`` / ``decoder.up.N``
    Sequentials, ``encoder.final.3`` = pre-quant 1x1, ``decoder.quant_conv_in`` = post-quant 1x1). GroupNorm
    eps 1e-5 (``VQGANConfig.norm_eps``, the preset's default). Quantiser: HFAiLab's cdist-argmin picks the same code
    as our squared-L2 lookup. Loss weights commitment 1 / codebook 0.2 (the preset's). ``discriminator.*``
    (training-only PatchGAN, BatchNorm stats included) is dropped unless ``keep_discriminator=True``; the model's
    discriminator is then freshly initialised. Other container entries (epoch, opt_g, opt_d, step, loss_recon) are
    ignored and listed in the report.
taming VQGAN f16/16384 -> reference.vqgan.VQGAN
    ``ckpt['state_dict']``; ``loss.*`` (LPIPS copy + discriminator) dropped; if keys carry ``first_stage_model.``
    (a taming transformer checkpoint) only that sub-model is read and the rest is dropped. Keys are renamed by
    ``taming_key_map(cfg)`` (the same map as ``key_map_to_taming`` in tests/data/formats/hfailab-clipgen-vqgan.json,
    generated from the config so it also holds at reduced sizes): ResnetBlock norm1/conv1/norm2/conv2/nin_shortcut
    -> block.0/2/3/6/shortcut; per-level ``down.L.block.i`` / ``up.L.block.i`` -> our flat indices (the decoder's
    ``up`` runs lowest resolution first); norm_out/conv_out -> final.0/final.2; quant_conv -> encoder.final.3;
    post_quant_conv -> decoder.quant_conv_in. Attention: taming's 1x1-conv q, k, v kernels [C,C,1,1] are squeezed to
    [C,C] and stacked q;k;v into nn.MultiheadAttention's fused ``in_proj_weight`` [3C,C] (biases likewise);
    proj_out -> out_proj. Both use one head and scale C^-0.5, so the function is the same. Config differences:
    ``norm_eps=1e-6`` and ``codebook_weight=0.25`` (legacy VectorQuantizer2 with beta 0.25 on the codebook term).
HFAiLab GPT -> reference.gpt.GPT
    Key names are ours (``blocks.N.encoder.*`` = nn.TransformerEncoderLayer names with the fused q;k;v
    ``self_attn.in_proj_weight`` [3d,d]). The persistent bool ``blocks.N.mask`` buffers are checked to be exactly the
    causal mask (True above the diagonal) and dropped: our attention applies that mask itself (``is_causal``).
    Pre-LN, LayerNorm eps 1e-5 (``GPTConfig.ln_eps``), erf GELU, untied head with bias, learned ``pos_emb`` over all
    n_pos positions, prefix ``cond_proj(normalize(e))`` at position 0, image tokens 0..n_pos-2 at 1..n_pos-1, no BOS
    and no special tokens (vocab = the codebook): all our GPT's own layout, so nothing else changes. Our GPT
    L2-normalises the CLIP embedding itself, as HFAiLab's callers do before ``cond_proj``. ``dropout`` keeps the
    release's 0.1 (inactive in eval mode; the model is returned in eval mode).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator, get_type_hints

import torch
import torch.nn as nn
from torch import Tensor

from reference.checkpoint import SUMS_FILE
from reference.configs import PAPER, GPTConfig, VQGANConfig, describe_type, value_fits
from reference.errors import first_line, refuse_blank_path
from reference.safe_unpickle import safe_torch_load

KINDS = ("hfailab-vqgan", "hfailab-gpt", "taming-vqgan", "checkpoint", "clip")
CONVERTIBLE = ("hfailab-vqgan", "hfailab-gpt", "taming-vqgan")


@dataclass
class LoadReport:
    """What a reader did with a file: which source keys it used, which it dropped (and why), what else was there."""

    kind: str
    path: str
    consumed: list[str] = field(default_factory=list)  # source state-dict keys that became model weights
    dropped: dict[str, str] = field(default_factory=dict)  # source key -> reason
    container: list[str] = field(default_factory=list)  # top-level entries of the file (non-weight ones ignored)


# ---------------------------------------------------------------------------------------------------------------
# reading containers
# ---------------------------------------------------------------------------------------------------------------

def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(k, str) for k in obj) \
        and any(isinstance(v, Tensor) for v in obj.values())


def _container_weights(obj: Any, path: str, entry: str) -> tuple[dict[str, Tensor], list[str]]:
    """The state dict under ``obj[entry]`` (or obj itself when it already is a bare state dict)."""
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, found {type(obj).__name__}")
    top = [str(k) for k in obj]
    if entry in obj:
        sd = obj[entry]
        if not _is_state_dict(sd):
            raise ValueError(f"{path}: entry {entry!r} is not a state dict of tensors")
        return dict(sd), top
    if _is_state_dict(obj) and all(isinstance(v, Tensor) for v in obj.values()):
        return dict(obj), top
    raise ValueError(f"{path}: no {entry!r} entry (top-level entries: {', '.join(top[:12]) or 'none'})")


def _need(sd: dict[str, Tensor], key: str, path: str, ndim: int | None = None) -> Tensor:
    if key not in sd:
        raise ValueError(f"{path}: missing key {key!r}")
    t = sd[key]
    if not isinstance(t, Tensor):
        raise ValueError(f"{path}: key {key!r} is a {type(t).__name__}, not a tensor")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{path}: key {key!r} has shape {list(t.shape)}, expected {ndim} dimensions")
    return t


def _check_state(expected: dict[str, Tensor], got: dict[str, Tensor], path: str) -> None:
    """One line naming the file and the first key that is missing, misshapen, or unexpected."""
    for k, ref in expected.items():
        if k not in got:
            raise ValueError(f"{path}: missing key {k!r}")
        t = got[k]
        if not isinstance(t, Tensor):
            raise ValueError(f"{path}: key {k!r} is a {type(t).__name__}, not a tensor")
        if tuple(t.shape) != tuple(ref.shape):
            raise ValueError(f"{path}: key {k!r} has shape {list(t.shape)}, expected {list(ref.shape)}")
        if t.is_floating_point() != ref.is_floating_point():
            raise ValueError(f"{path}: key {k!r} has dtype {t.dtype}, expected {ref.dtype}")
    for k in got:
        if k not in expected:
            raise ValueError(f"{path}: unexpected key {k!r}")


# ---------------------------------------------------------------------------------------------------------------
# building a model without paying for a random init it would throw away
# ---------------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _params_on_meta() -> Iterator[None]:
    """Parameters are created on the meta device (no memory, no init cost); buffers stay real."""
    original = nn.Module.register_parameter

    def register(self, name, param):
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(self, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def _instantiate(cls, cfg, state: dict[str, Tensor], path: str, fresh: tuple[str, ...] = ()) -> nn.Module:
    """cls(cfg) holding exactly ``state`` (checked key by key first); submodules named in ``fresh`` keep a normal
    random init instead (they are not in ``state``)."""
    with _params_on_meta():
        model = cls(cfg)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(tuple(p + "." for p in fresh))}
    _check_state(expected, state, path)
    for name in fresh:  # really initialised (small modules only, e.g. the training-only discriminator)
        setattr(model, name, type(getattr(model, name))(cfg))
    full = {**{k: v for k, v in model.state_dict().items() if k not in expected},
            **{k: v.to(expected[k].dtype) for k, v in state.items()}}  # e.g. a float16 release -> our float32
    model.load_state_dict({k: v.contiguous() for k, v in full.items()}, strict=True, assign=True)
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):  # a buffer derived from a parameter
        model = cls(cfg)
        model.load_state_dict(full, strict=True)
    return model


# ---------------------------------------------------------------------------------------------------------------
# VQGAN: config from shapes
# ---------------------------------------------------------------------------------------------------------------

def _vqgan_config(path: str, ch: int, in_channels: int, level_widths: list[int], res_per_level: list[int],
                  attn_levels: list[int], z_channels: int, embed_dim: int, codebook_size: int,
                  base: VQGANConfig, overrides: dict) -> VQGANConfig:
    if not level_widths:
        raise ValueError(f"{path}: found no encoder levels")
    if len(set(res_per_level)) != 1:
        raise ValueError(f"{path}: encoder levels hold different numbers of residual blocks {res_per_level}")
    mult = []
    for w in level_widths:
        if w % ch:
            raise ValueError(f"{path}: encoder level width {w} is not a multiple of conv_in's {ch}")
        mult.append(w // ch)
    overrides = _checked_overrides(VQGANConfig, overrides, path, grid=int)  # grid: read as the resolution
    grid = overrides.pop("grid", 16)
    resolution = overrides.get("resolution", grid * 2 ** (len(mult) - 1))
    cfg = replace(base, resolution=resolution, in_channels=in_channels, ch=ch, ch_mult=tuple(mult),
                  num_res_blocks=res_per_level[0], attn_resolutions=tuple(resolution // 2 ** lv for lv in attn_levels),
                  z_channels=z_channels, embed_dim=embed_dim, codebook_size=codebook_size)
    return _apply_overrides(cfg, overrides, path)


class OverrideError(ValueError):
    """A config override whose value the field cannot take; ``name``, ``value`` and ``reason`` for the caller's own
    wording (the CLI names its ``--set`` argument)."""

    def __init__(self, path: str, name: str, value: Any, reason: str):
        super().__init__(f"{path}: override {name}={value!r}: {reason}")
        self.name, self.value, self.reason = name, value, reason


def _checked_overrides(cls, overrides: dict, path: str, **aliases: type) -> dict:
    """The caller's overrides for a ``cls`` config, each checked against its field's type (bool is not an int, an
    int is a float) and range (int sizes and counts >= 1, those in ``cls.ZERO_MEANS_OFF`` >= 0; floats finite and
    >= 0); lists become tuples. ``aliases``: extra names the reader translates itself (VQGAN ``grid``)."""
    hints = get_type_hints(cls)
    types = {**{f.name: hints[f.name] for f in fields(cls)}, **aliases}
    bad = sorted(set(overrides) - set(types))
    if bad:
        raise ValueError(f"{path}: unknown {cls.__name__} override(s) {bad}")
    checked = {}
    for name, value in overrides.items():
        least = 0 if name in cls.ZERO_MEANS_OFF else 1
        if not value_fits(value, types[name], least):
            raise OverrideError(path, name, value, f"{name} must be {describe_type(types[name], least)}")
        checked[name] = tuple(value) if isinstance(value, list) else value
    return checked


def _apply_overrides(cfg, overrides: dict, path: str):
    """``cfg`` with ``overrides`` (already through ``_checked_overrides``); the config's own checks name the file."""
    try:
        return replace(cfg, **overrides)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def infer_hfailab_vqgan_config(sd: dict[str, Tensor], path: str = "<state dict>", **overrides) -> VQGANConfig:
    """The VQGANConfig of an HFAiLab-layout state dict (flat ``encoder.down.N``)."""
    conv_in = _need(sd, "encoder.conv_in.weight", path, 4)
    ch, in_channels = conv_in.shape[0], conv_in.shape[1]
    widths, res_counts, attn_levels = [], [0], []
    width, j = ch, 0
    while True:
        p = f"encoder.down.{j}."
        if p + "block.2.weight" in sd:  # ResBlock
            width = sd[p + "block.2.weight"].shape[0]
            res_counts[-1] += 1
        elif p + "attn.in_proj_weight" in sd:
            if len(res_counts) - 1 not in attn_levels:
                attn_levels.append(len(res_counts) - 1)
        elif p + "conv.weight" in sd:  # Downsample closes a level
            widths.append(width)
            res_counts.append(0)
        else:
            break
        j += 1
    widths.append(width)
    emb = _need(sd, "quantizer.embedding.weight", path, 2)
    return _vqgan_config(path, ch, in_channels, widths, res_counts, attn_levels,
                         _need(sd, "encoder.final.2.weight", path, 4).shape[0],
                         _need(sd, "encoder.final.3.weight", path, 4).shape[0], emb.shape[0],
                         PAPER.vqgan, dict(overrides))


def infer_taming_vqgan_config(sd: dict[str, Tensor], path: str = "<state dict>", **overrides) -> VQGANConfig:
    """The VQGANConfig of a taming-layout first-stage state dict (``encoder.down.L.block.i``)."""
    conv_in = _need(sd, "encoder.conv_in.weight", path, 4)
    ch, in_channels = conv_in.shape[0], conv_in.shape[1]
    widths, res_counts, attn_levels = [], [], []
    level = 0
    while f"encoder.down.{level}.block.0.conv1.weight" in sd:
        n = 0
        while f"encoder.down.{level}.block.{n}.conv1.weight" in sd:
            n += 1
        widths.append(sd[f"encoder.down.{level}.block.{n - 1}.conv2.weight"].shape[0])
        res_counts.append(n)
        if f"encoder.down.{level}.attn.0.q.weight" in sd:
            attn_levels.append(level)
        level += 1
    emb = _need(sd, "quantize.embedding.weight", path, 2)
    base = replace(PAPER.vqgan, norm_eps=1e-6, codebook_weight=0.25)
    return _vqgan_config(path, ch, in_channels, widths, res_counts, attn_levels,
                         _need(sd, "encoder.conv_out.weight", path, 4).shape[0],
                         _need(sd, "quant_conv.weight", path, 4).shape[0], emb.shape[0], base, dict(overrides))


# ---------------------------------------------------------------------------------------------------------------
# VQGAN: taming key map
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """How one of our tensors is built from taming tensors: concatenated along dim 0, 1x1 kernels squeezed."""

    keys: tuple[str, ...]
    squeeze: bool = False

    def render(self) -> str:
        """The expression as written in tests/data/formats/hfailab-clipgen-vqgan.json ``key_map_to_taming``."""
        parts = [k + ("[:, :, 0, 0]" if self.squeeze else "") for k in self.keys]
        return parts[0] if len(parts) == 1 else f"concat_dim0({', '.join(parts)})"


_RES_PARAMS = {"block.0": "norm1", "block.2": "conv1", "block.3": "norm2", "block.6": "conv2",
               "shortcut": "nin_shortcut"}


def _module_map(cfg: VQGANConfig) -> dict[str, tuple[str, str]]:
    """Our module prefix -> (module type, taming module prefix), replaying reference.vqgan's construction order."""
    m: dict[str, tuple[str, str]] = {}
    j, res, last = 0, cfg.resolution, len(cfg.ch_mult) - 1
    for level in range(len(cfg.ch_mult)):
        for i in range(cfg.num_res_blocks):
            m[f"encoder.down.{j}"] = ("res", f"encoder.down.{level}.block.{i}")
            j += 1
            if res in cfg.attn_resolutions:
                m[f"encoder.down.{j}"] = ("attn", f"encoder.down.{level}.attn.{i}")
                j += 1
        if level != last:
            m[f"encoder.down.{j}"] = ("conv", f"encoder.down.{level}.downsample")
            j += 1
            res //= 2
    for part in ("encoder", "decoder"):
        m[f"{part}.mid.0"] = ("res", f"{part}.mid.block_1")
        m[f"{part}.mid.1"] = ("attn", f"{part}.mid.attn_1")
        m[f"{part}.mid.2"] = ("res", f"{part}.mid.block_2")
    j, res = 0, cfg.grid
    for level in reversed(range(len(cfg.ch_mult))):
        for i in range(cfg.num_res_blocks + 1):
            m[f"decoder.up.{j}"] = ("res", f"decoder.up.{level}.block.{i}")
            j += 1
            if res in cfg.attn_resolutions:
                m[f"decoder.up.{j}"] = ("attn", f"decoder.up.{level}.attn.{i}")
                j += 1
        if level != 0:
            m[f"decoder.up.{j}"] = ("conv", f"decoder.up.{level}.upsample")
            j += 1
            res *= 2
    for ours, theirs in (("encoder.conv_in", "encoder.conv_in"), ("encoder.final.0", "encoder.norm_out"),
                         ("encoder.final.2", "encoder.conv_out"), ("encoder.final.3", "quant_conv"),
                         ("decoder.quant_conv_in", "post_quant_conv"), ("decoder.conv_in", "decoder.conv_in"),
                         ("decoder.final.0", "decoder.norm_out"), ("decoder.final.2", "decoder.conv_out"),
                         ("quantizer.embedding", "quantize.embedding")):
        m[ours] = ("plain", theirs)
    return m


def _vqgan_keys(cfg: VQGANConfig) -> dict[str, Tensor]:
    """Our VQGAN's state-dict entries (meta tensors: names and shapes only), discriminator excluded."""
    from reference.vqgan import VQGAN

    with torch.device("meta"):
        model = VQGAN(cfg)
    return {k: v for k, v in model.state_dict().items() if not k.startswith("discriminator.")}


def taming_key_map(cfg: VQGANConfig) -> dict[str, Source]:
    """Every non-discriminator key of our VQGAN -> how to build it from a taming VQModel state dict."""
    modules = _module_map(cfg)
    out: dict[str, Source] = {}
    for key in _vqgan_keys(cfg):
        prefix, rest = key.rsplit(".", 1)
        sub = ""
        while prefix not in modules:  # walk up: "encoder.down.3.block.0" -> "encoder.down.3" + "block.0"
            if "." not in prefix:
                raise KeyError(f"no taming counterpart for {key!r}")
            prefix, tail = prefix.rsplit(".", 1)
            sub = tail + ("." + sub if sub else "")
        kind, theirs = modules[prefix]
        if kind == "res":
            out[key] = Source((f"{theirs}.{_RES_PARAMS[sub]}.{rest}",))
        elif kind == "attn":
            if sub == "norm":
                out[key] = Source((f"{theirs}.norm.{rest}",))
            elif sub == "attn" and rest in ("in_proj_weight", "in_proj_bias"):
                suffix = "weight" if rest == "in_proj_weight" else "bias"
                out[key] = Source(tuple(f"{theirs}.{q}.{suffix}" for q in "qkv"), squeeze=suffix == "weight")
            elif sub == "attn.out_proj":
                out[key] = Source((f"{theirs}.proj_out.{rest}",), squeeze=rest == "weight")
            else:
                raise KeyError(f"no taming counterpart for {key!r}")
        elif kind == "conv":
            out[key] = Source((f"{theirs}.conv.{rest}",))
        else:
            out[key] = Source((f"{theirs}.{rest}",))
    return out


def taming_to_ours(sd: dict[str, Tensor], cfg: VQGANConfig, path: str = "<state dict>") -> dict[str, Tensor]:
    """A taming first-stage state dict (``loss.*`` already removed) -> our VQGAN's key names and shapes."""
    out = {}
    used = set()
    for key, src in taming_key_map(cfg).items():
        parts = []
        for k in src.keys:
            t = _need(sd, k, path)
            if src.squeeze:
                if t.dim() != 4 or t.shape[2:] != (1, 1):
                    raise ValueError(f"{path}: key {k!r} has shape {list(t.shape)}, expected a 1x1 kernel [C,C,1,1]")
                t = t[:, :, 0, 0]
            parts.append(t)
            used.add(k)
        out[key] = torch.cat(parts, 0) if len(parts) > 1 else parts[0]
    for k in sd:
        if k not in used:
            raise ValueError(f"{path}: unexpected key {k!r}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# VQGAN readers
# ---------------------------------------------------------------------------------------------------------------

def read_hfailab_vqgan(obj: Any, path: str, keep_discriminator: bool = False, **overrides):
    """(config, our state dict, report) from a loaded HFAiLab VQGAN file (see the module docstring)."""
    sd, top = _container_weights(obj, path, "model")
    report = LoadReport("hfailab-vqgan", path, container=top)
    if not keep_discriminator:
        for k in [k for k in sd if k.startswith("discriminator.")]:
            report.dropped[k] = "training-only discriminator"
            del sd[k]
    cfg = infer_hfailab_vqgan_config(sd, path, **overrides)
    report.consumed = list(sd)
    return cfg, sd, report


def read_taming_vqgan(obj: Any, path: str, **overrides):
    """(config, our state dict, report) from a loaded taming Lightning checkpoint (see the module docstring)."""
    sd, top = _container_weights(obj, path, "state_dict")
    report = LoadReport("taming-vqgan", path, container=top)
    if any(k.startswith("first_stage_model.") for k in sd):
        for k in sd:
            if not k.startswith("first_stage_model."):
                report.dropped[k] = "not the first stage (taming transformer checkpoint)"
        sd = {k: v for k, v in sd.items() if k.startswith("first_stage_model.")}
        prefix = "first_stage_model."
    else:
        prefix = ""
    for k in sd:
        if k.startswith(prefix + "loss."):
            report.dropped[k] = "training-only loss (LPIPS copy, discriminator)"
    inner = {k[len(prefix):]: v for k, v in sd.items() if not k.startswith(prefix + "loss.")}
    cfg = infer_taming_vqgan_config(inner, path, **overrides)
    ours = taming_to_ours(inner, cfg, path)
    report.consumed = [prefix + k for k in inner]
    return cfg, ours, report


# ---------------------------------------------------------------------------------------------------------------
# GPT reader
# ---------------------------------------------------------------------------------------------------------------

def infer_hfailab_gpt_config(sd: dict[str, Tensor], path: str = "<state dict>", **overrides) -> GPTConfig:
    """The GPTConfig of an HFAiLab-layout GPT state dict. n_head is not stored: n_embd // 64 unless given."""
    vocab, d = _need(sd, "tok_emb.weight", path, 2).shape
    pos = _need(sd, "pos_emb", path, 3)
    n_pos = pos.shape[1]
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos:
        raise ValueError(f"{path}: pos_emb has {n_pos} positions, not a square token grid")
    cond_dim = _need(sd, "cond_proj.weight", path, 2).shape[1]
    n_layer = 0
    while f"blocks.{n_layer}.encoder.linear1.weight" in sd:
        n_layer += 1
    if n_layer == 0:
        raise ValueError(f"{path}: missing key 'blocks.0.encoder.linear1.weight'")
    ffn = sd["blocks.0.encoder.linear1.weight"].shape[0]
    overrides = _checked_overrides(GPTConfig, overrides, path)
    if "n_head" not in overrides and d % 64:
        raise ValueError(f"{path}: width {d} is not a multiple of 64; give n_head explicitly")
    inferred = dict(vocab_size=vocab, n_embd=d, n_head=d // 64, n_pos=n_pos, grid=grid, cond_dim=cond_dim,
                    ffn_dim=ffn, n_layer=n_layer, ln_eps=1e-5)
    return _apply_overrides(PAPER.gpt, {**inferred, **overrides}, path)


def read_hfailab_gpt(obj: Any, path: str, **overrides):
    """(config, our state dict, report) from a loaded HFAiLab GPT file (see the module docstring)."""
    sd, top = _container_weights(obj, path, "model")
    report = LoadReport("hfailab-gpt", path, container=top)
    cfg = infer_hfailab_gpt_config(sd, path, **overrides)
    causal = torch.ones(cfg.n_pos, cfg.n_pos, dtype=torch.bool).triu(1)  # True = future = masked
    for k in [k for k in sd if re.fullmatch(r"blocks\.\d+\.mask", k)]:
        m = sd.pop(k)
        if tuple(m.shape) != (cfg.n_pos, cfg.n_pos):
            raise ValueError(f"{path}: key {k!r} has shape {list(m.shape)}, expected {[cfg.n_pos, cfg.n_pos]}")
        masked = m if m.dtype == torch.bool else (m != 0)  # bool (True = masked) or additive float (-inf)
        if not torch.equal(masked, causal):
            raise ValueError(f"{path}: {k!r} is not the causal mask (True above the diagonal) our GPT applies")
        report.dropped[k] = "causal mask buffer (checked; our attention applies it)"
    report.consumed = list(sd)
    return cfg, sd, report


# ---------------------------------------------------------------------------------------------------------------
# kind detection and the entry points
# ---------------------------------------------------------------------------------------------------------------

def _weights_of(obj: Any) -> dict:
    if isinstance(obj, dict):
        for entry in ("model", "state_dict"):
            if isinstance(obj.get(entry), dict):
                return obj[entry]
        return obj
    return {}


def detect_kind(path: str | os.PathLike, obj: Any = None, choices: tuple[str, ...] = KINDS) -> str:
    """The kind of a checkpoint: a folder by its files, a file by its container and key names.

    choices: the kinds the caller accepts in place of auto, listed when the kind cannot be told."""
    p = Path(path)
    if p.is_dir():
        if (p / "config.json").is_file():
            return "checkpoint"
        if (p / "open_clip_config.json").is_file():
            return "clip"
        raise ValueError(f"{p}: folder is neither our checkpoint (config.json) nor a saved CLIP "
                         f"(open_clip_config.json)")
    if obj is None:
        obj = safe_torch_load(p)
    sd = _weights_of(obj)
    keys = set(sd) if isinstance(sd, dict) else set()
    if "tok_emb.weight" in keys and "cond_proj.weight" in keys:
        return "hfailab-gpt"
    if "quantizer.embedding.weight" in keys:
        return "hfailab-vqgan"
    if "quantize.embedding.weight" in keys or "first_stage_model.quantize.embedding.weight" in keys:
        return "taming-vqgan"
    if any(str(k).startswith("visual.") for k in keys):
        raise ValueError(f"{p}: looks like CLIP weights; load them as kind 'clip' with the open_clip model name, "
                         f"e.g. ViT-B-32@{p} (ViT-B-32-quickgelu@{p} for OpenAI's own weights)")
    top = ", ".join(str(k) for k in list(obj)[:12]) if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(f"{p}: cannot tell the checkpoint kind (top-level: {top}); give it: one of {', '.join(choices)}")


_READERS = {"hfailab-vqgan": read_hfailab_vqgan, "hfailab-gpt": read_hfailab_gpt, "taming-vqgan": read_taming_vqgan}


def read_foreign(kind: str, path: str | os.PathLike, obj: Any = None, keep_discriminator: bool = False, **overrides):
    """(model class, config, our state dict, report) for a foreign checkpoint file of ``kind``."""
    from reference.gpt import GPT
    from reference.vqgan import VQGAN

    if kind not in _READERS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; known: {', '.join(CONVERTIBLE)}")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a folder; a {kind} checkpoint is a single file")
    if obj is None:
        obj = safe_torch_load(path)
    if kind == "hfailab-vqgan":
        overrides["keep_discriminator"] = keep_discriminator
    cfg, sd, report = _READERS[kind](obj, path, **overrides)
    return (GPT if kind == "hfailab-gpt" else VQGAN), cfg, sd, report


def build_foreign(kind: str, path: str | os.PathLike, obj: Any = None, keep_discriminator: bool = False,
                  **overrides):
    """(our model in eval mode on the CPU, report) for a foreign checkpoint file of ``kind``."""
    cls, cfg, sd, report = read_foreign(kind, path, obj, keep_discriminator, **overrides)
    keep = keep_discriminator and kind == "hfailab-vqgan"
    fresh = ("discriminator",) if cls.__name__ == "VQGAN" and not keep else ()
    model = _instantiate(cls, cfg, sd, os.fspath(path), fresh)
    return model.eval(), report


def load_pretrained(kind: str, path: str | os.PathLike, device: str | torch.device = "cpu", **overrides):
    """Our VQGAN / GPT (eval mode, on ``device``) from a public checkpoint or our own folder, or a ClipModel.

    kind: one of hfailab-vqgan, hfailab-gpt, taming-vqgan, checkpoint, clip, or "auto" (told apart from the file).
    overrides: config fields the file cannot tell (n_head, norm_groups, grid/resolution, ...), and
    keep_discriminator=True for the HFAiLab VQGAN. Errors are one line (ValueError / FileNotFoundError) naming the
    file and the first offending key.
    """
    spec = os.fspath(path)
    if kind == "clip":
        return _load_clip(spec, device)
    if not os.path.exists(spec):
        raise FileNotFoundError(f"checkpoint not found: {spec}")
    obj = None
    if kind == "auto":
        from reference.clip import is_torchscript_archive

        if not os.path.isdir(spec) and is_torchscript_archive(spec):
            raise ValueError(f"{spec} is a TorchScript archive (OpenAI's CLIP release format): load it as a clip "
                             f"component with its open_clip model name, e.g. path: ViT-B-32-quickgelu@{spec}")
        if not os.path.isdir(spec):
            obj = safe_torch_load(spec)
        kind = detect_kind(spec, obj)
        if kind == "clip":
            return _load_clip(spec, device)
    if kind == "checkpoint":
        return load_converted(spec, device)
    if kind not in _READERS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; known: auto, {', '.join(KINDS)}")
    model, _ = build_foreign(kind, spec, obj, **overrides)
    return model.to(device)


def _load_clip(spec: str, device):
    """``NAME@/path/weights`` (any open_clip architecture, weights by path) or a saved-CLIP folder."""
    from reference.clip import load_clip, load_saved_clip

    if os.path.isdir(spec):
        return load_saved_clip(spec, device)
    name, sep, file = spec.partition("@")
    if not sep:
        raise ValueError(f"CLIP weights need the open_clip model name: NAME@PATH, e.g. ViT-B-32@{spec} "
                         f"(ViT-B-32-quickgelu@{spec} for OpenAI's own weights, ViT-L-14@... for the evaluator)")
    return load_clip(name, file, device=device)


# ---------------------------------------------------------------------------------------------------------------
# conversion into our folder format
# ---------------------------------------------------------------------------------------------------------------

def sha256_file(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def convert(kind: str, src: str | os.PathLike, dst: str | os.PathLike, **overrides) -> Path:
    """Read a foreign checkpoint once and write our folder (model.safetensors + config.json + SHA256SUMS).

    config.json's meta records the source file, its sha256, the kind, the dropped keys and the ignored container
    entries; SHA256SUMS (``sha256sum -c`` format) covers model.safetensors and config.json.
    ``dst`` must be a new folder or an empty one (else ValueError, before the source is read); the folder is written
    beside it under a temporary name and renamed into place, so a failure leaves nothing behind (a write failure is
    an OSError naming ``dst``).
    """
    from reference.checkpoint import save_checkpoint

    if kind == "auto":
        kind = detect_kind(src, choices=CONVERTIBLE)
    if kind not in CONVERTIBLE:
        raise ValueError(f"cannot convert kind {kind!r}; convertible: {', '.join(CONVERTIBLE)}")
    src = os.fspath(src)
    if not os.path.isfile(src):
        raise FileNotFoundError(f"checkpoint not found: {src}")
    dst_path = _check_dst(dst)
    model, report = build_foreign(kind, src, **overrides)
    dropped = sorted(report.dropped)
    meta = {"converted_from": {"kind": kind, "path": os.path.abspath(src), "sha256": sha256_file(src),
                               "dropped_keys": len(dropped),
                               "dropped_prefixes": sorted({k.split(".")[0] for k in dropped}),
                               "ignored_entries": [e for e in report.container if e not in ("model", "state_dict")]}}
    if "discriminator" in meta["converted_from"]["dropped_prefixes"]:
        meta["converted_from"]["note"] = "discriminator freshly initialised (dropped from the source)"
    model_type = "gpt" if kind == "hfailab-gpt" else "vqgan"

    def write(folder: Path) -> None:
        save_checkpoint(folder, model, model_type, meta=meta)
        write_sums(folder)

    _write_folder(dst_path, write)
    return dst_path


def _check_dst(dst: str | os.PathLike) -> Path:
    """``dst`` as a Path, refused (ValueError, one line) unless it is a new folder or an empty one under folders."""
    refuse_blank_path("DST", dst)
    path = Path(dst)
    if os.path.lexists(path):
        if path.is_symlink() or not path.is_dir():  # a symlink, even to a folder, would be replaced, not written into
            raise ValueError(f"{path}: exists and is not a folder")
        if any(path.iterdir()):
            raise ValueError(f"{path}: exists and is not empty: choose a new folder or delete it")
    above = next(p for p in path.parents if os.path.lexists(p))
    if not above.is_dir():
        raise ValueError(f"{path}: {above} is not a folder")
    return path


def _write_folder(dst: Path, write) -> None:
    """``write(folder)`` into a fresh hidden folder beside ``dst``, renamed to ``dst`` once complete. On any failure
    the temporary folder (and any parent folder made for it) is removed and nothing is left at ``dst``; a failure to
    write (read-only, full disk, ...) is an OSError naming ``dst``."""
    from safetensors import SafetensorError

    made = [p for p in dst.parents if not os.path.lexists(p)]  # deepest first
    tmp = None
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        fresh = dst.parent / f".{dst.name}.tmp-{secrets.token_hex(4)}"
        fresh.mkdir()  # not tempfile.mkdtemp: its mode 0700 would become dst's
        tmp = fresh
        write(tmp)
        os.replace(tmp, dst)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(err, (OSError, SafetensorError)):
            reason = err.strerror if isinstance(err, OSError) and err.strerror else first_line(err)
            raise OSError(f"{dst}: cannot write the converted checkpoint: {reason}") from None
        raise


SUMMED_FILES = ("model.safetensors", "config.json")  # what a converted folder's SHA256SUMS must cover


def write_sums(folder: Path) -> None:
    lines = [f"{sha256_file(folder / n)}  {n}\n" for n in SUMMED_FILES]
    tmp = folder / (SUMS_FILE + ".tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, folder / SUMS_FILE)


def verify_sums(folder: str | os.PathLike) -> None:
    """Check a converted folder against its SHA256SUMS (ValueError naming the first file that differs, or one that
    the sums should list and do not: an emptied or cut sums file verifies nothing)."""
    folder = Path(folder)
    sums = folder / SUMS_FILE
    if not sums.is_file():
        raise FileNotFoundError(f"{folder}: no {SUMS_FILE}")
    entries = []  # (digest, name)
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise ValueError(f"{sums}: malformed line {line.strip()[:80]!r} (expected 'SHA256  NAME')")
        entries.append((parts[0], parts[1].strip().lstrip("*")))
    unlisted = [n for n in SUMMED_FILES if n not in {name for _, name in entries}]
    if unlisted:
        raise ValueError(f"{sums}: lists no digest for {', '.join(unlisted)} (cut or emptied; convert again)")
    for digest, name in entries:
        target = folder / name
        if not target.is_file():
            raise FileNotFoundError(f"{folder}: {name} listed in {SUMS_FILE} is missing")
        if sha256_file(target) != digest:
            raise ValueError(f"{target}: sha256 differs from {SUMS_FILE} (corrupt or modified)")


def load_converted(folder: str | os.PathLike, device="cpu", verify: bool = True):
    """Our checkpoint folder -> model (eval mode); verifies SHA256SUMS when present (and verify=True)."""
    from reference.checkpoint import load_checkpoint

    folder = Path(folder)
    if verify and (folder / SUMS_FILE).is_file():
        verify_sums(folder)
    model, _, _ = load_checkpoint(folder, map_location=device)
    return model.eval()


__all__ = [
    "KINDS", "CONVERTIBLE", "LoadReport", "Source", "load_pretrained", "convert", "detect_kind", "read_foreign",
    "build_foreign", "read_hfailab_vqgan", "read_taming_vqgan", "read_hfailab_gpt", "infer_hfailab_vqgan_config",
    "infer_taming_vqgan_config", "infer_hfailab_gpt_config", "taming_key_map", "taming_to_ours", "verify_sums",
    "load_converted", "sha256_file", "write_sums",
]
