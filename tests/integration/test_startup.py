"""The library's start-up failures: every one is a `KinepyError` subclass raised by `App.start()`
before a database is opened, naming what is wrong (docs/library.md)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kinepy.app import App
from kinepy.config import Config
from kinepy.errors import ConfigError, ListenError


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
