"""The library's start-up failures: every one is a `KinepyError` subclass raised by `App.start()`
before a database is opened, naming what is wrong (docs/library.md)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kinepy.app import App
from kinepy.config import Config
from kinepy.errors import BackendError, ConfigError, ListenError


def _nothing_in(directory: Path) -> bool:
    return not any(directory.iterdir())


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_address_in_use_is_a_listen_error_before_the_database_is_opened(
    tmp_path: Path, taken_port: int
) -> None:
    database = tmp_path / "state.db"
    config = Config(listen_address=f"127.0.0.1:{taken_port}", datastore_endpoint=f"sqlite://{database}")
    with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{taken_port}: address already in use"):
        async with App(config):
            pass
    assert not database.exists()


async def test_metrics_address_in_use_is_a_listen_error(tmp_path: Path, taken_port: int) -> None:
    database = tmp_path / "state.db"
    config = Config(
        listen_address="127.0.0.1:0",
        metrics_address=f"127.0.0.1:{taken_port}",
        datastore_endpoint=f"sqlite://{database}",
    )
    with pytest.raises(ListenError, match="address already in use"):
        async with App(config):
            pass
    assert not database.exists()


async def test_bad_listen_address_is_a_config_error(tmp_path: Path) -> None:
    config = Config(listen_address="127.0.0.1", datastore_endpoint=f"sqlite://{tmp_path / 'state.db'}")
    with pytest.raises(ConfigError, match="the port is missing"):
        async with App(config):
            pass
    assert _nothing_in(tmp_path)


async def test_missing_tls_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "server.pem"
    config = Config(
        listen_address="127.0.0.1:0",
        datastore_endpoint=f"sqlite://{tmp_path / 'state.db'}",
        server_cert_file=str(missing),
        server_key_file=str(missing),
    )
    with pytest.raises(ConfigError, match=f"cannot read TLS file {missing}: No such file or directory"):
        async with App(config):
            pass
    assert _nothing_in(tmp_path)


async def test_a_missing_sqlite_directory_is_an_error_not_an_empty_cluster(tmp_path: Path) -> None:
    database = tmp_path / "typo-dir" / "sub" / "state.db"
    config = Config(listen_address="127.0.0.1:0", datastore_endpoint=f"sqlite://{database}")
    with pytest.raises(BackendError, match=f"directory {tmp_path / 'typo-dir' / 'sub'} does not exist"):
        async with App(config):
            pass
    assert _nothing_in(tmp_path)


async def test_the_default_sqlite_directory_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with App(Config(listen_address="127.0.0.1:0")):
        pass
    assert (tmp_path / "db" / "state.db").is_file()


async def test_an_unopenable_sqlite_file_names_the_path_and_the_os_error(tmp_path: Path) -> None:
    config = Config(listen_address="127.0.0.1:0", datastore_endpoint=f"sqlite://{tmp_path}")
    with pytest.raises(BackendError, match=f"cannot open SQLite database {tmp_path}: Is a directory"):
        async with App(config):
            pass
