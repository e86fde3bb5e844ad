"""Shared machinery for feature-based metrics (FD, KID): statistics, the Fréchet distance,
the cached reference statistics, and a streaming base class.

Statistics are float64. The trace of the matrix square root uses eigenvalues:
tr sqrt(S1 S2) = sum_i sqrt(lambda_i(L^T S2 L)) with S1 = L L^T (Cholesky; or R = S1^(1/2) when
S1 is singular): the products share their eigenvalues, and L^T S2 L is symmetric positive
semi-definite, so `eigvalsh` applies.
`trace_sqrt_product_sqrtm` is the plain twin through scipy's sqrtm, kept for tests and
the benchmark.
"""
from __future__ import annotations

import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.api import RunContext, SampleBatch
from bench.cache import (NPZ_READ_ERRORS, atomic_write_bytes, canonical_json, code_fingerprint, code_home, key_hash,
                         mark_used, platform_key, stats_file_key)
from bench.features import build_extractor, gaussian_blur

STATS_FORMAT = 1  # bump when the stored layout changes (the code computing it is in the key)


# ---- statistics ----------------------------------------------------------------------------
@dataclass
class FeatureStats:
    features: np.ndarray  # [N,D] as extracted (kept for KID)
    mu: np.ndarray  # [D] float64
    sigma: np.ndarray  # [D,D] float64, ddof=1

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


def feature_stats(features: np.ndarray | Tensor) -> FeatureStats:
    feats = np.asarray(features.numpy() if isinstance(features, Tensor) else features)
    f64 = feats.astype(np.float64)
    if f64.ndim != 2 or f64.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors [N,D], got shape {f64.shape}")
    return FeatureStats(feats, f64.mean(axis=0), np.cov(f64, rowvar=False))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr sqrt(s1 @ s2) for symmetric PSD s1, s2, by eigenvalues (float64).

    With a Cholesky factor s1 = L L^T (or of s2: s1 s2 and s2 s1 share eigenvalues), the eigenvalues
    of s1 s2 are those of the symmetric L^T s2 L: one Cholesky and one `eigvalsh`, no eigenvectors.
    When neither is positive definite (n <= d), R = s1^(1/2) from `eigh` takes L's place.
    """
    a, b = np.asarray(s1, dtype=np.float64), np.asarray(s2, dtype=np.float64)
    for x, y in ((a, b), (b, a)):
        try:
            low = np.linalg.cholesky(x)
        except np.linalg.LinAlgError:
            continue
        m = low.T @ y @ low
        break
    else:
        r = _psd_sqrt(a)
        m = r @ b @ r
    m = (m + m.T) / 2  # symmetric up to rounding; make it exactly so for eigvalsh
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(m), 0.0, None)).sum())


def trace_sqrt_product_sqrtm(s1: np.ndarray, s2: np.ndarray) -> float:
    """The plain twin: scipy.linalg.sqrtm of the product (slow at 2048-d)."""
    from scipy import linalg

    root = linalg.sqrtm(np.asarray(s1, dtype=np.float64) @ np.asarray(s2, dtype=np.float64))
    return float(np.real(np.trace(root)))


def trace_sqrt_product_of_features(x1: np.ndarray, x2: np.ndarray) -> float:
    """tr sqrt(S1 S2) for the ddof=1 covariances of feature sets x1 [n1,D] and x2 [n2,D], never forming them.

    S_i = C_i^T C_i / (n_i - 1) with C_i the centred features, and the nonzero eigenvalues of C1^T C1 C2^T C2
    are those of (C1 C2^T)(C1 C2^T)^T, so the trace is the sum of the singular values of the [n1,n2] matrix
    C1 C2^T over sqrt((n1 - 1)(n2 - 1)). With fewer samples than dimensions (the rank-deficient case) that is
    a small SVD in place of D x D eigenproblems: 384 1280-d samples a side, 0.5-0.6 s -> 0.02 s (float64).
    """
    c1, c2 = (np.asarray(x, dtype=np.float64) for x in (x1, x2))
    c1, c2 = c1 - c1.mean(axis=0), c2 - c2.mean(axis=0)
    product = c1 @ c2.T if c1.shape[0] >= c2.shape[0] else c2 @ c1.T  # tall: the same singular values
    singular = np.linalg.svd(product, compute_uv=False)
    return float(singular.sum() / np.sqrt((c1.shape[0] - 1) * (c2.shape[0] - 1)))


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray,
                     trace_sqrt: float | None = None) -> float:
    """||mu1 - mu2||^2 + tr(s1) + tr(s2) - 2 tr sqrt(s1 s2), in float64 (trace_sqrt: tr sqrt(s1 s2) if known)."""
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    if trace_sqrt is None:
        trace_sqrt = trace_sqrt_product(s1, s2)
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)
    return max(value, 0.0) if value > -1e-9 * (np.trace(s1) + np.trace(s2) + 1.0) else value


def frechet_distance_of(a: FeatureStats, b: FeatureStats) -> float:
    """The Fréchet distance between two feature sets: through the features' [n_a,n_b] cross product when either
    has fewer samples than dimensions, else through the covariances (`frechet_distance`, the plain twin)."""
    if min(a.n, b.n) < a.dim:
        trace_sqrt = trace_sqrt_product_of_features(a.features, b.features)
        # LAPACK's SVD can return NaN when the CPU flushes denormals to zero, which bench turns on for training
        # speed (torch.set_flush_denormal): seen once, on a wide [500, 5000] product of EfficientNet features of
        # near-duplicate images (its transpose was fine, hence the tall product). Then take the covariance route.
        if np.isfinite(trace_sqrt):
            return frechet_distance(a.mu, a.sigma, b.mu, b.sigma, trace_sqrt)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


# ---- cached reference statistics ---------------------------------------------------------------
def reference_stats(ctx: RunContext, extractor: Any, blur: float, batch_size: int) -> tuple[FeatureStats, bool]:
    """Features and statistics of the reference images, from `<cache_dir>/stats/<sha>.npz` when there.

    The key names the reference set (ctx.reference_key()), the extractor (weights and resize policy)
    and the blur radius; the count is part of the reference key. Returns (stats, was_cached).
    """
    key = {"format": STATS_FORMAT, "reference": ctx.reference_key(), "extractor": extractor.identity(),
           "blur": blur, "code": code_fingerprint(__name__, *map(code_home, (type(extractor).__module__,
                                                                              *ctx.dataset.code_modules()))),
           "platform": platform_key(ctx.device), "batch_size": batch_size}
    path = Path(ctx.cache_dir) / "stats" / f"{key_hash(key)}.npz"
    if stats_file_key(path) == json.loads(canonical_json(key)):  # else rewritten below
        try:
            with np.load(path, allow_pickle=False) as z:
                stats = FeatureStats(z["features"], z["mu"], z["sigma"])
        except NPZ_READ_ERRORS:  # a damaged file whose key still reads: computed again and rewritten below
            pass
        else:
            mark_used(path)
            return stats, True
    chunks = []
    for images in ctx.iter_reference_images(batch_size):
        chunks.append(extract(extractor, images, blur, batch_size))
    if not chunks:
        raise ValueError("the reference set is empty")
    stats = feature_stats(torch.cat(chunks))
    buf = io.BytesIO()
    np.savez(buf, features=stats.features, mu=stats.mu, sigma=stats.sigma,
             key=np.array(canonical_json(key)))
    try:
        atomic_write_bytes(path, buf.getvalue())  # a reader sees the old file or the whole new one
    except OSError as err:  # a read-only or full cache: the numbers stand, the next run computes them again
        print(f"[stats] cannot keep the reference statistics in {path.parent}: {err.strerror}; computed, not "
              f"cached", file=sys.stderr, flush=True)
    return stats, False


def extract(extractor: Any, images: Tensor, blur: float, batch_size: int) -> Tensor:
    """Blur at the images' own resolution, then the extractor (which resizes): float [B,D]."""
    out = []
    for start in range(0, images.shape[0], batch_size):
        out.append(extractor(gaussian_blur(images[start:start + batch_size], blur)))
    return torch.cat(out)


# ---- streaming ---------------------------------------------------------------------------------
class StreamingMetric:
    """`update` buffers batches until `start(ctx)`; once started, batches are consumed on arrival.

    Metrics that need components (an evaluator CLIP, a judge) cannot process a batch without the
    run context. A runner that calls `start(ctx)` before the first `update` gets streaming
    (bounded memory); one that does not gets the same numbers from the buffered batches at `compute`.
    """

    def __init__(self) -> None:
        self._ctx: RunContext | None = None
        self._pending: list[SampleBatch] = []

    def start(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._setup(ctx)
        pending, self._pending = self._pending, []
        for batch in pending:
            self._consume(batch)

    def update(self, batch: SampleBatch) -> None:
        if self._ctx is None:
            self._pending.append(batch)
        else:
            self._consume(batch)

    def compute(self, ctx: RunContext):
        if self._ctx is None:
            self.start(ctx)
        return self._finish(ctx)

    # subclasses
    def _setup(self, ctx: RunContext) -> None: ...

    def _consume(self, batch: SampleBatch) -> None:
        raise NotImplementedError

    def _finish(self, ctx: RunContext):
        raise NotImplementedError


_EXTRACTORS: dict[tuple, Any] = {}


def get_extractor(features: str, ctx: RunContext, *, weights_path: str | None, clip_name: str | None):
    """One extractor per (features, weights, device, CLIP component) per process."""
    if features == "clip":
        clip = ctx.component(clip_name) if clip_name else None
        key = (features, clip_name, id(clip), ctx.device)
    else:
        clip, key = None, (features, weights_path, os.environ.get("BENCH_INCEPTION_WEIGHTS"), ctx.device)
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = build_extractor(features, weights_path=weights_path, clip=clip,
                                           clip_name=clip_name, device=ctx.device)
    return _EXTRACTORS[key]
