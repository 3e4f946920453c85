"""Progress of a long copy: a bar on a terminal (tqdm), plain log lines anywhere else.

tqdm draws one self-updating line with the count, the rate and the time left, handles terminals
of any width and output redirected mid-run, and has no dependencies; the log form is ours, because
a log wants a line every few seconds, not a bar.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO, Protocol

log = logging.getLogger("kinepy.migrate")

LOG_EVERY = 5.0  # seconds between two progress lines in a log


class Progress(Protocol):
    def start(self, what: str, total: int) -> None:
        """A new phase of `total` units (rows)."""

    def advance(self, done: int) -> None:
        """`done` more units of the current phase are done."""

    def close(self) -> None:
        """The current phase ended (or failed)."""


def describe_rate(done: int, total: int, elapsed: float) -> str:
    """`120000/2000000 rows (6%), 45000 rows/s, 41 s left` (the time left once a rate is known)."""
    share = f" ({100 * done // total}%)" if total else ""
    text = f"{done}/{total} rows{share}"
    if elapsed > 0 and done > 0:
        rate = done / elapsed
        text += f", {rate:.0f} rows/s"
        if total > done:
            text += f", {(total - done) / rate:.0f} s left"
    return text


class LogProgress:
    """One INFO line per phase start, every `every` seconds, and at the end."""

    def __init__(self, every: float = LOG_EVERY) -> None:
        self._every = every
        self._what = ""
        self._total = 0
        self._done = 0
        self._started = 0.0
        self._last = 0.0

    def start(self, what: str, total: int) -> None:
        self._what, self._total, self._done = what, total, 0
        self._started = self._last = time.monotonic()
        log.info("%s: %d rows", what, total)

    def advance(self, done: int) -> None:
        self._done += done
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            log.info("%s: %s", self._what, describe_rate(self._done, self._total, now - self._started))

    def close(self) -> None:
        elapsed = time.monotonic() - self._started
        log.info("%s: %s in %.1f s", self._what, describe_rate(self._done, self._total, elapsed), elapsed)


class BarProgress:
    """A tqdm bar on `stream` (a terminal)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._bar: object | None = None

    def start(self, what: str, total: int) -> None:
        from tqdm import tqdm

        self.close()
        sized = _sized(self._stream)
        self._bar = tqdm(
            total=total,
            desc=what,
            unit=" rows",
            unit_scale=True,
            file=self._stream,
            ncols=None if sized else 100,
            nrows=None if sized else 24,
        )

    def advance(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done)  # type: ignore[attr-defined]

    def close(self) -> None:
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.close()  # type: ignore[attr-defined]


def _sized(stream: IO[str]) -> bool:
    """Whether the terminal reports its size; tqdm draws nothing on one that reports 0x0 (a pty
    without a size, as under `script` or some CI runners), so it is then given 100x24."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError):
        return False
    return size.columns > 0 and size.lines > 0


def progress_for(stream: IO[str] | None = None, *, bar: bool | None = None) -> Progress:
    """A bar when `stream` (stderr) is a terminal (or `bar` says so), log lines otherwise."""
    stream = sys.stderr if stream is None else stream
    if bar is None:
        bar = stream.isatty()
    return BarProgress(stream) if bar else LogProgress()
