"""`captioner`: a small image-to-caption model, the reference captioner behind CapLoss / CapS.

A small CNN turns the image into a grid of memory tokens; a causal transformer reads them and
predicts the caption's open_clip BPE tokens (`open_clip.get_tokenizer('ViT-B-32')`, offline)
one at a time. The output vocabulary is the set of BPE ids seen in the training captions plus one
<unknown> bucket (a caption token outside it reads as <unknown> and is left out of CapLoss), so the
softmax stays small.
Trained on the dataset's captioned `pairs`; saved as safetensors + a config JSON.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from bench.api import BuildContext, ComponentSpec
from bench.components.weights_dir import read_weights_dir, save_weights_dir
from bench.registry import COMPONENTS
from reference.progress import progress_bar
from reference.train import one_cycle

WEIGHTS_FILE = "captioner.safetensors"
CONFIG_FILE = "captioner.json"
SOT, EOT = 49406, 49407  # open_clip's start / end of text ids
BPE_VOCAB = 49408


@dataclass(frozen=True)
class CaptionerConfig:
    vocab: list  # BPE ids the output layer knows (index len(vocab) is <unknown>)
    input_size: int = 32  # images are resized to input_size x input_size
    grid: int = 4  # the image becomes grid x grid memory tokens
    width: int = 128
    layers: int = 2
    heads: int = 4
    max_tokens: int = 32  # SOT + caption + EOT, truncated by the tokenizer


@dataclass(frozen=True)
class CaptionerTrainArgs:
    steps: int = field(default=800, metadata={"min": 1, "help": "optimiser steps"})
    batch_size: int = field(default=64, metadata={"min": 1, "help": "pairs per step"})
    lr: float = field(default=1e-3, metadata={"min": 0.0, "help": "AdamW peak learning rate (one-cycle)"})
    width: int = field(default=128, metadata={"min": 16, "help": "transformer width"})
    layers: int = field(default=2, metadata={"min": 1, "help": "transformer layers"})
    heads: int = field(default=4, metadata={"min": 1, "help": "attention heads"})
    input_size: int = field(default=32, metadata={"min": 8, "max": 256, "help": "image side fed to the CNN"})
    max_tokens: int = field(default=32, metadata={"min": 4, "max": 77, "help": "caption length incl. SOT/EOT"})
    seed: int = field(default=0, metadata={"help": "init and batch order"})


_TOKENIZER = None


def bpe_tokenize(captions: list[str], context_length: int) -> Tensor:
    """open_clip ViT-B-32 BPE ids [B,context_length]: SOT, tokens, EOT, zero padding."""
    global _TOKENIZER
    if _TOKENIZER is None:
        import open_clip

        _TOKENIZER = open_clip.get_tokenizer("ViT-B-32")
    return _TOKENIZER(list(captions), context_length=context_length)


# ---- the model, in the order data meets it -------------------------------------------------------
class Captioner(nn.Module):
    def __init__(self, config: CaptionerConfig):
        super().__init__()
        self.config = config
        c, w = config, config.width
        self.unknown = len(c.vocab)
        lut = torch.full((BPE_VOCAB,), self.unknown, dtype=torch.long)
        lut[torch.tensor(list(c.vocab), dtype=torch.long)] = torch.arange(len(c.vocab))
        self.register_buffer("lut", lut, persistent=False)  # BPE id -> output index
        # image -> memory tokens
        self.cnn = nn.Sequential(
            nn.Conv2d(3, w // 4, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(w // 4, w // 2, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(w // 2, w, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(c.grid))
        self.img_pos = nn.Parameter(torch.randn(c.grid * c.grid, w) * 0.02)
        # caption tokens
        self.tok_emb = nn.Embedding(len(c.vocab) + 1, w)
        self.txt_pos = nn.Parameter(torch.randn(c.max_tokens, w) * 0.02)
        layer = nn.TransformerEncoderLayer(w, c.heads, 4 * w, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(w)
        self.out = nn.Linear(w, len(c.vocab) + 1)

    def tokenize(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        """(ids [B,T] in the output vocabulary, target mask [B,T-1]: True where ids[:,1:] is SOT..EOT's tail).

        T is the longest caption's length (SOT..EOT, at most max_tokens): positions past every EOT are padding
        that no earlier position attends to (the model is causal), so dropping them leaves every scored logit
        the same and saves their compute (a 9-token shapes caption in a 32-token window: a third of it)."""
        bpe = bpe_tokenize(captions, self.config.max_tokens)  # [B,max_tokens]
        eot_at = (bpe == EOT).int().argmax(1)  # [B]
        bpe = bpe[:, : int(eot_at.max()) + 1]  # [B,T]
        pos = torch.arange(1, bpe.shape[1])[None, :]  # [1,T-1] positions of the targets
        return self.lut[bpe.to(self.lut.device)], pos.to(self.lut.device) <= eot_at[:, None].to(self.lut.device)

    def memory(self, images: Tensor) -> Tensor:
        x = images.float() / 127.5 - 1.0
        s = self.config.input_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        g = self.cnn(x)  # [B,W,grid,grid]
        return g.flatten(2).transpose(1, 2) + self.img_pos  # [B,grid*grid,W]

    def next_token_logits(self, images: Tensor, ids: Tensor) -> Tensor:
        """logits [B,T-1,V+1]: position t predicts ids[:, t+1] from the image and ids[:, :t+1]."""
        mem = self.memory(images)  # [B,M,W]
        inp = ids[:, :-1]
        txt = self.tok_emb(inp) + self.txt_pos[: inp.shape[1]]  # [B,T-1,W]
        m, t = mem.shape[1], txt.shape[1]
        # image tokens see each other; a text token sees the image and the text up to itself
        blocked = torch.ones(m + t, m + t, dtype=torch.bool, device=ids.device)
        blocked[:, :m] = False
        blocked[m:, m:] = torch.triu(torch.ones(t, t, dtype=torch.bool, device=ids.device), diagonal=1)
        h = self.blocks(torch.cat([mem, txt], 1), mask=blocked)  # [B,M+T-1,W]
        return self.out(self.ln(h[:, m:]))  # [B,T-1,V+1]

    @torch.no_grad()
    def caption_loss(self, images: Tensor, captions: list[str]) -> Tensor:
        """Per image: the mean cross-entropy (nats) of its caption's tokens after SOT, EOT included, over the tokens
        in the captioner's vocabulary: a word no training caption had can only be <unknown>, a target it never
        learned, whatever the image shows (`unknown_tokens` counts those left out). float64 [B]."""
        was = self.training
        self.eval()
        dev = self.lut.device
        ids, mask = self.tokenize(captions)
        logits = self.next_token_logits(images.to(dev), ids)
        self.train(was)
        return token_nll(logits, ids[:, 1:], mask & (ids[:, 1:] != self.unknown)).cpu()

    def unknown_tokens(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        """Per caption: (its tokens outside the vocabulary, all its scored tokens), long [B] each."""
        ids, mask = self.tokenize(captions)
        return (mask & (ids[:, 1:] == self.unknown)).sum(1).cpu(), mask.sum(1).cpu()


def token_nll(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Mean over masked positions of -log softmax(logits)[target], per row, float64 [B]."""
    logp = torch.log_softmax(logits.double(), dim=-1)  # [B,T,V]
    nll = -logp.gather(-1, targets[..., None]).squeeze(-1)  # [B,T]
    m = mask.double()
    return (nll * m).sum(1) / m.sum(1).clamp(min=1)


# ---- training ----------------------------------------------------------------------------------------
def train_captioner(images: Tensor, captions: list[str], args: CaptionerTrainArgs, device: str = "cpu",
                    progress: bool = False) -> Captioner:
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    bpe = bpe_tokenize(captions, args.max_tokens)
    vocab = sorted(set(bpe.flatten().tolist()) - {0} | {SOT, EOT})
    model = Captioner(CaptionerConfig(vocab, args.input_size, 4, args.width, args.layers, args.heads,
                                      args.max_tokens)).to(device)
    ids, mask = model.tokenize(captions)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = one_cycle(opt, args.lr, args.steps)
    gen = torch.Generator().manual_seed(args.seed + 1)
    model.train()
    for _ in progress_bar(range(args.steps), desc="captioner", enabled=progress, leave=False):
        idx = torch.randint(images.shape[0], (min(args.batch_size, images.shape[0]),), generator=gen)
        logits = model.next_token_logits(images[idx].to(device), ids[idx])
        loss = token_nll(logits.float(), ids[idx][:, 1:], mask[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


# ---- files -----------------------------------------------------------------------------------------------
def save_captioner(model: Captioner, directory: str) -> None:
    save_weights_dir(model, directory, WEIGHTS_FILE, CONFIG_FILE, {"config": asdict(model.config)})


def load_captioner(path: str, device: str = "cpu") -> Captioner:
    """`path`: a directory with captioner.safetensors + captioner.json, or the .safetensors file itself."""
    state, meta = read_weights_dir(path, WEIGHTS_FILE, CONFIG_FILE, "captioner")
    model = Captioner(CaptionerConfig(**meta["config"]))
    model.load_state_dict(state)
    return model.to(device).eval()


@COMPONENTS.register("captioner", "small CNN + causal transformer, image -> open_clip BPE caption tokens (for CapS)",
                     args=CaptionerTrainArgs)
def build_captioner(spec: ComponentSpec, ctx: BuildContext) -> Captioner:
    if spec.path:
        return load_captioner(spec.path, ctx.device)
    args = spec.train if spec.train is not None else CaptionerTrainArgs()

    def train() -> Captioner:
        images, captions, _info = ctx.dataset.pairs()
        return train_captioner(images, captions, args, ctx.device, ctx.progress)

    key = {"args": asdict(args)}
    return ctx.cached("captioner", key, train, save_captioner, lambda d: load_captioner(d, ctx.device))


build_captioner.reads = ("pairs",)  # the data a trained one sees (Builder.data_key)
