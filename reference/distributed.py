"""Data-parallel GPT training under torchrun (DDP; gloo on CPU, nccl on GPU).

    torchrun --standalone --nproc_per_node=2 -m reference.distributed \
        --data data.pt --out runs/gpt-ddp --preset tiny --steps 800 --batch-size 64

``data.pt`` holds {"tokens": int64 [N,h,w], "embeddings": float [N,D]} (see reference.train.precompute). Every rank
draws the same global batch (epoch permutation seeded by (seed, epoch)) and takes its slice ``rank::world``, so the
DistributedSampler-style split leaves the loss trajectory equal to one process with the same global batch. Rank 0
writes the checkpoint and ``history.json``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="torch file with tokens and embeddings")
    ap.add_argument("--out", required=True, help="checkpoint folder (rank 0 writes it)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="global batch size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=None)
    ap.add_argument("--override", default="{}", help="JSON of GPTConfig fields to override")
    args = ap.parse_args(argv)
    if not Path(args.data).exists():
        raise SystemExit(f"error: no data file at {args.data}")

    from reference.train import train_gpt

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu"
        blob = torch.load(args.data, map_location="cpu", weights_only=True)
        _, stats = train_gpt(blob["tokens"], blob["embeddings"], args.preset, steps=args.steps, seed=args.seed,
                             noise=args.noise, batch_size=args.batch_size, device=device, progress=False,
                             checkpoint_dir=args.out, ddp=True, **json.loads(args.override))
        if dist.get_rank() == 0:
            Path(args.out, "history.json").write_text(json.dumps(stats["history"]))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
