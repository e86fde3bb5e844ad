"""`clip-score`: 100 * max(cos(image, caption), 0) under a named evaluator CLIP, averaged over images.

The evaluator is any component with `encode_image(uint8 [B,3,H,W]) -> [B,D]` and
`encode_text(list[str]) -> [B,D]`; both embeddings are L2-normalised here. When the system was built
with the evaluator (conditioned on it, re-ranked or optimised with it, or with the same weights under
another name), the score flatters it; every row says so in `extra["evaluator_used_by_system"]`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bench.api import MetricValue, RunContext, SampleBatch, UserError
from bench.metrics.stats import StreamingMetric
from bench.registry import METRICS


@dataclass(frozen=True)
class ClipScoreArgs:
    clip: str = field(default="clip-eval", metadata={"component": "clip", "help": "evaluator CLIP component"})
    batch_size: int = field(default=64, metadata={"min": 1, "help": "images per encoder call"})


@torch.no_grad()
def clip_scores(clip, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Per image: 100 * max(cos(image_i, caption_i), 0), float64 [B]."""
    img = F.normalize(torch.as_tensor(clip.encode_image(images)).double().cpu(), dim=-1)  # [B,D]
    txt = F.normalize(torch.as_tensor(clip.encode_text(list(captions))).double().cpu(), dim=-1)  # [B,D]
    return 100.0 * (img * txt).sum(-1).clamp(min=0.0)


class ClipScore(StreamingMetric):
    def __init__(self, args: ClipScoreArgs):
        super().__init__()
        self.args = args
        self.clip = None
        self._scores: list[torch.Tensor] = []
        self._ids: list[int] = []

    def _setup(self, ctx: RunContext) -> None:
        self.clip = ctx.component(self.args.clip)

    def _consume(self, batch: SampleBatch) -> None:
        bs = self.args.batch_size
        for s in range(0, batch.images.shape[0], bs):
            self._scores.append(clip_scores(self.clip, batch.images[s:s + bs], batch.captions[s:s + bs]))
        self._ids.extend(batch.caption_ids)

    def _finish(self, ctx: RunContext) -> list[MetricValue]:
        if not self._scores:
            raise UserError("clip-score: no generated images were seen")
        scores = torch.cat(self._scores)
        per_id: dict[int, list[float]] = {}
        for cid, v in zip(self._ids, scores.tolist()):
            per_id.setdefault(cid, []).append(v)
        for cid, vs in per_id.items():
            ctx.per_caption.setdefault(cid, {})["clip-score"] = sum(vs) / len(vs)
        extra = {"clip": self.args.clip, "evaluator_used_by_system": bool(ctx.made_with(self.args.clip)),
                 "std": float(scores.std(unbiased=False))}
        return [MetricValue("clip-score", "", float(scores.mean()), int(scores.numel()), extra)]


@METRICS.register("clip-score", "100 x max(cos(image, caption), 0) under a named evaluator CLIP", args=ClipScoreArgs)
def build_clip_score(args: ClipScoreArgs) -> ClipScore:
    return ClipScore(args)
