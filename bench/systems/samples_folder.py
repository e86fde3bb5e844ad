"""`samples-folder`: images made elsewhere (a published model's samples), read from a folder.

File names map to caption ids: `<caption_id>.png` / `.jpg` / `.jpeg` / `.webp`, zero-padded or not
(`7.png`, `000007.png`), or an explicit mapping file (`mapping:`): JSON `{"7": "a.png", ...}` or CSV with
header `caption_id,file`, paths relative to the folder. Every image is converted to RGB and resized to
the dataset resolution (shorter side to the resolution with bicubic antialiasing, then a centre crop),
so its metrics sit in the same table as the systems generated here. The same file serves every seed:
a folder holds one sample per caption.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from bench.api import UserError
from bench.registry import SYSTEMS

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class SamplesFolderArgs:
    path: str = field(default="", metadata={"path": "dir", "help": "folder of <caption_id>.png|jpg images "
                                                                   "(relative to the suite file)"})
    mapping: str | None = field(default=None, metadata={"help": "JSON or CSV caption_id -> file (relative to path)"})
    uses_captions: bool = field(default=True, metadata={"help": "whether the model that made them was trained on "
                                                                "captions (true unless known otherwise)"})

    def __post_init__(self) -> None:
        if not self.path:
            raise UserError("samples-folder needs path: a folder of <caption_id>.png images")


def missing_resources(args: SamplesFolderArgs) -> list[str]:
    """Paths that must exist before a run, each with what fixes it (the runner checks that `path` exists, as it
    does every path argument, naming the system)."""
    missing = []
    if args.mapping is not None and not _mapping_path(args).is_file():
        missing.append(f"samples-folder: mapping file {_mapping_path(args)} not found (JSON or CSV caption_id,file)")
    return missing


def read_files(args: SamplesFolderArgs) -> list[str]:
    """Files the samples come from beyond `path` (which the builder stamps as a path argument): the mapping,
    which may live outside the folder."""
    return [str(_mapping_path(args))] if args.mapping else []


def _mapping_path(args: SamplesFolderArgs) -> Path:
    m = Path(args.mapping).expanduser()
    return m if m.is_absolute() else Path(args.path).expanduser() / m


def read_mapping(path: Path, folder: Path) -> dict[int, Path]:
    """caption_id -> image path, from JSON {"id": "file"} or CSV with columns caption_id,file."""
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(path.read_text())
            if not isinstance(raw, dict):
                raise ValueError("expected a JSON object caption_id -> file")
            pairs = list(raw.items())
        else:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            if rows and not {"caption_id", "file"} <= set(rows[0]):
                raise ValueError(f"expected CSV columns caption_id,file, got {','.join(rows[0])}")
            pairs = [(r["caption_id"], r["file"]) for r in rows]
        return {int(k): folder / str(v) for k, v in pairs}
    except (ValueError, json.JSONDecodeError, csv.Error) as err:
        raise UserError(f"samples-folder: cannot read mapping {path}: {err}") from None


def scan_folder(folder: Path) -> dict[int, Path]:
    """caption_id -> image path for files named <digits>.<ext> (zero padding allowed)."""
    found: dict[int, Path] = {}
    for p in sorted(folder.iterdir()):
        m = re.fullmatch(r"(\d+)", p.stem)
        if m and p.suffix.lower() in EXTENSIONS and p.is_file():
            cid = int(m.group(1))
            if cid in found:
                raise UserError(f"samples-folder: caption id {cid} has two files: {found[cid].name} and {p.name}")
            found[cid] = p
    return found


def load_resized(path: Path, resolution: int) -> Tensor:
    """One image file -> uint8 [3,R,R]: RGB, shorter side resized to R (bicubic), centre crop."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = resolution / min(w, h)
            nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), Image.BICUBIC, reducing_gap=None)
            left, top = (nw - resolution) // 2, (nh - resolution) // 2
            im = im.crop((left, top, left + resolution, top + resolution))
            arr = np.asarray(im, dtype=np.uint8)
    except OSError as err:
        raise UserError(f"samples-folder: cannot read image {path}: {err}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)  # [R,R,3] -> [3,R,R]


class SamplesFolder:
    """Reads the sample of each requested caption id; ignores seeds (one sample per caption)."""

    tokens_per_image = 0

    def __init__(self, args: SamplesFolderArgs, resolution: int):
        problems = missing_resources(args)
        if args.path and not Path(args.path).expanduser().is_dir():
            problems.insert(0, f"samples-folder: {args.path} is not a folder of <caption_id>.png images")
        if problems:
            raise UserError(problems[0])
        self.args, self.resolution = args, resolution
        self.folder = Path(args.path).expanduser()
        self.uses_captions = bool(args.uses_captions)
        self.files = read_mapping(_mapping_path(args), self.folder) if args.mapping else scan_folder(self.folder)

    def provenance(self) -> dict:
        return {"training": {"samples_from": str(self.folder.resolve()), "mapping": self.args.mapping,
                             "files": len(self.files)}}

    def check_captions(self, caption_ids: list[int]) -> None:
        """A UserError naming the first caption id without a file, and how many lack one; else the first file that
        is no image (its header unreadable: empty, text, truncated). The runner asks before generating anything."""
        lacking = [cid for cid in caption_ids if self.files.get(int(cid)) is None or not self.files[int(cid)].is_file()]
        if lacking:
            more = f" ({len(lacking)} of the {len(caption_ids)} captions have none)" if len(lacking) > 1 else ""
            self._file_of(lacking[0], more)
        for cid in caption_ids:
            path = self.files[int(cid)]
            try:
                with Image.open(path):
                    pass
            except OSError as err:
                raise UserError(f"samples-folder: the image of caption id {cid}, {path}, cannot be read: {err}") \
                    from None

    def _file_of(self, cid: int, more: str = "") -> Path:
        path = self.files.get(int(cid))
        if path is None:
            raise UserError(f"samples-folder: no image for caption id {cid} in {self.folder} (expected "
                            f"{cid}.png or {int(cid):06d}.png{', or an entry in ' + self.args.mapping if self.args.mapping else ''})"
                            f"{more}")
        if not path.is_file():
            raise UserError(f"samples-folder: caption id {cid} maps to {path}, which does not exist{more}")
        return path

    def generate(self, captions: list[str], caption_ids: list[int], seeds: list[int]) -> Tensor:
        out = []
        for cid in caption_ids:
            out.append(load_resized(self._file_of(cid), self.resolution))
        if not out:
            return torch.zeros(0, 3, self.resolution, self.resolution, dtype=torch.uint8)
        return torch.stack(out)


@SYSTEMS.register("samples-folder", "images made elsewhere, read from a folder of <caption_id>.png (published "
                                    "models' samples in the same table)", args=SamplesFolderArgs)
def build_samples_folder(args: SamplesFolderArgs, ctx) -> SamplesFolder:
    return SamplesFolder(args, ctx.dataset.resolution)


build_samples_folder.missing_resources = missing_resources
build_samples_folder.read_files = read_files  # the builder stamps them into what the samples are made of
