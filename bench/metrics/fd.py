"""`fd`: the Fréchet distance between generated and reference image features, one row per blur radius.

Rows are named by the features: `fid` (torch-fidelity's Inception-v3), `fd-effnet-lite0`,
`fd-clip`; the variant is "blur=k" (FID-k: PIL GaussianBlur(radius=k) on both sets at their
own resolution, before the extractor's resize). See docs/metrics.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.api import MetricValue, RunContext, SampleBatch, UserError
from bench.features import (FD_METRIC_NAME, FEATURES, INCEPTION_SHA256_PREFIX, OTHER_INCEPTION_NAME,
                            missing_feature_resources)
from bench.metrics.stats import (FeatureStats, StreamingMetric, extract, feature_stats, frechet_distance_of,
                                 get_extractor, reference_stats)
from bench.registry import METRICS


@dataclass(frozen=True)
class FDArgs:
    features: str = field(default="inception-v3-compat",
                          metadata={"choices": FEATURES, "help": "feature extractor (names the row: fid, fd-effnet-lite0, fd-clip)"})
    blur: list[int] = field(default_factory=lambda: [0],
                            metadata={"min": 0, "max": 64, "help": "Gaussian blur radii (FID-k), one row each"})
    clip: str | None = field(default=None, metadata={"component": "clip", "help": "evaluator CLIP (features: clip)"})
    feature_extractor_weights_path: str | None = field(
        default=None, metadata={"help": "Inception weights file (else $BENCH_INCEPTION_WEIGHTS, else the torch hub cache)"})
    batch_size: int = field(default=64, metadata={"min": 1, "help": "feature extraction batch size"})

    def __post_init__(self) -> None:
        if self.features == "clip" and not self.clip:
            raise UserError("features: clip needs `clip: <component>` naming an evaluator CLIP")
        if self.features != "clip" and self.clip:
            raise UserError(f"`clip: {self.clip}` is only used with features: clip (features is {self.features})")
        if len(set(self.blur)) != len(self.blur):
            raise UserError(f"blur radii repeat: {list(self.blur)}")

    def missing_resources(self) -> list[str]:
        return missing_feature_resources(self.features, self.feature_extractor_weights_path)


def missing_resources(args: FDArgs) -> list[str]:
    """One line per missing weights file, with where to put it (called by `bench run` before heavy work)."""
    return args.missing_resources()


class FeatureMetric(StreamingMetric):
    """Extracts features of the generated images for every blur radius; subclasses score them."""

    def __init__(self, args: FDArgs):
        super().__init__()
        self.args = args
        self.extractor = None
        self._feats: dict[int, list[torch.Tensor]] = {r: [] for r in args.blur}

    def _setup(self, ctx: RunContext) -> None:
        self.extractor = get_extractor(self.args.features, ctx, weights_path=self.args.feature_extractor_weights_path,
                                       clip_name=self.args.clip)

    def _consume(self, batch: SampleBatch) -> None:
        for r in self.args.blur:
            self._feats[r].append(self._features(batch, r))

    def _features(self, batch: SampleBatch, r: int) -> torch.Tensor:
        """This batch's features at blur r, extracted once for all metrics on the same features (`fd` and `kid`
        are handed the same batch object in turn); the memo holds the current batch only."""
        memo = self._ctx.memo
        if memo.get("features-of") is not batch.images:
            memo.pop("features", None)
            memo["features-of"], memo["features"] = batch.images, {}
        a = self.args
        key = (a.features, a.feature_extractor_weights_path, a.clip, a.batch_size, r)
        if key not in memo["features"]:
            memo["features"][key] = extract(self.extractor, batch.images, r, a.batch_size)
        return memo["features"][key]

    def _finish(self, ctx: RunContext) -> list[MetricValue]:
        rows = []
        for r in self.args.blur:
            if not self._feats[r]:
                raise UserError(f"{type(self).__name__}: no generated images were seen")
            gen = feature_stats(torch.cat(self._feats[r]))
            ref, cached = reference_stats(ctx, self.extractor, r, self.args.batch_size)
            value, extra = self._score(gen, ref, r)
            extra.update(self._provenance(gen, ref, r, cached, ctx))
            rows.append(MetricValue(self._row_name(), f"blur={r}", value, gen.n, extra))
        return rows

    def _other_inception(self) -> bool:
        """Inception-v3 features from weights other than torch-fidelity's (a stand-in, a retrained network)."""
        return self.args.features == "inception-v3-compat" and not self.extractor.official

    def _row_name(self) -> str:
        return OTHER_INCEPTION_NAME[self.family] if self._other_inception() else self.names[self.args.features]

    def _provenance(self, gen: FeatureStats, ref: FeatureStats, r: int, cached: bool, ctx: RunContext) -> dict:
        extra = {"features": self.args.features, "feature_dim": gen.dim, "resize": self.extractor.resize_policy,
                 "blur_radius": r, "n_reference": ref.n, "reference_stats_cached": cached,
                 "extractor": self.extractor.identity()}
        if self._other_inception():
            official = self.names["inception-v3-compat"].upper()  # FID, KID
            extra["weights_note"] = (f"Inception-v3 weights other than torch-fidelity's (sha256 "
                                     f"{INCEPTION_SHA256_PREFIX}...): not {official}, not comparable with published "
                                     "values")
        if self.args.features == "clip":
            extra["clip"] = self.args.clip
        extra["n_below_feature_dim"] = min(gen.n, ref.n) <= gen.dim  # rank-deficient covariance (rank <= n - 1)
        return extra

    family = ""  # "fd" or "kid"
    names: dict[str, str] = {}  # row name per features (torch-fidelity's Inception for "inception-v3-compat")

    def _score(self, gen: FeatureStats, ref: FeatureStats, r: int) -> tuple[float, dict]:
        raise NotImplementedError


class FrechetDistance(FeatureMetric):
    family, names = "fd", FD_METRIC_NAME

    def _score(self, gen: FeatureStats, ref: FeatureStats, r: int) -> tuple[float, dict]:
        value = frechet_distance_of(gen, ref)
        extra = {}
        low = min(gen.n, ref.n)
        if low <= gen.dim:  # n samples give a covariance of rank n - 1 at most
            extra["rank_deficient"] = True
            extra["note"] = (f"n={low} is not above the feature dimension {gen.dim}: the covariance is rank-deficient "
                             f"and the distance is biased (upwards); compare only at equal n")
        return float(value), extra


@METRICS.register("fd", "Fréchet distance to the reference set (fid / fd-effnet-lite0 / fd-clip), one row per blur radius",
                  args=FDArgs)
def build_fd(args: FDArgs) -> FrechetDistance:
    return FrechetDistance(args)


build_fd.missing_resources = missing_resources
