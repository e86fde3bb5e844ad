"""Metrics: stream over SampleBatches, compute MetricValues at the end. Importing this package registers them."""
from bench.metrics import accuracy, caps, clip_score, fd, kid, throughput  # noqa: F401
