"""Sample grids: one row per system over the same captions, captions printed under the columns."""
from __future__ import annotations

import io
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from bench.cache import atomic_write_bytes

CELL = 96  # pixels per sample in the grid (nearest-neighbour upscaling keeps tiny images honest)
LABEL_W = 120


def _font():
    return ImageFont.load_default()


def sample_grid(run_dir: str | Path, captions: dict[int, str], systems: list[str], seed: int,
                max_captions: int = 8, out_name: str = "grid.png") -> Path | None:
    """Write <run_dir>/<out_name>; returns its path (None if no system has samples)."""
    run_dir = Path(run_dir)
    ids = sorted(captions)[:max_captions]
    rows = [s for s in systems if (run_dir / "samples" / s / f"seed{seed}").exists()]
    if not rows or not ids:
        return None
    font = _font()
    text_h = 52
    width = LABEL_W + CELL * len(ids)
    height = CELL * len(rows) + text_h
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, system in enumerate(rows):
        y = r * CELL
        draw.text((4, y + CELL // 2 - 6), textwrap.shorten(system, 20), fill=(0, 0, 0), font=font)
        for c, cid in enumerate(ids):
            path = run_dir / "samples" / system / f"seed{seed}" / f"{cid:06d}.png"
            if path.exists():
                with Image.open(path) as im:
                    grid.paste(im.convert("RGB").resize((CELL, CELL), Image.NEAREST), (LABEL_W + c * CELL, y))
    for c, cid in enumerate(ids):
        lines = textwrap.wrap(captions[cid], 16)[:4]
        for k, line in enumerate(lines):
            draw.text((LABEL_W + c * CELL + 3, CELL * len(rows) + 2 + 12 * k), line, fill=(0, 0, 0), font=font)
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    path = run_dir / out_name
    atomic_write_bytes(path, buf.getvalue())
    return path
