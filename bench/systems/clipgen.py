"""CLIP-GEN.

  clipgen         language-free: the GPT learns p(tokens | CLIP image embedding) from images only;
                  at inference the CLIP text embedding of the caption takes the image embedding's place
  clipgen-text    the same GPT and budget conditioned on CLIP text embeddings of paired captions
                  (the text-supervised upper bound; uses_captions: true)

This module's code is part of the GPT's cache key (bench.build.Builder.code_of): the systems built around
it live in bench/systems/around.py, so editing them retrains nothing.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from bench.api import BuildContext, UserError
from bench.registry import SYSTEMS


@dataclass(frozen=True)
class GPTTrainArgs:
    preset: str = field(default="tiny", metadata={"choices": ("tiny", "small", "paper"), "help": "reference preset"})
    steps: int | None = field(default=None, metadata={"min": 1, "help": "training steps (default: the preset's)"})
    batch_size: int | None = field(default=None, metadata={"min": 1})
    lr: float | None = field(default=None, metadata={"min": 0.0})
    seed: int = field(default=0, metadata={"min": 0})
    noise: float | None = field(default=None, metadata={"min": 0.0, "help": "LAFITE-style embedding noise scale "
                                                                          "(default: the preset's)"})
    clip_loss_weight: float | None = field(default=None, metadata={"min": 0.0, "help": "the paper's CLIP-reconstruction "
                                                                                     "loss weight (default: the preset's)"})
    precision: str = field(default="auto", metadata={"choices": ("auto", "fp32", "bf16"),
                                                     "help": "matrix products in training; auto: bf16 where the "
                                                             "device runs it natively (CUDA, AVX512-BF16/AMX CPUs), "
                                                             "else fp32; the cache key names the one used"})


@dataclass(frozen=True)
class ClipGenArgs:
    clip: str = field(default="clip", metadata={"component": "clip", "help": "the conditioning CLIP"})
    vqgan: str = field(default="vqgan", metadata={"component": "vqgan", "help": "the tokenizer"})
    train: GPTTrainArgs = field(default_factory=GPTTrainArgs)
    path: str | None = field(default=None, metadata={"path": True, "help": "a GPT checkpoint (folder or public file) instead of training"})
    top_k: int | None = field(default=50, metadata={"min": 1})
    top_p: float | None = field(default=None, metadata={"min": 0.0, "max": 1.0})
    temperature: float = field(default=1.0, metadata={"min": 1e-6})
    candidates: int = field(default=1, metadata={"min": 1, "help": "samples per caption, best kept by rerank_clip"})
    rerank_clip: str | None = field(default=None, metadata={"component": "clip",
                                                           "help": "the CLIP that re-ranks (default: clip)"})
    rerank_input: str = field(default="clip", metadata={"choices": ("clip", "demo"),
                                                        "help": "clip: proper preprocessing; demo: the public "
                                                                "demo's unnormalised [-1,1] input"})
    compile: bool = field(default=False, metadata={"help": "decode through torch.compile (one trace per batch "
                                                           "size; for GPUs: on a CPU it is slower)"})


class ClipGen:
    """Captions -> CLIP text embeddings -> GPT tokens -> VQGAN decoder -> uint8 images."""

    def __init__(self, gpt, vqgan, clip, args: ClipGenArgs, rerank_clip, uses_captions: bool, training: dict):
        self.gpt, self.vqgan, self.clip, self.args = gpt, vqgan, clip, args
        self.rerank = rerank_clip
        self.uses_captions = uses_captions
        self.tokens_per_image = vqgan.grid * vqgan.grid * args.candidates
        self.training = training

    def provenance(self) -> dict:
        return {"training": self.training, "candidates": self.args.candidates,
                "rerank_clip": (self.args.rerank_clip or self.args.clip) if self.args.candidates > 1 else None}

    @torch.no_grad()
    def generate(self, captions: list[str], caption_ids: list[int], seeds: list[int]) -> Tensor:
        from reference.sample import generate

        cond = self.clip.encode_text(captions)  # [B,D] unit norm
        a = self.args
        return generate(self.gpt, self.vqgan, cond, seeds, top_k=a.top_k, top_p=a.top_p, temperature=a.temperature,
                        candidates=a.candidates, rerank_clip=self.rerank if a.candidates > 1 else None,
                        captions=captions, rerank_input=a.rerank_input, batch_size=max(64, len(captions)),
                        compile=a.compile)


def _build_clipgen(args: ClipGenArgs, ctx: BuildContext, condition: str) -> ClipGen:
    from reference.checkpoint import load_gpt, read_config, save_gpt
    from reference.configs import get_preset
    from reference.train import native_bf16, train_clipgen

    clip, vqgan = ctx.component(args.clip), ctx.component(args.vqgan)
    rerank = ctx.component(args.rerank_clip) if args.rerank_clip else clip
    if args.path is not None:
        from reference.gpt import GPT
        from reference.loaders import load_pretrained

        try:
            gpt = load_pretrained("auto", args.path, ctx.device)
        except (FileNotFoundError, ValueError) as err:
            raise UserError(f"clipgen: cannot load GPT from {args.path}: {err}") from None
        if not isinstance(gpt, GPT):
            raise UserError(f"clipgen: {args.path} holds a {type(gpt).__name__}, not a GPT")
        c = gpt.cfg
        if (c.vocab_size, c.grid, c.cond_dim) != (vqgan.cfg.codebook_size, vqgan.grid, clip.embed_dim):
            raise UserError(f"clipgen: the GPT in {args.path} (grid {c.grid}, {c.vocab_size} codes, {c.cond_dim}-d "
                            f"condition) does not fit VQGAN {args.vqgan!r} (grid {vqgan.grid}, "
                            f"{vqgan.cfg.codebook_size} codes) and CLIP {args.clip!r} ({clip.embed_dim}-d embeddings)")
        return ClipGen(gpt, vqgan, clip, args, rerank, condition == "text", {"loaded_from": args.path})
    t = args.train
    cfg = get_preset(t.preset).gpt
    if cfg.cond_dim != clip.embed_dim:
        cfg = dataclasses.replace(cfg, cond_dim=clip.embed_dim)
    if cfg.vocab_size != vqgan.cfg.codebook_size or cfg.grid != vqgan.grid:
        raise UserError(f"clipgen: the {t.preset} GPT preset (grid {cfg.grid}, {cfg.vocab_size} codes) does not fit "
                        f"VQGAN {args.vqgan!r} (grid {vqgan.grid}, {vqgan.cfg.codebook_size} codes); use one preset")

    precision = t.precision if t.precision != "auto" else "bf16" if native_bf16(ctx.device) else "fp32"

    def train():
        start = time.perf_counter()
        data = ctx.dataset  # train_images() for condition="image", pairs() for "text": the factories' `reads`
        gpt, stats = train_clipgen(data, clip, vqgan, cfg, steps=t.steps, seed=t.seed, noise=t.noise, progress=ctx.progress,
                                   condition=condition, batch_size=t.batch_size, lr=t.lr, device=ctx.device,
                                   clip_loss_weight=t.clip_loss_weight, bf16=precision == "bf16")
        gpt.training_stats = {"steps": stats["steps"], "seconds": round(time.perf_counter() - start, 1),
                              "final_loss": stats["final_loss"], "condition": condition,
                              "precision": precision}
        return gpt

    def save(gpt, directory):
        save_gpt(directory, gpt, meta={"training": gpt.training_stats})

    def load(directory):
        gpt = load_gpt(directory, map_location=ctx.device)
        gpt.training_stats = read_config(directory)[2].get("training", {})
        return gpt

    key = {"train": dict(dataclasses.asdict(t), precision=precision), "condition": condition,
           "clip": ctx.key_of(args.clip), "vqgan": ctx.key_of(args.vqgan), "cond_dim": cfg.cond_dim}
    gpt = ctx.cached("clipgen-gpt", key, train, save, load)
    return ClipGen(gpt, vqgan, clip, args, rerank, condition == "text", getattr(gpt, "training_stats", {}))


@SYSTEMS.register("clipgen", "CLIP-GEN, language-free: GPT on CLIP image embeddings, CLIP text embedding at "
                             "inference", args=ClipGenArgs)
def build_clipgen(args: ClipGenArgs, ctx: BuildContext) -> ClipGen:
    return _build_clipgen(args, ctx, "image")


@SYSTEMS.register("clipgen-text", "the same GPT trained on CLIP text embeddings of paired captions "
                                  "(text-supervised upper bound)", args=ClipGenArgs)
def build_clipgen_text(args: ClipGenArgs, ctx: BuildContext) -> ClipGen:
    return _build_clipgen(args, ctx, "text")


build_clipgen.reads = ("train",)  # the language-free GPT never sees a caption (Builder.data_key)
build_clipgen_text.reads = ("pairs",)
