"""`kid`: kernel distance (unbiased MMD^2, cubic polynomial kernel) on the same features as `fd`.

k(x, y) = (x.y / d + 1)^3. The estimate is the mean over `subsets` random subsets of
min(subset_size, n_generated, n_reference) samples from each side (drawn without replacement,
in torchmetrics' order: a permutation of the reference, then of the generated features, per
subset, from a generator seeded with `seed`). Rows: `kid` (Inception), `kid-effnet-lite0`,
`kid-clip`; variant "blur=k".
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from bench.metrics.fd import FDArgs, FeatureMetric
from bench.metrics.stats import FeatureStats
from bench.registry import METRICS

KID_METRIC_NAME = {"inception-v3-compat": "kid", "effnet-lite0": "kid-effnet-lite0", "clip": "kid-clip"}


@dataclass(frozen=True)
class KIDArgs(FDArgs):
    subsets: int = field(default=100, metadata={"min": 1, "help": "number of random subsets averaged"})
    subset_size: int = field(default=1000, metadata={"min": 2, "help": "samples per subset (capped at n)"})
    seed: int = field(default=0, metadata={"help": "seeds the subset draws"})


def missing_resources(args: KIDArgs) -> list[str]:
    return args.missing_resources()


def polynomial_mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 between x [m,D] and y [m,D] with k(a,b) = (a.b/D + 1)^3 (float64)."""
    d = x.shape[1]
    m = x.shape[0]
    k_xx = (x @ x.T / d + 1) ** 3  # [m,m]
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    off_xx = k_xx.sum() - k_xx.diagonal().sum()
    off_yy = k_yy.sum() - k_yy.diagonal().sum()
    return off_xx / (m * (m - 1)) + off_yy / (m * (m - 1)) - 2 * k_xy.sum() / (m * m)


def kernel_distance(gen: np.ndarray, ref: np.ndarray, subsets: int, subset_size: int, seed: int) -> tuple[float, float, int]:
    """(mean, population std over subsets, the subset size used)."""
    g = torch.from_numpy(np.asarray(gen, dtype=np.float64))
    r = torch.from_numpy(np.asarray(ref, dtype=np.float64))
    m = min(subset_size, g.shape[0], r.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples on each side")
    rng = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(subsets):
        r_sub = r[torch.randperm(r.shape[0], generator=rng)[:m]]
        g_sub = g[torch.randperm(g.shape[0], generator=rng)[:m]]
        scores.append(polynomial_mmd2_unbiased(r_sub, g_sub))
    s = torch.stack(scores)
    return float(s.mean()), float(s.std(unbiased=False)), m


class KernelDistance(FeatureMetric):
    args: KIDArgs

    def _metric_name(self) -> str:
        return KID_METRIC_NAME[self.args.features]

    def _score(self, gen: FeatureStats, ref: FeatureStats, r: int) -> tuple[float, dict]:
        mean, std, m = kernel_distance(gen.features, ref.features, self.args.subsets, self.args.subset_size,
                                       self.args.seed)
        return mean, {"kid_std": std, "subsets": self.args.subsets, "subset_size": m, "kernel": "poly3",
                      "estimator": "unbiased"}


@METRICS.register("kid", "kernel distance (unbiased MMD^2, cubic polynomial kernel) on fd's features, per blur radius",
                  args=KIDArgs)
def build_kid(args: KIDArgs) -> KernelDistance:
    return KernelDistance(args)
