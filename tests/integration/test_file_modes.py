"""The SQLite files are private whatever the umask (issue 15, finding 6): state.db, -wal and -shm 0600, the
default ./db directory 0700, as etcd's files in its data directory. Existing files and directories keep
their modes; a shared one gets a warning, as etcd gives for its data directory."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kinepy.app import App
from kinepy.config import Config
from kinepy.proto import rpc_pb2, rpc_pb2_grpc


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o000, 0o022, 0o002], ids=["umask-000", "umask-022", "umask-002"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


async def _write_once(app: App) -> None:
    async with grpc.aio.insecure_channel(app.endpoint) as channel:
        await rpc_pb2_grpc.KVStub(channel).Put(rpc_pb2.PutRequest(key=b"k", value=b"v"), timeout=10)


async def test_new_files_are_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask: int) -> None:
    monkeypatch.chdir(tmp_path)
    async with App(Config(listen_address="127.0.0.1:0")) as app:  # the default ./db/state.db
        await _write_once(app)
        db = tmp_path / "db"
        assert mode(db) == 0o700
        files = sorted(db.iterdir())
        assert [f.name for f in files] == ["state.db", "state.db-shm", "state.db-wal"]
        assert {f.name: mode(f) for f in files} == dict.fromkeys(
            ["state.db", "state.db-shm", "state.db-wal"], 0o600
        )


async def test_a_shared_directory_is_warned_about_not_changed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    config = Config(listen_address="127.0.0.1:0", datastore_endpoint=f"sqlite://{shared / 'state.db'}")
    with caplog.at_level(logging.WARNING, logger="kinepy.backends.sql.sqlite"):
        async with App(config):
            pass
    assert mode(shared) == 0o755
    assert mode(shared / "state.db") == 0o600
    assert f"SQLite directory {shared} has mode 755: other users may read the data" in caplog.text
