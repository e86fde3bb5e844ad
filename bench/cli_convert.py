"""`bench convert KIND SRC DST`: a public checkpoint, read once (safely), written as our checkpoint folder.

The lead wires it into the CLI with ``cli.add_command(convert)``.
"""
from __future__ import annotations

import json
import sys

import click

from reference.errors import first_line

KIND_CHOICES = ("hfailab-vqgan", "hfailab-gpt", "taming-vqgan", "auto")


def _parse_override(text: str) -> tuple[str, object]:
    from bench.api import UserError

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise UserError(f"--set wants KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


@click.command()
@click.argument("kind", type=click.Choice(KIND_CHOICES))
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path(file_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="config field the file cannot tell (e.g. n_head=16, norm_groups=32, grid=16); repeatable")
@click.option("--keep-discriminator", is_flag=True, help="hfailab-vqgan: keep the training-only discriminator")
def convert(kind, src, dst, overrides, keep_discriminator) -> None:
    """Convert a public CLIP-GEN / taming checkpoint SRC into our folder DST (safetensors + config + SHA256SUMS)."""
    from bench.api import UserError

    try:
        from reference.loaders import OverrideError
        from reference.loaders import convert as convert_checkpoint

        try:
            extra, given = {}, {}  # field -> value, field -> the --set text that gave it
            for text in overrides:
                key, value = _parse_override(text)
                if key == "keep_discriminator":  # a reader's switch, not a config field the --set check knows
                    raise UserError(f"--set {text}: use the --keep-discriminator flag")
                extra[key], given[key] = value, text
            if keep_discriminator:
                extra["keep_discriminator"] = True
            out = convert_checkpoint(kind, src, dst, **extra)
        except OverrideError as err:
            raise UserError(f"--set {given[err.name]}: {err.reason}") from None
        except (ValueError, OSError) as err:  # OSError: SRC unreadable, or DST cannot be written (read-only, full)
            has_os_reason = isinstance(err, OSError) and err.filename and err.strerror
            raise UserError(f"{err.filename}: {err.strerror}" if has_os_reason else first_line(err)) from None
    except UserError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    from reference.checkpoint import read_config

    model_kind, cfg, meta = read_config(out)
    click.echo(f"wrote {out} ({model_kind}; source sha256 {meta['converted_from']['sha256'][:16]}...)")
