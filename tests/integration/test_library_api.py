"""The Python API: `kinepy.Server` in-process and `kinepy.resolve_endpoint`."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

import kinepy
from kinepy.proto import rpc_pb2, rpc_pb2_grpc


async def _put_and_get(target: str) -> bytes:
    async with grpc.aio.insecure_channel(target) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        await kv.Put(rpc_pb2.PutRequest(key=b"greeting", value=b"hello"), timeout=10)
        resp: rpc_pb2.RangeResponse = await kv.Range(rpc_pb2.RangeRequest(key=b"greeting"), timeout=10)
    return resp.kvs[0].value


async def test_server_in_process(tmp_path: Path) -> None:
    config = kinepy.Config(listen_address="127.0.0.1:0", datastore_endpoint=f"sqlite://{tmp_path / 's.db'}")
    async with kinepy.Server(config) as server:
        assert server.endpoint.startswith("127.0.0.1:") and server.port > 0
        assert server.client_url == f"http://{server.endpoint}"
        assert await _put_and_get(server.endpoint) == b"hello"


async def test_resolve_sqlite_starts_a_server_the_caller_closes(tmp_path: Path) -> None:
    config = kinepy.Config(listen_address="127.0.0.1:0", datastore_endpoint=f"sqlite://{tmp_path / 's.db'}")
    resolved = await kinepy.resolve_endpoint(config)
    try:
        assert resolved.server is not None and resolved.tls is None
        assert resolved.endpoints == [resolved.server.client_url]
        assert await _put_and_get(resolved.endpoints[0].removeprefix("http://")) == b"hello"
    finally:
        await resolved.aclose()
    with pytest.raises(grpc.aio.AioRpcError):
        await _put_and_get(resolved.endpoints[0].removeprefix("http://"))


async def test_resolve_etcd_returns_its_urls_and_tls_without_starting_anything() -> None:
    config = kinepy.Config(
        datastore_endpoint="https://10.0.0.1:2379,https://10.0.0.2:2379?ca-file=/ca.pem&cert-file=/c.pem&key-file=/k.pem"
    )
    resolved = await kinepy.resolve_endpoint(config)
    assert resolved.server is None
    assert resolved.endpoints == ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
    assert resolved.tls == kinepy.UpstreamTLS("/ca.pem", "/c.pem", "/k.pem")
    plain = await kinepy.resolve_endpoint(kinepy.Config(datastore_endpoint="http://127.0.0.2:2379"))
    assert plain.endpoints == ["http://127.0.0.2:2379"] and plain.tls is None and plain.server is None


async def test_resolve_bad_endpoint_raises_config_error() -> None:
    with pytest.raises(kinepy.ConfigError, match="expected one of"):
        await kinepy.resolve_endpoint(kinepy.Config(datastore_endpoint="foo://x"))
