"""`attribute-accuracy` (shapes) and `class-accuracy` (Fashion-MNIST): a named judge reads each generated image.

Rows: variant "<split>/<attribute>" and "<split>/all" (all attributes right) for each split tag in
the captions' info (`seen`, `held-out`, ...) and for "all" captions together, plus
"judge-on-real/<...>": the judge on real renders of the eval captions
(`dataset.real_images(eval_captions, seeds=[0]*n)`), the ceiling a perfect generator would reach.
Every row's extra carries the judge's all-correct accuracy on real renders and whether it clears
98%. With a single attribute (a class) only the "/all" rows are written.
Per caption: ctx.per_caption[caption_id]["<metric>"] = all-correct (mean over its images).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.api import MetricValue, RunContext, SampleBatch, UserError
from bench.metrics.stats import StreamingMetric
from bench.registry import METRICS


@dataclass(frozen=True)
class AccuracyArgs:
    judge: str = field(default="judge", metadata={"component": "attribute-judge", "help": "the judge component"})
    batch_size: int = field(default=256, metadata={"min": 1, "help": "images per judge call"})
    judge_floor: float = field(default=0.98, metadata={
        "min": 0.0, "max": 1.0, "help": "rows say judge_ok when the judge reads real images of the eval captions "
                                        "right at least this often (0.98 suits rendered shapes; a dataset whose "
                                        "classes even good classifiers confuse needs a lower one)"})


def judge_on_real(judge, ctx: RunContext) -> dict[str, torch.Tensor]:
    """attribute -> bool [n] correctness on real renders of the eval captions, plus "all"; memoised per dataset."""
    memo = judge.__dict__.setdefault("_bench_real_memo", {})
    items = ctx.dataset.eval_captions()
    # the identity need not name the captions' count (shapes' captions are prefixes of one cycle)
    ident = repr((sorted(ctx.dataset.identity().items()), [(it.caption_id, it.caption) for it in items]))
    if ident not in memo:
        real = ctx.dataset.real_images(items, [0] * len(items))
        memo[ident] = correctness(judge, real, [it.info for it in items])
    return memo[ident]


def correctness(judge, images: torch.Tensor, infos: list[dict], batch_size: int = 256) -> dict[str, torch.Tensor]:
    pred = judge.predict(images, batch_size)
    true = judge.labels(infos)
    ok = {a: pred[a] == true[a] for a in pred}
    ok["all"] = torch.stack(list(ok.values())).all(0)
    return ok


class Accuracy(StreamingMetric):
    def __init__(self, args: AccuracyArgs, metric: str):
        super().__init__()
        self.args = args
        self.metric = metric
        self.judge = None
        self._ok: list[dict[str, torch.Tensor]] = []
        self._splits: list[str] = []
        self._ids: list[int] = []

    def _setup(self, ctx: RunContext) -> None:
        self.judge = ctx.component(self.args.judge)

    def _consume(self, batch: SampleBatch) -> None:
        self._ok.append(correctness(self.judge, batch.images, batch.info, self.args.batch_size))
        self._splits.extend(str(info.get("split", "all")) for info in batch.info)
        self._ids.extend(batch.caption_ids)

    def _finish(self, ctx: RunContext) -> list[MetricValue]:
        if not self._ok:
            raise UserError(f"{self.metric}: no generated images were seen")
        ok = {k: torch.cat([o[k] for o in self._ok]) for k in self._ok[0]}
        attrs = [k for k in ok if k != "all"]
        keys = (attrs + ["all"]) if len(attrs) > 1 else ["all"]
        real = judge_on_real(self.judge, ctx)
        real_acc = float(real["all"].float().mean())
        extra = {"judge": self.args.judge, "judge_on_real": real_acc, "judge_on_real_n": int(real["all"].numel()),
                 "judge_floor": self.args.judge_floor, "judge_ok": real_acc >= self.args.judge_floor}
        rows = []
        groups = sorted(set(self._splits) - {"all"}) + ["all"]
        splits = self._splits
        for g in groups:
            mask = torch.tensor([g == "all" or s == g for s in splits])
            for k in keys:
                sel = ok[k][mask]
                rows.append(MetricValue(self.metric, f"{g}/{k}", float(sel.float().mean()), int(sel.numel()), dict(extra)))
        for k in keys:
            rows.append(MetricValue(self.metric, f"judge-on-real/{k}", float(real[k].float().mean()),
                                    int(real[k].numel()), dict(extra)))
        per_id: dict[int, list[float]] = {}
        for cid, v in zip(self._ids, ok["all"].float().tolist()):
            per_id.setdefault(cid, []).append(v)
        for cid, vs in per_id.items():
            ctx.per_caption.setdefault(cid, {})[self.metric] = sum(vs) / len(vs)
        return rows


@METRICS.register("attribute-accuracy", "a named judge reads each attribute off generated images; per split and attribute",
                  args=AccuracyArgs)
def build_attribute_accuracy(args: AccuracyArgs) -> Accuracy:
    return Accuracy(args, "attribute-accuracy")


@METRICS.register("class-accuracy", "a named judge reads the class off generated images; per split",
                  args=AccuracyArgs)
def build_class_accuracy(args: AccuracyArgs) -> Accuracy:
    return Accuracy(args, "class-accuracy")
