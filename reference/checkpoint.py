"""Checkpoints: weights as safetensors, the config as JSON, training state (optimizer, step, RNG) as a torch file.

A checkpoint is a folder:
    model.safetensors   the module's state_dict (persistent buffers included)
    config.json         {"kind": "vqgan" | "gpt", "config": {...}, "meta": {...}}
    train_state.pt      optional: optimizer / scheduler state, step, anything needed to resume exactly
A save is whole: every file is written under a temporary name first, then all are renamed with Ctrl-C and SIGTERM
held off, and files of an earlier save that this one does not write (train_state.pt, SHA256SUMS) are removed,
so an interrupted save leaves the previous checkpoint, never a mix of two (weights of one step, optimiser
state of another).
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import threading
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from reference.configs import GPTConfig, VQGANConfig, config_from_dict, config_to_dict
from reference.errors import first_line

KINDS = {"vqgan": VQGANConfig, "gpt": GPTConfig}


SUMS_FILE = "SHA256SUMS"  # sha256sum -c lines over model.safetensors and config.json (reference/loaders.py)
OPTIONAL_FILES = ("train_state.pt", SUMS_FILE)  # a save that does not write one removes an earlier save's


@contextlib.contextmanager
def _signals_held():
    """Ctrl-C and SIGTERM wait while the block runs, then take effect as usual; a no-op off the main thread.
    Python-level handlers, not a blocked signal mask: a process-directed signal may land on any thread (torch's
    pools), and the main thread would still raise KeyboardInterrupt mid-block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda number, frame: caught.append(number))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)


def _write_whole(folder: Path, writers: dict) -> None:
    """Write {file name: write(path)} into `folder` as one save (see the module docstring)."""
    tmps = {name: folder / (name + ".tmp") for name in writers}
    try:
        for name, write in writers.items():
            write(tmps[name])
    except BaseException:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)  # a failed write leaves no partial file behind
        raise
    with _signals_held():
        for name, tmp in tmps.items():
            os.replace(tmp, folder / name)
        for name in OPTIONAL_FILES:
            if name not in writers:
                (folder / name).unlink(missing_ok=True)


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, kind: str, train_state: dict | None = None,
                    meta: dict | None = None) -> Path:
    """Write model weights + config (+ train_state) into the folder ``path`` as one save; returns it."""
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; known: {', '.join(KINDS)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    doc = {"kind": kind, "config": config_to_dict(model.cfg), "meta": meta or {}}
    writers = {"model.safetensors": lambda p: save_file(state, str(p)),
               "config.json": lambda p: p.write_text(json.dumps(doc, indent=1, sort_keys=True))}
    if train_state is not None:
        writers["train_state.pt"] = lambda p: torch.save(train_state, p)
    _write_whole(path, writers)
    return path


def read_config(path: str | os.PathLike) -> tuple[str, object, dict]:
    """(kind, config dataclass, meta) of a checkpoint folder."""
    cfg_path = Path(path) / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"no checkpoint at {path} (missing {cfg_path.name})")
    try:
        doc = json.loads(cfg_path.read_text())
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{cfg_path}: is not valid JSON ({first_line(err)})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise ValueError(f"{cfg_path}: not a checkpoint config (expected an object with 'kind' and 'config')")
    kind = doc.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{cfg_path}: unknown kind {kind!r}")
    try:
        cfg = config_from_dict(KINDS[kind], doc["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{cfg_path}: not a valid {kind} config: {first_line(err)}") from None
    return kind, cfg, doc.get("meta", {})


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", train_state: bool = False):
    """Rebuild the model saved at ``path``; returns (model, train_state or None, meta).

    The training state (optimiser, history) is read only when asked for (resuming training), and then with
    torch's restricted unpickler (weights_only): loading a model for inference never unpickles anything."""
    from reference.gpt import GPT
    from reference.vqgan import VQGAN

    kind, cfg, meta = read_config(path)
    weights = Path(path) / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"no weights at {weights}")
    model = (VQGAN if kind == "vqgan" else GPT)(cfg)
    try:
        state = load_file(str(weights), device=str(map_location))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for a truncated or foreign file
        raise ValueError(f"{weights}: not a readable safetensors file ({first_line(err)})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{weights}: the weights do not fit the {kind} its config.json describes "
                         f"({first_line(err)}; {_load_mismatch(err)})") from None
    model.to(map_location)
    ts_path = Path(path) / "train_state.pt"
    state = None
    if train_state and ts_path.exists():
        try:
            state = torch.load(ts_path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(f"{ts_path}: not a training state this code wrote (refused by the restricted "
                             f"unpickler: {first_line(err)})") from None
    return model, state, meta


def _load_mismatch(err: RuntimeError) -> str:
    """The first concrete problem in load_state_dict's message (a missing, unexpected or reshaped key)."""
    lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
    return lines[0][:200] if lines else "see the config"


def save_vqgan(path, model, train_state=None, meta=None) -> Path:
    return save_checkpoint(path, model, "vqgan", train_state, meta)


def save_gpt(path, model, train_state=None, meta=None) -> Path:
    return save_checkpoint(path, model, "gpt", train_state, meta)


def load_vqgan(path, map_location="cpu"):
    model, _, _ = load_checkpoint(path, map_location)
    if model.__class__.__name__ != "VQGAN":
        raise ValueError(f"{path} holds a {model.__class__.__name__}, not a VQGAN")
    return model.eval()


def load_gpt(path, map_location="cpu"):
    model, _, _ = load_checkpoint(path, map_location)
    if model.__class__.__name__ != "GPT":
        raise ValueError(f"{path} holds a {model.__class__.__name__}, not a GPT")
    return model.eval()
