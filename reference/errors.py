"""One-line error messages: library errors (torch, safetensors, PyYAML) often span many lines."""
from __future__ import annotations


def first_line(err: BaseException) -> str:
    """The first non-empty line of `err`'s message, or its type's name when the message is empty."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
