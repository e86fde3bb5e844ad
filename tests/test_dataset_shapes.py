"""The shapes renderer draws each image's own shape only; the plain twin (every shape for every image, then
pick) must give the same bytes."""
import pytest
import torch
import torch.nn.functional as F

from bench.datasets.shapes import COLOURS, SUPERSAMPLE, render


def render_every_shape_then_pick(resolution, colours, shapes, positions, jitter):
    n, s = colours.shape[0], resolution * SUPERSAMPLE
    cell = s / 2
    col, row = (positions % 2).float(), (positions // 2).float()
    radius = cell * (0.28 + 0.12 * jitter[:, 0])
    slack = (cell / 2 - radius - SUPERSAMPLE).clamp(min=0)
    cx = cell * col + cell / 2 + slack * (2 * jitter[:, 1] - 1)
    cy = cell * row + cell / 2 + slack * (2 * jitter[:, 2] - 1)
    coords = torch.arange(s, dtype=torch.float32) + 0.5
    x = (coords[None, None, :] - cx[:, None, None]) / radius[:, None, None]
    y = (coords[None, :, None] - cy[:, None, None]) / radius[:, None, None]
    ax, ay = x.abs(), y.abs()
    masks = torch.stack([x ** 2 + y ** 2 <= 1.0, torch.maximum(ax, ay) <= 0.85,
                         (y >= -1.0) & (y <= 0.8) & (ax <= (y + 1.0) / 1.8),
                         ((ax <= 0.34) & (ay <= 1.0)) | ((ay <= 0.34) & (ax <= 1.0))], dim=1)
    mask = F.avg_pool2d(masks[torch.arange(n), shapes].float()[:, None], SUPERSAMPLE)
    fg = (colours + 40 * (jitter[:, 3:6] - 0.5)).clamp(0, 255)
    bg = (18 + 16 * jitter[:, 6:7]).expand(n, 3)
    return (bg[:, :, None, None] * (1 - mask) + fg[:, :, None, None] * mask).round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("resolution,n", [(32, 257), (16, 5), (64, 1)])
def test_render_equals_its_plain_twin(resolution, n):
    g = torch.Generator().manual_seed(resolution + n)
    palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32)
    colours = palette[torch.randint(len(palette), (n,), generator=g)]
    shapes = torch.randint(4, (n,), generator=g) if n > 4 else torch.arange(n) % 4
    positions = torch.randint(4, (n,), generator=g)
    jitter = torch.rand(n, 8, generator=g)
    fast = render(resolution, colours, shapes, positions, jitter)
    assert fast.shape == (n, 3, resolution, resolution) and fast.dtype == torch.uint8
    assert torch.equal(fast, render_every_shape_then_pick(resolution, colours, shapes, positions, jitter))
    assert fast.float().std() > 0  # something was drawn


def test_reference_key_names_the_caption_count():
    """Reference statistics of an 8-caption run are not those of a 16-caption run."""
    from bench.datasets.shapes import ShapesDataset

    kw = dict(resolution=16, seed=0, train_size=12, pairs_size=10)
    eight, sixteen = ShapesDataset(num_captions=8, **kw), ShapesDataset(num_captions=16, **kw)
    assert eight.reference_key() != sixteen.reference_key()
    assert eight.reference_key() == ShapesDataset(num_captions=8, **kw).reference_key()
    assert eight.reference_key()["count"] == 8
