"""Resumable download and `bench data mscoco`, against a local HTTP server on 127.0.0.1 (no network)."""
from __future__ import annotations

import errno
import json
import os
import re
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bench.api import UserError
from bench.cli_data import data
from bench.datasets.download import download, extract, fetch_coco, verify_zip
from bench.datasets.mscoco import CocoArgs, make_mscoco, missing_resources

try:  # tests/ as a package or as a plain folder on sys.path
    from tests.fixtures_coco import make_coco_archives
except ImportError:
    from fixtures_coco import make_coco_archives


class Site:
    """Serves files under `root` with HTTP Range support; can cut a transfer short or ignore Range."""

    def __init__(self, root: str):
        self.root = root
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.cut_after: dict[str, int] = {}  # path -> bytes to send once before dropping the connection
        self.ignore_range = False
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                site.requests.append((self.path, rng))
                path = os.path.join(site.root, self.path.lstrip("/"))
                if not os.path.isfile(path):
                    self.send_error(404)
                    return
                blob = open(path, "rb").read()
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and not site.ignore_range:
                    start = int(m.group(1))
                    if start >= len(blob):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(blob)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(blob) - 1}/{len(blob)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(blob) - start))
                self.end_headers()
                body = blob[start:]
                cut = site.cut_after.pop(self.path, None)
                if cut is not None:
                    body = body[:cut]
                    self.close_connection = True
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def site(tmp_path):
    s = Site(str(tmp_path / "site"))
    os.makedirs(s.root)
    yield s
    s.close()


@pytest.fixture
def blob(site):
    data = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    with open(os.path.join(site.root, "big.bin"), "wb") as f:
        f.write(data)
    return data


def leftovers(folder) -> list[str]:
    return [os.path.join(d, n) for d, dirs, files in os.walk(folder) for n in files + dirs
            if n.endswith((".part", ".tmp")) or n.startswith(".bench-unpack-")]


def test_interrupted_download_keeps_part_and_resumes(site, blob, tmp_path):
    dest = str(tmp_path / "out" / "big.bin")
    site.cut_after["/big.bin"] = 100_000
    with pytest.raises(UserError, match="run the same command again to resume"):
        download(f"{site.url}/big.bin", dest, progress=False, retries=0, timeout=5)
    assert not os.path.exists(dest) and os.path.getsize(dest + ".part") == 100_000
    assert download(f"{site.url}/big.bin", dest, progress=False, timeout=5) == dest
    assert open(dest, "rb").read() == blob and not os.path.exists(dest + ".part")
    assert site.requests == [("/big.bin", None), ("/big.bin", "bytes=100000-")]


def test_retries_resume_within_one_call(site, blob, tmp_path):
    dest = str(tmp_path / "big.bin")
    site.cut_after["/big.bin"] = 12_345
    download(f"{site.url}/big.bin", dest, progress=False, retries=1, timeout=5)
    assert open(dest, "rb").read() == blob
    assert [r for _, r in site.requests] == [None, "bytes=12345-"]


def test_server_without_range_restarts_cleanly(site, blob, tmp_path):
    dest = str(tmp_path / "big.bin")
    with open(dest + ".part", "wb") as f:
        f.write(b"stale bytes that must not survive")
    site.ignore_range = True
    download(f"{site.url}/big.bin", dest, progress=False, timeout=5)
    assert open(dest, "rb").read() == blob


def test_complete_part_is_finished_by_416(site, blob, tmp_path):
    dest = str(tmp_path / "big.bin")
    with open(dest + ".part", "wb") as f:
        f.write(blob)
    download(f"{site.url}/big.bin", dest, progress=False, timeout=5)
    assert open(dest, "rb").read() == blob and site.requests == [("/big.bin", "bytes=300000-")]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_disk_error_while_downloading_stops_at_once_and_keeps_the_part(site, blob, tmp_path, monkeypatch, code):
    import bench.datasets.download as download_module

    class FillsUp:
        """A file that takes the first block and then reports `code` (a full disk, a read-only remount)."""

        def __init__(self, path, mode):
            self.file, self.blocks = open(path, mode), 0

        def write(self, block):
            self.blocks += 1
            if self.blocks > 1:
                raise OSError(code, os.strerror(code))
            return self.file.write(block)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    dest = str(tmp_path / "big.bin")
    monkeypatch.setattr(download_module, "open", FillsUp, raising=False)
    with pytest.raises(UserError) as err:
        download(f"{site.url}/big.bin", dest, progress=False, retries=3, timeout=5, chunk_size=100_000)
    assert str(err.value).startswith(f"{dest}.part: {os.strerror(code)}; 100000 bytes kept")
    assert len(site.requests) == 1  # no network retries for a local disk error
    monkeypatch.undo()
    download(f"{site.url}/big.bin", dest, progress=False, timeout=5)
    assert open(dest, "rb").read() == blob and site.requests[1] == ("/big.bin", "bytes=100000-")


def test_missing_file_is_one_line_user_error(site, tmp_path):
    dest = str(tmp_path / "nothing.zip")
    with pytest.raises(UserError, match="HTTP 404"):
        download(f"{site.url}/nothing.zip", dest, progress=False, timeout=5)
    assert os.listdir(tmp_path) == ["site"]


def test_verify_zip_and_safe_extract(tmp_path):
    good = str(tmp_path / "good.zip")
    with zipfile.ZipFile(good, "w", zipfile.ZIP_STORED) as z:
        z.writestr("d/a.txt", "hello world " * 50)
    assert verify_zip(good) == ["d/a.txt"]
    raw = bytearray(open(good, "rb").read())
    raw[raw.find(b"hello world") + 5] ^= 0xFF
    bad = str(tmp_path / "bad.zip")
    open(bad, "wb").write(raw)
    with pytest.raises(UserError, match="CRC"):
        verify_zip(bad)
    open(bad, "wb").write(b"PK not really")
    with pytest.raises(UserError, match="not a readable zip"):
        verify_zip(bad)
    evil = str(tmp_path / "evil.zip")
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../escape.txt", "x")
    with pytest.raises(UserError, match="unsafe member"):
        extract(evil, str(tmp_path / "into"), progress=False)
    assert not os.path.exists(tmp_path / "escape.txt")


def test_cli_fetches_verifies_and_feeds_the_dataset(site, tmp_path):
    make_coco_archives(site.root, "val2014", n_images=12)
    root = str(tmp_path / "coco")
    result = CliRunner().invoke(data, ["mscoco", "--root", root, "--base-url", site.url, "--quiet", "--timeout", "5"])
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(os.path.join(root, "annotations"))) == ["captions_train2014.json", "captions_val2014.json"]
    assert len(os.listdir(os.path.join(root, "val2014"))) == 12
    assert not os.path.exists(os.path.join(root, "downloads")) and leftovers(root) == []
    marker = json.load(open(os.path.join(root, ".bench-mscoco-val2014.json")))
    assert marker["counts"]["val2014"]["images"] == 12 and marker["official_counts_checked"] is False
    d = make_mscoco(CocoArgs(root=root, resolution=16, num_captions=5, train_split="val-rest"))
    assert len(d.eval_captions()) == 5 and sum(len(b) for b in d.iter_reference_images()) == 5
    n_requests = len(site.requests)
    again = CliRunner().invoke(data, ["mscoco", "--root", root, "--base-url", site.url, "--quiet"])
    assert again.exit_code == 0 and "already verified" in again.output and len(site.requests) == n_requests
    # a second split joins the same root: annotations/ is merged file by file
    make_coco_archives(site.root, "val2017", n_images=5)
    third = CliRunner().invoke(data, ["mscoco", "--root", root, "--split", "val2017", "--base-url", site.url, "--quiet"])
    assert third.exit_code == 0, third.output
    assert sorted(os.listdir(os.path.join(root, "annotations"))) == [
        "captions_train2014.json", "captions_train2017.json", "captions_val2014.json", "captions_val2017.json"]
    assert len(os.listdir(os.path.join(root, "val2017"))) == 5 and len(os.listdir(os.path.join(root, "val2014"))) == 12


def test_corrupt_archive_leaves_nothing(site, tmp_path):
    make_coco_archives(site.root, "val2014", n_images=6)
    zpath = os.path.join(site.root, "zips", "val2014.zip")
    with zipfile.ZipFile(zpath) as z:
        member = z.read(z.namelist()[2])
    raw = bytearray(open(zpath, "rb").read())
    raw[raw.find(member) + len(member) // 2] ^= 0xFF
    open(zpath, "wb").write(raw)
    root = str(tmp_path / "coco")
    result = CliRunner().invoke(data, ["mscoco", "--root", root, "--base-url", site.url, "--quiet", "--timeout", "5"])
    assert result.exit_code == 2 and "CRC" in result.output and "afresh" in result.output
    assert not os.path.exists(os.path.join(root, "downloads", "val2014.zip"))
    assert not os.path.exists(os.path.join(root, "val2014")) and not os.path.exists(os.path.join(root, "annotations"))
    assert leftovers(root) == []


def test_failed_verification_moves_nothing_into_place(site, tmp_path):
    make_coco_archives(site.root, "val2014", n_images=6)
    root = str(tmp_path / "coco")
    with pytest.raises(UserError, match="official release has 40504"):  # the fixture is not the official release
        fetch_coco(root, base_url=site.url, check_counts=True, progress=False, timeout=5, log=lambda s: None)
    assert sorted(os.listdir(root)) == ["downloads"] and leftovers(root) == []
    # drop one image from the archive: the JSON now lists a file that is absent
    zpath = os.path.join(site.root, "zips", "val2014.zip")
    with zipfile.ZipFile(zpath) as z:
        members = {n: z.read(n) for n in z.namelist()[1:]}
    with zipfile.ZipFile(zpath, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    os.remove(os.path.join(root, "downloads", "val2014.zip"))
    with pytest.raises(UserError, match="missing from val2014/"):
        fetch_coco(root, base_url=site.url, progress=False, timeout=5, log=lambda s: None)
    assert sorted(os.listdir(root)) == ["downloads"] and leftovers(root) == []


@pytest.mark.parametrize("base_url", ["notaurl", "ftp://example.org/coco", "http://", "file:"])
def test_base_url_that_is_no_url_is_one_line_and_creates_nothing(tmp_path, base_url):
    root = tmp_path / "coco"
    result = CliRunner().invoke(data, ["mscoco", "--root", str(root), "--base-url", base_url, "--retries", "0"])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: base URL {base_url!r} is not an http(s):// or file://")
    assert not root.exists()
    with pytest.raises(UserError, match="not an http"):
        download(base_url, str(tmp_path / "d" / "big.bin"), progress=False, retries=0)
    assert not (tmp_path / "d").exists()


def test_a_local_folder_as_base_url_gets_its_file_url(site, tmp_path):
    make_coco_archives(site.root, "val2014", n_images=4)
    root = tmp_path / "coco"
    result = CliRunner().invoke(data, ["mscoco", "--root", str(root), "--base-url", site.root, "--quiet"])
    assert result.exit_code == 2 and f"give {Path(site.root).resolve().as_uri()}" in result.output
    assert not root.exists()
    # which works: file:// is fetched like http://
    result = CliRunner().invoke(data, ["mscoco", "--root", str(root), "--base-url", Path(site.root).as_uri(),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(os.listdir(root / "val2014")) == 4 and not (root / "downloads").exists() and leftovers(root) == []


@pytest.mark.parametrize("root_exists", [False, True])
def test_unreachable_site_leaves_no_empty_folders(site, tmp_path, root_exists):
    root = tmp_path / "coco"
    if root_exists:
        root.mkdir()
    url = site.url
    site.close()  # nothing listens there any more
    result = CliRunner().invoke(data, ["mscoco", "--root", str(root), "--base-url", url, "--retries", "0",
                                       "--quiet", "--timeout", "5"])
    assert result.exit_code == 2 and "check the network or the base URL" in result.output, result.output
    assert root.exists() == root_exists  # a root the user made stays, empty; one the failed run made goes
    assert not root_exists or os.listdir(root) == []


def test_mscoco_hints_keep_every_option_inside_the_backticks(tmp_path):
    lines = missing_resources(CocoArgs(root=str(tmp_path), eval_split="val2017", train_split="train2017"))
    assert len(lines) == 4
    commands = [c for line in lines for c in re.findall(r"`([^`]*)`", line) if c.startswith("bench ")]
    assert commands.count("bench data mscoco --root DIR --split val2017") == 3
    assert commands.count("bench data mscoco --root DIR --split val2017 --with-train") == 1
    assert all(not re.search(r"`\s*--", line) for line in lines)  # no option after a closing backtick


def mscoco(root, url, *extra):
    return CliRunner().invoke(data, ["mscoco", "--root", str(root), "--base-url", url, "--quiet", "--timeout", "5",
                                     *extra])


def error_line(result) -> str:
    """The one line a failed command printed (it must have exited 2 with one line and no traceback)."""
    lines = [ln for ln in result.output.splitlines() if ln.strip() and not ln.startswith("fetching ")]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), \
        (result.output, result.exception)
    return lines[0]


def tree(folder) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), folder) for d, dirs, files in os.walk(folder) for n in files + dirs}


@pytest.mark.parametrize("make_root", ["read_only", "parent_is_a_file", "name_too_long", "symlink_loop"])
def test_root_that_cannot_be_made_is_one_line_and_creates_nothing(site, tmp_path, monkeypatch, make_root):
    make_coco_archives(site.root, "val2014", n_images=4)
    if make_root == "read_only":  # as root, chmod cannot make a folder read-only: a mount would
        def read_only(name, *args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), name)

        monkeypatch.setattr(os, "makedirs", read_only)
        root, reason = tmp_path / "coco", "Read-only file system"
    elif make_root == "parent_is_a_file":
        (tmp_path / "afile").write_text("mine")
        root, reason = tmp_path / "afile" / "coco", "Not a directory"
    elif make_root == "name_too_long":
        root, reason = tmp_path / "new" / ("c" * 300), "File name too long"
    else:
        os.symlink("loop", tmp_path / "loop")
        root, reason = tmp_path / "loop", "exists and is not a folder"
    before = tree(tmp_path)
    line = error_line(mscoco(root, site.url))
    assert str(root) in line and line.endswith(reason) and site.requests == []
    assert tree(tmp_path) == before  # not even the missing parent tmp_path/new


@pytest.mark.parametrize("path, kind", [
    ("downloads", "file"),
    ("downloads/annotations_trainval2014.zip", "folder"),  # refused before any byte is fetched
    ("downloads/val2014.zip.part", "folder"),
    ("annotations", "file"),
    ("val2014", "file"),  # found before annotations/ moves in
    ("annotations/captions_val2014.json", "folder"),
    ("val2014", "symlink_loop"),
    (".bench-mscoco-val2014.json", "folder"),
])
def test_something_in_the_way_is_one_line_and_installs_nothing(site, tmp_path, path, kind):
    make_coco_archives(site.root, "val2014", n_images=4)
    root = tmp_path / "coco"
    obstacle = root / path
    obstacle.parent.mkdir(parents=True, exist_ok=True)
    if kind == "file":
        obstacle.write_text("mine")
    elif kind == "folder":
        obstacle.mkdir()
    else:
        os.symlink(obstacle.name, obstacle)
    before = tree(root)
    line = error_line(mscoco(root, site.url))
    assert str(obstacle) in line and "network" not in line, line
    # nothing moved into place, no marker: only complete archives were added, to be reused by the next run
    assert before <= tree(root) <= before | {"downloads", "downloads/annotations_trainval2014.zip",
                                             "downloads/val2014.zip"}
    assert leftovers(root) == ([str(obstacle)] if path.endswith(".part") else [])
    if path.startswith("downloads/annotations"):
        assert site.requests == []


def test_disk_full_while_unpacking_is_one_line_and_installs_nothing(site, tmp_path, monkeypatch):
    make_coco_archives(site.root, "val2014", n_images=4)
    root = tmp_path / "coco"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(zipfile.ZipFile, "extract", full)
    line = error_line(mscoco(root, site.url))
    assert line == f"error: {root}: No space left on device"
    assert tree(root) == {"downloads", "downloads/annotations_trainval2014.zip", "downloads/val2014.zip"}
    monkeypatch.undo()  # space freed: the same command finishes with the archives it has
    n_requests = len(site.requests)
    assert mscoco(root, site.url).exit_code == 0 and len(site.requests) == n_requests
    assert len(os.listdir(root / "val2014")) == 4


def test_archives_that_cannot_be_deleted_after_install_are_a_warning(site, tmp_path, monkeypatch):
    make_coco_archives(site.root, "val2014", n_images=4)
    root = tmp_path / "coco"
    remove = os.remove

    def refuse_zips(path, *args, **kwargs):
        if str(path).endswith(".zip"):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)
        return remove(path, *args, **kwargs)

    monkeypatch.setattr(os, "remove", refuse_zips)
    result = mscoco(root, site.url)
    assert result.exit_code == 0, result.output
    archive = root / "downloads" / "annotations_trainval2014.zip"
    assert f"warning: could not delete the downloaded archives ({archive}: Permission denied)" in result.output
    assert len(os.listdir(root / "val2014")) == 4 and (root / ".bench-mscoco-val2014.json").is_file()
    monkeypatch.undo()
    again = mscoco(root, site.url)
    assert again.exit_code == 0 and "already verified" in again.output


def rewrite_zip(path: str, change) -> None:
    """Rewrite the zip at `path` with `change(members)` applied to its {name: bytes}."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    change(members)
    with zipfile.ZipFile(path, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)


@pytest.mark.parametrize("breakage, archive", [
    ("captions_not_json", "annotations_trainval2014.zip"),
    ("captions_absent", "annotations_trainval2014.zip"),
    ("image_missing", "val2014.zip"),
    ("unsafe_member", "val2014.zip"),
])
def test_archive_that_fails_verification_is_deleted_and_named(site, tmp_path, breakage, archive):
    make_coco_archives(site.root, "val2014", n_images=4)
    annotations = os.path.join(site.root, "annotations", "annotations_trainval2014.zip")
    images = os.path.join(site.root, "zips", "val2014.zip")
    if breakage == "captions_not_json":
        rewrite_zip(annotations, lambda m: m.update({"annotations/captions_val2014.json": b"garbage{"}))
    elif breakage == "captions_absent":
        rewrite_zip(annotations, lambda m: m.pop("annotations/captions_val2014.json"))
    elif breakage == "image_missing":
        rewrite_zip(images, lambda m: m.pop(sorted(m)[0]))
    else:
        rewrite_zip(images, lambda m: m.update({"val2014/../../escape.jpg": b"x"}))
    root = tmp_path / "coco"
    line = error_line(mscoco(root, site.url))
    kept = os.path.join(root, "downloads", archive)
    assert f"{kept}" in line and "deleted" in line and ".bench-unpack-" not in line, line
    assert not os.path.exists(kept) and not (root / "val2014").exists() and not (root / "annotations").exists()
    assert leftovers(root) == [] and not (tmp_path / "escape.jpg").exists()
    make_coco_archives(site.root, "val2014", n_images=4)  # the site is repaired: the next run fetches it afresh
    result = mscoco(root, site.url)
    assert result.exit_code == 0, result.output
    assert len(os.listdir(root / "val2014")) == 4


@pytest.mark.parametrize("content", [b"garbage{", b"\xff\xfe\x00\x81binary", b"[1]"])
def test_corrupt_marker_means_verify_again(site, tmp_path, content):
    make_coco_archives(site.root, "val2014", n_images=4)
    root = tmp_path / "coco"
    assert mscoco(root, site.url).exit_code == 0
    marker = root / ".bench-mscoco-val2014.json"
    marker.write_bytes(content)
    result = mscoco(root, site.url)
    assert result.exit_code == 0 and "already verified" not in result.output, (result.output, result.exception)
    assert json.loads(marker.read_text())["counts"]["val2014"]["images"] == 4 and leftovers(root) == []
    assert "already verified" in mscoco(root, site.url).output


@pytest.mark.parametrize("root", ["", "  "])
def test_empty_root_is_refused(tmp_path, monkeypatch, root):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(data, ["mscoco", "--root", root, "--base-url", "file:///nowhere", "--quiet"])
    assert error_line(result) == f"error: --root {root!r}: name a folder"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("base_url", ["http://[::1", "http://example.org:port/coco", "http://example.org:99999/"])
def test_malformed_base_url_is_one_line(tmp_path, base_url):
    root = tmp_path / "coco"
    line = error_line(CliRunner().invoke(data, ["mscoco", "--root", str(root), "--base-url", base_url]))
    assert line.startswith(f"error: base URL {base_url!r} is not a valid URL (") and not root.exists()
    with pytest.raises(UserError, match="is not a valid URL"):
        download(f"{base_url}/x.zip", str(tmp_path / "x.zip"), progress=False, retries=0)
