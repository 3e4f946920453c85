"""A burst of new calls, opened all at once from one grpc.aio client process (issue 15, finding 1).

    python burst.py ENDPOINT ranges N CHANNELS   N concurrent unary Range calls
    python burst.py ENDPOINT watches N CHANNELS  N Watch streams opened at once, each waits for its created

Prints one JSON object: {"ok": count, "failed": {"CODE: details": count}, "seconds": wall time}.
The calls are spread over CHANNELS connections, as a restarting kube-apiserver spreads its re-lists and
re-watches over its few clients.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import time
from collections.abc import AsyncIterator

import grpc

from kinepy.proto import rpc_pb2, rpc_pb2_grpc

TIMEOUT = 120.0


def _failure(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return repr(exc)


async def _range(stub: rpc_pb2_grpc.KVStub, i: int) -> None:
    await stub.Range(rpc_pb2.RangeRequest(key=f"/burst/{i % 100}".encode()), timeout=TIMEOUT)


async def _watch(stub: rpc_pb2_grpc.WatchStub, i: int, done: asyncio.Event) -> grpc.aio.StreamStreamCall:
    """Open one Watch stream and wait for its `created`; the stream stays open until `done` is set."""

    async def requests() -> AsyncIterator[rpc_pb2.WatchRequest]:
        yield rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=f"/burst/{i}".encode()))
        await done.wait()

    call = stub.Watch(requests(), timeout=TIMEOUT)
    try:
        response = await call.read()
        if response is grpc.aio.EOF or not response.created:
            raise RuntimeError(f"no created response: {response}")
    except BaseException:
        call.cancel()
        raise
    return call


async def main(endpoint: str, kind: str, count: int, channels: int) -> dict[str, object]:
    chans = [grpc.aio.insecure_channel(endpoint) for _ in range(channels)]
    for chan in chans:
        await asyncio.wait_for(chan.channel_ready(), TIMEOUT)
    done = asyncio.Event()
    start = time.monotonic()
    if kind == "ranges":
        stubs = [rpc_pb2_grpc.KVStub(chan) for chan in chans]
        results: list[object] = await asyncio.gather(
            *(_range(stubs[i % channels], i) for i in range(count)), return_exceptions=True
        )
    else:
        watch_stubs = [rpc_pb2_grpc.WatchStub(chan) for chan in chans]
        results = await asyncio.gather(
            *(_watch(watch_stubs[i % channels], i, done) for i in range(count)), return_exceptions=True
        )
    seconds = time.monotonic() - start
    done.set()
    for result in results:
        if isinstance(result, grpc.aio.Call):
            result.cancel()
    failed = collections.Counter(_failure(r) for r in results if isinstance(r, BaseException))
    for chan in chans:
        await chan.close()
    return {"ok": count - sum(failed.values()), "failed": dict(failed), "seconds": round(seconds, 2)}


if __name__ == "__main__":
    endpoint, kind, count, channels = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(asyncio.run(main(endpoint, kind, count, channels))))
