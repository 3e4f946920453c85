"""`ChangePipes`: workers on one SQLite file tell each other of their commits.

SQLite has no LISTEN/NOTIFY. Every worker of `kinepy --workers N` gets, from the supervisor, the read end
of a pipe of its own and the write ends of the others' pipes (the supervisor keeps every end open, so a
restarted worker finds its pipe again). After each commit a worker writes one byte to every other
worker's pipe; a worker's follower waits for its pipe to become readable, drains it, and reads the new
revisions from the database. A full pipe (its worker is dead or busy) already says "something changed":
the write is skipped. The byte only wakes the follower early; the follower also looks every poll
interval, so a lost byte costs latency, never an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import os


class ChangePipes:
    """Tell the other workers of a commit (`notify`), wait to be told of theirs (`wait`)."""

    def __init__(self, read_fd: int, write_fds: tuple[int, ...]) -> None:
        self._read_fd = read_fd
        self._write_fds = write_fds
        for fd in (read_fd, *write_fds):
            os.set_blocking(fd, False)
        self._changed: asyncio.Event | None = None

    def notify(self) -> None:
        """One byte to every other worker: never blocks."""
        for fd in self._write_fds:
            # Full: a wake-up is pending already. Another error: that pipe is gone; its worker polls.
            with contextlib.suppress(OSError):
                os.write(fd, b"\x01")

    async def wait(self, max_wait: float) -> None:
        """Return when another worker committed since the last call, or after `max_wait` seconds."""
        changed = self._changed
        if changed is None:
            changed = self._changed = asyncio.Event()
            asyncio.get_running_loop().add_reader(self._read_fd, self._readable)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_wait):
                await changed.wait()
        changed.clear()

    def _readable(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read_fd, 4096):
                pass
        if self._changed is not None:
            self._changed.set()

    def close(self) -> None:
        """Stop waiting (the descriptors belong to the process that passed them)."""
        if self._changed is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed already
                asyncio.get_running_loop().remove_reader(self._read_fd)
            self._changed = None
