"""`training-probe`: short, seeded training runs and in-process speed ratios, reported as diagnostics rows.

CI cannot train to convergence, but a few dozen steps from a fixed seed already move when a change
breaks a loss, an optimiser or the quantiser: the probe trains each stage for a fixed number of
steps and reports the loss at the last step and the codebook usage; the GPT trains twice, in fp32 and
in bf16 autocast (the default where the hardware has bf16). It also measures two speed
ratios in one process, interleaved (absolute times on shared machines are noise; ratios are not):
cached vs uncached decoding, and chunked VQ lookup vs the bare matrix product it cannot avoid.

The probe is not cached: it is the measurement.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from bench.api import BuildContext, ComponentSpec, MetricValue
from bench.registry import COMPONENTS


@dataclass(frozen=True)
class ProbeArgs:
    images: int = field(default=512, metadata={"min": 16, "help": "train images (and pairs) the probe uses"})
    clip_steps: int = field(default=20, metadata={"min": 1})
    vqgan_steps: int = field(default=40, metadata={"min": 1})
    gpt_steps: int = field(default=40, metadata={"min": 1})
    seed: int = field(default=0, metadata={"min": 0})
    speed_repeats: int = field(default=5, metadata={"min": 1, "help": "interleaved rounds per speed ratio"})


def interleaved_ratio(slow, fast, repeats: int) -> float:
    """median(slow) / median(fast), calling them alternately after one warm-up each."""
    slow(), fast()
    ts, tf = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        slow()
        ts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fast()
        tf.append(time.perf_counter() - t0)
    return statistics.median(ts) / statistics.median(tf)


class TrainingProbe:
    def __init__(self, values: list[MetricValue]):
        self.values = values

    def diagnostics(self) -> list[MetricValue]:
        return self.values


def run_probe(images: torch.Tensor, pair_images: torch.Tensor, captions: list[str], args: ProbeArgs) -> list[MetricValue]:
    """images: image-only training renders (VQGAN, GPT); pair_images + captions: the CLIP's pairs."""
    from reference.clip import train_clip
    from reference.configs import get_preset
    from reference.gpt import GPT
    from reference.kernels import vq_lookup
    from reference.sample import sample_tokens
    from reference.train import native_bf16, train_gpt, train_vqgan

    n = images.shape[0]
    out: list[MetricValue] = []
    clip = train_clip(pair_images, captions, preset="tiny", steps=args.clip_steps, seed=args.seed, progress=False)
    out.append(MetricValue("probe-loss", f"clip@{args.clip_steps}", float(clip.meta["losses"][-1]), n))
    vqgan, vstats = train_vqgan(images, "tiny", steps=args.vqgan_steps, seed=args.seed, progress=False)
    out.append(MetricValue("probe-loss", f"vqgan-rec@{args.vqgan_steps}", float(vstats["history"][-1]["rec"]), n))
    out.append(MetricValue("probe-codebook-usage", "vqgan", float(vstats["usage"]), n))
    tokens = vqgan.encode(images)
    emb = clip.encode_image(images)
    cfg = get_preset("tiny").gpt
    _, gstats = train_gpt(tokens, emb, cfg, steps=args.gpt_steps, seed=args.seed, progress=False,
                          cond_dim=emb.shape[1])
    out.append(MetricValue("probe-loss", f"gpt@{args.gpt_steps}", float(gstats["history"][-1]), n))
    # the same run in bf16 autocast where `train: {precision: auto}` picks it (CPUs with native bf16); elsewhere
    # bf16 is emulated, 12x slower than fp32 on a Zen 3 (3.5 CI minutes), and auto never trains in it
    if native_bf16(torch.device("cpu")):
        _, bstats = train_gpt(tokens, emb, cfg, steps=args.gpt_steps, seed=args.seed, progress=False,
                              cond_dim=emb.shape[1], bf16=True)
        out.append(MetricValue("probe-loss", f"gpt-bf16@{args.gpt_steps}", float(bstats["history"][-1]), n,
                               {"native_bf16": True}))

    # speed ratios, measured in this process
    torch.manual_seed(args.seed)
    gpt = GPT(get_preset("tiny").gpt).eval()
    cond = torch.randn(8, gpt.cfg.cond_dim)
    seeds = list(range(8))
    kv = interleaved_ratio(lambda: sample_tokens(gpt, cond, seeds, top_k=50, use_cache=False),
                           lambda: sample_tokens(gpt, cond, seeds, top_k=50, use_cache=True), args.speed_repeats)
    out.append(MetricValue("speed-ratio", "kv-cache-over-recompute", kv, args.speed_repeats,
                           {"batch": 8, "tokens": gpt.cfg.n_pos}))
    z, book = torch.randn(4096, 64), torch.randn(1024, 64)
    vq = interleaved_ratio(lambda: z @ book.T, lambda: vq_lookup(z, book, backend="torch"), args.speed_repeats)
    out.append(MetricValue("speed-ratio", "matmul-over-vq-lookup", vq, args.speed_repeats,
                           {"N": 4096, "K": 1024, "D": 64}))
    return out


@COMPONENTS.register("training-probe", "short seeded training of each stage + in-process speed ratios "
                                       "(CI regression signals)", args=ProbeArgs)
def build_probe(spec: ComponentSpec, ctx: BuildContext) -> TrainingProbe:
    pair_images, captions, _ = ctx.dataset.pairs()
    k = spec.train.images
    return TrainingProbe(run_probe(ctx.dataset.train_images()[:k], pair_images[:k], list(captions[:k]), spec.train))


build_probe.reads = ("train", "pairs")
