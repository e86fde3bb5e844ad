"""`attribute-judge`: a small CNN that reads each attribute (colour, shape, position; or a class) off an image.

Trained on the dataset's captioned `pairs` split (real renders, never generated images), one
softmax head per attribute; saved as safetensors + a config JSON. `attribute-accuracy` and
`class-accuracy` use it to read generated images.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from bench.api import BuildContext, ComponentSpec, UserError
from bench.components.weights_dir import read_weights_dir, save_weights_dir
from bench.registry import COMPONENTS
from reference.progress import progress_bar
from reference.train import one_cycle

WEIGHTS_FILE = "judge.safetensors"
CONFIG_FILE = "judge.json"


@dataclass(frozen=True)
class JudgeConfig:
    attributes: dict  # attribute -> list of values (head order)
    input_size: int = 32  # images are resized to input_size x input_size
    width: int = 16  # channels of the first conv stage (then 2x, 4x)
    hidden: int = 256


@dataclass(frozen=True)
class JudgeTrainArgs:
    steps: int = field(default=400, metadata={"min": 1, "help": "optimiser steps"})
    batch_size: int = field(default=128, metadata={"min": 1, "help": "images per step"})
    lr: float = field(default=2e-3, metadata={"min": 0.0, "help": "Adam learning rate (cosine decay)"})
    width: int = field(default=16, metadata={"min": 4, "help": "channels of the first conv stage"})
    input_size: int = field(default=32, metadata={"min": 8, "max": 256, "help": "judge input side"})
    val_fraction: float = field(default=0.1, metadata={"min": 0.0, "max": 0.5, "help": "pairs held back to measure the judge"})
    seed: int = field(default=0, metadata={"help": "init and batch order"})


# ---- the model, in the order an image meets it -----------------------------------------------------
def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))


class AttributeJudge(nn.Module):
    def __init__(self, config: JudgeConfig):
        super().__init__()
        self.config = config
        self.report: dict = {}  # how well it judged held-back real pairs when trained
        w = config.width
        self.features = nn.Sequential(_block(3, w), _block(w, 2 * w), _block(2 * w, 4 * w))
        side = config.input_size // 8
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * side * side, config.hidden), nn.ReLU())
        self.heads = nn.ModuleDict({a: nn.Linear(config.hidden, len(v)) for a, v in config.attributes.items()})

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 [B,3,H,W] -> float [B,3,S,S] in [-1, 1]."""
        x = images.float() / 127.5 - 1.0
        s = self.config.input_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return x

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        h = self.trunk(self.features(self.preprocess(images)))  # [B,hidden]
        return {a: head(h) for a, head in self.heads.items()}  # attribute -> logits [B,V_a]

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 256) -> dict[str, Tensor]:
        """attribute -> predicted value index, long [B]."""
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        out: dict[str, list[Tensor]] = {a: [] for a in self.config.attributes}
        for s in range(0, images.shape[0], batch_size):
            logits = self(images[s:s + batch_size].to(dev))
            for a, l in logits.items():
                out[a].append(l.argmax(-1).cpu())
        self.train(was)
        return {a: torch.cat(v) if v else torch.zeros(0, dtype=torch.long) for a, v in out.items()}

    def labels(self, infos: list[dict]) -> dict[str, Tensor]:
        """attribute -> true value index, long [B], from the info dicts."""
        return {a: torch.tensor([value_index(info, a, values) for info in infos], dtype=torch.long)
                for a, values in self.config.attributes.items()}


def value_index(info: dict, attribute: str, values: list) -> int:
    if attribute not in info:
        raise UserError(f"judge: caption info has no {attribute!r} (keys: {', '.join(info)})")
    v = info[attribute]
    if v in values:
        return values.index(v)
    if isinstance(v, int) and 0 <= v < len(values):
        return v
    raise UserError(f"judge: {attribute}={v!r} is not one of {values}")


# ---- training --------------------------------------------------------------------------------------
def train_judge(images: Tensor, infos: list[dict], attributes: dict, args: JudgeTrainArgs,
                device: str = "cpu", progress: bool = False) -> tuple[AttributeJudge, dict]:
    """Returns the judge and {"val_accuracy": all-correct accuracy on the held-back pairs, "val_n": ...}."""
    if not attributes:
        raise UserError("attribute-judge: the dataset declares no attributes to judge")
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    judge = AttributeJudge(JudgeConfig({a: list(v) for a, v in attributes.items()}, args.input_size, args.width)).to(device)
    labels = judge.labels(infos)
    n = images.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))
    n_val = int(round(n * args.val_fraction))
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    opt = torch.optim.Adam(judge.parameters(), lr=args.lr)
    sched = one_cycle(opt, args.lr, args.steps)
    gen = torch.Generator().manual_seed(args.seed + 1)
    judge.train()
    for _ in progress_bar(range(args.steps), desc="attribute judge", enabled=progress, leave=False):
        idx = tr_idx[torch.randint(len(tr_idx), (min(args.batch_size, len(tr_idx)),), generator=gen)]
        logits = judge(images[idx].to(device))
        loss = sum(F.cross_entropy(logits[a], labels[a][idx].to(device)) for a in logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    judge.eval()
    report = {"val_n": int(n_val)}
    if n_val:
        pred = judge.predict(images[val_idx])
        ok = torch.stack([pred[a] == labels[a][val_idx] for a in pred]).all(0)
        report["val_accuracy"] = float(ok.float().mean())
    return judge, report


# ---- files -----------------------------------------------------------------------------------------
def save_judge(judge: AttributeJudge, directory: str, report: dict | None = None) -> None:
    save_weights_dir(judge, directory, WEIGHTS_FILE, CONFIG_FILE,
                     {"config": asdict(judge.config), "report": report or getattr(judge, "report", {})}, indent=1)


def load_judge(path: str, device: str = "cpu") -> AttributeJudge:
    """`path`: a directory holding judge.safetensors + judge.json, or the .safetensors file itself."""
    state, meta = read_weights_dir(path, WEIGHTS_FILE, CONFIG_FILE, "attribute-judge")
    judge = AttributeJudge(JudgeConfig(**meta["config"]))
    judge.load_state_dict(state)
    judge.report = meta.get("report", {})
    return judge.to(device).eval()


@COMPONENTS.register("attribute-judge", "CNN reading each attribute (or the class) off an image; trained on real pairs",
                     args=JudgeTrainArgs)
def build_judge(spec: ComponentSpec, ctx: BuildContext) -> AttributeJudge:
    if spec.path:
        return load_judge(spec.path, ctx.device)
    args = spec.train if spec.train is not None else JudgeTrainArgs()

    def train() -> AttributeJudge:
        images, _captions, infos = ctx.dataset.pairs()
        judge, report = train_judge(images, infos, ctx.dataset.attributes(), args, ctx.device, ctx.progress)
        judge.report = report
        return judge

    key = {"args": asdict(args), "attributes": ctx.dataset.attributes()}
    return ctx.cached("attribute-judge", key, train,
                      lambda judge, d: save_judge(judge, d), lambda d: load_judge(d, ctx.device))


build_judge.reads = ("pairs",)  # the data a trained one sees (Builder.data_key)
