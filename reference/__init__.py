"""Reference CLIP-GEN: VQGAN, CLIP wrapper, conditional GPT, sampling and training, importable without the harness."""
