"""Resumable downloads and the MS-COCO fetcher behind `bench data mscoco`.

Rules: a download goes to `<file>.part` and is renamed only once it has every
byte the server announced; an interrupted transfer keeps the `.part` so the
next run resumes it with an HTTP Range request. Archives are checked (every
member's CRC), unpacked into a temporary folder under the root, verified there
(captions JSON structure, every listed image present, file counts; the official
counts when the official site is used), and only then moved into place; the
temporary folder is removed whatever happens. A marker file records a verified
split so a second run does nothing. A complete archive that fails a check is
deleted, so the next run downloads it afresh. Files or folders in the way are
reported before anything moves into place, and filesystem errors (read-only,
disk full, a file where a folder goes) become one-line UserErrors.
"""
from __future__ import annotations

import errno
import http.client
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from bench.api import UserError
from reference.errors import first_line

OFFICIAL_BASE_URL = "http://images.cocodataset.org"
# counts of the official releases (images in the folder, images / annotations in captions_<split>.json)
OFFICIAL_COUNTS = {
    "val2014": {"images": 40504, "annotations": 202654},
    "val2017": {"images": 5000, "annotations": 25014},
    "train2014": {"images": 82783},
    "train2017": {"images": 118287},
}
USER_AGENT = "clipgen-bench"
# errors of this machine's filesystem while writing a download: trying the connection again cannot help
LOCAL_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})


def _progress(total: int | None, initial: int, desc: str, enabled: bool):
    from reference.progress import progress_bar

    return progress_bar(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                        enabled=enabled, leave=False)


def check_url(url: str, what: str = "URL") -> None:
    """UserError unless `url` is one urllib can fetch here: http(s)://HOST/... or file:///PATH."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number or out of range
    except ValueError as err:
        raise UserError(f"{what} {url!r} is not a valid URL ({first_line(err)})") from None
    scheme = parts.scheme.lower()
    if (scheme in ("http", "https") and parts.hostname) or (scheme == "file" and parts.path):
        return
    hint = "give http://HOST/..., https://HOST/... or file:///ABSOLUTE/PATH"
    if os.path.isdir(url):
        hint = f"for a local folder give {Path(url).resolve().as_uri()}"
    raise UserError(f"{what} {url!r} is not an http(s):// or file:// URL: {hint}")


def _total_from_content_range(value: str | None) -> tuple[int | None, int | None]:
    """'bytes 100-199/1000' -> (100, 1000); 'bytes */1000' -> (None, 1000)."""
    m = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def download(url: str, dest: str, *, progress: bool = True, timeout: float = 60.0, retries: int = 3,
             chunk_size: int = 1 << 20) -> str:
    """Fetch `url` to `dest` through `dest.part`, resuming a previous partial transfer; returns `dest`.

    A connection that breaks mid-transfer is resumed up to `retries` times; if it
    still fails, the `.part` stays for the next run and a UserError says so. A
    filesystem error writing the `.part` (disk full, read-only) stops at once: a
    UserError names it, and the bytes written so far stay to resume from.
    """
    if os.path.isfile(dest):
        return dest
    check_url(url)
    part = dest + ".part"
    for path in (dest, part):  # found only after the whole transfer otherwise
        if os.path.isdir(path):
            raise UserError(f"{path} is a folder, where the download of {url} goes: move it away")
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    restarted = False
    attempt = 0
    while True:
        offset = os.path.getsize(part) if os.path.isfile(part) else 0
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            try:
                response = urllib.request.urlopen(request, timeout=timeout)
            except urllib.error.HTTPError as err:
                if err.code == 416 and offset:  # nothing left to send: complete already, or a stale .part
                    _, total = _total_from_content_range(err.headers.get("Content-Range"))
                    if total == offset:
                        break
                    if not restarted:
                        os.remove(part)
                        restarted = True
                        continue
                raise UserError(f"download of {url} failed: HTTP {err.code} {err.reason}") from None
            with response:
                if response.status == 206:
                    start, total = _total_from_content_range(response.headers.get("Content-Range"))
                    if start != offset:
                        raise UserError(f"download of {url}: server resumed at byte {start}, expected {offset}")
                    mode = "ab"
                else:  # 200: the server ignores Range (or there was none); start from zero
                    length = response.headers.get("Content-Length")
                    total = int(length) if length is not None else None
                    offset, mode = 0, "wb"
                name = os.path.basename(dest)
                with open(part, mode) as f, _progress(total, offset, name, progress) as bar:
                    while True:
                        block = response.read(chunk_size)
                        if not block:
                            break
                        f.write(block)
                        bar.update(len(block))
            size = os.path.getsize(part)
            if total is not None and size != total:
                raise ConnectionError(f"connection closed at byte {size} of {total}")
            break
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            attempt += 1
            have = os.path.getsize(part) if os.path.isfile(part) else 0
            if isinstance(err, OSError) and err.errno in LOCAL_WRITE_ERRNOS:
                raise UserError(f"{err.filename or part}: {err.strerror}; {have} bytes kept in {part}: fix that and "
                                "run the same command again to resume") from None
            if attempt > retries:
                reason = getattr(err, "reason", err)
                if have == 0:
                    if os.path.isfile(part):
                        os.remove(part)
                    raise UserError(f"download of {url} failed ({reason}): check the network or the base URL") from None
                raise UserError(f"download of {url} failed ({reason}) with {have} bytes kept in {part}: "
                                "run the same command again to resume") from None
    os.replace(part, dest)
    return dest


def verify_zip(path: str) -> list[str]:
    """Member names of a zip archive whose every member passes its CRC check; UserError otherwise."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise UserError(f"{path} is not a readable zip archive ({err})") from None
    if bad is not None:
        raise UserError(f"{path} is corrupt: member {bad} fails its CRC check")
    return names


def _safe_member(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return not name.startswith(("/", "\\")) and ".." not in parts and ":" not in parts[0]


def extract(path: str, into: str, keep: Callable[[str], bool] = lambda name: True, progress: bool = True) -> list[str]:
    """Unpack the members `keep` accepts into the folder `into`; returns the file names extracted."""
    from reference.progress import progress_bar

    done = []
    with zipfile.ZipFile(path) as z:
        members = [m for m in z.infolist() if keep(m.filename)]
        for m in progress_bar(members, desc=f"unpack {os.path.basename(path)}", unit="file", enabled=progress,
                              leave=False):
            if not _safe_member(m.filename):
                raise UserError(f"{path} holds an unsafe member name {m.filename!r}; refusing to unpack it")
            z.extract(m, into)
            if not m.is_dir():
                done.append(m.filename)
    return done


def _in_the_way(src: str, dst: str) -> list[str]:
    """Paths under dst that would stop _move_into_place(src, dst): no folder where one of src's folders goes,
    or a folder where one of its files goes."""
    if not os.path.lexists(dst):
        return []
    if not os.path.isdir(src):
        return [dst] if os.path.isdir(dst) else []
    if not os.path.isdir(dst):
        return [dst]
    return [p for name in sorted(os.listdir(src))
            for p in _in_the_way(os.path.join(src, name), os.path.join(dst, name))]


def _move_into_place(tmp: str, root: str) -> None:
    """Move tmp's top-level entries into root: whole new folders at once, else file by file."""
    for entry in sorted(os.listdir(tmp)):
        src, dst = os.path.join(tmp, entry), os.path.join(root, entry)
        if not os.path.exists(dst):
            os.replace(src, dst)
        elif os.path.isdir(src) and os.path.isdir(dst):
            for dirpath, _, files in os.walk(src):
                target = os.path.join(dst, os.path.relpath(dirpath, src))
                os.makedirs(target, exist_ok=True)
                for name in files:
                    os.replace(os.path.join(dirpath, name), os.path.join(target, name))
        else:
            os.replace(src, dst)


class BadContent(UserError):
    """Unpacked files fail verification; `source` is the archive they came from: "annotations" or the split."""

    def __init__(self, message: str, source: str):
        super().__init__(message)
        self.source = source


def verify_coco_split(folder_root: str, split: str, official: bool) -> dict:
    """Check annotations/captions_<split>.json and <split>/ under folder_root; returns the counts.

    Content that is wrong raises BadContent (messages name paths relative to folder_root); counts that
    differ from the official release raise a plain UserError.
    """
    from bench.datasets.mscoco import check_captions_structure

    ann = f"annotations/captions_{split}.json"
    try:
        with open(os.path.join(folder_root, ann), encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise BadContent(f"{ann} is missing", "annotations") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise BadContent(f"{ann} is not JSON ({first_line(err)})", "annotations") from None
    problem = check_captions_structure(data)
    if problem:
        raise BadContent(f"{ann} is not a COCO captions file: {problem}", "annotations")
    image_dir = os.path.join(folder_root, split)
    on_disk = set(os.listdir(image_dir)) if os.path.isdir(image_dir) else set()
    listed = [im["file_name"] for im in data["images"]]
    absent = [n for n in listed if n not in on_disk]
    if absent:
        raise BadContent(f"{len(absent)} of the {len(listed)} images listed in captions_{split}.json are missing "
                         f"from {split}/ (e.g. {absent[0]})", split)
    jpegs = sum(1 for n in on_disk if n.lower().endswith((".jpg", ".jpeg")))
    if jpegs != len(listed):
        raise BadContent(f"{split}/ holds {jpegs} JPEGs but captions_{split}.json lists {len(listed)} images", split)
    counts = {"images": len(listed), "annotations": len(data["annotations"])}
    if official:
        expected = OFFICIAL_COUNTS[split]
        for key, value in expected.items():
            if counts[key] != value:
                raise UserError(f"{split}: {counts[key]} {key}, the official release has {value}")
    return counts


def _discard(archive: str, problem: str) -> UserError:
    """Delete a complete archive that fails a check, so the next run downloads it afresh; the error to raise."""
    os.remove(archive)
    return UserError(f"{problem}; it was deleted, run the command again to download it afresh")


def _missing_folders(path: str) -> list[str]:
    """`path` and those of its parents that are no folders (yet), outermost first."""
    missing = []
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        missing.insert(0, path)
        path = os.path.dirname(path)
    return missing


def _read_marker(marker: str) -> dict | None:
    """What a marker file records; None when it is absent or unreadable (then the split is verified again)."""
    try:
        with open(marker, encoding="utf-8") as f:
            recorded = json.load(f)
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        return None
    return recorded if isinstance(recorded, dict) else None


def _os_error_line(err: OSError, root: str) -> str:
    """One line for a filesystem error met while fetching into `root`."""
    path = err.filename2 or err.filename or root  # a rename names its destination second
    # os.makedirs(exist_ok=True) raises FileExistsError for a path that exists but is no folder
    reason = "exists and is not a folder" if isinstance(err, FileExistsError) else err.strerror or first_line(err)
    return f"{path}: {reason}"


def fetch_coco(root: str, split: str = "val2014", base_url: str = OFFICIAL_BASE_URL, with_train: bool = False,
               keep_archives: bool = False, check_counts: bool | None = None, progress: bool = True,
               timeout: float = 60.0, retries: int = 3, log: Callable[[str], None] = print) -> dict:
    """Download, verify and unpack MS-COCO `split` (+ captions, + train images if asked) under `root`.

    check_counts=None means: compare with the official counts only when base_url is the official site.
    Returns {"root", "split", "counts": {...}, "skipped": bool}. Every failure is a UserError; the
    folders this call created go again unless they hold something (complete archives are kept for the
    next run, and a .part to resume).
    """
    if split not in ("val2014", "val2017"):
        raise UserError(f"unknown MS-COCO split {split!r}; known: val2014, val2017")
    check_url(base_url, "base URL")
    official = (base_url.rstrip("/") == OFFICIAL_BASE_URL) if check_counts is None else check_counts
    year = split[-4:]
    splits = [split] + ([f"train{year}"] if with_train else [])
    root = os.path.abspath(root)
    downloads = os.path.join(root, "downloads")
    base = base_url.rstrip("/")
    # key -> (URL, local archive): the captions of the year, then each split's images
    sources = {"annotations": (f"{base}/annotations/annotations_trainval{year}.zip",
                               os.path.join(downloads, f"annotations_trainval{year}.zip"))}
    sources.update({s: (f"{base}/zips/{s}.zip", os.path.join(downloads, f"{s}.zip")) for s in splits})
    made = _missing_folders(downloads)  # folders this call may create
    try:
        return _fetch_coco(root, split, splits, sources, base, official, keep_archives, progress, timeout, retries,
                           log)
    except BaseException as err:
        for folder in reversed(made):  # only those still empty
            try:
                os.rmdir(folder)
            except OSError:
                pass
        if isinstance(err, OSError):
            raise UserError(_os_error_line(err, root)) from None
        raise


def _fetch_coco(root: str, split: str, splits: list[str], sources: dict[str, tuple[str, str]], base: str,
                official: bool, keep_archives: bool, progress: bool, timeout: float, retries: int,
                log: Callable[[str], None]) -> dict:
    os.makedirs(root, exist_ok=True)
    marker = os.path.join(root, f".bench-mscoco-{'+'.join(splits)}.json")
    recorded = _read_marker(marker)
    if recorded is not None and all(os.path.isdir(os.path.join(root, s)) for s in splits):
        log(f"MS-COCO {'+'.join(splits)} already verified under {root}")
        return {"root": root, "split": split, "counts": recorded.get("counts", {}), "skipped": True}

    archives = {key: dest for key, (_, dest) in sources.items()}
    downloads = os.path.dirname(archives["annotations"])
    for url, dest in sources.values():
        log(f"fetching {url}")
        download(url, dest, progress=progress, timeout=timeout, retries=retries)
        try:
            verify_zip(dest)
        except UserError as err:
            raise _discard(dest, str(err)) from None

    wanted = {"annotations": lambda n: re.fullmatch(r"annotations/captions_\w+\.json", n) is not None}
    wanted.update({s: (lambda n, s=s: n.startswith(f"{s}/")) for s in splits})
    tmp = tempfile.mkdtemp(prefix=".bench-unpack-", dir=root)
    unpacked, ready_marker = os.path.join(tmp, "unpacked"), os.path.join(tmp, "marker.json")
    try:
        for key, keep in wanted.items():
            try:
                extract(archives[key], unpacked, keep, progress)
            except UserError as err:  # an unsafe member name
                raise _discard(archives[key], str(err)) from None
        try:
            counts = {s: verify_coco_split(unpacked, s, official) for s in splits}
        except BadContent as err:
            raise _discard(archives[err.source], f"{archives[err.source]}: {err}") from None
        with open(ready_marker, "w") as f:
            json.dump({"splits": splits, "base_url": base, "counts": counts, "official_counts_checked": official},
                      f, indent=1)
        in_the_way = _in_the_way(unpacked, root) + ([marker] if os.path.isdir(marker) else [])
        if in_the_way:
            more = f" (and {len(in_the_way) - 1} more)" if len(in_the_way) > 1 else ""
            raise UserError(f"{in_the_way[0]}{more} is in the way of the verified files, so nothing was moved into "
                            f"place: move it away and run the command again (the downloads are kept)")
        _move_into_place(unpacked, root)
        os.replace(ready_marker, marker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not keep_archives:  # the data is in place now: a failure here is worth a line, not an error
        try:
            for dest in archives.values():
                os.remove(dest)
            if not os.listdir(downloads):
                os.rmdir(downloads)
        except OSError as err:
            log(f"warning: could not delete the downloaded archives ({_os_error_line(err, root)}); "
                "the data is in place, delete them by hand")
    log(f"MS-COCO {'+'.join(splits)} verified under {root}: " +
        ", ".join(f"{s}: {c['images']} images, {c['annotations']} captions" for s, c in counts.items()))
    return {"root": root, "split": split, "counts": counts, "skipped": False}
