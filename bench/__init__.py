"""clipgen-bench: a declarative benchmark harness for (language-free) text-to-image generation."""
__version__ = "0.1.0"
