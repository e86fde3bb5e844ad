"""Systems built around another system or a component: the controls beside CLIP-GEN.

  random-caption  another system conditioned on a different caption (how much the text matters)
  vqgan-recon     real images through the VQGAN (the ceiling of any generator on this tokenizer)
  retrieval       the train image whose CLIP image embedding is nearest the caption's text embedding
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from bench.api import UserError
from bench.registry import SYSTEMS


@dataclass(frozen=True)
class RandomCaptionArgs:
    of: str = field(default="clipgen", metadata={"system": True, "help": "alias of the system to mislead"})


class RandomCaption:
    """Asks another system for a different caption's image: metrics then compare it with the right caption."""

    def __init__(self, inner, items):
        self.inner = inner
        self.uses_captions = bool(getattr(inner, "uses_captions", False))
        self.tokens_per_image = getattr(inner, "tokens_per_image", 0)
        self.items = list(items)
        self.by_id = {it.caption_id: it.caption for it in items}

    def other_item(self, caption_id: int, seed: int):
        """Another eval caption (another text, not the same text under another id), drawn from the row's seed."""
        gen = torch.Generator().manual_seed(seed)
        own = self.by_id.get(caption_id)
        for _ in range(64):
            pick = self.items[int(torch.randint(len(self.items), (1,), generator=gen))]
            if pick.caption != own:
                return pick
        return pick

    def provenance(self) -> dict:
        """How the misled system was made (its training, sampling settings): the rows name it as they would its own."""
        return self.inner.provenance() if hasattr(self.inner, "provenance") else {}

    def check_captions(self, caption_ids: list[int]) -> None:
        """Any eval caption may be handed over, not only the run's (`--limit`): the misled system must serve them all
        (a samples-folder holding only the run's captions would otherwise fail midway through generating)."""
        if hasattr(self.inner, "check_captions"):
            try:
                self.inner.check_captions([it.caption_id for it in self.items])
            except UserError as err:
                raise UserError(f"random-caption hands the system it misleads any eval caption, not only the "
                                f"run's: {err}") from None

    def generate(self, captions: list[str], caption_ids: list[int], seeds: list[int]) -> Tensor:
        # the other caption's id goes with it: systems keyed by caption id (real-images, vqgan-recon,
        # samples-folder) would otherwise show the right caption's image; the row keeps its own seed
        others = [self.other_item(cid, s) for cid, s in zip(caption_ids, seeds)]
        return self.inner.generate([o.caption for o in others], [o.caption_id for o in others], seeds)


@SYSTEMS.register("random-caption", "another system conditioned on a different caption (how much the text "
                                    "matters)", args=RandomCaptionArgs)
def build_random_caption(args: RandomCaptionArgs, ctx) -> RandomCaption:
    return RandomCaption(ctx.system(args.of), ctx.dataset.eval_captions())


@dataclass(frozen=True)
class VQGANReconArgs:
    vqgan: str = field(default="vqgan", metadata={"component": "vqgan"})


class VQGANRecon:
    uses_captions = False

    def __init__(self, vqgan, dataset):
        self.vqgan, self.dataset = vqgan, dataset
        self.items = {it.caption_id: it for it in dataset.eval_captions()}

    @torch.no_grad()
    def generate(self, captions: list[str], caption_ids: list[int], seeds: list[int]) -> Tensor:
        real = self.dataset.real_images([self.items[i] for i in caption_ids], seeds)
        return self.vqgan.reconstruct(real)


@SYSTEMS.register("vqgan-recon", "real images through the VQGAN (the tokenizer's ceiling)", args=VQGANReconArgs)
def build_vqgan_recon(args: VQGANReconArgs, ctx) -> VQGANRecon:
    return VQGANRecon(ctx.component(args.vqgan), ctx.dataset)


@dataclass(frozen=True)
class RetrievalArgs:
    clip: str = field(default="clip", metadata={"component": "clip", "help": "the CLIP that matches text to images"})


class Retrieval:
    """The train-split image nearest the caption in CLIP space: realism with no generation at all."""

    uses_captions = False

    def __init__(self, clip, pool: Tensor):
        self.clip, self.pool = clip, pool
        self.pool_emb = torch.cat([clip.encode_image(pool[i:i + 1024]) for i in range(0, len(pool), 1024)])  # [N,D]

    @torch.no_grad()
    def generate(self, captions: list[str], caption_ids: list[int], seeds: list[int]) -> Tensor:
        text = self.clip.encode_text(captions)  # [B,D]
        best = (text @ self.pool_emb.T).argmax(dim=1).cpu()  # [B]; the pool stays on the CPU, CLIP may not
        return self.pool[best]


@SYSTEMS.register("retrieval", "the train image whose CLIP image embedding best matches the caption",
                  args=RetrievalArgs)
def build_retrieval(args: RetrievalArgs, ctx) -> Retrieval:
    return Retrieval(ctx.component(args.clip), ctx.dataset.train_images())
