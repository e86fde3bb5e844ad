"""Reading foreign ``torch.save`` pickles without running code from them.

``safe_torch_load(path)`` first tries ``torch.load(weights_only=True)`` (torch's own allow-list: tensors, plain
containers, numbers, strings). Files that it refuses because they name other classes -- a PyTorch Lightning
checkpoint keys its ``callbacks`` by the callback *class* and may hold an ``argparse.Namespace`` or OmegaConf
hyper-parameters -- are read again through :class:`RestrictedUnpickler`:

- tensors, storages, ``torch.Size``, dtypes, devices and the plain containers (dict, list, tuple, set, OrderedDict,
  numbers, strings, bytes) are rebuilt for real;
- every other global the pickle names (the training framework's classes, numpy scalars, config objects) becomes an
  inert :class:`Stub`: nothing is imported and nothing from the file is called. A stub records the module, the name,
  the constructor arguments and the pickled state, so the caller can see what was there;
- the module being missing (Lightning not installed) therefore does not matter.

Never ``pickle.load`` a file a user downloaded: a pickle can name any importable callable and have it called.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import re
import warnings
import zipfile
from typing import Any

import torch

__all__ = ["safe_torch_load", "RestrictedUnpickler", "Stub", "stub_class", "CheckpointReadError"]


class CheckpointReadError(ValueError):
    """The file is not a readable torch checkpoint (missing, truncated, corrupt, or not a torch.save file)."""


# ---------------------------------------------------------------------------------------------------------------
# stubs for classes the file names but we refuse to import
# ---------------------------------------------------------------------------------------------------------------

class Stub:
    """An inert stand-in for an instance (or the result of a call) of a class we did not import."""

    __stub_module__ = "?"
    __stub_name__ = "?"
    stub_args: tuple = ()
    stub_kwargs: dict = {}
    stub_state: Any = None

    def __init__(self, *args, **kwargs):
        self.stub_args = args
        self.stub_kwargs = kwargs
        self.stub_state = None

    def __setstate__(self, state):
        self.stub_state = state

    # pickle's BUILD falls back to __dict__.update / setattr; __setstate__ above takes everything
    def __repr__(self) -> str:
        return f"<stub {self.__stub_module__}.{self.__stub_name__}>"


_STUBS: dict[tuple[str, str], type] = {}


def stub_class(module: str, name: str) -> type:
    """The (cached, so identical references stay identical and hashable) stub class for ``module.name``."""
    key = (module, name)
    if key not in _STUBS:
        cls = type(name, (Stub,), {"__stub_module__": module, "__stub_name__": name, "__module__": "stub." + module})

        def __new__(klass, *args, **kwargs):  # NEWOBJ passes the constructor's args to __new__ as well
            return object.__new__(klass)

        cls.__new__ = staticmethod(__new__)
        _STUBS[key] = cls
    return _STUBS[key]


# ---------------------------------------------------------------------------------------------------------------
# the allow-list
# ---------------------------------------------------------------------------------------------------------------

def _rebuild_from_type_v2(func, new_type, args, state):
    """torch._tensor._rebuild_from_type_v2, admitted only for plain tensors / parameters."""
    if func not in _TENSOR_REBUILDERS.values() or new_type not in (torch.Tensor, torch.nn.Parameter):
        return stub_class("torch._tensor", "_rebuild_from_type_v2")(func, new_type, args, state)
    ret = func(*args)
    if type(ret) is not new_type:
        ret = ret.as_subclass(new_type)
    return ret


def _reconstructor(cls, base, state):
    """copyreg._reconstructor (protocol 0/1 objects): only stubs or plain builtins."""
    if isinstance(cls, type) and issubclass(cls, Stub):
        obj = cls()
        return obj
    if cls in _BUILTINS.values() and base in (object, cls):
        return cls(state) if state is not None else cls()
    return stub_class("copyreg", "_reconstructor")(cls, base, state)


_TENSOR_REBUILDERS = {
    name: getattr(torch._utils, name)
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                 "_rebuild_parameter_with_state")
    if hasattr(torch._utils, name)
}

_BUILTINS = {name: getattr(__import__("builtins"), name) for name in (
    "dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes", "bytearray", "bool",
    "slice", "range", "object")}

_ALLOWED: dict[tuple[str, str], Any] = {
    **{("torch._utils", k): v for k, v in _TENSOR_REBUILDERS.items()},
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("copyreg", "_reconstructor"): _reconstructor,
    **{("builtins", k): v for k, v in _BUILTINS.items() if k != "object"},
    ("builtins", "object"): object,
    ("__builtin__", "object"): object,
}


class RestrictedUnpickler(pickle.Unpickler):
    """A pickle.Unpickler whose ``find_class`` returns allow-listed objects or inert stubs, never imports."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "__builtin__" and ("builtins", name) in _ALLOWED:  # protocol-2 pickles from Python 2
            return _ALLOWED[("builtins", name)]
        return stub_class(module, name)


def _load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


class _RestrictedPickleModule:
    """What torch.load wants as ``pickle_module``: an Unpickler class and a load function."""

    __name__ = "reference.safe_unpickle"
    Unpickler = RestrictedUnpickler
    load = staticmethod(_load)
    UnpicklingError = pickle.UnpicklingError


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip()


def _refusal(err: BaseException) -> str:
    """What torch's weights-only reader refused, in one line, without torch's advice around it (re-run with
    weights_only=False, or allow-list the class: the two things this module exists not to do)."""
    text = str(err)
    m = re.search(r"WeightsUnpickler error:(.*)", text, re.S)
    body = m.group(1) if m else text.replace("Weights only load failed.", "", 1)
    for line in body.splitlines():
        line = line.strip()
        if line and "weights_only" not in line:
            return re.split(r"\s*Please use `torch\.serialization", line)[0]
    return type(err).__name__


def safe_torch_load(path: str | os.PathLike, mmap: bool = False) -> Any:
    """Read a ``torch.save`` file on the CPU without executing anything from it (see the module docstring).

    mmap: map a zip-format file instead of reading it. Off by default: tensors read into memory do not depend on
    the file staying unchanged on disk, and the loaders hand them to the model without a second copy. Raises FileNotFoundError when the file is missing and CheckpointReadError (a ValueError, one line,
    naming the file) when it cannot be read. torch's UserWarnings while reading (e.g. an unexpected pickle protocol
    in a file that is no torch checkpoint) are not shown: the error, if any, says what is wrong.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    is_zip = zipfile.is_zipfile(path)
    use_mmap = bool(mmap and is_zip)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch(\.|$)")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
        except pickle.UnpicklingError as err:
            first = err  # refused by the weights-only allow-list (or corrupt): try the restricted reader
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as err:
            raise CheckpointReadError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): "
                                      f"{_one_line(err)}") from None
        try:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=use_mmap,
                              pickle_module=_RestrictedPickleModule)
        except Exception as err:  # noqa: BLE001 - any failure here is a bad file; report it in one line
            raise CheckpointReadError(f"{path}: not a torch checkpoint we can read safely (truncated, corrupt, or "
                                      f"not a torch.save file?): {_one_line(err)} (weights-only reader refused: "
                                      f"{_refusal(first)})") from None


def safe_loads(data: bytes) -> Any:
    """Unpickle bytes with the restricted reader (no tensors with external storage; for tests and small blobs)."""
    return RestrictedUnpickler(io.BytesIO(data)).load()
