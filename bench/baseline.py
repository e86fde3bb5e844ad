"""Refresh the CI baseline: export the quickstart recipe's trained parts as committed checkpoints.

    python -m bench.baseline [--recipe suites/quickstart.yaml] [--out results/baselines/ci-checkpoints]

(`make ci-baseline` runs this, then `bench run suites/ci.yaml` and copies its results.csv to
results/baselines/ci.csv.) Components come from the recipe's cache when it has them, so after a
`make quickstart` this takes seconds. The CLIPs' token tables are trimmed to the tokens the
dataset's captions use (the other rows are zeroed: no caption of the suite can reach them, and
zeros compress to nothing in git), so the committed files stay small in the repository.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
from pathlib import Path

import torch

from bench.build_pool import default_build_workers, ready_builder
from bench.cache import cache_dir
from bench.datasets.base import build_dataset
from bench.suite import load_suite

EXPORTS = ("clip", "clip-eval", "vqgan", "judge", "captioner")
GPT_SYSTEM = "clipgen-lf"


def trim_token_table(clip, captions: list[str]) -> int:
    """Zero the token-embedding rows no caption uses; returns how many rows stay."""
    table = clip.model.token_embedding.weight
    used = torch.unique(clip.tokenize(sorted(set(captions))).flatten())
    keep = torch.zeros(table.shape[0], dtype=torch.bool)
    keep[used] = True
    with torch.no_grad():
        table[~keep] = 0
    return int(keep.sum())


def sha256sums(folder: Path) -> None:
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "SHA256SUMS"):
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(folder)}")
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def export(recipe: str, out: str) -> Path:
    from reference.checkpoint import save_gpt, save_vqgan
    from reference.clip import save_clip

    from bench.components.captioner import save_captioner
    from bench.components.judge import save_judge

    suite = load_suite(recipe)
    dataset = build_dataset(suite.dataset)
    # built as `bench run` builds it (the same build workers, so the same cache keys as `make quickstart`)
    builder = ready_builder(suite, dataset, "cpu", str(cache_dir()), True, default_build_workers("cpu"),
                            Path("runs") / "ci-baseline" / "build-logs")
    _, captions, _ = dataset.pairs()
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=".ci-checkpoints.", dir=out.parent if out.parent.exists() else None))
    try:
        for name in EXPORTS:
            component = builder.component(name)
            kind = suite.components[name].kind
            if kind == "clip":
                kept = trim_token_table(component, list(captions) + [it.caption for it in dataset.eval_captions()])
                print(f"{name}: kept {kept} token rows")
                save_clip(component, str(tmp / name))
            elif kind == "vqgan":
                save_vqgan(tmp / name, component)
            elif kind == "attribute-judge":
                save_judge(component, str(tmp / name))
            elif kind == "captioner":
                save_captioner(component, str(tmp / name))
        save_gpt(tmp / "gpt", builder.system(GPT_SYSTEM).gpt)
        sha256sums(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="suites/quickstart.yaml")
    parser.add_argument("--out", default="results/baselines/ci-checkpoints")
    args = parser.parse_args()
    print(f"exported to {export(args.recipe, args.out)}")


if __name__ == "__main__":
    main()
