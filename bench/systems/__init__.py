"""Systems: everything that turns captions into images. Importing this package registers them."""
from bench.systems import clipgen, simple  # noqa: F401
