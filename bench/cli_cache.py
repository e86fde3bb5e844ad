"""`bench cache ls | prune`: see and prune the artefact cache (added to the CLI with `cli.add_command(cache)`).

An entry is a trained artefact `<cache>/<kind>/<hash>/` (complete once key.json is there; key.json's mtime is
its last use), a reference statistic `<cache>/stats/<hash>.npz` (its mtime is its last use), or a temp folder or
file `.<name>.*` that a killed run left behind (incomplete).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import click

from bench.api import UserError
from bench.cache import cache_dir, stats_file_key
from bench.cli import fail
from reference.errors import first_line

STATS_KIND = "stats"  # reference_stats writes <cache>/stats/<hash>.npz
INCOMPLETE_AGE_S = 3600  # a younger temp folder may belong to a run still writing it
# what a killed run or prune leaves beside an entry (`<hash>/` or `<hash>.npz`): `.<entry>.<random>` (tempfile's
# mkdtemp / mkstemp, bench/cache.py) or `.<entry>.pruning-<8 hex>` (_remove). Any other dot-name (.git, .venv,
# .env.local) is not the cache's and is left alone, whatever BENCH_CACHE points at.
TEMP_NAME = re.compile(r"\.[0-9a-f]{16,64}(?:\.npz)?\.(?:[a-z0-9_]+|pruning-[0-9a-f]{8})")
HEADER = ("KIND", "HASH", "SIZE", "CREATED", "LAST USED", "SUMMARY")
KIND_OPTION = click.option("--kind", default=None, metavar="KIND",
                           help="only this kind (a folder of the cache: vqgan, clip, stats, ...)")


@dataclass(frozen=True)
class Entry:
    kind: str
    path: Path
    name: str  # the hash (a temp's whole name)
    size: int
    created: float | None  # None for a statistics file (one mtime, and that is its last use)
    last_used: float  # for an incomplete entry: its newest modification
    summary: str
    incomplete: bool


@click.group("cache")
def cache() -> None:
    """See and prune trained artefacts and reference statistics in BENCH_CACHE."""


@cache.command("ls")
@KIND_OPTION
def ls_(kind) -> None:
    """List cache entries by kind and last use, with their size and a summary of their key."""
    try:
        root, entries = _scan(kind)
    except UserError as err:
        fail(str(err))
    if not entries:
        click.echo(f"nothing {f'of kind {kind} ' if kind else ''}cached in {root}")
        return
    for line in _table([HEADER, *map(_cells, entries)]):
        click.echo(line)
    incomplete = sum(e.incomplete for e in entries)
    click.echo(f"{_entries(len(entries))}, {_human(sum(e.size for e in entries))} in {root}"
               + (f" ({incomplete} incomplete)" if incomplete else ""))


@cache.command("prune")
@click.option("--unused-for", "days", type=float, default=None, metavar="DAYS",
              help="complete entries last used more than DAYS days ago")
@click.option("--all", "everything", is_flag=True, help="every complete entry")
@click.option("--incomplete", is_flag=True,
              help=f"temp folders of killed runs untouched for {INCOMPLETE_AGE_S // 3600} h")
@KIND_OPTION
@click.option("--dry-run", is_flag=True, help="print what would go; remove nothing")
@click.option("--yes", is_flag=True, help="do not ask (needed when stdin is not a terminal)")
def prune(days, everything, incomplete, kind, dry_run, yes) -> None:
    """Remove the entries selected by --unused-for, --all or --incomplete; print them and the space freed."""
    try:
        if days is not None and not 0 <= days < float("inf"):  # NaN fails this too
            raise UserError(f"--unused-for wants a number of days >= 0, got {days:g}")
        if days is not None and everything:
            raise UserError("--all and --unused-for select differently: give one of them")
        if days is None and not everything and not incomplete:
            raise UserError("say what to prune: --unused-for DAYS, --all or --incomplete")
        root, entries = _scan(kind)
        if not (yes or dry_run or _interactive()):
            raise UserError("stdin is not a terminal to confirm on: pass --yes (or see what would go with --dry-run)")

        def selected(e: Entry) -> bool:
            age = time.time() - e.last_used
            if e.incomplete:
                return incomplete and age > INCOMPLETE_AGE_S
            return everything or (days is not None and age > days * 86400)

        chosen = [e for e in entries if selected(e)]
        if not chosen:
            click.echo(f"nothing to prune in {root}")
            return
        lines = _table(map(_cells, chosen))
        total = _human(sum(e.size for e in chosen))
        if dry_run:
            for line in lines:
                click.echo(f"would remove  {line}")
            click.echo(f"would free {total} ({_entries(len(chosen))})")
            return
        if not yes:
            for line in lines:
                click.echo(f"remove  {line}")
            if not _confirm(f"remove {'these ' if len(chosen) > 1 else ''}{_entries(len(chosen))} ({total})?"):
                click.echo("not confirmed: nothing removed", err=True)
                sys.exit(1)
        freed = 0
        for entry, line in zip(chosen, lines):
            try:  # looked at again: a run may have used it (or written to a temp folder) since the scan or the prompt
                current = _entry(entry.kind, entry.path)
            except FileNotFoundError:
                current = None
            if current is not None and not selected(current):
                click.echo(f"used since, kept  {line}")
            elif current is not None and _remove(entry.path):
                freed += entry.size
                click.echo(f"removed  {line}")
            else:
                click.echo(f"gone already  {line}")
        click.echo(f"freed {_human(freed)}")
    except UserError as err:
        fail(str(err))


def _interactive() -> bool:
    return sys.stdin.isatty()


def _confirm(question: str) -> bool:
    """Ask on the terminal; y or yes is a yes. Not click.confirm: it turns Ctrl-C into a plain "Aborted!" and status 1,
    where bench reports an interrupt as one (bench.cli, status 130)."""
    click.echo(f"{question} [y/N]: ", nl=False)
    try:
        answer = input()
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def _scan(kind: str | None) -> tuple[Path, list[Entry]]:
    """(the cache folder, its entries of `kind` or of every kind, sorted by kind then last use)."""
    root = cache_dir()
    if root.exists() and not root.is_dir():
        raise UserError(f"the cache {root} (BENCH_CACHE) is a file, not a folder")
    try:
        kinds = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if root.exists() else []
        if kind is not None and kinds and kind not in kinds:
            raise UserError(f"no kind {kind!r} in {root}; kinds present: {', '.join(kinds)}")
        entries = []
        for k in kinds:
            if kind in (None, k):
                for path in sorted((root / k).iterdir()):
                    try:
                        entry = _entry(k, path)
                    except FileNotFoundError:  # removed while we looked
                        continue
                    if entry is not None:
                        entries.append(entry)
    except PermissionError as err:  # e.g. a shared cache with another user's entries
        raise UserError(f"cannot read {err.filename or root} in the cache: permission denied") from None
    return root, sorted(entries, key=lambda e: (e.kind, e.last_used))


def _entry(kind: str, path: Path) -> Entry | None:
    """The entry at `path`, or None for something the cache never writes (left alone)."""
    if TEMP_NAME.fullmatch(path.name):
        size, newest = _footprint(path)
        return Entry(kind, path, path.name, size, path.lstat().st_mtime, newest, "incomplete", True)
    if kind == STATS_KIND and path.suffix == ".npz" and path.is_file():
        st = path.stat()  # a file has no creation time apart from its mtime, which is its last use
        return Entry(kind, path, path.stem, st.st_size, None, st.st_mtime, _summary(stats_file_key(path)), False)
    if (path / "key.json").is_file():
        try:
            record = json.loads((path / "key.json").read_text())
        except ValueError:
            record = None
        record = record if isinstance(record, dict) else {}
        created = record.get("created")
        if not isinstance(created, (int, float)):  # written before key.json said: the folder's mtime (its rename)
            created = path.stat().st_mtime
        size, _ = _footprint(path)
        # key.json's mtime is the last use
        return Entry(kind, path, path.name, size, created, (path / "key.json").stat().st_mtime,
                     _summary(record.get("key")), False)
    return None


def _footprint(path: Path) -> tuple[int, float]:
    """Bytes of a file or of the files under a folder, and the newest mtime among them (the folder's own included)."""
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size, st.st_mtime
    size, newest = 0, st.st_mtime
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                s = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:
                continue
            newest = max(newest, s.st_mtime)
            size += 0 if stat.S_ISDIR(s.st_mode) else s.st_size
    return size, newest


def _summary(key: dict | None) -> str:
    """A short description of a key: training preset and steps, the data splits read, the reference set and
    features of a statistic, the training device."""
    if not isinstance(key, dict):
        return "(no readable key)"
    parts = []
    args = key.get("train") or key.get("args")
    if isinstance(args, dict):
        parts += [f"{name}={args[name]}" for name in ("preset", "steps") if args.get(name) is not None]
    data = key.get("data")
    if isinstance(data, dict):
        for split, ident in data.items():
            ident = ident.get("train_source", ident) if isinstance(ident, dict) else {}
            name = (ident.get("dataset") or ident.get("name")) if isinstance(ident, dict) else None
            if name:
                parts.append(f"data={name}/{split}")
    reference, extractor = key.get("reference"), key.get("extractor")
    if isinstance(reference, dict) and "dataset" in reference:
        parts.append(f"reference={reference['dataset']}/{reference.get('split')} n={reference.get('count')}")
    if isinstance(extractor, dict) and "features" in extractor:
        parts.append(f"features={extractor['features']} blur={key.get('blur')}")
    trained_on = key.get("trained_on")
    if isinstance(trained_on, dict) and "device" in trained_on:
        parts.append(f"on={trained_on['device']}")
    return " ".join(parts) or "-"


def _remove(path: Path) -> bool:
    """Rename to a temp name beside it (so a concurrent run finds the artefact whole or not at all), then delete.
    False when it was gone already."""
    doomed = path.with_name(f".{path.name}.pruning-{uuid.uuid4().hex[:8]}")
    try:
        path.rename(doomed)
        if doomed.is_dir() and not doomed.is_symlink():  # a symlinked entry: the link goes, not what it points to
            shutil.rmtree(doomed)
        else:
            doomed.unlink()
    except FileNotFoundError:
        return False
    except OSError as err:
        where = f" (renamed {doomed.name}; --incomplete removes it later)" if doomed.exists() else ""
        raise UserError(f"cannot remove {path}{where}: {err.strerror or first_line(err)}") from None
    return True


def _cells(entry: Entry) -> tuple[str, ...]:
    return (entry.kind, entry.name, _human(entry.size), _when(entry.created), _when(entry.last_used), entry.summary)


def _table(rows) -> list[str]:
    """Rows of cells as aligned lines (the size column right-aligned, the last one as is)."""
    rows = list(rows)
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER) - 1)]
    return ["  ".join([*(cell.rjust(w) if i == 2 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))),
                       row[-1]]) for row in rows]


def _when(t: float | None) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t is not None else "-"
    except (OverflowError, ValueError, OSError):  # a key.json edited to a time no calendar has (1e300, NaN)
        return "?"


def _entries(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
