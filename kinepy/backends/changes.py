"""`ChangePipes`: workers on one SQLite file (or one MySQL or PostgreSQL server) tell each other of their
commits.

SQLite and MySQL have no LISTEN/NOTIFY, and PostgreSQL's carries no events. Every worker of `kinepy
--workers N` gets, from the supervisor, the read end of a pipe of its own and the write ends of the
others' pipes (the supervisor keeps every end open, so a restarted worker finds its pipe again). After
each commit a worker writes one message to every other worker's pipe: the commit's revisions and, when
they fit, its events (`Commit`), so that the other worker publishes them to its watchers without reading
them back from the database. A message is one `write` of at most `PIPE_BUF` bytes, which the kernel
never splits nor interleaves with another writer's; a commit whose events do not fit, or that compacts,
is told without them (read the log).

A full pipe (its worker is dead or busy) drops the message: the next one then starts past the
follower's revision and it reads the gap from the log, and the follower also looks every poll interval,
so a lost message costs latency, never an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import marshal
import os
import select
import socket
import struct

from kinepy.backends.base import Commit, WriteSet
from kinepy.types import Event, EventType, KeyValue

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("<H")
MESSAGE_MAX = select.PIPE_BUF
"""Bytes of one message, its length included: what a pipe writes at once, never interleaved."""
_BODY_MAX = MESSAGE_MAX - _LENGTH.size
_EVENT_OVERHEAD = 64
"""Bytes an event takes in a message besides its keys and values (an upper bound)."""
_LOOK = _LENGTH.pack(0)
"""A commit told without its revisions: read them from the database."""
_PENDING_MAX = 1024
"""Messages kept for the follower at most; beyond, they are dropped for one look at the database."""
_READ_BYTES = 1 << 16  # what a pipe holds unless resized; a message cut at the end waits for its rest
_MARSHAL_VERSION = 4


def encode(write_set: WriteSet, origin: tuple[int, ...] = ()) -> bytes:
    """The message telling of `write_set`'s commit: with its events (and `origin`, `Commit.origin`)
    when they fit (and it does not compact), else a look."""
    events = write_set.events
    if not events or write_set.compact_revision is not None:
        return _LOOK
    size = 0
    for event in events:
        kv, prev = event.kv, event.prev_kv
        size += _EVENT_OVERHEAD + len(kv.key) + len(kv.value)
        if prev is not None:
            size += _EVENT_OVERHEAD + len(prev.key) + len(prev.value)
    if size > _BODY_MAX:
        return _LOOK
    body = marshal.dumps(
        (
            write_set.base_revision,
            write_set.revision,
            [(e.type.value, tuple(e.kv), None if e.prev_kv is None else tuple(e.prev_kv)) for e in events],
            origin,
        ),
        _MARSHAL_VERSION,
    )
    if len(body) > _BODY_MAX:  # the estimate is a bound; kept for safety
        return _LOOK
    return _LENGTH.pack(len(body)) + body


def _decode(body: bytes) -> Commit:
    after, revision, events, origin = marshal.loads(body)
    return Commit(
        int(after),
        int(revision),
        [
            Event(EventType(kind), KeyValue(*kv), None if prev is None else KeyValue(*prev))
            for kind, kv, prev in events
        ],
        tuple(int(value) for value in origin),
    )


_LOOK_COMMIT = Commit(0, 0, None)


def _machine() -> str:
    """This kernel: its boot id (Linux), else the host's name."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot_id:
            return boot_id.read().strip()
    except OSError:
        return socket.gethostname()


class ChangePipes:
    """Tell the other workers of a commit (`announce`), wait to be told of theirs (`wait`)."""

    def __init__(self, read_fd: int, write_fds: tuple[int, ...]) -> None:
        self._read_fd = read_fd
        self._write_fds = write_fds
        for fd in (read_fd, *write_fds):
            os.set_blocking(fd, False)
        self._changed: asyncio.Event | None = None
        self._told: list[Commit] = []
        self._unread = b""

    @functools.cached_property
    def group(self) -> str:
        """The same in every worker of one server and in no other process: what names them together to
        the database (PostgreSQL's `kinepy_listeners`, whose NOTIFY they do not need from each other).
        Their pipes are one set (each worker holds its own pipe's read end and the others' write ends),
        whose inode numbers no other open pipe on this kernel has (the supervisor keeps them all open);
        with the kernel's boot id."""
        inodes = sorted({os.fstat(fd).st_ino for fd in (self._read_fd, *self._write_fds)})
        return f"{_machine()}/pipes:{','.join(map(str, inodes))}"

    def announce(self, write_set: WriteSet, origin: tuple[int, ...] = ()) -> None:
        """Tell every other worker of a commit: never blocks, never raises (the commit is done); safe on
        any thread."""
        try:
            message = encode(write_set, origin)
        except Exception as exc:  # what marshal cannot write: the others read the commit from the log
            log.warning("telling the other workers of revision %d failed: %s", write_set.revision, exc)
            message = _LOOK
        for fd in self._write_fds:
            # Full: that worker is busy or dead; it reads the log. Another error: that pipe is gone; its
            # worker polls.
            with contextlib.suppress(OSError):
                os.write(fd, message)

    async def wait(self, max_wait: float) -> list[Commit]:
        """The commits told since the last call (waiting up to `max_wait` seconds for one)."""
        changed = self._changed
        if changed is None:
            changed = self._changed = asyncio.Event()
            asyncio.get_running_loop().add_reader(self._read_fd, self._readable)
        if not changed.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max_wait):
                    await changed.wait()
        changed.clear()
        told, self._told = self._told, []
        return told

    def look(self) -> None:
        """Have the waiter look at the database (a commit seen otherwise: PostgreSQL's NOTIFY of another
        kinepy process's)."""
        self._told.append(_LOOK_COMMIT)
        if self._changed is not None:
            self._changed.set()

    def _readable(self) -> None:
        data = self._unread
        with contextlib.suppress(BlockingIOError):
            while True:
                chunk = os.read(self._read_fd, _READ_BYTES)
                data += chunk
                if len(chunk) < _READ_BYTES:  # the pipe is empty: spare the read that would say so
                    break
        told = self._told
        start = 0
        while start + _LENGTH.size <= len(data):
            (length,) = _LENGTH.unpack_from(data, start)
            end = start + _LENGTH.size + length
            if length > _BODY_MAX:
                end = len(data)  # not a message of ours: drop what was read, look at the database
                told.append(_LOOK_COMMIT)
            elif end > len(data):
                break
            elif length == 0:
                told.append(_LOOK_COMMIT)
            else:
                try:
                    told.append(_decode(data[start + _LENGTH.size : end]))
                except Exception as exc:  # another worker's Python (an upgrade mid-run): look instead
                    log.debug("an unreadable change message: %s", exc)
                    told.append(_LOOK_COMMIT)
            start = end
        self._unread = data[start:]
        if len(told) > _PENDING_MAX:  # the follower is far behind: it reads the log anyway
            told[:] = [_LOOK_COMMIT]
        if self._changed is not None:
            self._changed.set()

    def close(self) -> None:
        """Stop waiting (the descriptors belong to the process that passed them)."""
        if self._changed is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed already
                asyncio.get_running_loop().remove_reader(self._read_fd)
            self._changed = None
