"""Datasets: the only code that reads image/caption files. Importing this package registers them."""
from bench.datasets import fashion_mnist, imagefolder, mscoco, shapes  # noqa: F401
