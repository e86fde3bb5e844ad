"""`throughput`: generation speed and memory from the runner's timing records (after warm-up, synchronised).

Rows (metric "throughput"): variant "images/s", "seconds/image", "tokens/s" (systems that sample
tokens), "peak-memory-bytes"; n is the number of timed images; batch size, device and processes in extra.

With several generation processes (`--nproc`, `generation.processes`, torchrun, `--shard`), "images/s"
and "tokens/s" count all of them together: images over the wall time during which at least one process
was inside a timed call (the union of the calls' intervals), so concurrent processes add up and shards
run one after another do not. "seconds/image" stays the time one process spends per image (the calls'
seconds summed over processes, over images); extra "process_images_per_s" gives each process's own rate.
A run resumed with another batch size, thread count or device times its calls under the new settings; each
process's earlier calls under other settings are left out (extra "dropped_calls"), so a number never blends two
settings.
"peak-memory-bytes" is the highest peak of the timed calls, each system's and seed's generation measured
from a fresh start (the runner resets it): CUDA memory allocated by tensors, or on a CPU the process's
resident set (which includes the models and whatever the allocator kept from training).
"""
from __future__ import annotations

from bench.api import MetricValue, RunContext, SampleBatch, TimingRecord
from bench.registry import METRICS


def latest_settings_only(timings: list[TimingRecord]) -> list[TimingRecord]:
    """Each process's calls made with the batch size, threads and device of its latest call."""
    def settings(t: TimingRecord) -> tuple:
        return t.batch_size, t.threads, t.device

    latest = {}
    for t in sorted(timings, key=lambda t: t.start):  # stable: undated (older) records keep their order first
        latest[t.process] = settings(t)
    return [t for t in timings if settings(t) == latest[t.process]]


def busy_seconds(timings: list[TimingRecord]) -> float:
    """Length of the union of the calls' [start, start + seconds] intervals. Records without a start (written
    before it was recorded) count as back to back: their seconds are summed."""
    undated = sum(t.seconds for t in timings if not t.start)
    total, end = 0.0, float("-inf")
    for t in sorted((t for t in timings if t.start), key=lambda t: t.start):
        stop = t.start + t.seconds
        if stop > end:
            total += stop - max(t.start, end)
            end = stop
    return undated + total


class Throughput:
    def update(self, batch: SampleBatch) -> None:
        pass  # everything comes from ctx.timings

    def compute(self, ctx: RunContext) -> list[MetricValue]:
        timings = latest_settings_only(list(ctx.timings))
        if not timings:
            return []  # nothing was timed (e.g. samples loaded from a resumed run): no speed to report
        dropped = len(ctx.timings) - len(timings)
        seconds = sum(t.seconds for t in timings)
        busy = busy_seconds(timings)
        images = sum(t.images for t in timings)
        tokens = sum(t.tokens for t in timings)
        per_process = {}
        for p in sorted({t.process for t in timings}):
            mine = [t for t in timings if t.process == p]
            s = sum(t.seconds for t in mine)
            per_process[p] = sum(t.images for t in mine) / s if s > 0 else float("inf")
        extra = {"batch_sizes": sorted({t.batch_size for t in timings}),
                 "devices": sorted({t.device for t in timings}),
                 "threads": sorted({t.threads for t in timings}),
                 "calls": len(timings), "seconds": seconds, "busy_seconds": busy,
                 "processes": len(per_process), "process_images_per_s": list(per_process.values()),
                 "dropped_calls": dropped}
        rows = [MetricValue("throughput", "images/s", images / busy if busy > 0 else float("inf"), images, extra),
                MetricValue("throughput", "seconds/image", seconds / images if images else float("nan"), images, extra)]
        if tokens:
            rows.append(MetricValue("throughput", "tokens/s", tokens / busy if busy > 0 else float("inf"),
                                    images, {**extra, "tokens": tokens}))
        rows.append(MetricValue("throughput", "peak-memory-bytes", float(max(t.peak_memory_bytes for t in timings)),
                                images, extra))
        return rows


@METRICS.register("throughput", "images/s, tokens/s (all generation processes together), seconds/image and peak "
                                "memory from the timed generate calls")
def build_throughput(args=None) -> Throughput:
    return Throughput()
