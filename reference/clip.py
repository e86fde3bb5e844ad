"""CLIP behind one interface: `encode_image` / `encode_text` -> unit-norm embeddings.

Backed by open_clip. Three ways to get a `ClipModel`:
  load_clip(name, weights_path)       any open_clip architecture, weights from a local file: a state dict
                                      (.pt/.pth/.bin/.safetensors) or OpenAI's TorchScript release archive
  load_clip(name, None, pretrained_tag=tag)   an open_clip hub tag (needs the hub; fails fast offline)
  train_clip(images, captions, preset="tiny")   a tiny open_clip-architecture CLIP trained contrastively
                                      on captioned pairs: the offline stand-in for CLIP's web pretraining
and `save_clip` / `load_saved_clip` store one as open_clip's own "local-dir" format
(`open_clip_config.json` + `open_clip_model.safetensors`), so plain open_clip can load it too:
`open_clip.create_model_and_transforms("local-dir:" + dir)`.

Image paths (all give unit-norm [B,D] embeddings):
  encode_image(uint8)              the proper path: resize to the CLIP input size exactly as open_clip's
                                   eval transform does (shortest side, centre crop), then mean/std; no grad
  encode_image_float(x01, normalise=True)   the same on float images in [0,1], differentiable (for the
                                   paper's CLIP-reconstruction loss); normalise=False skips mean/std
  encode_image_unnormalised(x)     the public CLIP-GEN demo's quirk: its decoder output goes through a
                                   bilinear resize to the CLIP input size and straight into CLIP, with no
                                   mean/std normalisation (here x is a decoder output in [-1,1])
"""
from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import sys
import time
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from open_clip.transform import PreprocessCfg
from torch import Tensor

from reference.errors import first_line

CONFIG_FILE = "open_clip_config.json"  # names open_clip's "local-dir:" loader looks for
WEIGHTS_FILE = "open_clip_model.safetensors"
FORMAT_VERSION = 1


# ---- presets ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipPreset:
    """A tiny open_clip architecture (an open_clip model JSON) and its training defaults."""

    model_cfg: dict  # {"embed_dim", "vision_cfg", "text_cfg"} exactly as in open_clip/model_configs/*.json
    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.1
    warmup_frac: float = 0.1


PRESETS: dict[str, ClipPreset] = {
    # The conditioning CLIP: open_clip's ModifiedResNet (the RN50 family) shrunk for 32 px images
    # (32 px -> 1x1 after the /32 stem+stages, attention pooling), 2-layer causal text transformer
    # over open_clip's BPE vocabulary, 16-token context, 128-d embedding.
    "tiny": ClipPreset(
        model_cfg={
            "embed_dim": 128,
            "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
        },
        steps=150, batch_size=256, lr=2e-3,
    ),
    # The evaluator CLIP: wider image tower (24 vs 16), a narrower text tower and a 96-d embedding;
    # suites train it from a different seed so it does not share the conditioning CLIP's quirks.
    # (A ViT with 8 px patches learned more slowly on 2 CPU cores: 98.5% after 200 steps.)
    "tiny-eval": ClipPreset(
        model_cfg={
            "embed_dim": 96,
            "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 24, "patch_size": None},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 96, "heads": 3, "layers": 2},
        },
        steps=150, batch_size=256, lr=2e-3,
    ),
}


# ---- the wrapper -----------------------------------------------------------------------------
class ClipModel:
    """An open_clip model + its tokenizer + its preprocessing, as unit-norm encoders.

    The model is frozen (requires_grad False) and in eval mode; gradients still flow to the
    *inputs* of `encode_image_float` / `encode_image_unnormalised`.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, model_cfg: dict, preprocess_cfg: dict,
                 name: str, meta: dict | None = None):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg
        pp = {**asdict(PreprocessCfg()), **preprocess_cfg}
        self.preprocess_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in pp.items()}  # JSON gives lists
        self._name = name
        self.meta = dict(meta or {})

    # -- properties
    @property
    def name(self) -> str:
        return self._name

    @property
    def embed_dim(self) -> int:
        return int(self.model_cfg["embed_dim"])

    @property
    def image_size(self) -> int:
        size = self.preprocess_cfg["size"]
        return int(size if isinstance(size, int) else size[0])

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().item())

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> "ClipModel":
        self.model.to(device)
        return self

    # -- images
    def preprocess(self, x01: Tensor, normalise: bool = True) -> Tensor:
        """Float [B,3,H,W] in [0,1] -> the model's input, as open_clip's eval transform makes it.

        Differentiable. Resize uses the preprocess config's interpolation with antialiasing
        (torchvision's tensor twin of the PIL resize open_clip applies), then a centre crop.
        """
        s = self.image_size
        h, w = x01.shape[-2:]
        mode = self.preprocess_cfg["resize_mode"]
        interp = TF.InterpolationMode(self.preprocess_cfg["interpolation"])
        if (h, w) != (s, s):
            if mode == "squash" or h == w:
                x01 = TF.resize(x01, [s, s], interpolation=interp, antialias=True)
            elif mode == "shortest":
                x01 = TF.resize(x01, s, interpolation=interp, antialias=True)
                x01 = TF.center_crop(x01, [s, s])
            else:
                raise ValueError(f"resize_mode {mode!r} is only supported for square images; got {h}x{w}")
        if normalise:
            mean = torch.tensor(self.preprocess_cfg["mean"], dtype=x01.dtype, device=x01.device)
            std = torch.tensor(self.preprocess_cfg["std"], dtype=x01.dtype, device=x01.device)
            x01 = (x01 - mean[:, None, None]) / std[:, None, None]
        return x01

    def _visual(self, x: Tensor) -> Tensor:
        return F.normalize(self.model.encode_image(x), dim=-1)

    def encode_image_float(self, x01: Tensor, normalise: bool = True) -> Tensor:
        """Float [B,3,H,W] in [0,1] -> [B,D] unit norm; differentiable w.r.t. x01 (one batch)."""
        self.model.eval()
        return self._visual(self.preprocess(x01.to(self.device, torch.float32), normalise=normalise))

    def encode_image(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """uint8 [B,3,H,W] -> float [B,D] unit norm (no grad, batched, on the model's device)."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"encode_image wants uint8 [B,3,H,W], got {images.dtype} {tuple(images.shape)}")
        out = []
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                chunk = images[start:start + batch_size].to(self.device).float() / 255.0
                out.append(self.encode_image_float(chunk))
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim, device=self.device)

    def encode_image_unnormalised(self, x: Tensor) -> Tensor:
        """The public demo's quirk: float [B,3,H,W] in [-1,1], bilinear resize, NO mean/std -> [B,D]."""
        self.model.eval()
        s = self.image_size
        x = x.to(self.device, torch.float32)
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return self._visual(x)

    # -- text
    def tokenize(self, captions: list[str]) -> Tensor:
        return self.tokenizer(list(captions))

    def encode_text(self, captions: list[str], batch_size: int = 256) -> Tensor:
        """list of B captions -> float [B,D] unit norm (no grad, batched)."""
        if isinstance(captions, str):
            raise ValueError("encode_text wants a list of captions, got one string")
        self.model.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(captions), batch_size):
                tokens = self.tokenize(captions[start:start + batch_size]).to(self.device)
                out.append(F.normalize(self.model.encode_text(tokens), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim, device=self.device)

    def __repr__(self) -> str:
        return f"ClipModel({self.name!r}, embed_dim={self.embed_dim}, image_size={self.image_size})"


def _build(model_cfg: dict, name: str, preprocess_cfg: dict | None = None, meta: dict | None = None) -> ClipModel:
    """A randomly initialised open_clip CLIP from a model JSON (used for the tiny presets)."""
    model = open_clip.model.CLIP(**model_cfg)
    pp = {**asdict(PreprocessCfg()), "size": model_cfg["vision_cfg"]["image_size"],
          **(preprocess_cfg or {})}
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=model_cfg["text_cfg"]["context_length"])
    return ClipModel(model, tokenizer, model_cfg, pp, name, meta)


def init_clip(preset: str = "tiny") -> ClipModel:
    """A randomly initialised CLIP of a preset's architecture (untrained; for tests and training)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown CLIP preset {preset!r}; known: {', '.join(PRESETS)}")
    return _build(PRESETS[preset].model_cfg, f"clipgen-{preset}", meta={"preset": preset})


# ---- loading ---------------------------------------------------------------------------------
def load_clip(model_name: str, weights_path: str | None, device: str = "cpu",
              pretrained_tag: str | None = None) -> ClipModel:
    """Any open_clip architecture by name, weights from a local file (or a hub tag where reachable).

    weights_path may be
      - a state dict in open_clip's (= OpenAI's) key layout: torch.save .pt/.pth/.bin, or .safetensors
        (read by open_clip with torch.load(weights_only=True));
      - OpenAI's released TorchScript archive (e.g. ViT-B-32.pt, what `clip.load` downloads), told apart by
        its zip layout (constants.pkl + code/): read with torch.jit.load, and only its state dict is used.
    Either way the architecture, activation and preprocessing come from `model_name`, and the file must fit
    it: OpenAI's weights need the `-quickgelu` names (ViT-B-32-quickgelu, RN50-quickgelu, ...). A file that
    does not fit, or cannot be read, raises one ValueError (FileNotFoundError when missing) naming the file.
    """
    if open_clip.get_model_config(model_name) is None:
        known = open_clip.list_models()
        raise ValueError(f"unknown open_clip model {model_name!r}; known include: {', '.join(known[:12])}, ... "
                         f"({len(known)} in all, see open_clip.list_models())")
    if weights_path is not None and pretrained_tag is not None:
        raise ValueError("give either a weights path or a pretrained tag, not both")
    if weights_path is not None:
        if not os.path.isfile(weights_path):
            raise FileNotFoundError(f"CLIP weights file not found: {weights_path}")
        source = str(weights_path)
    elif pretrained_tag is not None:
        source = pretrained_tag
        if not open_clip.get_pretrained_cfg(model_name, pretrained_tag):
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            raise ValueError(f"{model_name!r} has no pretrained tag {pretrained_tag!r}; known: {', '.join(tags) or 'none'}")
    else:
        raise ValueError(f"load_clip({model_name!r}) needs a weights path (or a pretrained tag)")
    meta = {"source": str(weights_path or pretrained_tag)}
    if weights_path is not None and is_torchscript_archive(weights_path):
        model = _load_torchscript_clip(model_name, str(weights_path)).to(device)
        meta["format"] = "torchscript"
    else:
        model = _create_with_weights(model_name, source, pretrained_tag, device)
    model_cfg = open_clip.get_model_config(model_name)
    pp = open_clip.get_model_preprocess_cfg(model)
    tokenizer = open_clip.get_tokenizer(model_name)
    return ClipModel(model, tokenizer, model_cfg, pp, model_name, meta)


def _create_with_weights(model_name: str, source: str, pretrained_tag: str | None, device) -> torch.nn.Module:
    """open_clip's own loader: a state dict file by path, or a hub tag."""
    try:
        model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=source, device=device)
    except (RuntimeError, OSError, pickle.UnpicklingError, EOFError) as err:
        if pretrained_tag is None:
            raise ValueError(f"could not load {model_name!r} from {source}: {first_line(err)}") from None
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        why = "the hub is switched off (HF_HUB_OFFLINE=1)" if offline else "the hub is unreachable"
        raise ValueError(f"cannot fetch open_clip weights {model_name}/{pretrained_tag}: {why}; download the "
                         f"weights file elsewhere and load it by path instead (weights_path=/path/to/file.pt or "
                         f".safetensors; in a suite: path: '{model_name}@/abs/path/to/file.pt')") from None
    return model


# -- OpenAI's TorchScript release archives
# OpenAI's CLIP model stores these three ints in its state dict; open_clip's CLIP does not.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a zip laid out as torch.jit.save writes it: <archive>/constants.pkl (and <archive>/code/...).

    A torch.save checkpoint is a zip too, but has no constants.pkl (torch.load tells the two apart the same way).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _load_torchscript_clip(model_name: str, path: str) -> torch.nn.Module:
    """open_clip's `model_name` on the CPU with the weights of a TorchScript CLIP archive at `path`.

    Only the archive's state dict is used (OpenAI's key names are open_clip's); its methods are never called. The
    state dict must fit `model_name` key for key and shape for shape, and the archive's MLP activation
    (QuickGELU for OpenAI's models) must be the one `model_name` builds; otherwise one ValueError says what the
    file holds and which open_clip names would fit it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.x marks torch.jit as deprecated
        try:
            archive = torch.jit.load(path, map_location="cpu")
            state = {k: v.detach() for k, v in archive.state_dict().items()}
        except Exception as err:  # noqa: BLE001 - whatever torch.jit.load raises, the file is unreadable
            raise ValueError(f"{path}: a TorchScript archive (zip with constants.pkl) that torch.jit.load cannot "
                             f"read (truncated or corrupt?): {first_line(err)}") from None
    quick_gelu = _torchscript_quick_gelu(archive)
    for key in _OPENAI_EXTRA_KEYS:
        state.pop(key, None)
    found = _describe_openai_state_dict(state)
    if found is None:
        keys = ", ".join(list(state)[:8]) or "none"
        raise ValueError(f"{path}: a TorchScript archive, but not a CLIP in OpenAI's layout "
                         f"(no visual./text_projection weights; its first keys: {keys})")

    with _no_random_init_warning():
        model = open_clip.create_model(model_name, device="cpu")
    expected = model.state_dict()
    recomputed = {name for name, _ in model.named_buffers()} - set(expected)  # e.g. attn_mask, built at init
    state = {k: v for k, v in state.items() if k not in recomputed}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or reshaped:
        want = _describe_openai_state_dict(expected)
        detail = (f"{reshaped[0]} is {tuple(state[reshaped[0]].shape)} in the file, "
                  f"{tuple(expected[reshaped[0]].shape)} in {model_name}" if reshaped else
                  f"{model_name} lacks {unexpected[0]}" if unexpected else f"the file lacks {missing[0]}")
        raise ValueError(f"{path} holds a CLIP with {_format_arch(found)}, but {model_name!r} has "
                         f"{_format_arch(want) if want else 'another layout'} ({detail}); "
                         f"{_names_that_fit(found, quick_gelu)}")
    if quick_gelu is not None and quick_gelu != _quick_gelu_of(model_name):
        act, other = ("QuickGELU", "GELU") if quick_gelu else ("GELU", "QuickGELU")
        raise ValueError(f"{path} was built with {act} activations (OpenAI's CLIPs use QuickGELU), but "
                         f"{model_name!r} uses {other}, which would give different embeddings; "
                         f"{_names_that_fit(found, quick_gelu)}")
    model.load_state_dict(state, strict=True)  # copies (and casts OpenAI's fp16 tensors) into the fp32 model
    return model.eval()


def _torchscript_quick_gelu(archive: torch.nn.Module) -> bool | None:
    """Whether the archive's transformer MLPs use QuickGELU (True) or GELU (False); None when it cannot tell.

    Both OpenAI's and open_clip's residual blocks name the activation `mlp.gelu`; a loaded TorchScript module
    keeps each submodule's class name as `original_name`.
    """
    kinds = {getattr(module, "original_name", None) for name, module in archive.named_modules()
             if name.endswith("mlp.gelu")}
    if kinds == {"QuickGELU"}:
        return True
    if kinds == {"GELU"}:
        return False
    return None


def _quick_gelu_of(model_name: str) -> bool:
    return bool((open_clip.get_model_config(model_name) or {}).get("quick_gelu", False))


def _count_blocks(state: dict, prefix: str) -> int:
    """Distinct i in keys `<prefix>.<i>.` (number of residual blocks)."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return len({m.group(1) for k in state if (m := pattern.match(k))})


def _describe_openai_state_dict(state: dict) -> dict | None:
    """The architecture an OpenAI-layout CLIP state dict implies (as open_clip's
    build_model_from_openai_state_dict reads it), or None when the keys are not that layout."""
    try:
        text = {"text_width": state["ln_final.weight"].shape[0],
                "text_layers": _count_blocks(state, "transformer.resblocks"),
                "context_length": state["positional_embedding"].shape[0],
                "vocab_size": state["token_embedding.weight"].shape[0],
                "embed_dim": state["text_projection"].shape[1]}
        if "visual.conv1.weight" in state and "visual.positional_embedding" in state:  # ViT
            conv = state["visual.conv1.weight"]
            grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = {"vision": "ViT", "patch_size": conv.shape[-1], "width": conv.shape[0],
                      "layers": _count_blocks(state, "visual.transformer.resblocks"),
                      "image_size": conv.shape[-1] * grid}
        elif "visual.attnpool.positional_embedding" in state:  # ModifiedResNet (RN50 family)
            grid = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = {"vision": "ResNet", "patch_size": None, "width": state["visual.layer1.0.conv1.weight"].shape[0],
                      "layers": tuple(_count_blocks(state, f"visual.layer{i}") for i in (1, 2, 3, 4)),
                      "image_size": 32 * grid}
        else:
            return None
    except (KeyError, IndexError, AttributeError):
        return None
    return {**vision, **text}


def _describe_model_cfg(cfg: dict) -> dict | None:
    """The same description for an open_clip model JSON (None for timm / Hugging Face towers)."""
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if vision.get("timm_model_name") or text.get("hf_model_name"):
        return None
    try:
        v, t = open_clip.model.CLIPVisionCfg(**vision), open_clip.model.CLIPTextCfg(**text)
    except TypeError:
        return None
    resnet = isinstance(v.layers, (tuple, list))
    size = v.image_size if isinstance(v.image_size, int) else tuple(v.image_size)
    if isinstance(size, tuple) and len(set(size)) == 1:
        size = size[0]
    return {"vision": "ResNet" if resnet else "ViT", "patch_size": None if resnet else v.patch_size,
            "width": v.width, "layers": tuple(v.layers) if resnet else v.layers, "image_size": size,
            "text_width": t.width, "text_layers": t.layers, "context_length": t.context_length,
            "vocab_size": t.vocab_size, "embed_dim": cfg.get("embed_dim")}


def _names_that_fit(arch: dict, quick_gelu: bool | None) -> str:
    """The registered open_clip model names whose config builds `arch` (and the activation, when known)."""
    names = [name for name in open_clip.list_models()
             if _describe_model_cfg(open_clip.get_model_config(name) or {}) == arch
             and (quick_gelu is None or _quick_gelu_of(name) == quick_gelu)]
    if not names:
        return "no registered open_clip name fits it (register a model config JSON with open_clip.add_model_config)"
    return f"open_clip names that fit it: {', '.join(names[:6])}"


def _format_arch(arch: dict) -> str:
    if arch["vision"] == "ViT":
        vision = (f"a ViT image tower (patch {arch['patch_size']}, width {arch['width']}, layers {arch['layers']}, "
                  f"{arch['image_size']} px)")
    else:
        vision = (f"a ResNet image tower (blocks {list(arch['layers'])}, width {arch['width']}, "
                  f"{arch['image_size']} px)")
    return (f"{vision}, a text tower (width {arch['text_width']}, layers {arch['text_layers']}, "
            f"context {arch['context_length']}, vocabulary {arch['vocab_size']}) and {arch['embed_dim']}-d embeddings")


@contextmanager
def _no_random_init_warning():
    """open_clip.create_model logs "Model initialized randomly" when no weights are given; ours come next."""
    def drop(record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def save_clip(clip: ClipModel, directory: str) -> None:
    """Write open_clip's local-dir format: open_clip_config.json + open_clip_model.safetensors."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in clip.model.state_dict().items()}
    save_file(state, os.path.join(directory, WEIGHTS_FILE))
    config = {"model_cfg": clip.model_cfg, "preprocess_cfg": clip.preprocess_cfg,
              "clipgen": {"format": FORMAT_VERSION, "name": clip.name, "meta": clip.meta}}
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=1)


def load_saved_clip(directory: str, device: str = "cpu") -> ClipModel:
    """Read a directory written by `save_clip` (or any open_clip local-dir with a config and weights)."""
    config_path = Path(directory) / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"not a saved CLIP: {config_path} is missing (write one with save_clip)")
    with open(config_path) as f:
        config = json.load(f)
    if not any(Path(directory).glob("*.safetensors")) and not any(Path(directory).glob("*.bin")) \
            and not any(Path(directory).glob("*.pth")):
        raise FileNotFoundError(f"no CLIP weights (.safetensors/.bin/.pth) next to {config_path}")
    source = "local-dir:" + str(Path(directory).resolve())
    model, _, _ = open_clip.create_model_and_transforms(source, device=device)
    tokenizer = open_clip.get_tokenizer(source)
    extra = config.get("clipgen", {})
    pp = open_clip.get_model_preprocess_cfg(model)
    return ClipModel(model, tokenizer, config["model_cfg"], pp, extra.get("name", str(directory)),
                     extra.get("meta", {}))


# ---- training (the offline stand-in for CLIP's web pretraining) ---------------------------------
def clip_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor) -> Tensor:
    """The standard one-positive CLIP loss: pair i is the only positive of row i and of column i.

    Duplicate captions in a batch count as negatives, as in CLIP's web pretraining; this keeps the
    text embeddings from collapsing onto class prototypes (so a real modality gap can form).
    """
    logits = logit_scale * image_emb @ text_emb.t()  # [B,B]
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def train_clip(images_uint8: Tensor, captions: list[str], preset: str = "tiny", steps: int | None = None,
               batch_size: int | None = None, lr: float | None = None, seed: int = 0, progress: bool = True,
               device: str = "cpu") -> ClipModel:
    """Train a tiny open_clip CLIP contrastively on (image, caption) pairs; returns it frozen, in eval mode.

    AdamW (betas 0.9/0.98, weight decay on matrices only), linear warm-up then cosine decay,
    learnable temperature clamped at 100, batches drawn by epoch-wise shuffling.
    Per-step losses land in `clip.meta["losses"]`.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown CLIP preset {preset!r}; known: {', '.join(PRESETS)}")
    if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4 or images_uint8.shape[1] != 3:
        raise ValueError(f"train_clip wants uint8 [N,3,H,W] images, got {images_uint8.dtype} {tuple(images_uint8.shape)}")
    if len(captions) != images_uint8.shape[0]:
        raise ValueError(f"train_clip: {images_uint8.shape[0]} images but {len(captions)} captions")
    p = PRESETS[preset]
    steps = p.steps if steps is None else steps
    batch_size = min(p.batch_size if batch_size is None else batch_size, len(captions))
    lr = p.lr if lr is None else lr
    if steps < 1 or batch_size < 2:
        raise ValueError(f"train_clip needs steps >= 1 and batch_size >= 2 (got {steps}, {batch_size})")
    torch.set_flush_denormal(True)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)

    clip = init_clip(preset)
    model = clip.model.to(device).requires_grad_(True).train()
    tokens = clip.tokenize(captions)  # [N, context] int64
    n = images_uint8.shape[0]

    # weight decay on matrices only: not on biases, norms, embeddings, the temperature
    decayed = {name for name, q in model.named_parameters() if q.ndim >= 2 and "embedding" not in name}
    decay = [q for name, q in model.named_parameters() if name in decayed]
    no_decay = [q for name, q in model.named_parameters() if name not in decayed]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": p.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, int(p.warmup_frac * steps))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    losses: list[float] = []
    order = torch.randperm(n, generator=gen)
    cursor = 0
    t0 = time.perf_counter()
    for step in range(steps):
        if cursor + batch_size > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor:cursor + batch_size]
        cursor += batch_size
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        x = clip.preprocess(images_uint8[idx].to(device).float() / 255.0)
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(model.encode_text(tokens[idx].to(device)), dim=-1)
        loss = clip_loss(img, txt, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.item()))
        if progress and (step + 1) % max(1, steps // 10) == 0:
            print(f"clip {preset}: step {step + 1}/{steps} loss {losses[-1]:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    clip.model.eval().requires_grad_(False)
    clip.meta = {"preset": preset, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                 "train_pairs": n, "train_seconds": round(time.perf_counter() - t0, 2), "losses": losses}
    return clip


# ---- diagnostics -----------------------------------------------------------------------------
def zero_shot_accuracy(clip: ClipModel, images_uint8: Tensor, captions: list[str],
                       candidates: list[str] | None = None) -> float:
    """Fraction of images whose own caption is the nearest of `candidates` (default: the distinct captions)."""
    candidates = sorted(set(captions)) if candidates is None else list(candidates)
    index = {c: i for i, c in enumerate(candidates)}
    missing = [c for c in set(captions) if c not in index]
    if missing:
        raise ValueError(f"zero_shot_accuracy: caption {missing[0]!r} is not among the candidates")
    img = clip.encode_image(images_uint8)  # [N,D]
    txt = clip.encode_text(candidates)  # [C,D]
    pred = (img @ txt.t()).argmax(dim=1).cpu()
    truth = torch.tensor([index[c] for c in captions])
    return float((pred == truth).float().mean().item())


def modality_gap(clip: ClipModel, images_uint8: Tensor, captions: list[str]) -> dict:
    """How far CLIP's image and text embeddings sit apart, over N (image, caption) pairs.

    image_text_cosine        mean cosine of each image with its own caption            [-1, 1]
    image_image_cosine       mean cosine over pairs of distinct images sharing a caption [-1, 1]
                             (nan when no caption repeats)
    mean_difference_norm     || mean(image embeddings) - mean(text embeddings) ||     [0, 2]
                             (text embedded once per pair, so both means weight the same pairs)
    n                        number of pairs
    """
    if len(captions) != images_uint8.shape[0]:
        raise ValueError(f"modality_gap: {images_uint8.shape[0]} images but {len(captions)} captions")
    img = clip.encode_image(images_uint8).cpu()  # [N,D]
    distinct = sorted(set(captions))
    index = {c: i for i, c in enumerate(distinct)}
    which = torch.tensor([index[c] for c in captions])  # [N] caption id of each pair
    txt = clip.encode_text(distinct).cpu()[which]  # [N,D]
    sums = torch.zeros(len(distinct), img.shape[1]).index_add_(0, which, img)  # [C,D]
    counts = torch.bincount(which, minlength=len(distinct)).float()  # [C]
    # sum over ordered pairs i != j in a group = |sum|^2 - sum |e_i|^2 = |sum|^2 - k (unit vectors)
    pair_sums = (sums.pow(2).sum(1) - counts)
    pairs = counts * (counts - 1)
    image_image = float(pair_sums.sum() / pairs.sum()) if pairs.sum() > 0 else float("nan")
    return {
        "image_text_cosine": float((img * txt).sum(1).mean()),
        "image_image_cosine": image_image,
        "mean_difference_norm": float((img.mean(0) - txt.mean(0)).norm()),
        "n": int(img.shape[0]),
    }
