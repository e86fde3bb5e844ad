"""The `clip` component kind: a CLIP loaded from disk, or a tiny one trained on the dataset's pairs.

In a suite:
  clip:      {kind: clip, train: {preset: tiny, steps: 150}}          # trained (and cached)
  clip-eval: {kind: clip, train: {preset: tiny-eval, seed: 1}}
  clip-dir:  {kind: clip, path: /abs/dir}                # a directory written by reference.clip.save_clip
                                                         # (open_clip's local-dir format)
  clip-b32:  {kind: clip, path: "ViT-B-32@/abs/vit_b32.pt"}   # open_clip architecture @ weights file
  clip-hub:  {kind: clip, path: "ViT-B-32@openai"}       # open_clip architecture @ hub tag (needs the hub)
After `@`, a value with a path separator or a weights suffix (.pt .pth .bin .safetensors) is a file,
anything else an open_clip pretrained tag.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from bench.api import BuildContext, ComponentSpec, UserError
from bench.registry import COMPONENTS
from reference.clip import PRESETS, ClipModel, load_clip, load_saved_clip, save_clip, train_clip

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


@dataclass(frozen=True)
class ClipTrainArgs:
    preset: str = field(default="tiny", metadata={"choices": tuple(PRESETS), "help": "architecture and defaults"})
    steps: int = field(default=150, metadata={"min": 1, "help": "optimizer steps"})
    batch_size: int = field(default=256, metadata={"min": 2, "help": "pairs per contrastive batch"})
    lr: float = field(default=2e-3, metadata={"min": 0.0, "help": "peak AdamW learning rate (cosine decay)"})
    seed: int = field(default=0, metadata={"help": "initialisation and batch order"})


def parse_clip_path(path: str) -> tuple[str, str | None, str | None]:
    """'<dir>' -> (dir, None, None); 'MODEL@file' -> (MODEL, file, None); 'MODEL@tag' -> (MODEL, None, tag)."""
    if "@" not in path:
        return path, None, None
    model, _, source = path.partition("@")
    if not model or not source:
        raise UserError(f"clip path {path!r}: expected 'MODEL@/path/to/weights.pt' or 'MODEL@tag'")
    if os.sep in source or "/" in source or source.endswith(WEIGHT_SUFFIXES):
        return model, source, None
    return model, None, source


def load_clip_from_path(path: str, device: str = "cpu") -> ClipModel:
    """Load a CLIP named by a suite's `path:` value; user mistakes become one-line UserErrors."""
    model, weights, tag = parse_clip_path(path)
    try:
        if weights is None and tag is None:
            if not os.path.isdir(model):
                raise UserError(f"clip path {path!r} is neither a saved CLIP directory nor 'MODEL@weights'; "
                                f"e.g. path: 'ViT-B-32@/abs/vit_b32.pt'")
            return load_saved_clip(model, device=device)
        return load_clip(model, os.path.abspath(weights) if weights else None, device=device, pretrained_tag=tag)
    except (ValueError, FileNotFoundError) as err:
        raise UserError(str(err)) from None


@COMPONENTS.register("clip", "CLIP encoder: open_clip weights from a path, or a tiny CLIP trained on the pairs",
                     args=ClipTrainArgs)
def build_clip(spec: ComponentSpec, ctx: BuildContext) -> ClipModel:
    if spec.path is not None:
        return load_clip_from_path(spec.path, device=ctx.device)
    args: ClipTrainArgs = spec.train if spec.train is not None else ClipTrainArgs()

    def train() -> ClipModel:
        images, captions, _ = ctx.dataset.pairs()
        return train_clip(images, captions, preset=args.preset, steps=args.steps, batch_size=args.batch_size,
                          lr=args.lr, seed=args.seed, progress=ctx.progress, device=ctx.device)

    return ctx.cached("clip", key={"args": asdict(args)}, train=train, save=save_clip,
                      load=lambda directory: load_saved_clip(directory, device=ctx.device))


build_clip.reads = ("pairs",)  # the data a trained one sees (Builder.data_key); captions: it plays web pretraining
