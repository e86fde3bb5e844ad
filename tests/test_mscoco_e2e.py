"""suites/mscoco.yaml end to end on a generated COCO fixture with reduced-width stand-ins in the public formats.

No real weights or data exist here: the stand-ins have the HFAiLab checkpoint layouts (plain dict under
'model', discriminator keys, fused-qkv encoder blocks with mask buffers) at small widths, the CLIPs are
untrained tiny open_clip models saved as folders, and the Inception is a random-init torch-fidelity
network saved locally. What is under test is that the paper-scale suite loads and runs them all.
"""
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from bench.cli import cli
from fixtures_coco import make_coco
from reference.clip import init_clip, save_clip
from reference.configs import PAPER, with_overrides
from reference.vqgan import VQGAN
from test_loaders import RefGPT

SUITE_DIR = Path(__file__).resolve().parents[1] / "suites"


def _inception(path):
    torch.manual_seed(0)
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, strict=True: None), \
            mock.patch("torch_fidelity.feature_extractor_inceptionv3.torch.load", lambda *a, **k: {}):
        net = FeatureExtractorInceptionV3("random", ["2048"], feature_extractor_weights_path="unused")
    torch.save(net.state_dict(), path)


@pytest.mark.slow
def test_mscoco_suite_runs_on_the_fixture_with_public_format_stand_ins(tmp_path, monkeypatch):
    root = tmp_path / "coco"
    make_coco(str(root), n_images=24)
    weights = tmp_path / "weights"
    weights.mkdir()
    clip = init_clip("tiny")
    save_clip(clip, str(weights / "clip"))
    save_clip(init_clip("tiny-eval"), str(weights / "clip-eval"))
    torch.manual_seed(0)
    vq_cfg = with_overrides(PAPER.vqgan, ch=32, z_channels=32, embed_dim=8, codebook_size=32)  # groups of 32, as inferred
    torch.save({"model": VQGAN(vq_cfg).state_dict(), "epoch": 1}, weights / "vqgan_coco.pt")  # 256 px -> 16x16
    gpt = RefGPT(vocab=32, d=64, h=1, layers=2, n_pos=256, cond=clip.embed_dim, ffn=128)
    torch.save({"model": gpt.state_dict(), "epoch": 1}, weights / "gpt_coco.pt")
    _inception(weights / "inception.pth")
    monkeypatch.setenv("BENCH_WEIGHTS", str(weights))
    monkeypatch.setenv("BENCH_COCO_ROOT", str(root))
    monkeypatch.setenv("BENCH_INCEPTION_WEIGHTS", str(weights / "inception.pth"))

    out = tmp_path / "run"
    sets = ["dataset.num_captions=8", "generation.batch_size=4", "components.captioner.train.steps=2",
            f"components.clip.path={weights / 'clip'}", f"components.clip-eval.path={weights / 'clip-eval'}"]
    args = ["run", str(SUITE_DIR / "mscoco.yaml"), "--out", str(out), "--quiet"]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    df = pd.read_csv(out / "results.csv")
    measured = df[df["source"] == "measured"]
    # the stand-in Inception is not torch-fidelity's network: its rows are fd-inception, never fid
    fid = measured[(measured["system"] == "clip-gen") & (measured["metric"] == "fd-inception")]
    assert sorted(fid["variant"]) == sorted(f"blur={k}" for k in (0, 1, 2, 4, 8))
    assert (fid["n"] == 8).all() and fid["value"].notna().all()
    assert "fid" not in set(measured["metric"])
    for system in ("clip-gen", "clip-gen-rerank8", "vqgan-recon", "real-images"):
        got = set(measured[measured["system"] == system]["metric"])
        assert {"fd-inception", "clip-score", "caps", "throughput"} <= got, (system, got)
    rerank = measured[(measured["system"] == "clip-gen-rerank8") & (measured["metric"] == "fd-inception")]
    assert '"candidates": 8' in rerank["extra"].iloc[0]
    reported = df[df["source"] == "reported"]
    assert {"CogView", "LAFITE (zero-shot)"} <= set(reported["system"])
    assert len(list((out / "samples" / "clip-gen" / "seed0").glob("*.png"))) == 8
