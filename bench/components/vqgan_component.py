"""The `vqgan` component kind: a VQGAN tokenizer loaded from a checkpoint folder or trained on images only."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from bench.api import BuildContext, ComponentSpec, UserError
from bench.registry import COMPONENTS


@dataclass(frozen=True)
class VQGANTrainArgs:
    preset: str = field(default="tiny", metadata={"choices": ("tiny", "small", "paper"), "help": "reference preset"})
    steps: int | None = field(default=None, metadata={"min": 1, "help": "training steps (default: the preset's)"})
    batch_size: int | None = field(default=None, metadata={"min": 1})
    lr: float | None = field(default=None, metadata={"min": 0.0})
    seed: int = field(default=0, metadata={"min": 0})


def _load(path: str, device: str):
    """Our checkpoint folder, a converted one, or a public file (HFAiLab / taming), told apart by its keys."""
    from reference.loaders import load_pretrained
    from reference.vqgan import VQGAN

    try:
        model = load_pretrained("auto", path, device)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(f"vqgan: cannot load {path}: {err}") from None
    if not isinstance(model, VQGAN):
        raise UserError(f"vqgan: {path} holds a {type(model).__name__}, not a VQGAN")
    return model


@COMPONENTS.register("vqgan", "VQGAN tokenizer: a checkpoint folder (path:) or trained on the dataset's "
                              "train images, never captions (train:)", args=VQGANTrainArgs)
def build_vqgan(spec: ComponentSpec, ctx: BuildContext):
    from reference.checkpoint import save_vqgan
    from reference.configs import get_preset
    from reference.train import train_vqgan

    if spec.path is not None:
        model = _load(spec.path, ctx.device)
        if model.cfg.resolution != ctx.dataset.resolution:  # its systems would make images of another size
            raise UserError(f"components.{spec.name}: the VQGAN at {spec.path} works at {model.cfg.resolution} px, "
                            f"the dataset at {ctx.dataset.resolution} px: set dataset.resolution: "
                            f"{model.cfg.resolution} or load a VQGAN for {ctx.dataset.resolution} px")
        return model
    args: VQGANTrainArgs = spec.train
    cfg = get_preset(args.preset).vqgan
    problem = _check_dataset(args, ctx.dataset)  # `bench validate` asked already; a Builder used directly may not
    if problem:
        raise UserError(f"components.{spec.name}: {problem}")

    def train():
        images = ctx.dataset.train_images()  # once: from an image folder this decodes every file
        if ctx.progress:
            print(f"[{spec.name}] training VQGAN ({args.preset}) on {len(images)} images", flush=True)
        model, stats = train_vqgan(images, cfg, steps=args.steps, seed=args.seed, progress=ctx.progress,
                                   batch_size=args.batch_size, lr=args.lr, device=ctx.device)
        model.training_stats = {k: v for k, v in stats.items() if k != "history"}
        return model

    def save(model, directory):
        save_vqgan(directory, model, meta={"training": getattr(model, "training_stats", {})})

    def load(directory):
        from reference.checkpoint import read_config

        model = _load(directory, ctx.device)
        model.training_stats = read_config(directory)[2].get("training", {})
        return model

    key = {"train": dataclasses.asdict(args)}  # the train split and the code join it in Builder.cached
    return ctx.cached("vqgan", key, train, save, load)


def _check_dataset(args: VQGANTrainArgs, dataset_args) -> str:
    """At `bench validate`: a preset's VQGAN takes images of one resolution only."""
    from reference.configs import get_preset

    want, have = get_preset(args.preset).vqgan.resolution, getattr(dataset_args, "resolution", None)
    if have is not None and want != have:
        return f"the {args.preset} VQGAN preset wants {want}px images but the dataset renders {have}px; " \
               f"set dataset.resolution: {want} or another preset (`bench ls`)"
    return ""


build_vqgan.check_dataset = _check_dataset
build_vqgan.reads = ("train",)  # images only, never captions (Builder.data_key)
