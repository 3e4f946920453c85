"""A watcher that reads nothing while 50,000 events happen must neither grow the server's memory with
them nor lose any: once it reads, it gets every event, in order, exactly once.

The server runs as a subprocess (its RSS is read from ``/proc/PID/status``) built from ``App(Config(...))``
with a small per-stream buffer and window, since the CLI has no flags for them. It runs on each backend
(conftest's ``kinepy_backend``): the buffering under test is kinepy's own, whichever database feeds it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import conftest
import grpc
import pytest

from kinepy.proto import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.kinepy, pytest.mark.slow, pytest.mark.kinepy_backends]

TXNS, PUTS_PER_TXN, VALUE_BYTES = 500, 100, 1024
EVENTS = TXNS * PUTS_PER_TXN
STREAM_BUFFER_EVENTS, WINDOW_EVENTS = 500, 2000

_SERVER = """
import asyncio, signal, sys
from kinepy.app import App
from kinepy.config import Config

async def main() -> None:
    config = Config(
        listen_address="127.0.0.1:0",
        datastore_endpoint=sys.argv[1],
        unsafe_no_fsync=True,
        watch_stream_buffer_events=int(sys.argv[2]),
        watch_window_events=int(sys.argv[3]),
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with App(config) as app:
        print(app.endpoint, flush=True)
        await stop.wait()

asyncio.run(main())
"""


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.fixture
async def server(tmp_path: Path, kinepy_datastore_endpoint: str) -> AsyncIterator[tuple[int, str]]:
    """(pid, endpoint) of a kinepy subprocess with a 500-event stream buffer and a 2000-event window."""
    log = (tmp_path / "server.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SERVER,
        kinepy_datastore_endpoint,
        str(STREAM_BUFFER_EVENTS),
        str(WINDOW_EVENTS),
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        cwd=conftest.REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(conftest.REPO_ROOT)},
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(conftest.READY_TIMEOUT):
            endpoint = (await proc.stdout.readline()).decode().strip()
        assert endpoint, (tmp_path / "server.log").read_text()
        yield proc.pid, endpoint
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(conftest.STOP_TIMEOUT):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()
    assert proc.returncode == 0, (tmp_path / "server.log").read_text()[-4000:]


async def test_slow_watcher_keeps_memory_bounded_and_loses_nothing(
    server: tuple[int, str], kinepy_backend: str
) -> None:
    pid, endpoint = server
    # Its own connection (local subchannel pool): the unread stream must not stall the writer's.
    watch_channel = grpc.aio.insecure_channel(
        endpoint, options=[("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]
    )
    write_channel = grpc.aio.insecure_channel(endpoint, options=[("grpc.use_local_subchannel_pool", 1)])
    queue: asyncio.Queue[rpc_pb2.WatchRequest] = asyncio.Queue()
    queue.put_nowait(
        rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"s/", range_end=b"s0"))
    )

    async def requests() -> AsyncIterator[rpc_pb2.WatchRequest]:
        while True:
            yield await queue.get()

    try:
        watch = rpc_pb2_grpc.WatchStub(watch_channel).Watch(requests())
        async with asyncio.timeout(10):
            created = await watch.read()
        assert created.created
        kv = rpc_pb2_grpc.KVStub(write_channel)

        async def writer(prefix: bytes, first: int, value: bytes, txns: int = TXNS) -> None:
            for t in range(first, txns, 4):
                ops = [
                    rpc_pb2.RequestOp(
                        request_put=rpc_pb2.PutRequest(
                            key=prefix + b"%05d" % (t * PUTS_PER_TXN + i), value=value
                        )
                    )
                    for i in range(PUTS_PER_TXN)
                ]
                await kv.Txn(rpc_pb2.TxnRequest(success=ops), timeout=30)

        # Warm-up outside the watched prefix: ~100 MB of writes fill SQLite's page cache (one per
        # connection), which would otherwise grow during the measured writes whether anyone watches or not.
        # PostgreSQL and MariaDB cache pages in their own processes: a fifth of it warms the driver's
        # connections and the allocator.
        warm_txns = TXNS if kinepy_backend == "sqlite" else TXNS // 5
        async with asyncio.timeout(60):
            await asyncio.gather(*(writer(b"warm/", n, b"w" * 2 * VALUE_BYTES, warm_txns) for n in range(4)))
        start = (await kv.Range(rpc_pb2.RangeRequest(key=b"s/"), timeout=10)).header.revision + 1
        rss_before = rss_bytes(pid)
        async with asyncio.timeout(60):
            await asyncio.gather(*(writer(b"s/", n, b"x" * VALUE_BYTES) for n in range(4)))
        rss_after, peak_before_reading = rss_bytes(pid), rss_bytes(pid, "VmHWM")
        # Buffering every event would hold at least its key and value: 50,000 * ~1 KiB = ~50 MiB.
        everything = EVENTS * (VALUE_BYTES + len(b"s/00000"))
        growth = rss_after - rss_before
        summary = f"RSS grew {growth / 2**20:.1f} MiB (buffering all events: {everything / 2**20:.1f} MiB)"
        print(summary, "while the watcher read nothing")
        # Half of that: what a buffering server would need, with room for the allocator's and the
        # databases' own noise (SQLite page caches, the 8192-event window, driver buffers), which
        # measured 0.7-13 MiB across runs and backends on a loaded 2-core machine.
        assert growth < everything / 2, summary

        seen = 0
        last = (start - 1, b"")
        async with asyncio.timeout(60):
            while seen < EVENTS:
                resp = await watch.read()
                assert resp is not grpc.aio.EOF and not resp.canceled, resp
                for event in resp.events:
                    key = (event.kv.mod_revision, event.kv.key)
                    assert key > last, f"out of order or repeated: {key} after {last}"
                    assert event.kv.mod_revision == start + (seen // PUTS_PER_TXN)
                    last = key
                    seen += 1
        assert seen == EVENTS
        # Nothing more: the next response answers a progress request (queued behind every event).
        queue.put_nowait(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))
        async with asyncio.timeout(10):
            resp = await watch.read()
        assert (resp.watch_id, len(resp.events), resp.header.revision) == (-1, 0, last[0])
        peak = rss_bytes(pid, "VmHWM")
        # Not asserted: catch-up sends up to 1000 revisions per response, as etcd does (watchBatchMaxRevs),
        # here 100 events each, so the peak while reading is a burst of that size.
        print(
            f"RSS before {rss_before >> 20} MiB, after writes {rss_after >> 20} MiB, "
            f"peak before reading {peak_before_reading >> 20} MiB, peak after catch-up {peak >> 20} MiB"
        )
    finally:
        await watch_channel.close()
        await write_channel.close()
