"""Training loops: the VQGAN (images only) and the GPT (token grids + embeddings; language-free by default).

Language-free CLIP-GEN training reads images and nothing else: ``train_vqgan`` takes uint8 images,
``train_gpt`` takes token grids and already computed embeddings, and ``train_clipgen`` computes both from images
(CLIP image embeddings, VQGAN tokens). Only ``condition="text"`` (the text-supervised baseline) reads captions,
and only when they are passed explicitly.

Determinism and exact resume: the batch at step s comes from an epoch permutation seeded by (seed, epoch), and
every other random draw of step s (noise, dropout, dead-code restarts) from a generator seeded by (seed, step).
So a run resumed from a checkpoint (weights + optimizer state + step) continues exactly as the uninterrupted run.

CPU speed: set MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824
before Python starts (about 8x faster steps), and denormals are flushed here.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from reference.checkpoint import load_checkpoint, save_checkpoint
from reference.configs import GPTConfig, VQGANConfig, get_preset, with_overrides
from reference.gpt import GPT
from reference.progress import progress_bar
from reference.sample import mix_seed
from reference.vqgan import (VQGAN, PerceptualLoss, adaptive_gan_weight, codebook_stats, hinge_d_loss,
                             reconstruction_loss, to_float)


# ---------------------------------------------------------------------------------------------------------------
# shared pieces
# ---------------------------------------------------------------------------------------------------------------

def _resolve(cfg, kind: str):
    if isinstance(cfg, str):
        return getattr(get_preset(cfg), kind)
    return cfg


def lr_at(step: int, lr: float, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up to lr, then cosine decay to min_ratio * lr at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


class _Batches:
    """Step -> batch indices: epoch-wise permutations seeded by (seed, epoch), last partial batch dropped."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < 1:
            raise ValueError("no training examples")
        self.n, self.bs, self.seed = n, min(batch_size, n), seed
        self.per_epoch = max(1, n // self.bs)
        self._epoch, self._perm = -1, None

    def __call__(self, step: int) -> Tensor:
        epoch, j = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))
            self._epoch = epoch
        return self._perm[j * self.bs:(j + 1) * self.bs]


class _Loop:
    """What both training loops do around their steps: time them, show a progress bar, save checkpoints.

    A checkpoint holds the step to run next: after step s when (s + 1) % checkpoint_every == 0, and at the end
    (also when stopped early by stop_after), which is what resume continues from. save=None: no checkpoints.
    """

    def __init__(self, save: Callable[[int], None] | None, checkpoint_every: int, steps: int, start: int, desc: str,
                 progress: bool):
        self.save, self.every = save, checkpoint_every
        self.t0 = time.perf_counter()
        self.bar = progress_bar(total=steps, initial=start, desc=desc, enabled=progress, leave=False)

    def step_done(self, step: int) -> None:
        self.bar.update(1)
        if self.save is not None and self.every and (step + 1) % self.every == 0:
            self.save(step + 1)

    def finish(self, end: int) -> float:
        """Close the bar, save the final checkpoint; returns the seconds since the loop began."""
        self.bar.close()
        seconds = time.perf_counter() - self.t0
        if self.save is not None:
            self.save(end)
        return seconds


def _device(device) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


def native_bf16(device, cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether bf16 matrix products run natively on `device`, so bf16 autocast speeds training up: a CUDA GPU of
    compute capability 8.0 or later (older ones emulate bf16), or a CPU whose flags (read from `cpuinfo`; False
    where it cannot be read) include AVX512-BF16 or AMX-BF16. Elsewhere bf16 is emulated and slower than fp32.
    (Measured on a Zen 4 EPYC, one thread: a [4096,128] x [128,512] product at 57 GFLOP/s in fp32 and 198 in
    bf16; the tiny GPT's training step 1.5x faster.)"""
    dev = _device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(dev)[0] >= 8
    if dev.type != "cpu":
        return False
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def one_cycle(opt: torch.optim.Optimizer, max_lr: float, steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """One-cycle LR over `steps` with 10% warm-up (pct_start 0.1), as the attribute judge and the captioner train.
    torch's warm-up phase ends at step pct_start * steps - 1 and divides by that, zero at exactly 10 steps: there
    the warm-up ends at step 1 (pct_start 0.2). Every other step count keeps torch's pct_start 0.1 schedule."""
    pct_start = 0.1 if 0.1 * steps != 1 else 2 / steps
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=steps, pct_start=pct_start)


def _step_generator(seed: int, tag: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(mix_seed(seed, tag, step))


def _private_rng(dev: torch.device):
    """The global RNG forked for a training loop (on `dev` too when CUDA): seeding dropout step by step inside it
    leaves the caller's RNG state as it was."""
    return torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else [])


# ---------------------------------------------------------------------------------------------------------------
# VQGAN
# ---------------------------------------------------------------------------------------------------------------

def train_vqgan(images: Tensor, cfg: VQGANConfig | str = "tiny", steps: int | None = None, seed: int = 0,
                progress: bool = True, batch_size: int | None = None, lr: float | None = None, device=None,
                checkpoint_dir: str | Path | None = None, checkpoint_every: int = 0, resume: bool = False,
                stop_after: int | None = None, **overrides) -> tuple[VQGAN, dict]:
    """Train a VQGAN on uint8 images [N,3,R,R] (images only, never captions); returns (model in eval mode, stats).

    stats: steps, seconds, final losses, codebook usage and perplexity over (up to) 2048 training images,
    reconstruction MSE on [0,1], dead codes restarted, and a loss history.
    checkpoint_dir: save there every checkpoint_every steps and at the end; resume=True continues from it.
    stop_after: stop (and checkpoint) after this many steps, as if interrupted; the schedule still spans ``steps``.
    """
    cfg = _resolve(cfg, "vqgan")
    if overrides:
        cfg = with_overrides(cfg, **overrides)
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"train_vqgan wants uint8 images [N,3,H,W], got {getattr(images, 'dtype', type(images))}")
    if images.shape[-1] != cfg.resolution or images.shape[-2] != cfg.resolution:
        raise ValueError(f"train_vqgan: the config wants {cfg.resolution}px images, got {tuple(images.shape[-2:])}")
    steps = cfg.steps if steps is None else steps
    bs = cfg.batch_size if batch_size is None else batch_size
    lr = cfg.lr if lr is None else lr
    dev = _device(device)
    torch.set_flush_denormal(True)
    torch.manual_seed(seed)
    model = VQGAN(cfg).to(dev)
    gen_params = [p for n, p in model.named_parameters() if not n.startswith("discriminator.") and p.requires_grad]
    opt = torch.optim.Adam(gen_params, lr=lr, betas=cfg.betas)
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=lr, betas=cfg.betas)
    perceptual = PerceptualLoss(cfg.perceptual, cfg.perceptual_path).to(dev) if cfg.perceptual != "none" else None
    batches = _Batches(images.shape[0], bs, seed)
    warmup = min(100, max(1, steps // 10))
    gan_from = max(cfg.gan_start, math.ceil(cfg.gan_start_epochs * (images.shape[0] // bs)))  # full batches per epoch
    start, history, restarted = 0, [], 0
    if resume and checkpoint_dir is not None and (Path(checkpoint_dir) / "config.json").exists():
        loaded, state, _ = load_checkpoint(checkpoint_dir, dev, train_state=True)
        model.load_state_dict(loaded.state_dict())
        opt.load_state_dict(state["optimizer"])
        opt_d.load_state_dict(state["optimizer_d"])
        model.quantizer.usage.copy_(state["usage"])
        start, history, restarted = state["step"], state["history"], state["restarted"]

    def save(step: int) -> None:
        save_checkpoint(checkpoint_dir, model, "vqgan", {
            "step": step, "optimizer": opt.state_dict(), "optimizer_d": opt_d.state_dict(),
            "usage": model.quantizer.usage.clone(), "history": history, "restarted": restarted, "seed": seed,
        }, meta={"seed": seed, "steps": step})

    model.train()
    end = steps if stop_after is None else min(steps, stop_after)
    loop = _Loop(save if checkpoint_dir is not None else None, checkpoint_every, steps, start, "vqgan", progress)
    with _private_rng(dev):
        for step in range(start, end):
            torch.manual_seed(mix_seed(seed, "dropout", step))  # dropout: seeded by the step, so resume is exact
            step_lr = lr if cfg.lr_schedule == "constant" else lr_at(step, lr, warmup, steps)
            for group in (*opt.param_groups, *opt_d.param_groups):  # the discriminator follows the same schedule
                group["lr"] = step_lr
            x = to_float(images[batches(step)]).to(dev)
            x_rec, idx, qloss, z = model(x)
            rec = reconstruction_loss(x, x_rec, cfg)
            nll = rec + (cfg.perceptual_weight * perceptual(x, x_rec) if perceptual is not None else 0.0)
            loss = nll + qloss
            use_gan = cfg.gan_weight > 0 and step >= gan_from
            if use_gan:
                g_loss = -model.discriminator(x_rec).mean()
                w = adaptive_gan_weight(nll, g_loss, model.decoder.final[-1].weight)
                loss = loss + cfg.gan_weight * w * g_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if use_gan:
                d_loss = hinge_d_loss(model.discriminator(x), model.discriminator(x_rec.detach()))
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            if cfg.restart_dead_every and (step + 1) % cfg.restart_dead_every == 0 and step < cfg.restart_dead_until:
                z_flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # [B,D,h,w] -> [B*h*w,D]
                restarted += model.quantizer.restart_dead(z_flat, _step_generator(seed, "restart", step))
            if step % 10 == 0 or step == steps - 1:
                stats = codebook_stats(idx, cfg.codebook_size)
                history.append({"step": step, "rec": float(rec.detach()), "q": float(qloss.detach()), **stats})
                loop.bar.set_postfix(rec=f"{float(rec.detach()):.4f}", usage=f"{stats['usage']:.2f}", refresh=False)
            loop.step_done(step)
    seconds = loop.finish(end)
    model.eval()
    stats = {"steps": end, "seconds": round(seconds, 2), "restarted_codes": restarted, "history": history,
             "gan_start_step": gan_from if cfg.gan_weight > 0 else None,
             **evaluate_vqgan(model, images[:2048])}
    return model, stats


@torch.no_grad()
def evaluate_vqgan(model: VQGAN, images: Tensor) -> dict:
    """Codebook usage / perplexity of the tokens of ``images`` and reconstruction MSE on [0,1]."""
    tokens = model.encode(images)
    rec = model.decode_tokens(tokens)
    mse = float(((rec.float() - images.float()) / 255.0).pow(2).mean())
    return {"mse": mse, **codebook_stats(tokens, model.cfg.codebook_size)}


# ---------------------------------------------------------------------------------------------------------------
# GPT
# ---------------------------------------------------------------------------------------------------------------

def perturb_embeddings(e: Tensor, noise: float, generator: torch.Generator | None = None) -> Tensor:
    """LAFITE-style: normalise e, add noise * eps/||eps|| (eps Gaussian), renormalise. noise=0 just normalises."""
    e = F.normalize(e.float(), dim=-1)
    if noise <= 0:
        return e
    eps = torch.randn(e.shape, generator=generator).to(e.device)
    return F.normalize(e + noise * F.normalize(eps, dim=-1), dim=-1)


def _gpt_param_groups(model: GPT, weight_decay: float) -> list[dict]:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n not in ("pos_emb", "tok_emb.weight")]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def clip_reconstruction_loss(logits: Tensor, vqgan: VQGAN, clip, target: Tensor) -> Tensor:
    """The paper's CLIP-embedding loss: straight-through one-hot tokens -> VQGAN decoder -> CLIP image embedding,
    1 - cosine to the image's own embedding (the clean one, not the noise-perturbed condition). logits [B,n,V]
    (the n image positions), target [B,D] (normalised here)."""
    probs = logits.float().softmax(-1)
    hard = F.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs)
    onehot = hard + probs - probs.detach()  # [B,n,V], straight-through
    b, n, _ = onehot.shape
    g = vqgan.grid
    z_q = (onehot @ vqgan.quantizer.codes()).reshape(b, g, g, -1).permute(0, 3, 1, 2)  # [B,n,D] -> [B,D,g,g]
    x = vqgan.decoder(z_q)  # [-1,1]
    emb = clip.encode_image_float(((x + 1) / 2).clamp(0, 1))
    return (1 - (emb * F.normalize(target.float(), dim=-1).to(emb)).sum(-1)).mean()


def train_gpt(tokens: Tensor, embeddings: Tensor, cfg: GPTConfig | str = "tiny", steps: int | None = None,
              seed: int = 0, noise: float | None = None, progress: bool = True, batch_size: int | None = None,
              lr: float | None = None, device=None, checkpoint_dir: str | Path | None = None,
              checkpoint_every: int = 0, resume: bool = False, vqgan: VQGAN | None = None, clip=None,
              clip_loss_weight: float | None = None, bf16: bool | None = None, ddp: bool = False,
              stop_after: int | None = None, **overrides) -> tuple[GPT, dict]:
    """Train the conditional GPT on token grids [N,h,w] (or [N,h*w]) and embeddings [N,cond_dim].

    The embeddings are the condition (CLIP image embeddings for language-free training); they are L2-normalised
    and, with noise > 0, perturbed LAFITE-style each step. AdamW, warm-up + cosine, gradient clipping, bf16
    autocast (bf16=None: on for CUDA; on a CPU, bf16=True pays only where `native_bf16`, and attention stays fp32).
    clip_loss_weight > 0 adds the paper's CLIP reconstruction loss (needs vqgan and clip). ddp=True: called inside
    torchrun with an initialised process group (see reference/distributed.py); each rank takes its slice of every
    global batch.
    checkpoint_dir / checkpoint_every / resume / stop_after: as in train_vqgan (exact resume).
    Returns (model in eval mode, stats with the loss history).
    """
    cfg = _resolve(cfg, "gpt")
    if overrides:
        cfg = with_overrides(cfg, **overrides)
    steps = cfg.steps if steps is None else steps
    bs = cfg.batch_size if batch_size is None else batch_size
    lr = cfg.lr if lr is None else lr
    noise = cfg.noise if noise is None else noise
    clip_w = cfg.clip_loss_weight if clip_loss_weight is None else clip_loss_weight
    n = tokens.shape[0]
    tokens = tokens.reshape(n, -1).long()  # [N,h,w] -> [N,n_pos]
    if tokens.shape[1] != cfg.n_pos:
        raise ValueError(f"token grids have {tokens.shape[1]} tokens, the GPT config wants n_pos={cfg.n_pos}")
    if embeddings.shape != (n, cfg.cond_dim):
        raise ValueError(f"embeddings must be [{n},{cfg.cond_dim}], got {tuple(embeddings.shape)}")
    if int(tokens.min()) < 0 or int(tokens.max()) >= cfg.vocab_size:
        raise ValueError(f"token ids must lie in [0,{cfg.vocab_size})")
    if clip_w > 0 and (vqgan is None or clip is None):
        raise ValueError("clip_loss_weight > 0 needs vqgan= and clip=")
    dev = _device(device)
    use_bf16 = (dev.type == "cuda") if bf16 is None else bf16
    torch.set_flush_denormal(True)
    torch.manual_seed(seed)
    model = GPT(cfg).to(dev)
    embeddings = F.normalize(embeddings.float(), dim=-1)
    opt = torch.optim.AdamW(_gpt_param_groups(model, cfg.weight_decay), lr=lr, betas=cfg.betas)
    train_model = model
    rank, world = 0, 1
    if ddp:
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
        if bs % world:
            raise ValueError(f"batch_size {bs} is not divisible by the world size {world}")
        train_model = torch.nn.parallel.DistributedDataParallel(model)
    batches = _Batches(n, bs, seed)
    start, history = 0, []
    if resume and checkpoint_dir is not None and (Path(checkpoint_dir) / "config.json").exists():
        loaded, state, _ = load_checkpoint(checkpoint_dir, dev, train_state=True)
        model.load_state_dict(loaded.state_dict())
        opt.load_state_dict(state["optimizer"])
        start, history = state["step"], state["history"]

    def save(step: int) -> None:
        if rank == 0:
            save_checkpoint(checkpoint_dir, model, "gpt", {
                "step": step, "optimizer": opt.state_dict(), "history": history, "seed": seed,
            }, meta={"seed": seed, "steps": step, "noise": noise})

    model.train()
    if vqgan is not None:
        vqgan.eval().requires_grad_(False)
    end = steps if stop_after is None else min(steps, stop_after)
    loop = _Loop(save if checkpoint_dir is not None else None, checkpoint_every, steps, start, "gpt",
                 progress and rank == 0)
    with _private_rng(dev):
        for step in range(start, end):
            torch.manual_seed(mix_seed(seed, "dropout", step, rank))
            for group in opt.param_groups:
                group["lr"] = lr_at(step, lr, cfg.warmup, steps, cfg.min_lr_ratio)
            idx = batches(step)
            gen = _step_generator(seed, "noise", step)
            cond = perturb_embeddings(embeddings[idx], noise, gen)  # all ranks draw the full batch's noise
            idx, cond = idx[rank::world], cond[rank::world]
            own = embeddings[idx]  # the images' own embeddings: the CLIP loss's target, without the noise
            tok = tokens[idx].to(dev)
            cond = cond.to(dev)
            amp = torch.autocast(dev.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
            with amp:
                logits = train_model(cond, tok[:, :-1])  # [b,n_pos,V]
                ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tok.reshape(-1))
                loss = ce
                if clip_w > 0:
                    loss = loss + clip_w * clip_reconstruction_loss(logits, vqgan, clip, own.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            if world > 1:  # log the loss of the whole global batch, as one process would see it
                ce = ce.detach().clone()
                torch.distributed.all_reduce(ce)
                ce = ce / world
            history.append(float(ce.detach()))
            if step % 10 == 0:
                loop.bar.set_postfix(loss=f"{float(ce.detach()):.3f}", refresh=False)
            loop.step_done(step)
    seconds = loop.finish(end)
    model.eval()
    tail = history[-50:] if history else [float("nan")]
    return model, {"steps": end, "seconds": round(seconds, 2), "final_loss": sum(tail) / len(tail),
                   "history": history, "noise": noise, "params": model.num_params()}


# ---------------------------------------------------------------------------------------------------------------
# language-free CLIP-GEN from images (and the text-supervised baseline)
# ---------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def precompute(images: Tensor, clip, vqgan: VQGAN, cache_path: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """CLIP image embeddings [N,D] (unit norm) and VQGAN token grids [N,h,w] of uint8 images, computed once.

    With cache_path, they are loaded from / saved to that file (the caller names it by everything that shaped them).
    """
    if cache_path is not None and Path(cache_path).exists():
        blob = torch.load(cache_path, map_location="cpu", weights_only=True)
        return blob["tokens"], blob["embeddings"]
    emb = clip.encode_image(images).float().cpu()
    tok = vqgan.encode(images).cpu()
    if cache_path is not None:
        Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(cache_path) + ".tmp")
        torch.save({"tokens": tok, "embeddings": emb}, tmp)
        tmp.replace(cache_path)
    return tok, emb


def train_clipgen(data, clip, vqgan: VQGAN, cfg: GPTConfig | str = "tiny", steps: int | None = None, seed: int = 0,
                  noise: float | None = None, condition: str = "image", captions: list[str] | None = None,
                  progress: bool = True, cache_path: str | Path | None = None, **kwargs) -> tuple[GPT, dict]:
    """Train the CLIP-GEN generator.

    condition="image" (language-free, the paper): ``data`` is uint8 images [N,3,H,W] or a dataset object, of which
    only ``train_images()`` is called; captions must not be given. condition="text" (the text-supervised baseline
    ``clipgen-text``): ``data`` is uint8 images paired with ``captions`` (or a dataset, whose ``pairs()`` is used),
    and the GPT is conditioned on CLIP text embeddings of the captions.
    """
    if condition == "image":
        if captions is not None:
            raise ValueError("language-free training (condition='image') takes no captions")
        images = data if isinstance(data, Tensor) else data.train_images()
        tokens, emb = precompute(images, clip, vqgan, cache_path)
    elif condition == "text":
        if not isinstance(data, Tensor):
            data, captions, _ = data.pairs()
        if captions is None or len(captions) != data.shape[0]:
            raise ValueError("condition='text' needs one caption per image (captions=...)")
        tokens = vqgan.encode(data).cpu()
        emb = clip.encode_text(list(captions)).float().cpu()
    else:
        raise ValueError(f"condition must be 'image' or 'text', got {condition!r}")
    # the VQGAN and CLIP ride along for the paper's CLIP-reconstruction loss (used when its weight > 0)
    return train_gpt(tokens, emb, cfg, steps=steps, seed=seed, noise=noise, progress=progress, vqgan=vqgan, clip=clip,
                     **kwargs)
