"""Progress bars: tqdm's frames on a terminal, a few lines in a log (a file or pipe)."""
import io

import pytest

from reference.progress import LOG_INTERVAL_S, on_terminal, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(stream, n=2000, **kwargs) -> str:
    with progress_bar(total=n, desc="work", file=stream, **kwargs) as bar:
        for _ in range(n):
            bar.update(1)
    return stream.getvalue()


@pytest.fixture(autouse=True)
def _no_tqdm_env(monkeypatch):
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)


def test_a_log_gets_a_few_frames_and_keeps_the_last_as_a_line():
    out = _run(io.StringIO(), enabled=True, leave=False, mininterval=0)  # the caller's terminal settings lose
    assert out.count("\r") <= 3, out  # the first frame, the last; tqdm's default would draw ~every update here
    assert out.endswith("\n") and "2000/2000" in out.splitlines()[-1], out


def test_a_terminal_gets_tqdm_as_usual():
    bar = progress_bar(total=5, enabled=True, leave=False, file=Terminal())
    assert bar.mininterval == 0.1 and bar.leave is False and bar.dynamic_ncols
    bar.close()
    out = _run(Terminal(), enabled=True, leave=False, mininterval=0)
    assert out.count("\r") > 100  # every update redrawn, and the line cleared at the end
    assert not out.rstrip(" \r").endswith("2000/2000")


def test_the_environment_sets_the_interval_in_a_log(monkeypatch):
    monkeypatch.setenv("TQDM_MININTERVAL", "1")
    bar = progress_bar(total=5, enabled=True, file=io.StringIO())
    assert bar.mininterval == 1 and bar.leave is True
    bar.close()
    assert progress_bar(total=5, enabled=True, file=io.StringIO()).mininterval == 1
    monkeypatch.delenv("TQDM_MININTERVAL")
    assert progress_bar(total=5, enabled=True, file=io.StringIO()).mininterval == LOG_INTERVAL_S


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "soon"])
def test_a_nonsense_interval_in_the_environment_falls_back_to_the_log_interval(monkeypatch, value):
    monkeypatch.setenv("TQDM_MININTERVAL", value)
    assert progress_bar(total=5, enabled=True, file=io.StringIO()).mininterval == LOG_INTERVAL_S


def test_disabled_bars_and_terminal_only_bars_write_nothing_to_a_log():
    assert _run(io.StringIO(), enabled=False) == "" == _run(Terminal(), enabled=True, disable=True)
    assert _run(io.StringIO(), enabled=True, in_logs=False) == ""
    assert "2000/2000" in _run(Terminal(), enabled=True, in_logs=False)
    assert _run(Terminal(), enabled=False) == ""


def test_on_terminal_copes_with_odd_streams():
    closed = io.StringIO()
    closed.close()
    assert not on_terminal(closed) and not on_terminal(object()) and on_terminal(Terminal())
