"""The ceiling of a Python gRPC server on this machine: grpc.aio on uvloop answering with canned
bytes, doing no storage work at all, driven by a grpc.aio client in another process, or by etcd's own
`benchmark` tool (a Go client, the one `python -m benchmarks etcd-bench` drives the targets with).

    python -m benchmarks.floor [--seconds 4] [--out floor.json]
    python -m benchmarks.floor --client go [--size full] [--processes 1,2] [--out floor.json]

Each row mirrors one workload's shape (request and reply sizes, calls in flight, channels): the
figure is what kinepy would reach if reading, writing and encoding cost nothing. The client here
skips protobuf parsing (raw bytes), so the ceilings are, if anything, generous. docs/performance.md
sets them beside etcd's figures: a target above its ceiling is out of reach for any Python server
built on grpc.aio, whatever it does with the time it has.

With ``--client go`` the server speaks etcd's service names instead (KV, Lease, Watch; every reply a
constant message, watch events fanned out on each Put) and each of etcd-bench's workloads runs against it
with the tool's own flags, on 1 and on N server processes sharing the port (``--processes``; watch-latency
on one only: events of a put reach the streams of the process that served it). A Go client competes less
for the 2 cores than a grpc.aio one, so these are the ceilings to hold etcd-bench's figures against.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from typing import Any

import grpc

from benchmarks import etcd_tool
from benchmarks.loadgen import percentile
from benchmarks.targets import free_port
from benchmarks.workloads import Workload

_CHANNELS = 4  # as the suite's load generator
_OPTIONS = [("grpc.max_send_message_length", 1 << 26), ("grpc.max_receive_message_length", 1 << 26)]


def _raw(message: bytes) -> bytes:
    return message


@dataclass(frozen=True)
class Shape:
    name: str
    like: str  # the suite's workload it mirrors
    request_bytes: int = 0
    reply_bytes: int = 0
    in_flight: int = 1
    processes: int = 1  # server processes sharing the port (SO_REUSEPORT)
    watchers: int = 0  # > 0: watch fan-out instead of unary calls


SHAPES = [
    Shape("unary, 1 in flight, small reply", "count-10k, put-seq", 60, 40),
    Shape("unary, 64 in flight, 1 KiB request", "create-64, update-1000", 1100, 40, in_flight=64),
    Shape("  the same on 2 server processes", "create-64, update-1000", 1100, 40, in_flight=64, processes=2),
    Shape("unary, 1 in flight, 536 KB reply", "list-10k (a 500-key page)", 60, 536_000),
    Shape("watch fan-out to 1 stream, 100 puts/s", "watch-1", 300, watchers=1),
    Shape("watch fan-out to 100 streams, 100 puts/s", "watch-100", 300, watchers=100),
]


def _unary_handler(fn: Callable[..., Any]) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=_raw, response_serializer=_raw)


def _stream_handler(fn: Callable[..., Any]) -> grpc.RpcMethodHandler:
    return grpc.stream_stream_rpc_method_handler(fn, request_deserializer=_raw, response_serializer=_raw)


async def _serve_forever(
    port: int, services: dict[str, dict[str, grpc.RpcMethodHandler]], ready: ProcessEvent
) -> None:
    """A grpc.aio server of `services` (name -> method -> handler) on `port`, sharing it (SO_REUSEPORT)."""
    server = grpc.aio.server(options=[*_OPTIONS, ("grpc.so_reuseport", 1)])
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(name, handlers) for name, handlers in services.items()]
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    ready.set()
    await server.wait_for_termination()


def _serve(port: int, reply_bytes: int, ready: ProcessEvent) -> None:
    import uvloop

    reply = os.urandom(reply_bytes)

    async def main() -> None:
        streams: list[asyncio.Queue[bytes]] = []

        async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return reply

        async def put(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            for queue in streams:
                queue.put_nowait(request)
            return reply

        async def watch(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            queue: asyncio.Queue[bytes] = asyncio.Queue()
            streams.append(queue)
            yield b"created"
            while True:
                yield await queue.get()

        handlers = {"Call": _unary_handler(call), "Put": _unary_handler(put), "Watch": _stream_handler(watch)}
        await _serve_forever(port, {"floor.Floor": handlers}, ready)

    uvloop.install()
    asyncio.run(main())


def _serve_etcd(port: int, ready: ProcessEvent) -> None:
    """etcd's services with constant replies: what etcd's `benchmark` needs to run every workload."""
    import uvloop

    from kinepy.proto import kv_pb2, rpc_pb2

    header = rpc_pb2.ResponseHeader(cluster_id=1, member_id=1, revision=1, raft_term=1)
    lease = rpc_pb2.LeaseKeepAliveResponse(header=header, ID=1, TTL=100).SerializeToString()
    granted = rpc_pb2.LeaseGrantResponse(header=header, ID=1, TTL=100).SerializeToString()
    event = kv_pb2.Event(
        kv=kv_pb2.KeyValue(key=b"k", value=b"v", create_revision=1, mod_revision=1, version=1)
    )

    def created(watch_id: int) -> bytes:
        return rpc_pb2.WatchResponse(header=header, watch_id=watch_id, created=True).SerializeToString()

    def events(watch_id: int) -> bytes:
        return rpc_pb2.WatchResponse(header=header, watch_id=watch_id, events=[event]).SerializeToString()

    async def main() -> None:
        streams: list[asyncio.Queue[bool]] = []  # per Watch stream: True = a create request, False = a put

        async def empty(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return b""

        async def put(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            for queue in streams:
                queue.put_nowait(False)
            return b""

        async def grant(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return granted

        async def keepalive(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            async for _ in requests:
                yield lease

        async def watch(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            queue: asyncio.Queue[bool] = asyncio.Queue()
            streams.append(queue)

            async def read() -> None:
                async for _ in requests:
                    queue.put_nowait(True)

            reader = asyncio.create_task(read())
            ids: list[bytes] = []  # per watcher of this stream: its event reply
            try:
                while True:
                    if await queue.get():
                        yield created(len(ids))
                        ids.append(events(len(ids)))
                    else:
                        for reply in ids:
                            yield reply
            finally:
                reader.cancel()
                streams.remove(queue)

        services = {
            "etcdserverpb.KV": {
                "Range": _unary_handler(empty),
                "Put": _unary_handler(put),
                "Txn": _unary_handler(empty),
            },
            "etcdserverpb.Lease": {
                "LeaseGrant": _unary_handler(grant),
                "LeaseKeepAlive": _stream_handler(keepalive),
            },
            "etcdserverpb.Watch": {"Watch": _stream_handler(watch)},
        }
        await _serve_forever(port, services, ready)

    uvloop.install()
    asyncio.run(main())


def _channels(port: int) -> list[grpc.aio.Channel]:
    options = [*_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    return [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(_CHANNELS)]


async def _figures(
    channels: list[grpc.aio.Channel], latencies: list[float], ops_per_s: float, client_cpu: float
) -> dict[str, float]:
    """Close the channels; the run's figures."""
    for c in channels:
        await c.close()
    latencies.sort()
    return {
        "ops_per_s": ops_per_s,
        "p50_ms": 1e3 * percentile(latencies, 0.5),
        "p99_ms": 1e3 * percentile(latencies, 0.99),
        "client_cpu": client_cpu,
    }


async def _unary(port: int, shape: Shape, seconds: float) -> dict[str, float]:
    channels = _channels(port)
    calls = [
        c.unary_unary("/floor.Floor/Call", request_serializer=_raw, response_deserializer=_raw)
        for c in channels
    ]
    request = os.urandom(shape.request_bytes)
    latencies: list[float] = []

    async def worker(w: int, until: float, record: bool) -> None:
        call = calls[w % len(calls)]
        while time.perf_counter() < until:
            started = time.perf_counter()
            await call(request)
            if record:
                latencies.append(time.perf_counter() - started)

    warm = time.perf_counter() + 1.0
    await asyncio.gather(*(worker(w, warm, False) for w in range(shape.in_flight)))
    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(w, started + seconds, True) for w in range(shape.in_flight)))
    wall = time.perf_counter() - started
    return await _figures(channels, latencies, len(latencies) / wall, (time.process_time() - cpu) / wall)


async def _watch(port: int, shape: Shape, seconds: float) -> dict[str, float]:
    channels = _channels(port)
    latencies: list[float] = []
    created = [asyncio.Event() for _ in range(shape.watchers)]
    done = asyncio.Event()

    async def requests() -> AsyncIterator[bytes]:
        yield b"watch"
        await done.wait()

    async def watcher(i: int) -> None:
        method = channels[i % len(channels)].stream_stream(
            "/floor.Floor/Watch", request_serializer=_raw, response_deserializer=_raw
        )
        async for message in method(requests()):
            if message == b"created":
                created[i].set()
            else:
                latencies.append(time.perf_counter() - struct.unpack_from("<d", message)[0])

    tasks = [asyncio.create_task(watcher(i)) for i in range(shape.watchers)]
    for event in created:
        await event.wait()
    put = channels[0].unary_unary("/floor.Floor/Put", request_serializer=_raw, response_deserializer=_raw)
    padding = os.urandom(shape.request_bytes - 8)
    rate, started, n = 100, time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        n += 1
        await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
        await put(struct.pack("<d", time.perf_counter()) + padding)
    await asyncio.sleep(0.5)  # the last puts' events
    done.set()
    for task in tasks:
        task.cancel()
    return await _figures(channels, latencies, len(latencies) / seconds, 0.0)


@contextlib.contextmanager
def _servers(target: Callable[..., None], args: tuple[Any, ...], processes: int) -> Iterator[int]:
    """`processes` server processes running `target(port, *args, ready)` on one free port; yields it."""
    port = free_port()
    servers = []
    try:
        for _ in range(processes):
            # spawned, not forked: this process has run gRPC channels, and gRPC's threads do not survive fork
            spawn = multiprocessing.get_context("spawn")
            ready = spawn.Event()
            proc = spawn.Process(target=target, args=(port, *args, ready), daemon=True)
            proc.start()
            if not ready.wait(20):
                raise RuntimeError("floor server did not start")
            servers.append(proc)
        yield port
    finally:
        for proc in servers:
            proc.kill()
            proc.join()


def measure(shape: Shape, seconds: float) -> dict[str, float]:
    """Start the canned server (`shape.processes` of them on one port), drive it, stop it."""
    with _servers(_serve, (shape.reply_bytes,), shape.processes) as port:
        import uvloop

        run = _watch if shape.watchers else _unary
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(run(port, shape, seconds))


def measure_go(workload: Workload, processes: int) -> dict[str, Any]:
    """One etcd-bench workload, driven by etcd's `benchmark`, against `processes` canned etcd servers."""
    with _servers(_serve_etcd, (), processes) as port:
        r = etcd_tool.run(f"127.0.0.1:{port}", workload.kind, workload.params, workload.timeout)
    if r["unsupported"] or r["errors"]:
        raise RuntimeError(f"floor {workload.name}: {r['unsupported'] or r['first_error']}")
    return {
        "ops_per_s": r["ops_per_s"],
        "p50_ms": r["latencies_ms"]["p50"],
        "p99_ms": r["latencies_ms"]["p99"],
        "client_cpu": r["client_cpu_s"] / r["seconds"] if r["seconds"] else 0.0,
    }


def main_go(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    head = f"{'ops/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'client CPU':>10}"
    print(f"{'etcd-bench workload':20} {'processes':>9} {head}")
    for workload in etcd_tool.select(args.size, args.workloads):
        for processes in [int(n) for n in args.processes.split(",")]:
            if processes > 1 and workload.kind == "watch-latency":
                continue
            r = measure_go(workload, processes)
            results.append({"shape": workload.name, "processes": processes, "params": workload.params, **r})
            figures = f"{r['ops_per_s']:8.0f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} {r['client_cpu']:10.2f}"
            print(f"{workload.name:20} {processes:9} {figures}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="how long each shape runs (default: 4)")
    parser.add_argument("--out", default="", help="also write the figures to this JSON file")
    parser.add_argument(
        "--client", choices=("python", "go"), default="python", help="grpc.aio (default) or etcd's benchmark"
    )
    parser.add_argument(
        "--size", choices=sorted(etcd_tool.TOTALS), default="full", help="--client go: totals"
    )
    parser.add_argument("--workloads", default="all", help="--client go: etcd-bench workloads (default: all)")
    parser.add_argument(
        "--processes", default="1,2", help="--client go: server processes to try (default: 1,2)"
    )
    args = parser.parse_args()
    if args.client == "go":
        results = main_go(args)
        if args.out:
            Path(args.out).write_text(
                json.dumps({"date": time.strftime("%F"), "client": "go", "results": results})
            )
        return
    results = []
    print(f"{'shape':44} {'mirrors':28} {'ops/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'client CPU':>10}")
    for shape in SHAPES:
        r = measure(shape, args.seconds)
        results.append({"shape": shape.name.strip(), "mirrors": shape.like, **r})
        cpu = f"{r['client_cpu']:.2f}" if r["client_cpu"] else "-"
        figures = f"{r['ops_per_s']:8.0f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} {cpu:>10}"
        print(f"{shape.name:44} {shape.like:28} {figures}", flush=True)
    if args.out:
        Path(args.out).write_text(
            json.dumps({"date": time.strftime("%F"), "seconds": args.seconds, "results": results})
        )


if __name__ == "__main__":
    main()
