"""A saved component as a directory of two files: <name>.safetensors (the module's state dict) + <name>.json.

The judge and the captioner are saved this way. What goes in the JSON document, and how a model is rebuilt from
it, stays with each component; this module only writes the pair and finds and reads it back.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from bench.api import UserError
from reference.errors import first_line


def save_weights_dir(module: torch.nn.Module, directory: str, weights_file: str, json_file: str, doc: dict,
                     indent: int | None = None) -> None:
    """Write module's state dict (on CPU, contiguous) to directory/weights_file and doc to directory/json_file."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
              os.path.join(directory, weights_file))
    with open(os.path.join(directory, json_file), "w") as f:
        json.dump(doc, f, indent=indent)


def read_weights_dir(path: str, weights_file: str, json_file: str, who: str) -> tuple[dict[str, Tensor], dict]:
    """(state dict, parsed JSON document) saved by save_weights_dir.

    `path`: the directory, or the weights file itself (the JSON file is then looked for beside it). `who` names the
    component in the UserError raised when either file is missing.
    """
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    weights, doc = (p / weights_file, p / json_file) if p.is_dir() else (p, p.with_name(json_file))
    if not weights.is_file() or not doc.is_file():
        raise UserError(f"{who}: expected {weights_file} and {json_file} at {p}")
    try:
        meta = json.loads(doc.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{who}: {doc} is not valid JSON ({first_line(err)})") from None
    try:
        return load_file(str(weights)), meta
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for a truncated or foreign file
        raise UserError(f"{who}: {weights} is not a readable safetensors file ({first_line(err)})") from None
