"""One-line error messages: library errors (torch, safetensors, PyYAML) often span many lines."""
from __future__ import annotations

import os


def first_line(err: BaseException) -> str:
    """The first non-empty line of `err`'s message, or its type's name when the message is empty."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def refuse_blank_path(label: str, value: object, noun: str = "folder", error: type[Exception] = ValueError) -> None:
    """Raise `error` ("LABEL '': name a NOUN") when a path argument is given but empty or blank.

    `None` means "not given" and passes. An empty path must not pass on: os.path.abspath('') and Path('')
    quietly mean the current folder, so a typo would read or write there.
    """
    if value is not None and not os.fspath(value).strip():
        raise error(f"{label} {os.fspath(value)!r}: name a {noun}")
