"""The one cache directory (env BENCH_CACHE, default ~/.cache/clipgen-bench) and atomic writes."""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable

import bench


def cache_dir() -> Path:
    """$BENCH_CACHE, or ~/.cache/clipgen-bench when it is unset or empty (an empty value is not the current folder)."""
    try:
        return Path(os.environ.get("BENCH_CACHE") or Path.home() / ".cache" / "clipgen-bench").expanduser()
    except RuntimeError as err:  # "~nosuchuser/...", or no home folder to put the default in
        from bench.api import UserError

        raise UserError(f"BENCH_CACHE={os.environ.get('BENCH_CACHE', '')!r}: {err}; set BENCH_CACHE to a folder") \
            from None


# Libraries whose arithmetic or data handling shapes a trained artefact, a statistic or a number: their versions
# join the cache keys and every results row (an upgrade may move a number; pyproject only bounds them).
LIBRARIES = ("torch", "torchvision", "open_clip_torch", "timm", "torch-fidelity", "numpy", "scipy", "pillow", "triton")


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Installed version of each of LIBRARIES ("absent" when not installed); torch's with its build tag (+cu130)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    found = {}
    for name in LIBRARIES:
        try:
            found[name] = torch.__version__ if name == "torch" else version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


@functools.lru_cache(maxsize=8)
def machine_name(device: str, cpuinfo: str = "/proc/cpuinfo") -> str:
    """The processor that computes on `device`: the GPU's model for "cuda[:i]"; for a CPU its model name, CPU
    family and model numbers (from the first processor in /proc/cpuinfo; `platform.processor()` elsewhere) and the
    instruction set torch dispatches to. Two CPU models may run another kernel for the same fp32 product (AVX2 or
    AVX-512, another blocking), so the same recipe gives other weights on each, and a VM may give two generations
    one model name ("AMD EPYC": a Zen 3 and a Zen 4)."""
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device) if torch.cuda.is_available() else "cuda (not available)"
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                name, colon, value = line.partition(":")
                if not colon and fields:  # the blank line after the first processor's block
                    break
                fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    numbers = ", ".join(f"{field} {fields[field]}" for field in ("cpu family", "model") if fields.get(field))
    isa = torch.backends.cpu.get_cpu_capability()
    return f"{model} ({numbers}; {isa})" if numbers else f"{model} ({isa})"


def platform_key(device: str) -> dict:
    """Where a number was computed, as far as it can change it: the device type, the processor model and the
    libraries' versions (part of the keys of trained artefacts, reference statistics and samples)."""
    return {"device": device.split(":")[0], "machine": machine_name(device), "libraries": library_versions()}


def _jsonable(value: Any) -> Any:
    """What JSON cannot write: a set as its sorted members (its iteration order changes with PYTHONHASHSEED, so
    str() of it would give another key in every process), anything else by str() (a Path counts as its text)."""
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=canonical_json)
    return str(value)


def canonical_json(value: Any, indent: int | None = None) -> str:
    """The one JSON text of a key or a provenance record: keys sorted at every depth, sets sorted, other values
    JSON cannot write by str(), so equal values give equal text in every process."""
    return json.dumps(value, sort_keys=True, default=_jsonable, indent=indent)


def key_hash(key: dict) -> str:
    return hashlib.sha256(canonical_json(key).encode()).hexdigest()[:20]


def path_stamp(path: str | Path) -> dict:
    """What a file's or folder's contents are known by without reading them: a file's size and mtime; for a
    folder, a hash of every file under it (relative path, size, mtime), so a checkpoint rewritten in place counts
    as changed. A missing path gives None fields."""
    p = Path(path).expanduser()
    if p.is_file():
        st = p.stat()
        return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        listing = [(f.relative_to(p).as_posix(), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        return {"path": str(p.resolve()), "files": len(listing), "contents": key_hash({"files": listing})}
    return {"path": str(p), "size": None, "mtime_ns": None}


def _code_of_file(path: Path, qualname: str = "") -> str:
    """A Python file's code as the interpreter sees it: its AST with docstrings removed, so comments, docstrings and
    formatting do not count. qualname ("function" or "Class.method"): only that definition, every one of that name
    when there are several (a redefinition, a property's getter and setter: the one in force may be any)."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    nodes = [tree]
    for part in qualname.split(".") if qualname else ():
        nodes = [n for node in nodes for n in node.body
                 if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == part]
        if not nodes:
            raise ValueError(f"code_fingerprint: {path} defines no {qualname!r}")
    tree = nodes[0] if len(nodes) == 1 else ast.Module(body=nodes, type_ignores=[])
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body \
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


@functools.lru_cache(maxsize=None)
def code_fingerprint(*modules: str) -> str:
    """A hash of the code of the named modules (a package counts with every module under it; "module:qualname"
    names one function or method): part of the key of whatever that code trains or computes, so a change to it
    cannot leave results of the old code in the cache. Docstrings, comments and formatting are left out
    (`_code_of_file`)."""
    h = hashlib.sha256()
    for entry in sorted(set(modules)):
        name, _, qualname = entry.partition(":")
        root, files = _module_files(name)
        h.update(f"{entry}\n".encode())
        for f in files:
            h.update(f"{f.relative_to(root).as_posix()}\n{_code_of_file(f, qualname)}\n".encode())
    return h.hexdigest()[:20]


def code_home(module: str) -> str:
    """The code that a module's numbers may depend on, as a `code_fingerprint` entry: a harness module (`bench.*`)
    by itself (the harness code it calls keys its own artefacts), any other module's top-level package whole when
    that is a regular package (`reference`; a plugin package, whose helper modules count too), else the module."""
    top = module.partition(".")[0]
    if top == "bench" or top == module:
        return module
    root, files = _module_files(top)
    return top if files and (root / "__init__.py").is_file() else module


# modules inside fingerprinted packages that cannot change a number (display only), so editing them retrains nothing
UNKEYED_MODULES = frozenset({"reference.progress"})


def _module_files(name: str) -> tuple[Path, list[Path]]:
    """(folder, the module's source files): every file under a package but those in UNKEYED_MODULES. A module
    without a findable source (code typed into an interpreter) gives no files, so only its name counts."""
    module = sys.modules.get(name)
    origin = getattr(module, "__file__", None)
    if origin is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        origin = spec.origin if spec is not None else None
    if origin is None or not origin.endswith(".py") or not os.path.isfile(origin):
        return Path("."), []
    origin = Path(origin)
    if origin.name == "__init__.py":  # a package: all of its modules
        files = sorted(origin.parent.rglob("*.py"))
        dotted = {f: ".".join((name, *f.relative_to(origin.parent).with_suffix("").parts)) for f in files}
        return origin.parent, [f for f in files if dotted[f] not in UNKEYED_MODULES]
    return origin.parent, [origin]


def _full_key(kind: str, key: dict) -> dict:
    return {"kind": kind, "key": key, "bench_version": bench.__version__}


def artefact_dir(root: str | Path, kind: str, key: dict) -> Path:
    """Where the artefact of (kind, key) lives; it is complete once `key.json` is there."""
    return Path(root) / kind / key_hash(_full_key(kind, key))


def cached_artefact(root: str | Path, kind: str, key: dict, train: Callable[[], Any],
                    save: Callable[[Any, str], None], load: Callable[[str], Any]) -> Any:
    """Load `<root>/<kind>/<hash>` if complete, else train, save into a temp dir, rename into place."""
    full_key = _full_key(kind, key)
    target = artefact_dir(root, kind, key)
    if (target / "key.json").exists():
        mark_used(target / "key.json")
        return load(str(target))
    obj = train()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's is 0700; give the folder the mode os.mkdir would
        save(obj, str(tmp))
        record = {**full_key, "created": time.time()}  # for `bench cache ls` (a copy keeps it; mtimes do not)
        (tmp / "key.json").write_text(canonical_json(record, indent=1))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first (theirs is as good as ours), or a folder left incomplete
            if not (target / "key.json").exists() and _set_aside(target):
                try:
                    tmp.rename(target)
                except OSError:
                    pass
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return obj


def _set_aside(folder: Path) -> bool:
    """Rename an artefact folder without key.json (a copy of the cache cut short, a folder made by hand) out of the
    way, under a temp name that `bench cache` lists as incomplete: otherwise every run would train the artefact
    again and drop it. False when it cannot be moved."""
    try:
        folder.rename(folder.with_name(f".{folder.name}.set_aside_{secrets.token_hex(4)}"))
    except OSError:
        return False
    return True


# what reading a damaged or foreign .npz can raise (a compressed member's damage is zlib's error)
NPZ_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error)


def stats_file_key(path: str | Path) -> dict | None:
    """The key stored in a statistics file (`<cache>/stats/<hash>.npz`), or None when the file is missing or
    unreadable (not an npz, no key entry, bad JSON): the one reader for `reference_stats` and `bench cache`."""
    import numpy as np

    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):  # a .npy array under the .npz name: no key in it
            return None
        with loaded as z:
            key = json.loads(str(z["key"]))
    except NPZ_READ_ERRORS:
        return None
    return key if isinstance(key, dict) else None


def mark_used(path: Path) -> None:
    """Set a cached file's mtime to now: the last use `bench cache` reads (a read-only cache keeps the old time)."""
    try:
        os.utime(path)
    except OSError:
        pass


def _umask() -> int:
    """The process umask (reading it means setting it: set 0 and put it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `path` through a temp file beside it and a rename; the file gets the mode open() would give it
    (0666 minus the umask), not mkstemp's 0600, so others sharing a run folder can read it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
