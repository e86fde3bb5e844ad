"""Systems: everything that turns captions into images. Importing this package registers them."""
from bench.systems import simple  # noqa: F401
