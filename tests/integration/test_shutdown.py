"""SIGTERM: watch and lease keepalive streams end at once with a retryable status, writes in flight
are answered, and what was acknowledged is there after a restart."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import conftest
import grpc
import pytest

from kinepy.proto import rpc_pb2, rpc_pb2_grpc

EXIT_SECONDS = 5.0  # SIGTERM to exit 0, with a watch open and writes in flight


def _watch_requests(done: threading.Event) -> Iterator[rpc_pb2.WatchRequest]:
    yield rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"k", range_end=b"\x00"))
    done.wait()


def _sigterm_ends(server: conftest.KinepyServer, responses: Iterator[Any]) -> tuple[grpc.RpcError, float]:
    """SIGTERM `server`; the error that ends the open stream `responses`, and how many seconds after
    the signal it came."""
    assert server.proc is not None
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    with pytest.raises(grpc.RpcError) as info:
        next(responses)
    return info.value, time.monotonic() - started


def test_sigterm_ends_open_watches_with_unavailable_and_exits_0(
    make_kinepy_server: Callable[..., conftest.KinepyServer],
) -> None:
    server = make_kinepy_server()
    done = threading.Event()
    with grpc.insecure_channel(server.endpoint) as channel:
        responses = rpc_pb2_grpc.WatchStub(channel).Watch(_watch_requests(done), timeout=30)
        try:
            assert next(responses).created
            error, ended = _sigterm_ends(server, responses)
        finally:
            done.set()
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    assert error.details() == "etcdserver: server stopped"
    # Before this change the stream was held for the whole 2 s grace and then cut by grpc.
    assert ended < 1.0, f"the watch ended {ended:.2f}s after SIGTERM"
    assert server.proc is not None and server.proc.wait(timeout=EXIT_SECONDS) == 0, server.log_tail()


async def test_writes_in_flight_at_sigterm_are_answered_and_kept(
    make_kinepy_server: Callable[..., conftest.KinepyServer],
) -> None:
    server = make_kinepy_server(log_level="info")
    assert server.proc is not None
    proc = server.proc
    acked: set[bytes] = set()
    some_acked = asyncio.Event()
    async with grpc.aio.insecure_channel(server.endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)

        async def put(i: int) -> None:
            key = b"key-%04d" % i
            await kv.Put(rpc_pb2.PutRequest(key=key, value=b"v"), timeout=10)
            acked.add(key)
            if len(acked) >= 20:
                some_acked.set()

        tasks = [asyncio.create_task(put(i)) for i in range(400)]
        async with asyncio.timeout(10):
            await some_acked.wait()
        proc.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    for failure in failures:
        assert isinstance(failure, grpc.aio.AioRpcError), repr(failure)
        assert failure.code() == grpc.StatusCode.UNAVAILABLE, failure
    assert len(acked) + len(failures) == 400
    assert await asyncio.to_thread(proc.wait, EXIT_SECONDS) == 0
    server.restart()
    async with grpc.aio.insecure_channel(server.endpoint) as channel:
        resp = await rpc_pb2_grpc.KVStub(channel).Range(
            rpc_pb2.RangeRequest(key=b"key-", range_end=b"key.", keys_only=True), timeout=10
        )
    stored = {kv.key for kv in resp.kvs}
    assert acked <= stored, f"{len(acked - stored)} acknowledged writes lost"
    assert resp.header.revision == 1 + len(stored)  # nothing half-written


def test_sigterm_ends_open_lease_keepalive_streams_with_unavailable(
    make_kinepy_server: Callable[..., conftest.KinepyServer],
) -> None:
    """kube-apiserver holds a LeaseKeepAlive stream open all the time: at SIGTERM it ends at once,
    UNAVAILABLE, like a Watch stream, instead of holding the shutdown for the whole grace."""
    server = make_kinepy_server()
    done = threading.Event()
    with grpc.insecure_channel(server.endpoint) as channel:
        lease = rpc_pb2_grpc.LeaseStub(channel)
        lease_id = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60), timeout=10).ID

        def keepalives() -> Iterator[rpc_pb2.LeaseKeepAliveRequest]:
            yield rpc_pb2.LeaseKeepAliveRequest(ID=lease_id)
            done.wait()

        responses = lease.LeaseKeepAlive(keepalives(), timeout=30)
        try:
            assert next(responses).TTL == 60
            error, ended = _sigterm_ends(server, responses)
        finally:
            done.set()
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    assert error.details() == "etcdserver: server stopped"
    assert ended < 1.0, f"the keepalive stream ended {ended:.2f}s after SIGTERM"
    assert server.proc is not None and server.proc.wait(timeout=EXIT_SECONDS) == 0, server.log_tail()
