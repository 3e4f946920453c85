"""kine's database TLS flags (--ca-file, --cert-file, --key-file) reach the PostgreSQL and MySQL
drivers: a PostgreSQL serving TLS is reached over TLS, verified against --ca-file; a server without TLS is
refused at once, not retried for the whole connect timeout, and never used in plain text."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from kinepy.app import App
from kinepy.config import Config
from kinepy.errors import BackendError
from kinepy.testing.databases import DatabaseServer

CONNECT_TIMEOUT = 30.0  # a permanent error must fail well before this


def _ca_files(tmp_path: Path) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, path


def _endpoint(server: DatabaseServer, database: str) -> str:
    return server.url(database).split("?", 1)[0]  # without the suite's sslmode=disable


async def _refused_at_once(config: Config, match: str) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BackendError, match=match):
        async with App(config):
            pass
    assert loop.time() - started < 10


@pytest.mark.postgres
async def test_postgres_is_reached_over_tls_verified_by_the_ca_file(
    tmp_path: Path, make_database_server: Callable[[str], DatabaseServer]
) -> None:
    server = make_database_server("postgres")
    ca, ca_file = _ca_files(tmp_path)
    issued = ca.issue_cert("127.0.0.1")
    owner = os.stat(server.root)
    cert, key = server.root / "server.crt", server.root / "server.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    for path in (cert, key):
        os.chown(path, owner.st_uid, owner.st_gid)
    key.chmod(0o600)
    server.sql(f"ALTER SYSTEM SET ssl_cert_file = '{cert}'")
    server.sql(f"ALTER SYSTEM SET ssl_key_file = '{key}'")
    server.sql("ALTER SYSTEM SET ssl = on")
    server.sql("SELECT pg_reload_conf()")
    config = Config(
        listen_address="127.0.0.1:0",
        datastore_endpoint=_endpoint(server, "kinepy_tls"),
        datastore_ca_file=str(ca_file),
        datastore_connect_timeout=CONNECT_TIMEOUT,
    )
    async with App(config):
        rows = await asyncio.to_thread(
            server.sql,
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) "
            "WHERE ssl AND application_name = 'kinepy'",
        )
        assert int(rows[0][0]) >= 1

    other_ca = tmp_path / "other"
    other_ca.mkdir()
    _, untrusted = _ca_files(other_ca)
    await _refused_at_once(
        dataclasses.replace(config, datastore_ca_file=str(untrusted)), "certificate verify failed"
    )


@pytest.mark.postgres
async def test_postgres_without_tls_is_refused_at_once(
    tmp_path: Path, postgres_server: DatabaseServer
) -> None:
    _, ca_file = _ca_files(tmp_path)
    config = Config(
        listen_address="127.0.0.1:0",
        datastore_endpoint=_endpoint(postgres_server, "kinepy_tls_refused"),
        datastore_ca_file=str(ca_file),
        datastore_connect_timeout=CONNECT_TIMEOUT,
    )
    await _refused_at_once(config, "rejected SSL upgrade")


@pytest.mark.mysql
async def test_mysql_without_tls_is_refused_not_used_in_plain_text(
    tmp_path: Path, mariadb_server: DatabaseServer
) -> None:
    _, ca_file = _ca_files(tmp_path)
    config = Config(
        listen_address="127.0.0.1:0",
        datastore_endpoint=_endpoint(mariadb_server, "kinepy_tls_refused"),
        datastore_ca_file=str(ca_file),
        datastore_connect_timeout=CONNECT_TIMEOUT,
    )
    await _refused_at_once(config, "does not support TLS")
