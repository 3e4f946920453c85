"""Passthrough start-up: an etcd URL on any port or a Unix socket, as kine takes them; the upstream
is checked at start (it answers etcd's Status, over TLS or not as its scheme says) and a wrong one
fails at once with a clear error; a dead first item of a list fails over to the next.

The upstream here is a kinepy serving a SQLite store: it answers Status as an etcd does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
import re
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import trustme

from kinepy.app import App
from kinepy.config import Config
from kinepy.errors import BackendError, BackendUnavailable
from kinepy.proto import rpc_pb2, rpc_pb2_grpc


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[App]:
    """A plain-gRPC kinepy on a free loopback port, standing in for an etcd."""
    config = Config(listen_address="127.0.0.1:0", datastore_endpoint=f"sqlite://{tmp_path / 'upstream.db'}")
    async with App(config) as app:
        yield app


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def http_server() -> Iterator[int]:
    """An HTTP/1.1 server: reachable, but no gRPC."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _proxy(tmp_path: Path, endpoint: str, **overrides: object) -> Config:
    base = Config(listen_address="127.0.0.1:0", datastore_endpoint=endpoint, datastore_connect_timeout=1.0)
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


async def _put_get(endpoint: str) -> bytes:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        await kv.Put(rpc_pb2.PutRequest(key=b"through", value=b"yes"), timeout=10)
        answer = await kv.Range(rpc_pb2.RangeRequest(key=b"through"), timeout=10)
        return bytes(answer.kvs[0].value)


async def test_any_port_is_an_etcd(tmp_path: Path, upstream: App) -> None:
    assert upstream.port != 2379
    async with App(_proxy(tmp_path, f"http://{upstream.endpoint}")) as proxy:
        assert await _put_get(proxy.endpoint) == b"yes"


async def test_a_unix_socket_is_an_etcd(tmp_path: Path) -> None:
    socket_path = tmp_path / "etcd.sock"
    config = Config(
        listen_address=f"unix://{socket_path}", datastore_endpoint=f"sqlite://{tmp_path / 'u.db'}"
    )
    async with App(config), App(_proxy(tmp_path, f"unix://{socket_path}")) as proxy:
        assert await _put_get(proxy.endpoint) == b"yes"


async def test_https_to_a_plain_etcd_fails_at_once_saying_so(tmp_path: Path, upstream: App) -> None:
    config = _proxy(tmp_path, f"https://{upstream.endpoint}", datastore_connect_timeout=30.0)
    started = asyncio.get_running_loop().time()
    with pytest.raises(BackendError, match="TLS handshake failed \\(does it serve plain http://"):
        async with App(config):
            pass
    assert asyncio.get_running_loop().time() - started < 10  # not the whole connect timeout


async def test_http_to_a_tls_etcd_is_refused(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "s.pem", tmp_path / "s-key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    tls_upstream = Config(
        listen_address="127.0.0.1:0",
        datastore_endpoint=f"sqlite://{tmp_path / 'tls.db'}",
        server_cert_file=str(cert_file),
        server_key_file=str(key_file),
    )
    async with App(tls_upstream) as etcd:
        with pytest.raises(BackendUnavailable, match="closed the connection \\(does it want https://\\?\\)"):
            async with App(_proxy(tmp_path, f"http://{etcd.endpoint}")):
                pass


async def test_a_server_that_is_no_grpc_fails_at_once(tmp_path: Path, http_server: int) -> None:
    with pytest.raises(BackendError, match="does not speak gRPC"):
        async with App(_proxy(tmp_path, f"http://127.0.0.1:{http_server}", datastore_connect_timeout=30.0)):
            pass


async def test_an_unreachable_etcd_is_retried_for_the_connect_timeout(
    tmp_path: Path, closed_port: int
) -> None:
    with pytest.raises(
        BackendUnavailable, match=re.escape("no upstream answered within 1s: http://127.0.0.1:")
    ):
        async with App(_proxy(tmp_path, f"http://127.0.0.1:{closed_port}")):
            pass


async def test_a_dead_first_endpoint_fails_over_to_the_next(
    tmp_path: Path, upstream: App, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = f"http://127.0.0.1:{closed_port},http://{upstream.endpoint}"
    with caplog.at_level("WARNING", logger="kinepy.passthrough"):
        async with App(_proxy(tmp_path, endpoint)) as proxy:
            assert await _put_get(proxy.endpoint) == b"yes"
    assert any(f"127.0.0.1:{closed_port}" in record.getMessage() for record in caplog.records)
