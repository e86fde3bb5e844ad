"""Datasets: the only code that reads image/caption files. Importing this package registers them."""
from bench.datasets import shapes  # noqa: F401
