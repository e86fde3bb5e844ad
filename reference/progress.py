"""Progress bars that suit where they draw.

On a terminal a bar redraws in place as tqdm always does. Into a file or a pipe (`bench run ... > run.log 2>&1`, a CI
log) tqdm's usual ten frames a second pile up as thousands of carriage-return frames; there a bar draws at most once
every LOG_INTERVAL_S seconds and always leaves its last frame as a line, so the log holds what finished and how fast.
TQDM_MININTERVAL in the environment wins over that interval (the build pool sets it for its workers, whose logs it
reads to show their progress).
"""
from __future__ import annotations

import math
import os
import sys

from tqdm.auto import tqdm

LOG_INTERVAL_S = 30.0


def on_terminal(stream=None) -> bool:
    """Whether `stream` (default: stderr, where tqdm draws) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _log_interval() -> float:
    try:  # read now: tqdm reads its TQDM_* defaults once, when it is imported
        seconds = float(os.environ["TQDM_MININTERVAL"])
    except (KeyError, ValueError):
        return LOG_INTERVAL_S
    return seconds if math.isfinite(seconds) and seconds >= 0 else LOG_INTERVAL_S


def progress_bar(iterable=None, *, enabled: bool, in_logs: bool = True, **kwargs) -> tqdm:
    """A tqdm bar (tqdm's arguments; `disable` adds to `not enabled`) shown when `enabled`; `leave` applies on a
    terminal. A bar whose frames tell a log nothing (a status line that the caller also reports in plain lines)
    passes `in_logs=False`: it then draws only on a terminal."""
    enabled = enabled and not kwargs.pop("disable", False)
    if on_terminal(kwargs.get("file")):
        kwargs.setdefault("dynamic_ncols", True)
    else:
        enabled = enabled and in_logs
        kwargs["mininterval"] = kwargs["maxinterval"] = _log_interval()
        kwargs["leave"] = True
    return tqdm(iterable, disable=not enabled, **kwargs)
