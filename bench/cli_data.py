"""`bench data ...`: fetch datasets that do not ship in a package (added to the CLI with `cli.add_command(data)`)."""
from __future__ import annotations

import sys

import click

from bench.api import UserError


@click.group("data")
def data() -> None:
    """Download and verify datasets."""


@data.command("mscoco")
@click.option("--root", required=True, envvar="BENCH_COCO_ROOT", type=click.Path(file_okay=False),
              help="where annotations/ and val2014/ go (env BENCH_COCO_ROOT)")
@click.option("--split", type=click.Choice(["val2014", "val2017"]), default="val2014", show_default=True,
              help="evaluation split to fetch (with its captions)")
@click.option("--with-train", is_flag=True, help="also fetch train2014/train2017 images (13-18 GB)")
@click.option("--base-url", default="http://images.cocodataset.org", show_default=True,
              help="site laid out as the official one: zips/<split>.zip, annotations/annotations_trainval<year>.zip")
@click.option("--check-counts/--no-check-counts", default=None,
              help="compare with the official image/caption counts [default: only for the official site]")
@click.option("--keep-archives", is_flag=True, help="keep the downloaded zips under ROOT/downloads")
@click.option("--retries", default=3, show_default=True, type=click.IntRange(0, 100),
              help="resume a broken transfer this many times before giving up")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(1, 3600), help="seconds per network read")
@click.option("--quiet", is_flag=True, help="no progress bars")
def mscoco(root, split, with_train, base_url, check_counts, keep_archives, retries, timeout, quiet) -> None:
    """Fetch MS-COCO images and captions into ROOT, resumably, and verify them.

    Interrupted downloads stay as *.part files and resume (HTTP Range) when the
    command runs again; archives are CRC-checked, unpacked to a temporary folder,
    verified (JSON structure, every listed image present, counts) and only then
    moved into place.
    """
    from bench.datasets.download import fetch_coco
    from reference.errors import refuse_blank_path

    try:
        refuse_blank_path("--root", root, error=UserError)
        fetch_coco(root, split=split, base_url=base_url, with_train=with_train, keep_archives=keep_archives,
                   check_counts=check_counts, progress=not quiet, timeout=timeout, retries=retries,
                   log=lambda line: click.echo(line, err=True))
    except UserError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
