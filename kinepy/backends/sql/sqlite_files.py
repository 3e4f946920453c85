"""The SQLite store's files: checked before kinepy serves them, watched while it runs.

Before the first connection: the directory (created 0700, only for the default ./db), the database file
(created 0600 whatever the umask; SQLite gives -wal and -shm its mode), and refusals with a message that
says what to do: files kinepy cannot write, an empty file it did not just create, rescued copies that
wait for the operator. After it: `PRAGMA quick_check` (or `integrity_check`) before anything is written.

While kinepy runs, `FileIdentity` compares the device and inode of state.db and state.db-wal with those
of the files SQLite opened. A file deleted or replaced under kinepy is still open, so commits would still
succeed, into a file that nobody can find again: kinepy then refuses writes, and `save` puts every
committed write where a restart finds it (a checkpoint into state.db, or a rescued copy beside it).
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import sqlite3
import stat
import time

from kinepy.errors import BackendError

log = logging.getLogger(__name__)

RESCUED = ".rescued-"
"""A rescued copy is named `state.db.rescued-20261204T150000Z`."""

QUICK_CHECK_SECONDS = 10.0
"""How long the start-up `quick_check` may take; a larger file is checked that far, with a warning."""


def prepare(path: str, *, create_directory: bool) -> None:
    """Make sure kinepy can use `path` as its store: create it (and the default directory) if new,
    refuse what it must not serve. No descriptor of an existing file is opened (closing one would
    drop SQLite's POSIX locks of this process on it)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        if not create_directory:
            what = "is not a directory" if os.path.exists(directory) else "does not exist"
            raise BackendError(
                f"cannot open SQLite database {path}: directory {directory} {what} "
                "(kinepy creates only the default ./db; create it, or check the path)"
            )
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise BackendError(f"cannot create directory {directory}: {exc.strerror or exc}") from None
    _refuse_rescued(path)
    try:
        # 0600 whatever the umask (which only takes bits away). etcd's files are 0600 in a 0700
        # directory too.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        created = True
    except FileExistsError:
        created = False
        if not os.path.isfile(path):
            what = os.strerror(errno.EISDIR) if os.path.isdir(path) else "not a regular file"
            raise BackendError(f"cannot open SQLite database {path}: {what}") from None
    except OSError as exc:
        raise BackendError(f"cannot open SQLite database {path}: {exc.strerror or exc}") from None
    for name in (path, path + "-wal", path + "-shm"):
        _refuse_read_only(name)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise BackendError(
            f"cannot open SQLite database {path}: directory {directory} is not writable "
            "(SQLite keeps its -wal and -shm files beside the database)"
        )
    if not created:
        _refuse_empty(path)
    _warn_if_shared(path, directory)


def _refuse_rescued(path: str) -> None:
    rescued = sorted(glob.glob(glob.escape(path) + RESCUED + "*"))
    if rescued:
        raise BackendError(
            f"{rescued[-1]} holds the writes kinepy had acknowledged when {path} was deleted or "
            f"replaced under it: stop here and decide. To serve them, move it to {path} (delete "
            f"{path}-wal and {path}-shm first); to keep {path} as it is, delete the rescued copy"
            + (f" (and {len(rescued) - 1} older ones)" if len(rescued) > 1 else "")
        )


def _refuse_read_only(name: str) -> None:
    if not os.path.exists(name) or os.access(name, os.R_OK | os.W_OK):
        return
    if os.statvfs(name).f_flag & os.ST_RDONLY:
        why = "its file system is mounted read-only"
    else:
        why = "this user may not write it (check its mode, owner and immutable attribute)"
    raise BackendError(
        f"SQLite database file {name} is read-only: {why}; kinepy serves only a store it can write"
    )


def _refuse_empty(path: str) -> None:
    """A store kinepy made is never 0 bytes once opened: WAL mode writes the header at once. A 0-byte
    file beside a WAL that holds something is left to SQLite, which recovers it."""
    wal = path + "-wal"
    if os.path.getsize(path) == 0 and not (os.path.exists(wal) and os.path.getsize(wal) > 0):
        raise BackendError(
            f"SQLite database {path} is empty (0 bytes) and kinepy did not create it now: it is not a "
            "kinepy store (a truncated file, or a failed copy). Restore it from a backup, or delete it "
            "to start a new, empty store"
        )


def _warn_if_shared(path: str, directory: str) -> None:
    """Warn, as etcd does for its data directory, when other users may read the data: kinepy creates
    its files 0600 (and the default ./db 0700) but leaves the modes of existing ones alone."""
    for what, name, private in (("directory", directory, 0o700), ("file", path, 0o600)):
        mode = stat.S_IMODE(os.stat(name).st_mode)
        if mode & 0o077:
            log.warning(
                "SQLite %s %s has mode %o: other users may read the data; etcd and kinepy use %o",
                what,
                name,
                mode,
                private,
            )


def check_integrity(conn: sqlite3.Connection, path: str, mode: str) -> None:
    """`PRAGMA quick_check` (mode "quick", at most QUICK_CHECK_SECONDS) or `integrity_check` ("full",
    unbounded) of an opened store; BackendError naming the first problems if it is damaged."""
    if mode == "off":
        return
    pragma = "integrity_check(20)" if mode == "full" else "quick_check(20)"
    started = time.monotonic()
    deadline = started + QUICK_CHECK_SECONDS
    if mode == "quick":
        conn.set_progress_handler(lambda: time.monotonic() > deadline, 100_000)
    try:
        problems = [str(row[0]) for row in conn.execute(f"PRAGMA {pragma}")]
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            problems = [str(exc)]  # too damaged for the check to go on
        elif "interrupted" in str(exc):
            log.warning(
                "quick check of SQLite database %s stopped after %.0fs (a large file): the part checked "
                "is sound; --sqlite-integrity-check=full checks it all, however long it takes",
                path,
                QUICK_CHECK_SECONDS,
            )
            return
        else:
            raise
    finally:
        conn.set_progress_handler(None, 0)
    if problems != ["ok"]:
        raise BackendError(
            f"SQLite database {path} is damaged (PRAGMA {pragma.partition('(')[0]}: "
            f"{' '.join(' '.join(problems[:5]).split())}): restore it from a backup (docs/operations.md), "
            "or start with --sqlite-integrity-check=off to serve it as it is"
        )
    log.info(
        "SQLite database %s passed %s in %.3fs", path, pragma.partition("(")[0], time.monotonic() - started
    )


Identity = tuple[int, int] | None


def _identity(name: str) -> Identity:
    try:
        st = os.stat(name)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class FileIdentity:
    """The device and inode of state.db and state.db-wal as SQLite opened them (`remember`, once the
    WAL exists), against what their paths name now (`lost`: two stat calls)."""

    __slots__ = ("_known", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._known: list[tuple[str, Identity]] = []

    def remember(self) -> None:
        self._known = [(name, _identity(name)) for name in (self.path, self.path + "-wal")]

    def lost(self) -> list[str]:
        """What happened to each file that is no longer the one opened ("state.db was deleted")."""
        lost = []
        for name, known in self._known:
            now = _identity(name)
            if now != known:
                lost.append(f"{name} was {'deleted' if now is None else 'replaced'}")
        return lost


def save(conn: sqlite3.Connection, path: str, lost: list[str]) -> str:
    """Put every write committed through `conn` where a restart finds it, after `lost` happened to
    the files; returns what was done and what the operator should do."""
    if not any(what.startswith(f"{path} was") for what in lost):
        # Only the WAL is gone: copy its frames into state.db, which is still the file kinepy opened.
        busy, frames, done = conn.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
        if busy == 0 and frames == done:
            return (
                f"every acknowledged write is in {path} (checkpointed from the lost WAL): restart kinepy "
                f"(delete {path}-wal first if it is not kinepy's)"
            )
    target = f"{path}{RESCUED}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        copy = sqlite3.connect(target)
        try:
            conn.backup(copy)
        finally:
            copy.close()
    except (OSError, sqlite3.Error) as exc:
        return (
            f"saving them to {target} failed ({exc}); they are only in kinepy's open files: before "
            f"stopping kinepy, copy them from /proc/{os.getpid()}/fd (the links to {path} and "
            f"{path}-wal marked '(deleted)')"
        )
    return (
        f"every acknowledged write is saved in {target}: stop kinepy, move it to {path} (deleting "
        f"{path}-wal and {path}-shm first), and start kinepy again"
    )
