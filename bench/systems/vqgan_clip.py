"""`vqgan-clip`: text-to-image by optimisation, no generator training at all.

For each caption, a grid of continuous VQGAN latents z [D,h,w] starts at random codebook vectors
(drawn from the caption's seed) and is optimised with Adam so that the CLIP embeddings of random
crops ("cutouts") of the decoded image match the caption's CLIP text embedding. Every step the
latents are quantised to their nearest codes with a straight-through estimator, as VQGAN-CLIP does,
and clamped to the codebook's per-channel range; the final image is the decode of the nearest codes,
so it lies exactly on the VQGAN's token manifold, like `clipgen`'s samples.

Captions enter only through the conditioning CLIP's text embedding (uses_captions = False: the
VQGAN never sees captions, and CLIP is the stand-in for web pretraining, as for `clipgen`).

Randomness and batch independence: row b draws its initial codes, crop boxes and augmentation noise
from its own torch.Generator seeded from (seeds[b], "vqgan-clip"); Adam is elementwise. By default
(`batched: false`) each row's forward and backward passes run on their own, so a row's image is
bit-for-bit the same whatever else shares the batch (CPU convolutions on a batch of 5 and on a batch
of 1 differ in the last bits, and a straight-through argmin turns such bits into different codes).
`batched: true` runs all rows of a call through the decoder and CLIP together: faster, the same
algorithm, equal only to float tolerance.

`budget_curve` reports the evaluator CLIP score against optimisation steps, for picking `steps`.
The defaults (lr 0.3, 200 steps, 8 cutouts) come from that curve on the shapes quickstart setting (32 px,
tiny CLIP 200 steps, tiny-eval CLIP 200 steps as evaluator, tiny VQGAN 800 steps; 12 captions, 1 seed,
1 thread): evaluator CLIP score at 0/10/25/50/100/200/400 steps was 3.8/22.5/27.7/34.8/45.8/50.7/50.7 with
lr 0.3 (saturated at 200); with lr 0.1 it was 3.8/13.9/24.2/31.3/33.8/45.3/53.0 at 0..400 and 54.3 at 800,
i.e. ~7% more score for 4x the compute (~0.022 s per image-step on the shared 2-core CPU).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.api import BuildContext, UserError
from bench.registry import SYSTEMS


@dataclass(frozen=True)
class VQGANClipArgs:
    vqgan: str = field(default="vqgan", metadata={"component": "vqgan", "help": "the VQGAN whose latents are optimised"})
    clip: str = field(default="clip", metadata={"component": "clip", "help": "the conditioning CLIP"})
    steps: int = field(default=200, metadata={"min": 0, "help": "Adam steps per caption (picked from budget_curve)"})
    lr: float = field(default=0.3, metadata={"min": 0.0, "help": "Adam learning rate on the latents"})
    cutouts: int = field(default=8, metadata={"min": 1, "help": "random crops scored by CLIP per step"})
    cut_min: float = field(default=0.6, metadata={"min": 0.05, "max": 1.0,
                                                  "help": "smallest crop side, as a fraction of the image side"})
    cut_pow: float = field(default=1.0, metadata={"min": 0.0, "help": "crop size = min + (1-min) * u**cut_pow"})
    noise: float = field(default=0.05, metadata={"min": 0.0, "help": "std of Gaussian noise added to each cutout"})
    batched: bool = field(default=False, metadata={"help": "run all rows together (faster; equal to float "
                                                           "tolerance instead of bit-for-bit)"})


# ---- the optimisation ------------------------------------------------------------------------------
def spherical_distance_loss(a: Tensor, b: Tensor) -> Tensor:
    """Squared great-circle distance between unit vectors a [N,D] and b [N,D] -> [N] (VQGAN-CLIP's loss)."""
    return (a - b).norm(dim=-1).div(2).clamp(max=1.0).arcsin().pow(2).mul(2)


def quantise_st(vqgan, z: Tensor) -> Tensor:
    """z [B,D,h,w] -> nearest codes [B,D,h,w] with a straight-through gradient (to z)."""
    b, d, h, w = z.shape
    z_flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # [B,D,h,w] -> [B*h*w,D]
    if vqgan.cfg.l2_codes:
        z_flat = F.normalize(z_flat, dim=1)
    idx = vqgan.quantizer.lookup(z_flat.detach())  # [B*h*w]
    zq_flat = z_flat + (vqgan.quantizer.codes()[idx] - z_flat).detach()
    return zq_flat.reshape(b, h, w, d).permute(0, 3, 1, 2)  # [B*h*w,D] -> [B,D,h,w]


def nearest_tokens(vqgan, z: Tensor) -> Tensor:
    """z [B,D,h,w] -> token grid int64 [B,h,w]."""
    b, d, h, w = z.shape
    z_flat = z.detach().permute(0, 2, 3, 1).reshape(-1, d)  # [B,D,h,w] -> [B*h*w,D]
    return vqgan.quantizer.lookup(z_flat).reshape(b, h, w)


def cutouts(x01: Tensor, gen: torch.Generator, n: int, size: int, cut_min: float, cut_pow: float,
            noise: float) -> Tensor:
    """One image [3,H,W] in [0,1] -> n random square crops resized to size x size, plus noise: [n,3,size,size].

    Every random number comes from `gen` (the row's own CPU generator), in a fixed order; x01 may live on any device.
    """
    _, h, w = x01.shape
    side = min(h, w)
    lo = max(1, int(round(cut_min * side)))
    out = []
    for _ in range(n):
        u, ux, uy = torch.rand(3, generator=gen).tolist()
        s = min(side, int(lo + (side - lo) * u ** cut_pow + 0.5))
        ox, oy = int(ux * (w - s + 1)), int(uy * (h - s + 1))
        crop = x01[None, :, oy:oy + s, ox:ox + s]  # [1,3,s,s]
        if s != size:
            crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=s > size)
        out.append(crop)
    crops = torch.cat(out)  # [n,3,size,size]
    if noise > 0:
        crops = crops + noise * torch.randn(crops.shape, generator=gen).to(crops.device)  # drawn on the CPU
    return crops.clamp(0, 1)


def _initial_latents(vqgan, gen: torch.Generator) -> Tensor:
    """Random codebook vectors on the token grid: [1,D,h,w]."""
    g, k = vqgan.grid, vqgan.cfg.codebook_size
    tokens = torch.randint(k, (g * g,), generator=gen)
    codes = vqgan.quantizer.codes().detach().float().cpu()
    return codes[tokens].reshape(1, g, g, -1).permute(0, 3, 1, 2).contiguous()  # [h*w,D] -> [1,D,h,w]


def optimise_latents(vqgan, clip, text_emb: Tensor, seeds: list[int], steps: int, lr: float = 0.1,
                     n_cutouts: int = 8, cut_min: float = 0.6, cut_pow: float = 1.0, noise: float = 0.05,
                     batched: bool = False, snapshots: tuple[int, ...] = ()) -> tuple[Tensor, dict[int, Tensor]]:
    """Optimise VQGAN latents so CLIP(cutouts(decode(quantise(z)))) matches text_emb [B,D] (unit norm).

    Returns (final token grids int64 [B,h,w], {step: token grids} for each step in `snapshots`, where step k
    is the state after k Adam steps; the learning rate is constant, so a snapshot at k equals a run with
    steps=k). Row b depends only on (text_emb[b], seeds[b]); see the module docstring for `batched`.
    """
    from reference.sample import mix_seed

    device = next(vqgan.parameters()).device
    gens = [torch.Generator().manual_seed(mix_seed(int(s), "vqgan-clip")) for s in seeds]
    z = torch.cat([_initial_latents(vqgan, g) for g in gens]).to(device).requires_grad_(True)  # [B,D,h,w]
    codes = vqgan.quantizer.codes().detach()
    z_min = codes.min(0).values[None, :, None, None]  # [1,D,1,1]
    z_max = codes.max(0).values[None, :, None, None]
    opt = torch.optim.Adam([z], lr=lr, foreach=False)
    text_emb = text_emb.detach().to(device)
    groups = [list(range(len(seeds)))] if batched else [[b] for b in range(len(seeds))]
    size = clip.image_size
    taken: dict[int, Tensor] = {}
    was_training = vqgan.training
    trainable = [p for p in vqgan.parameters() if p.requires_grad]
    try:
        vqgan.eval()
        for p in trainable:  # only z is optimised: no weight gradients computed or accumulated
            p.requires_grad_(False)
        with torch.enable_grad():
            for step in range(steps + 1):
                if step in snapshots:
                    taken[step] = nearest_tokens(vqgan, z).cpu()
                if step == steps:
                    break
                opt.zero_grad(set_to_none=True)
                for rows in groups:
                    x = vqgan.decoder(quantise_st(vqgan, z[rows[0]:rows[-1] + 1]))  # [G,3,R,R] about [-1,1]
                    x01 = ((x + 1) / 2).clamp(0, 1)
                    crops = torch.cat([cutouts(x01[i], gens[b], n_cutouts, size, cut_min, cut_pow, noise)
                                       for i, b in enumerate(rows)])  # [G*n,3,s,s]
                    img = clip.encode_image_float(crops)  # [G*n,E]
                    target = text_emb[rows[0]:rows[-1] + 1].repeat_interleave(n_cutouts, dim=0)  # [G*n,E]
                    loss = spherical_distance_loss(img, target).reshape(len(rows), n_cutouts).mean(1).sum()
                    loss.backward()
                opt.step()
                with torch.no_grad():
                    z.copy_(torch.maximum(torch.minimum(z, z_max), z_min))
    finally:
        vqgan.train(was_training)
        for p in trainable:
            p.requires_grad_(True)
    return nearest_tokens(vqgan, z).cpu(), taken


# ---- the system ------------------------------------------------------------------------------------
class VQGANClip:
    """Captions -> CLIP text embeddings -> optimised VQGAN latents -> nearest codes -> decoder -> uint8."""

    uses_captions = False
    tokens_per_image = 0  # nothing is sampled token by token; seconds/image is the speed to read

    def __init__(self, vqgan, clip, args: VQGANClipArgs):
        self.vqgan, self.clip, self.args = vqgan, clip, args

    def provenance(self) -> dict:
        a = self.args
        return {"training": {"optimisation": {"steps": a.steps, "lr": a.lr, "cutouts": a.cutouts, "cut_min": a.cut_min,
                                              "cut_pow": a.cut_pow, "noise": a.noise, "batched": a.batched}}}

    def text_embeddings(self, captions: list[str]) -> Tensor:
        """[B,E] unit norm; one caption per encoder call when not batched (bit-for-bit batch independence)."""
        if self.args.batched:
            return self.clip.encode_text(list(captions))
        return torch.cat([self.clip.encode_text([c]) for c in captions]) if captions else \
            torch.zeros(0, self.clip.embed_dim)

    def decode(self, tokens: Tensor) -> Tensor:
        """token grids [B,h,w] -> uint8 [B,3,R,R] (row by row unless batched)."""
        if self.args.batched or tokens.shape[0] == 0:
            return self.vqgan.decode_tokens(tokens)
        return torch.cat([self.vqgan.decode_tokens(tokens[b:b + 1]) for b in range(tokens.shape[0])])

    def generate(self, captions: list[str], caption_ids: list[int], seeds: list[int],
                 snapshots: tuple[int, ...] = ()) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
        a = self.args
        if not captions:
            r = self.vqgan.cfg.resolution
            empty = torch.zeros(0, 3, r, r, dtype=torch.uint8)
            return (empty, {k: empty for k in snapshots}) if snapshots else empty
        tokens, taken = optimise_latents(self.vqgan, self.clip, self.text_embeddings(captions), seeds, a.steps,
                                         lr=a.lr, n_cutouts=a.cutouts, cut_min=a.cut_min, cut_pow=a.cut_pow,
                                         noise=a.noise, batched=a.batched, snapshots=snapshots)
        images = self.decode(tokens)
        if snapshots:
            return images, {k: self.decode(v) for k, v in taken.items()}
        return images


@SYSTEMS.register("vqgan-clip", "VQGAN-CLIP: optimise VQGAN latents per caption so CLIP matches the caption "
                                "(no generator training; the same VQGAN and CLIP as clipgen)", args=VQGANClipArgs)
def build_vqgan_clip(args: VQGANClipArgs, ctx: BuildContext) -> VQGANClip:
    vqgan, clip = ctx.component(args.vqgan), ctx.component(args.clip)
    if getattr(vqgan, "cfg", None) is None or not hasattr(vqgan, "decoder"):
        raise UserError(f"vqgan-clip: component {args.vqgan!r} is not a VQGAN")
    return VQGANClip(vqgan, clip, args)


# ---- budget: CLIP score against optimisation steps --------------------------------------------------
def budget_curve(vqgan, clip, eval_clip, captions: list[str], seeds: list[int],
                 steps: tuple[int, ...] = (0, 10, 25, 50, 100, 200), **kwargs) -> list[dict]:
    """Evaluator CLIP score (bench.metrics.clip_score, mean over captions) after each number of steps.

    One optimisation to max(steps), snapshotted on the way (the same images a run with that many steps
    gives). kwargs: VQGANClipArgs fields (lr, cutouts, ...). Returns [{"steps", "clip_score",
    "seconds_per_image"}], seconds/image estimated as (elapsed time of the whole run) * k / max(steps) / B.
    """
    from bench.metrics.clip_score import clip_scores

    if len(captions) != len(seeds):
        raise ValueError(f"budget_curve: {len(captions)} captions but {len(seeds)} seeds")
    steps = tuple(sorted(set(int(s) for s in steps)))
    args = VQGANClipArgs(steps=max(steps), **kwargs)
    system = VQGANClip(vqgan, clip, args)
    start = time.perf_counter()
    _, snaps = system.generate(captions, list(range(len(captions))), seeds, snapshots=steps)
    seconds = time.perf_counter() - start
    rows = []
    for k in steps:
        score = float(clip_scores(eval_clip, snaps[k], captions).mean())
        per_image = seconds * k / max(1, max(steps)) / max(1, len(captions))
        rows.append({"steps": k, "clip_score": round(score, 3), "seconds_per_image": round(per_image, 4)})
    return rows


def saturation_step(curve: list[dict], tolerance: float = 0.02) -> int:
    """The fewest steps whose CLIP score is within `tolerance` (relative) of the curve's best."""
    best = max(r["clip_score"] for r in curve)
    for r in sorted(curve, key=lambda r: r["steps"]):
        if r["clip_score"] >= best - tolerance * abs(best) or math.isclose(r["clip_score"], best):
            return r["steps"]
    return max(r["steps"] for r in curve)
