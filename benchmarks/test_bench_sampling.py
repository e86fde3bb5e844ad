"""Sampling speed: static KV cache vs full-prefix recomputation, and end-to-end images/s.

Measured in one process (pytest-benchmark, one pedantic round each; untrained weights, the speed does not
depend on them):
- 256-token sequences (16x16 grid) at `tiny` widths (4 layers x 128), batch 8: tokens/s with the static cache
  and with the full prefix recomputed every step; target cached / recompute >= 10. Both paths draw the same
  tokens (checked).
- absolute cached tokens/s for `small` (8 layers x 512, 256 tokens), batch 8;
- end to end (sampling + VQGAN decode) images/s for `tiny` (8x8 tokens, 32 px) and `small` (16x16, 64 px).
Writes results/benchmarks/sampling_<device>.json and prints a table. The ratio target is recorded (`met`) and
asserted only with BENCH_STRICT=1, since other jobs on a shared 2-core machine move it.
"""
from __future__ import annotations

import os
import time

import torch

from reference.configs import get_preset, with_overrides
from reference.gpt import GPT
from reference.sample import generate, sample_tokens
from reference.vqgan import VQGAN

RATIO_TARGET = 10.0
BATCH = 8
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _timed(fn):
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def test_sampling_speed(benchmark, bench_util):
    torch.manual_seed(0)
    tiny, small = get_preset("tiny"), get_preset("small")
    # tiny widths at a 16x16 grid (256 positions)
    gpt256 = GPT(with_overrides(tiny.gpt, grid=16, n_pos=256)).to(DEVICE).eval()
    cond = torch.randn(BATCH, tiny.gpt.cond_dim, device=DEVICE)
    seeds = list(range(BATCH))
    sample_tokens(gpt256, cond[:2], seeds[:2], top_k=50)  # warm-up

    def cached():
        return sample_tokens(gpt256, cond, seeds, top_k=50, use_cache=True)

    def recompute():
        return sample_tokens(gpt256, cond, seeds, top_k=50, use_cache=False)

    tok_c, t_cached = _timed(cached)
    tok_r, t_recompute = _timed(recompute)
    assert torch.equal(tok_c, tok_r), "cached and recomputed decoding drew different tokens"
    n_tok = BATCH * 256
    ratio = t_recompute / t_cached

    gpt_small = GPT(small.gpt).to(DEVICE).eval()
    cond_s = torch.randn(BATCH, small.gpt.cond_dim, device=DEVICE)
    sample_tokens(gpt_small, cond_s[:1], [0], top_k=50)
    _, t_small = _timed(lambda: sample_tokens(gpt_small, cond_s, seeds, top_k=50))

    e2e = {}
    for preset in (tiny, small):
        g = gpt_small if preset is small else GPT(tiny.gpt).to(DEVICE).eval()
        vq = VQGAN(preset.vqgan).to(DEVICE).eval()
        c = torch.randn(BATCH, preset.gpt.cond_dim, device=DEVICE)
        generate(g, vq, c[:1], [0], top_k=50)
        imgs, t = _timed(lambda: generate(g, vq, c, seeds, top_k=50))
        assert imgs.shape == (BATCH, 3, preset.vqgan.resolution, preset.vqgan.resolution)
        e2e[preset.name] = BATCH / t

    # pytest-benchmark's own record: the cached path, one round
    benchmark.pedantic(cached, rounds=1, iterations=1)

    rows = [
        {"what": "tiny widths, 256 tokens, cached", "tokens/s": round(n_tok / t_cached, 1)},
        {"what": "tiny widths, 256 tokens, recompute", "tokens/s": round(n_tok / t_recompute, 1)},
        {"what": "cached / recompute", "tokens/s": f"{ratio:.1f}x (target >= {RATIO_TARGET:.0f}x)"},
        {"what": "small, 256 tokens, cached", "tokens/s": round(n_tok / t_small, 1)},
        {"what": "tiny end to end", "tokens/s": f"{e2e['tiny']:.2f} images/s"},
        {"what": "small end to end", "tokens/s": f"{e2e['small']:.2f} images/s"},
    ]
    bench_util.print_table(rows)
    bench_util.write_summary(f"sampling_{DEVICE}", {
        "batch": BATCH,
        "tiny_256_cached_tokens_per_s": n_tok / t_cached,
        "tiny_256_recompute_tokens_per_s": n_tok / t_recompute,
        "cached_over_recompute": ratio, "target": RATIO_TARGET, "met": ratio >= RATIO_TARGET,
        "small_cached_tokens_per_s": n_tok / t_small,
        "tiny_images_per_s": e2e["tiny"], "small_images_per_s": e2e["small"],
    })
    if os.environ.get("BENCH_STRICT") == "1":
        assert ratio >= RATIO_TARGET
