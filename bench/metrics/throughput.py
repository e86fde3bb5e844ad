"""`throughput`: generation speed and memory from the runner's timing records (after warm-up, synchronised).

Rows (metric "throughput"): variant "images/s", "seconds/image", "tokens/s" (systems that sample
tokens), "peak-memory-bytes"; n is the number of timed images; batch size and device in extra.
"""
from __future__ import annotations

from bench.api import MetricValue, RunContext, SampleBatch
from bench.registry import METRICS


def missing_resources(args) -> list[str]:
    return []


class Throughput:
    def update(self, batch: SampleBatch) -> None:
        pass  # everything comes from ctx.timings

    def compute(self, ctx: RunContext) -> list[MetricValue]:
        timings = list(ctx.timings)
        if not timings:
            return []  # nothing was timed (e.g. samples loaded from a resumed run): no speed to report
        seconds = sum(t.seconds for t in timings)
        images = sum(t.images for t in timings)
        tokens = sum(t.tokens for t in timings)
        extra = {"batch_sizes": sorted({t.batch_size for t in timings}),
                 "devices": sorted({t.device for t in timings}),
                 "calls": len(timings), "seconds": seconds}
        rows = [MetricValue("throughput", "images/s", images / seconds if seconds > 0 else float("inf"), images, extra),
                MetricValue("throughput", "seconds/image", seconds / images if images else float("nan"), images, extra)]
        if tokens:
            rows.append(MetricValue("throughput", "tokens/s", tokens / seconds if seconds > 0 else float("inf"),
                                    images, {**extra, "tokens": tokens}))
        rows.append(MetricValue("throughput", "peak-memory-bytes", float(max(t.peak_memory_bytes for t in timings)),
                                images, extra))
        return rows


@METRICS.register("throughput", "images/s, tokens/s, seconds/image and peak memory from the timed generate calls")
def build_throughput(args=None) -> Throughput:
    return Throughput()
