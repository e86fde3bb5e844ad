"""Systems: everything that turns captions into images. Importing this package registers them."""
from bench.systems import around, clipgen, samples_folder, simple, vqgan_clip  # noqa: F401
