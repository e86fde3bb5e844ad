"""Component kinds (CLIP, VQGAN, judge, captioner). Importing this package registers them."""
from bench.components import captioner, clip_component, judge, probe, vqgan_component  # noqa: F401
