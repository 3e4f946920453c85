"""Memory for watchers is capped in bytes: 2,000 puts of 1 MiB with a watcher open keep the server's
RSS under a fixed bound (the recent-event window and each stream's buffer hold at most
--watch-window-bytes and 16 MiB; before the byte caps, 1,800 such puts took it from 52 MB to 3.6 GB),
and the watcher still gets all 2,000 events, in order, each once.

The server is `python -m kinepy` on SQLite (its RSS and peak RSS from ``/proc/PID/status``); writes
are not fsynced, which changes nothing kinepy keeps in memory and keeps the test within a minute.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import conftest
import grpc
import pytest

from kinepy.proto import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.kinepy, pytest.mark.slow]

PUTS, WRITERS, KEYS = 2000, 4, 64
VALUE_BYTES = 1 << 20
MiB = 1 << 20
# The bound: the interpreter, grpc and SQLite at rest (about 60 MiB), the 64 MiB window, the watch
# stream's 16 MiB, the servicer's two 16 MiB conversion caches, SQLite's page caches (8 MiB per
# connection, 5 connections), and the values in flight (each put is held as its request, its row,
# its event and its response, with prev_kv), with room for the allocator's slack. Before the byte
# caps the same run reached 6.6 GiB.
RSS_BOUND = 320 * MiB  # measured: 50 MiB at rest, a peak of 216 MiB


def status_bytes(pid: int, field: str) -> int:
    """`VmRSS` (now) or `VmHWM` (the peak) of process `pid`, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


async def test_rss_stays_bounded_with_1_mib_values_and_the_watcher_misses_nothing(
    make_kinepy_server: Callable[..., conftest.KinepyServer],
) -> None:
    server = make_kinepy_server(log_level="info", extra_args=["--unsafe-no-fsync"])
    assert server.proc is not None
    pid = server.proc.pid
    at_rest = status_bytes(pid, "VmRSS")
    samples: list[int] = []
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.wait(0.1):
            samples.append(status_bytes(pid, "VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    options = [("grpc.max_receive_message_length", -1), ("grpc.use_local_subchannel_pool", 1)]
    watch_channel = grpc.aio.insecure_channel(server.endpoint, options=options)
    write_channel = grpc.aio.insecure_channel(server.endpoint, options=options)
    create = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"big/", range_end=b"big0"))
    done = asyncio.Event()

    async def requests() -> AsyncIterator[rpc_pb2.WatchRequest]:
        yield create
        await done.wait()

    try:
        watch = rpc_pb2_grpc.WatchStub(watch_channel).Watch(requests())
        async with asyncio.timeout(10):
            assert (await watch.read()).created
        kv = rpc_pb2_grpc.KVStub(write_channel)

        async def write(first: int) -> list[int]:
            revisions = []
            for n in range(first, PUTS, WRITERS):
                value = n.to_bytes(4, "big") * (VALUE_BYTES // 4)
                resp = await kv.Put(rpc_pb2.PutRequest(key=b"big/%02d" % (n % KEYS), value=value))
                revisions.append(resp.header.revision)
            return revisions

        async def read() -> list[tuple[int, bytes, int]]:
            seen: list[tuple[int, bytes, int]] = []
            while len(seen) < PUTS:
                resp = await watch.read()
                assert resp is not grpc.aio.EOF and not resp.canceled
                for event in resp.events:
                    assert len(event.kv.value) == VALUE_BYTES
                    seen.append(
                        (event.kv.mod_revision, event.kv.key, int.from_bytes(event.kv.value[:4], "big"))
                    )
            return seen

        async with asyncio.timeout(240):
            reader = asyncio.create_task(read())
            written = await asyncio.gather(*(write(w) for w in range(WRITERS)))
            seen = await reader
        done.set()
    finally:
        stop_sampling.set()
        await watch_channel.close()
        await write_channel.close()
    sampler.join()
    peak = status_bytes(pid, "VmHWM")

    revisions = sorted(r for rs in written for r in rs)
    assert [r for r, _, _ in seen] == revisions  # every event once, in revision order
    assert len(set(revisions)) == PUTS
    assert sorted(n for _, _, n in seen) == list(range(PUTS))
    assert all(key == b"big/%02d" % (n % KEYS) for _, key, n in seen)
    figures = f"at rest {at_rest / MiB:.0f} MiB, highest sampled {max(samples) / MiB:.0f} MiB"
    print(f"RSS {figures}, peak {peak / MiB:.0f} MiB")
    assert peak < RSS_BOUND, f"peak RSS {peak / MiB:.0f} MiB ({figures})"
