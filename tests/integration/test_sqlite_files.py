"""SQLite files that vanish under a running kinepy, or are unfit when it starts (issue 15, finding 4).

Deleted or replaced files: kinepy notices (the device and inode of state.db and state.db-wal against
those SQLite opened, after every commit and every second), refuses writes with UNAVAILABLE and says
why, and puts what it had committed where a restart finds it; no acknowledged write is lost. At start:
a damaged file, an empty file kinepy did not just create, read-only files and a waiting rescued copy are
refused with exit code 1 and one line that says what to do.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import conftest
import grpc
import pytest

from kinepy.proto import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.kinepy]

Etcdctl = Callable[..., subprocess.CompletedProcess[str]]
MakeServer = Callable[..., conftest.KinepyServer]


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def said(proc: subprocess.CompletedProcess[str]) -> str:
    """etcdctl's stderr, paths as the test names them (the suite's servers get `sqlite:////tmp/…`, which
    kinepy keeps as `//tmp/…`)."""
    return proc.stderr.replace("//", "/")


def put_keys(etcdctl: Etcdctl, endpoint: str, n: int) -> list[str]:
    keys = [f"key{i:03d}" for i in range(n)]
    for key in keys:
        ok(etcdctl(endpoint, "put", key, f"value of {key}"))
    return keys


def stored_keys(etcdctl: Etcdctl, endpoint: str) -> list[str]:
    return ok(etcdctl(endpoint, "get", "key", "--prefix", "--keys-only")).split()


def kinepy_start(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Start kinepy on `db` expecting it to refuse (it would otherwise serve until the timeout)."""
    argv = [sys.executable, "-m", "kinepy", "--listen-address", "127.0.0.1:0"]
    argv += ["--datastore-endpoint", f"sqlite://{db}", *args]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, cwd=conftest.REPO_ROOT, check=False
    )


def refused(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, f"kinepy exited {proc.returncode}:\n{proc.stderr}"
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("kinepy: ")]
    return line


def unlink(db: Path, *suffixes: str) -> None:
    """Delete `db` + each suffix ("" is the database itself), as `rm` would."""
    for suffix in suffixes:
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def rescued_copies(db: Path) -> list[Path]:
    return sorted(db.parent.glob(db.name + ".rescued-*"))


# -- files deleted or replaced while kinepy runs -----------------------------------------------------


@pytest.mark.parametrize("files", ["all", "db", "replaced"])
def test_deleted_database_refuses_writes_and_rescues_them(
    files: str, make_kinepy_server: MakeServer, etcdctl: Etcdctl, tmp_path: Path
) -> None:
    server = make_kinepy_server(log_level="info")
    db = server.db_path
    acknowledged = put_keys(etcdctl, server.endpoint, 40)
    if files == "all":  # rm db/*
        unlink(db, "", "-wal", "-shm")
    elif files == "db":
        db.unlink()
    else:  # another file moved over it, as a restore while running would
        other = tmp_path / "other.db"
        other.write_bytes(b"")
        other.rename(db)

    proc = etcdctl(server.endpoint, "put", "after", "x")
    assert proc.returncode != 0
    error = said(proc)
    what = "deleted" if files != "replaced" else "replaced"
    assert "code = Unavailable desc = kinepy: datastore unavailable: " in error
    assert f"{db} was {what}" in error
    assert " while kinepy was running: writes are refused, since a restart would not find them; " in error
    assert "was" in server.log_tail() and "ERROR kinepy.backends.sql.sqlite" in server.log_tail()
    # Later writes too, with the same reason; reads still answer from the files kinepy holds.
    assert "writes are refused" in etcdctl(server.endpoint, "put", "later", "x").stderr
    assert stored_keys(etcdctl, server.endpoint) == acknowledged

    [rescued] = rescued_copies(db)
    assert f"every acknowledged write is saved in {rescued}: stop kinepy, move it to {db}" in error
    assert os.stat(rescued).st_mode & 0o777 == 0o600
    assert server.stop() == 0

    # A restart does not start as if nothing happened: the rescued copy waits for a decision.
    line = refused(kinepy_start(db))
    assert line.startswith(f"kinepy: {rescued} holds the writes kinepy had acknowledged when {db} was")
    unlink(db, "", "-wal", "-shm")
    rescued.rename(db)
    server.start()
    assert stored_keys(etcdctl, server.endpoint) == acknowledged
    ok(etcdctl(server.endpoint, "put", "after", "x"))


def test_deleted_wal_is_checkpointed_into_the_database(
    make_kinepy_server: MakeServer, etcdctl: Etcdctl
) -> None:
    server = make_kinepy_server(log_level="info")
    db = server.db_path
    acknowledged = put_keys(etcdctl, server.endpoint, 40)
    unlink(db, "-wal")
    error = said(etcdctl(server.endpoint, "put", "after", "x"))
    assert f"{db}-wal was deleted while kinepy was running: writes are refused" in error
    assert f"every acknowledged write is in {db} (checkpointed from the lost WAL): restart kinepy" in error
    assert rescued_copies(db) == []
    server.restart()
    assert stored_keys(etcdctl, server.endpoint) == acknowledged
    ok(etcdctl(server.endpoint, "put", "after", "x"))


def test_files_deleted_under_an_idle_server_are_rescued_before_it_stops(
    make_kinepy_server: MakeServer, etcdctl: Etcdctl
) -> None:
    server = make_kinepy_server(log_level="info")
    db = server.db_path
    acknowledged = put_keys(etcdctl, server.endpoint, 10)
    unlink(db, "", "-wal", "-shm")
    assert server.stop() == 0  # no write came: the stop itself must save them
    [rescued] = rescued_copies(db)
    rescued.rename(db)
    server.start()
    assert stored_keys(etcdctl, server.endpoint) == acknowledged


# -- start-up ------------------------------------------------------------------------------------


def _stopped_store(make_kinepy_server: MakeServer, etcdctl: Etcdctl, keys: int) -> Path:
    server = make_kinepy_server()
    put_keys(etcdctl, server.endpoint, keys)
    assert server.stop() == 0
    return server.db_path


def test_a_file_damaged_in_the_middle_is_refused(make_kinepy_server: MakeServer, etcdctl: Etcdctl) -> None:
    db = _stopped_store(make_kinepy_server, etcdctl, 300)
    pages = db.stat().st_size // 4096
    assert pages > 8
    with db.open("r+b") as f:  # one page in the middle, overwritten
        f.seek(pages // 2 * 4096)
        f.write(bytes(range(256)) * 16)
    line = refused(kinepy_start(db))
    assert line.startswith(f"kinepy: SQLite database {db} is damaged (PRAGMA quick_check: ")
    assert line.endswith(
        "restore it from a backup (docs/operations.md), or start with --sqlite-integrity-check=off to "
        "serve it as it is"
    )
    line = refused(kinepy_start(db, "--sqlite-integrity-check", "full"))
    assert line.startswith(f"kinepy: SQLite database {db} is damaged (PRAGMA integrity_check: ")


def test_integrity_check_off_serves_a_damaged_file(make_kinepy_server: MakeServer, etcdctl: Etcdctl) -> None:
    db = _stopped_store(make_kinepy_server, etcdctl, 300)
    with db.open("r+b") as f:
        f.seek(db.stat().st_size // 4096 // 2 * 4096)
        f.write(b"\xff" * 4096)
    server = make_kinepy_server(db_path=db, extra_args=["--sqlite-integrity-check", "off"])
    ok(etcdctl(server.endpoint, "endpoint", "status"))


def test_a_broken_header_is_refused(make_kinepy_server: MakeServer, etcdctl: Etcdctl) -> None:
    db = _stopped_store(make_kinepy_server, etcdctl, 5)
    with db.open("r+b") as f:
        f.write(b"\0" * 100)
    line = refused(kinepy_start(db))
    assert line.startswith(f"kinepy: SQLite database {db} is damaged or not a database: ")


def test_an_empty_file_is_refused_unless_new(
    tmp_path: Path, make_kinepy_server: MakeServer, etcdctl: Etcdctl
) -> None:
    db = tmp_path / "state.db"
    db.touch()
    line = refused(kinepy_start(db))
    assert line == (
        f"kinepy: SQLite database {db} is empty (0 bytes) and kinepy did not create it now: it is not a "
        "kinepy store (a truncated file, or a failed copy). Restore it from a backup, or delete it to "
        "start a new, empty store"
    )
    db.unlink()
    server = make_kinepy_server(db_path=db)  # created now: a new store
    ok(etcdctl(server.endpoint, "put", "k", "v"))


def test_read_only_mount_is_refused(tmp_path: Path, make_kinepy_server: MakeServer, etcdctl: Etcdctl) -> None:
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        db = mount / "state.db"
        server = make_kinepy_server(db_path=db)
        put_keys(etcdctl, server.endpoint, 3)
        assert server.stop() == 0
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        line = refused(kinepy_start(db))
        assert line == (
            f"kinepy: SQLite database file {db} is read-only: its file system is mounted read-only; "
            "kinepy serves only a store it can write"
        )
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_read_only_files_are_refused(make_kinepy_server: MakeServer, etcdctl: Etcdctl) -> None:
    """Files nobody may write: immutable (chattr +i), which binds root too (the suite runs as root, who
    may write any file whatever its mode)."""
    db = _stopped_store(make_kinepy_server, etcdctl, 3)
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True, check=False).returncode:
        pytest.skip("chattr +i is not available on this file system")
    try:
        line = refused(kinepy_start(db))
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    assert line == (
        f"kinepy: SQLite database file {db} is read-only: this user may not write it (check its mode, "
        "owner and immutable attribute); kinepy serves only a store it can write"
    )


# -- SIGKILL -------------------------------------------------------------------------------------


async def test_sigkill_under_concurrent_writes_loses_no_acknowledged_write(
    make_kinepy_server: MakeServer, etcdctl: Etcdctl
) -> None:
    """32 clients write until kinepy is killed (SIGKILL, no shutdown): every write that was answered OK
    is there after the restart (synchronous=FULL: acknowledged means on disk)."""
    server = make_kinepy_server()
    acknowledged: list[str] = []
    killed = asyncio.Event()

    async def writer(channel: grpc.aio.Channel, n: int) -> None:
        kv = rpc_pb2_grpc.KVStub(channel)
        for i in itertools.count():
            key = f"key{n:02d}-{i:05d}"
            try:
                await kv.Put(rpc_pb2.PutRequest(key=key.encode(), value=b"v" * 200), timeout=10)
            except grpc.aio.AioRpcError:
                return
            acknowledged.append(key)
            if len(acknowledged) == 2000:
                killed.set()

    async with grpc.aio.insecure_channel(server.endpoint) as channel:
        writers = [asyncio.create_task(writer(channel, n)) for n in range(32)]
        await asyncio.wait_for(killed.wait(), 120)
        assert server.proc is not None
        server.proc.kill()
        await asyncio.gather(*writers)
    server.proc.wait()
    server.proc = None
    server.start()
    stored = set(stored_keys(etcdctl, server.endpoint))
    assert len(acknowledged) >= 2000
    assert set(acknowledged) <= stored


def test_pages_damaged_while_running_fail_the_request_with_the_reason(
    make_kinepy_server: MakeServer, etcdctl: Etcdctl
) -> None:
    db = _stopped_store(make_kinepy_server, etcdctl, 300)
    server = make_kinepy_server(db_path=db, log_level="info")  # its readers have cached no page yet
    with db.open("r+b") as f:  # every page but the header's
        f.seek(4096)
        f.write(bytes(range(256)) * (db.stat().st_size // 256 - 16))
    proc = etcdctl(server.endpoint, "get", "key", "--prefix")
    assert proc.returncode != 0
    error = said(proc)
    assert "code = Unavailable desc = kinepy: datastore error: SQLite database " in error
    assert f"{db} is damaged or not a database: database disk image is malformed" in error
    assert "ERROR kinepy.server.status: Range failed in the datastore: SQLite database " in server.log_tail()
