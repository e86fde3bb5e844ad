"""Paper-preset sampling throughput on a GPU (random weights): a standalone script, not a test.

    PYTHONPATH=. python3 benchmarks/gpu_sampling.py [--out DIR]

Measures images/s for the `paper` preset (24x1024 GPT, 256 tokens, VQGAN 256 px decoder),
batch 64, top-k 500 / top-p 0.95 as the public demo: the static KV cache in fp32 and bf16
(autocast), the cached bf16 decode step under torch.compile, and uncached full-prefix
recomputation in bf16 (the plain twin), all in one process. Writes gpu-sampling-<device>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import machine_info  # noqa: E402
from reference.configs import PAPER  # noqa: E402
from reference.gpt import GPT  # noqa: E402
from reference.sample import sample_tokens  # noqa: E402
from reference.vqgan import VQGAN  # noqa: E402


def timed(fn, repeats: int = 3) -> list[float]:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "results/benchmarks"))
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA device"
    torch.backends.cuda.matmul.allow_tf32 = True
    dev = torch.device("cuda")
    gpt = GPT(PAPER.gpt).to(dev).eval()
    vqgan = VQGAN(PAPER.vqgan).to(dev).eval()
    b = args.batch
    cond = torch.randn(b, PAPER.gpt.cond_dim, device=dev)
    seeds = list(range(b))
    kw = dict(temperature=1.0, top_k=500, top_p=0.95)
    n_tok = PAPER.gpt.n_pos
    results: dict = {"batch": b, "tokens_per_image": n_tok, "gpt_params": gpt.num_params(), "modes": {}}

    results["machine"] = machine_info()
    stem = "gpu-sampling-" + results["machine"]["device_name"].lower().replace(" ", "-")
    path = Path(args.out) / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def run(name: str, fn, repeats: int = 3):
        t0 = time.perf_counter()
        fn()  # warm-up (and compilation)
        first = time.perf_counter() - t0
        ts = timed(fn, repeats)
        med = sorted(ts)[len(ts) // 2]
        results["modes"][name] = {"seconds": ts, "first_call_s": first, "median_s": med, "images_per_s": b / med,
                                  "tokens_per_s": b * n_tok / med}
        print(f"{name:<28} {med * 1000:9.1f} ms  {b / med:8.2f} img/s  {b * n_tok / med:10.0f} tok/s "
              f"(first call {first:.1f} s)", flush=True)
        path.write_text(json.dumps(results, indent=1))  # after every mode: a run cut short keeps what it measured

    with torch.no_grad():
        run("sample fp32 cached", lambda: sample_tokens(gpt, cond, seeds, use_cache=True, **kw))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            run("sample bf16 cached", lambda: sample_tokens(gpt, cond, seeds, use_cache=True, **kw))
            run("sample bf16 cached compiled",
                lambda: sample_tokens(gpt, cond, seeds, use_cache=True, compile=True, **kw))
            run("sample bf16 uncached", lambda: sample_tokens(gpt, cond, seeds, use_cache=False, **kw), repeats=1)
            tokens = sample_tokens(gpt, cond, seeds, use_cache=True, **kw).reshape(b, 16, 16)
            run("vqgan decode bf16", lambda: vqgan.decode_tokens(tokens, batch_size=b))
    m = results["modes"]
    end_to_end = m["sample bf16 cached compiled"]["median_s"] + m["vqgan decode bf16"]["median_s"]
    results["end_to_end_images_per_s_bf16_compiled"] = b / end_to_end
    results["cached_over_uncached_bf16"] = m["sample bf16 uncached"]["median_s"] / m["sample bf16 cached"]["median_s"]
    print(f"end to end (compiled sampling + decode): {b / end_to_end:.2f} img/s; "
          f"cache speed-up {results['cached_over_uncached_bf16']:.1f}x")
    path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
