"""`--metrics-address`: Prometheus text on /metrics whose request, commit and watch figures follow traffic."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import conftest
import grpc
import pytest
from certificates import Certificates, make_certificates
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from kinepy.app import App
from kinepy.config import Config
from kinepy.proto import rpc_pb2, rpc_pb2_grpc

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_subprocess_metrics_move_with_etcdctl_traffic(
    make_kinepy_server: Callable[..., conftest.KinepyServer], etcdctl: Callable[..., Any]
) -> None:
    port = conftest.free_port()
    server = make_kinepy_server(extra_args=["--metrics-address", f"127.0.0.1:{port}"])
    before = scrape(port)
    for i in range(3):
        assert etcdctl(server.endpoint, "put", f"k{i}", "v").returncode == 0
    assert etcdctl(server.endpoint, "get", "k0").returncode == 0
    assert etcdctl(server.endpoint, "get", "k0", "--rev=100").returncode != 0  # a future revision
    after = scrape(port)

    assert value(after, "kinepy_grpc_requests_total", method="KV/Put", code="OK") == 3
    assert value(after, "kinepy_grpc_requests_total", method="KV/Range", code="OK") >= 1
    assert value(after, "kinepy_grpc_requests_total", method="KV/Range", code="OUT_OF_RANGE") == 1
    assert value(after, "kinepy_grpc_request_duration_seconds_count", method="KV/Put") == 3
    assert value(after, "kinepy_grpc_request_duration_seconds_sum", method="KV/Put") > 0
    commits = value(after, "kinepy_commit_duration_seconds_count") - value(
        before, "kinepy_commit_duration_seconds_count"
    )
    assert 1 <= commits <= 3  # group commit may put concurrent writes in one batch
    assert value(after, "kinepy_commit_batch_size_sum") - value(before, "kinepy_commit_batch_size_sum") == 3
    assert value(after, "kinepy_revision") == value(before, "kinepy_revision") + 3
    assert value(after, "process_resident_memory_bytes") > 0


def test_metrics_address_serves_only_get_metrics(
    make_kinepy_server: Callable[..., conftest.KinepyServer],
) -> None:
    port = conftest.free_port()
    make_kinepy_server(extra_args=["--metrics-address", f"127.0.0.1:{port}"])
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
    assert info.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{port}/metrics", data=b"x", method="POST"), timeout=10
        )
    assert info.value.code == 405


async def _scrape_async(port: int) -> Samples:
    return await asyncio.to_thread(scrape, port)


async def test_watch_and_compaction_metrics_in_process(tmp_path: Path) -> None:
    config = Config(
        listen_address="127.0.0.1:0",
        datastore_endpoint=f"sqlite://{tmp_path / 'state.db'}",
        metrics_address="127.0.0.1:0",
    )
    async with App(config) as app, grpc.aio.insecure_channel(app.endpoint) as channel:
        assert app.metrics_server is not None
        port = app.metrics_server.port
        kv, watch = rpc_pb2_grpc.KVStub(channel), rpc_pb2_grpc.WatchStub(channel)
        requests: asyncio.Queue[rpc_pb2.WatchRequest | None] = asyncio.Queue()

        async def outgoing() -> Any:
            while (request := await requests.get()) is not None:
                yield request

        call = watch.Watch(outgoing())
        await requests.put(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"w")))
        async with asyncio.timeout(10):
            assert (await call.read()).created
            samples = await _scrape_async(port)
            assert value(samples, "kinepy_watchers") == 1
            assert value(samples, "kinepy_watch_streams") == 1
            put = await kv.Put(rpc_pb2.PutRequest(key=b"w", value=b"1"))
            assert len((await call.read()).events) == 1
            await kv.Put(rpc_pb2.PutRequest(key=b"w", value=b"2"))
            assert len((await call.read()).events) == 1
            await kv.Compact(rpc_pb2.CompactionRequest(revision=put.header.revision + 1, physical=True))
            samples = await _scrape_async(port)
        assert value(samples, "kinepy_watch_events_sent_total") == 2
        assert value(samples, "kinepy_compaction_duration_seconds_count") == 1
        assert value(samples, "kinepy_compaction_deleted_rows_total") >= 1
        assert value(samples, "kinepy_compact_revision") == put.header.revision + 1
        # Streams are counted when they end, never timed.
        assert value(samples, "kinepy_grpc_request_duration_seconds_count", method="Watch/Watch") == 0
        call.cancel()
        await requests.put(None)
    assert app.metrics_server is None  # closed with the server


async def test_two_servers_in_one_process_keep_separate_metrics(tmp_path: Path) -> None:
    configs = [
        Config(listen_address="127.0.0.1:0", datastore_endpoint=f"sqlite://{tmp_path / f'{i}.db'}")
        for i in range(2)
    ]
    async with App(configs[0]) as first, App(configs[1]) as second:
        async with grpc.aio.insecure_channel(first.endpoint) as channel:
            await rpc_pb2_grpc.KVStub(channel).Put(rpc_pb2.PutRequest(key=b"a", value=b"b"))
        assert (
            first.metrics.registry.get_sample_value(
                "kinepy_grpc_requests_total", {"method": "KV/Put", "code": "OK"}
            )
            == 1
        )
        assert (
            second.metrics.registry.get_sample_value(
                "kinepy_grpc_requests_total", {"method": "KV/Put", "code": "OK"}
            )
            is None
        )


async def test_every_call_is_counted_unknown_methods_and_health_included(tmp_path: Path) -> None:
    """The counting wraps each servicer's handlers (no interceptor): calls of a method nobody serves are
    answered by grpc as before and counted UNIMPLEMENTED, health checks and refused requests too."""
    config = Config(listen_address="127.0.0.1:0", datastore_endpoint=f"sqlite://{tmp_path / 'state.db'}")
    async with App(config) as app, grpc.aio.insecure_channel(app.endpoint) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await channel.unary_unary("/etcdserverpb.KV/Nope")(b"")
        assert (unknown.value.code(), unknown.value.details()) == (
            grpc.StatusCode.UNIMPLEMENTED,
            "Method not found!",
        )
        with pytest.raises(grpc.aio.AioRpcError) as malformed:
            await channel.unary_unary("/etcdserverpb.KV/Range")(b"\x0a")  # a key without its length
        assert malformed.value.code() == grpc.StatusCode.INTERNAL
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        started = app.metrics.calls_started
    get = app.metrics.registry.get_sample_value
    assert get("kinepy_grpc_requests_total", {"method": "KV/Nope", "code": "UNIMPLEMENTED"}) == 1
    assert get("kinepy_grpc_requests_total", {"method": "KV/Range", "code": "INTERNAL"}) == 1
    assert get("kinepy_grpc_requests_total", {"method": "Health/Check", "code": "OK"}) == 1
    assert started == 3


def _fetch(url: str, context: ssl.SSLContext | None, timeout: float = 10) -> int:
    with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
        return int(resp.status)


def _client_tls(certs: Certificates, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def _tls_config(tmp_path: Path, **tls: str) -> Config:
    return Config(
        datastore_endpoint=f"sqlite://{tmp_path / 'state.db'}",
        listen_address="127.0.0.1:0",
        metrics_address="127.0.0.1:0",
        **tls,  # type: ignore[arg-type]
    )


async def _only_with_a_client_certificate(url: str, certs: Certificates) -> None:
    """`url` answers a client with a certificate of the trusted CA, and refuses one without a
    certificate, one with another CA's and plain HTTP."""
    assert url.startswith("https://127.0.0.1:")
    with_cert = _client_tls(certs, certs.client_cert, certs.client_key)
    assert await asyncio.to_thread(_fetch, url, with_cert) == 200
    for refused in (_client_tls(certs), _client_tls(certs, certs.other_client_cert, certs.other_client_key)):
        with pytest.raises(OSError):  # ssl.SSLError or a reset: the handshake fails
            await asyncio.to_thread(_fetch, url, refused)
    with pytest.raises(OSError):  # the TLS server drops it, or never answers plain HTTP
        await asyncio.to_thread(_fetch, url.replace("https://", "http://"), None, 2)


async def test_metrics_use_the_listeners_tls_unless_told_not_to(tmp_path: Path) -> None:
    """kine serves metrics with the listener's TLS; --metrics-ignore-tls-config keeps plain HTTP."""
    certs = make_certificates(tmp_path)
    base = _tls_config(
        tmp_path, server_cert_file=str(certs.server_cert), server_key_file=str(certs.server_key)
    )
    async with App(base) as app:
        assert app.metrics_server is not None
        url = app.metrics_server.url
        assert url.startswith("https://127.0.0.1:")
        assert await asyncio.to_thread(_fetch, url, _client_tls(certs)) == 200
        with pytest.raises(OSError):
            await asyncio.to_thread(_fetch, url.replace("https://", "http://"), None, 2)
    async with App(dataclasses.replace(base, metrics_ignore_tls_config=True)) as app:
        assert app.metrics_server is not None
        assert app.metrics_server.url.startswith("http://")
        assert await asyncio.to_thread(scrape, app.metrics_server.port)


async def test_metrics_require_a_client_certificate_when_grpc_does(tmp_path: Path) -> None:
    """gRPC requires mTLS (--trusted-ca-file): so do metrics, with nothing more to set."""
    certs = make_certificates(tmp_path)
    config = _tls_config(
        tmp_path,
        server_cert_file=str(certs.server_cert),
        server_key_file=str(certs.server_key),
        trusted_ca_file=str(certs.ca),
    )
    async with App(config) as app:
        assert app.metrics_server is not None
        await _only_with_a_client_certificate(app.metrics_server.url, certs)


async def test_metrics_own_tls_files_and_client_certificates(tmp_path: Path) -> None:
    """--metrics-cert-file/--metrics-key-file/--metrics-trusted-ca-file: HTTPS with client-certificate
    auth on the metrics listener, while the gRPC listener stays plain."""
    certs = make_certificates(tmp_path)
    config = _tls_config(
        tmp_path,
        metrics_cert_file=str(certs.server_cert),
        metrics_key_file=str(certs.server_key),
        metrics_trusted_ca_file=str(certs.ca),
    )
    async with App(config) as app:
        assert app.client_url.startswith("http://")
        assert app.metrics_server is not None
        await _only_with_a_client_certificate(app.metrics_server.url, certs)


async def test_metrics_port_alone_is_loopback(tmp_path: Path) -> None:
    """`--metrics-address :PORT` binds 127.0.0.1; `0.0.0.0:PORT` every interface."""
    base = Config(
        datastore_endpoint=f"sqlite://{tmp_path / 'state.db'}",
        listen_address="127.0.0.1:0",
        metrics_address=":0",
    )
    async with App(base) as app:
        assert app.metrics_server is not None
        assert app.metrics_server.host == "127.0.0.1"
        assert app.metrics_server.url.startswith("http://127.0.0.1:")
        assert await asyncio.to_thread(scrape, app.metrics_server.port)
    async with App(dataclasses.replace(base, metrics_address="0.0.0.0:0")) as app:
        assert app.metrics_server is not None
        assert app.metrics_server.host == "0.0.0.0"
        assert await asyncio.to_thread(scrape, app.metrics_server.port)
