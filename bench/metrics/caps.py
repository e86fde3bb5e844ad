"""`caps`: CogView's caption score with a named captioner; two metric names per row group.

Per image: CapLoss_i = mean cross-entropy (nats) of its caption's tokens (after SOT, EOT included)
under the captioner given the image, over the tokens in the captioner's vocabulary (the share left out is
in each row: `unknown_tokens_left_out`), and CapS_i = exp(-CapLoss_i) (the geometric-mean token
probability). Rows: `caploss` = mean CapLoss_i and `caps` = mean CapS_i, variant "all" and one per
split tag. Our CapS uses our own small captioner, so it is NOT comparable with published CapS values;
every row's extra says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.api import MetricValue, RunContext, SampleBatch, UserError
from bench.metrics.stats import StreamingMetric
from bench.registry import METRICS

NOT_COMPARABLE = "computed with this project's reference captioner; not comparable with published CapS values"


@dataclass(frozen=True)
class CapsArgs:
    captioner: str = field(default="captioner", metadata={"component": "captioner", "help": "the captioner component"})
    batch_size: int = field(default=128, metadata={"min": 1, "help": "images per captioner call"})


class CaptionScore(StreamingMetric):
    def __init__(self, args: CapsArgs):
        super().__init__()
        self.args = args
        self.captioner = None
        self._loss: list[torch.Tensor] = []
        self._splits: list[str] = []
        self._ids: list[int] = []
        self._unknown: list[torch.Tensor] = []  # per image: [tokens outside the captioner's vocabulary, scored tokens]

    def _setup(self, ctx: RunContext) -> None:
        self.captioner = ctx.component(self.args.captioner)

    def _consume(self, batch: SampleBatch) -> None:
        bs = self.args.batch_size
        for s in range(0, batch.images.shape[0], bs):
            loss = self.captioner.caption_loss(batch.images[s:s + bs], batch.captions[s:s + bs])
            self._loss.append(torch.as_tensor(loss, dtype=torch.float64).reshape(-1))
        if hasattr(self.captioner, "unknown_tokens"):  # a plugin captioner may have a full vocabulary
            self._unknown.append(torch.stack(self.captioner.unknown_tokens(batch.captions), 1))
        self._splits.extend(str(info.get("split", "all")) for info in batch.info)
        self._ids.extend(batch.caption_ids)

    def _finish(self, ctx: RunContext) -> list[MetricValue]:
        if not self._loss:
            raise UserError("caps: no generated images were seen")
        loss = torch.cat(self._loss)
        caps = torch.exp(-loss)
        extra = {"captioner": self.args.captioner, "comparable_with_published": False, "note": NOT_COMPARABLE}
        rows = []
        for g in sorted(set(self._splits) - {"all"}) + ["all"]:
            mask = torch.tensor([g == "all" or s == g for s in self._splits])
            n = int(mask.sum())
            group = dict(extra)
            if self._unknown:
                unknown, scored = torch.cat(self._unknown)[mask].sum(0).tolist()
                group["unknown_tokens_left_out"] = unknown / max(scored, 1)  # share of the caption tokens
            rows.append(MetricValue("caploss", g, float(loss[mask].mean()), n, dict(group)))
            rows.append(MetricValue("caps", g, float(caps[mask].mean()), n, dict(group)))
        per_id: dict[int, list[float]] = {}
        for cid, v in zip(self._ids, caps.tolist()):
            per_id.setdefault(cid, []).append(v)
        for cid, vs in per_id.items():
            ctx.per_caption.setdefault(cid, {})["caps"] = sum(vs) / len(vs)
        return rows


@METRICS.register("caps", "CogView caption score: caploss (token cross-entropy) and caps = exp(-caploss), named captioner",
                  args=CapsArgs)
def build_caps(args: CapsArgs) -> CaptionScore:
    return CaptionScore(args)
