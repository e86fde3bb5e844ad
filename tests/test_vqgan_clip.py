"""vqgan-clip: optimisation raises CLIP similarity, output contract, batch-composition independence."""
import pytest
import torch

from bench.systems.vqgan_clip import (VQGANClip, VQGANClipArgs, budget_curve, cutouts, optimise_latents,
                                      saturation_step, spherical_distance_loss)
from reference.clip import PRESETS, _build
from reference.configs import get_preset
from reference.vqgan import VQGAN

CAPTIONS = ["a red circle in the top left", "a blue square in the bottom right", "a green cross in the top right"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    vqgan = VQGAN(get_preset("tiny").vqgan).eval()
    with torch.no_grad():  # the tiny preset starts its codes at +-1/K; a trained codebook is spread out like this
        vqgan.quantizer.embedding.weight.normal_()
    clip = _build(PRESETS["tiny"].model_cfg, "tiny-random")
    return vqgan, clip


def _similarity(clip, images, captions):
    return (clip.encode_image(images) * clip.encode_text(captions)).sum(1)  # [B]


def test_more_steps_raise_clip_similarity(parts):
    vqgan, clip = parts
    system = VQGANClip(vqgan, clip, VQGANClipArgs(steps=30, lr=0.5, cutouts=4))
    _, snaps = system.generate(CAPTIONS[:2], [0, 1], [0, 1], snapshots=(0, 10, 30))
    sims = torch.stack([_similarity(clip, snaps[k], CAPTIONS[:2]) for k in (0, 10, 30)])  # [3 budgets, 2 captions]
    assert (sims[1:] > sims[:-1]).all(), sims


def test_output_uint8_shape_and_snapshot_equals_shorter_run(parts):
    vqgan, clip = parts
    long = VQGANClip(vqgan, clip, VQGANClipArgs(steps=4, cutouts=2))
    images, snaps = long.generate(CAPTIONS[:2], [0, 1], [5, 6], snapshots=(2,))
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 32, 32)
    short = VQGANClip(vqgan, clip, VQGANClipArgs(steps=2, cutouts=2)).generate(CAPTIONS[:2], [0, 1], [5, 6])
    assert torch.equal(snaps[2], short)
    assert VQGANClip(vqgan, clip, VQGANClipArgs(steps=0)).generate([], [], []).shape == (0, 3, 32, 32)


def test_batch_composition_independence_is_exact(parts):
    vqgan, clip = parts
    system = VQGANClip(vqgan, clip, VQGANClipArgs(steps=6, lr=0.5, cutouts=3))
    together = system.generate(CAPTIONS, [0, 1, 2], [10, 11, 12])
    alone = system.generate(CAPTIONS[1:2], [1], [11])
    reordered = system.generate([CAPTIONS[2], CAPTIONS[1]], [2, 1], [12, 11])
    assert torch.equal(together[1], alone[0])
    assert torch.equal(together[1], reordered[1]) and torch.equal(together[2], reordered[0])
    other_seed = system.generate(CAPTIONS[1:2], [1], [99])
    assert not torch.equal(other_seed[0], alone[0])


def test_batched_path_matches_row_by_row_for_a_few_steps(parts):
    vqgan, clip = parts
    emb = clip.encode_text(CAPTIONS)
    rows, _ = optimise_latents(vqgan, clip, emb, [1, 2, 3], steps=2, lr=0.5, n_cutouts=2, batched=False)
    batch, _ = optimise_latents(vqgan, clip, emb, [1, 2, 3], steps=2, lr=0.5, n_cutouts=2, batched=True)
    # float-level differences between batch shapes may flip a code eventually; after 2 steps they agree
    assert (rows == batch).float().mean() > 0.95


def test_only_the_latents_get_gradients_and_the_vqgan_is_left_as_it_was(parts):
    """The decoder's weights are frozen while the latents are optimised (no weight gradients computed or
    accumulated: about a fifth of each step on the CPU) and trainable again afterwards, in train mode if it was."""
    vqgan, clip = parts
    trainable = {name for name, p in vqgan.named_parameters() if p.requires_grad}
    assert trainable, "the fixture's VQGAN has trainable weights"
    vqgan.train()
    try:
        optimise_latents(vqgan, clip, clip.encode_text(CAPTIONS[:1]), [0], steps=2, n_cutouts=2)
        assert vqgan.training
        assert {name for name, p in vqgan.named_parameters() if p.requires_grad} == trainable
        assert all(p.grad is None for p in vqgan.parameters())
    finally:
        vqgan.eval()


def test_cutouts_depend_only_on_the_generator():
    x = torch.rand(3, 32, 32)
    a = cutouts(x, torch.Generator().manual_seed(3), 5, 16, 0.5, 1.0, 0.1)
    b = cutouts(x, torch.Generator().manual_seed(3), 5, 16, 0.5, 1.0, 0.1)
    assert a.shape == (5, 3, 16, 16) and torch.equal(a, b) and a.min() >= 0 and a.max() <= 1


def test_spherical_distance_loss_zero_on_match_and_monotone():
    a = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    assert torch.allclose(spherical_distance_loss(a, a), torch.zeros(4), atol=1e-6)
    assert (spherical_distance_loss(a, -a) > spherical_distance_loss(a, (a + 0.1).renorm(2, 0, 1))).all()


def test_budget_curve_rows_and_saturation(parts):
    vqgan, clip = parts
    curve = budget_curve(vqgan, clip, clip, CAPTIONS[:2], [0, 1], steps=(0, 3), lr=0.5, cutouts=2)
    assert [r["steps"] for r in curve] == [0, 3] and curve[0]["seconds_per_image"] == 0.0
    assert all(0.0 <= r["clip_score"] <= 100.0 for r in curve)
    fake = [{"steps": 0, "clip_score": 10.0}, {"steps": 10, "clip_score": 20.0}, {"steps": 50, "clip_score": 29.8},
            {"steps": 100, "clip_score": 30.0}]
    assert saturation_step(fake, tolerance=0.02) == 50


def test_system_never_reads_captions_except_through_clip(parts):
    vqgan, clip = parts

    class RecordingClip:
        def __init__(self, inner):
            self.inner, self.seen = inner, []
            self.image_size, self.embed_dim = inner.image_size, inner.embed_dim

        def encode_text(self, captions):
            self.seen.extend(captions)
            return self.inner.encode_text(captions)

        def encode_image_float(self, x):
            return self.inner.encode_image_float(x)

    rec = RecordingClip(clip)
    system = VQGANClip(vqgan, rec, VQGANClipArgs(steps=1, cutouts=1))
    assert system.uses_captions is False
    system.generate(CAPTIONS[:2], [0, 1], [0, 1])
    assert rec.seen == CAPTIONS[:2]
    assert system.provenance()["training"]["optimisation"]["steps"] == 1
