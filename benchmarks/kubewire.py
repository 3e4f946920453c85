"""kube-apiserver's etcd traffic for the Kubernetes workload, replayed over gRPC: kinepy's CPU per object.

    python -m benchmarks.kubewire [--objects 2000] [--clients 8] [--rounds 3] [--kinepy-path DIR ...]
    python -m benchmarks.kubewire --url 127.0.0.1:2379 --pid PID      # a server already running
    python -m benchmarks.kubewire --targets kine-postgres,kinepy-postgres   # the suite's targets

What `python -m benchmarks kube` makes kube-apiserver send per ConfigMap, without kube-apiserver: a
create (a txn: compare mod_revision = 0, put, else get), an update (compare mod_revision = N, put, else
get), and a deletion one at a time as the namespace controller's (a get, then compare mod_revision = N,
delete with prev_kv, else get); `--clients` of them in flight for creates and updates, and one Watch on the
prefix with prev_kv and progress notifications (kube-apiserver's watch cache) receiving every event, each
phase waited for until its last event arrived, beside `--other-watches` streams watching other prefixes (as
kube-apiserver's watch cache watches every resource: 57 Watch streams in a `benchmarks kube` run). It
reports per phase objects/s and the server's CPU per object from /proc (utime + stime of its process
tree), with the load average. Each `--kinepy-path` (a
checkout) starts its own server, alternating between them round by round, so that a before/after
comparison sees the same machine load: `--kinepy-path /tmp/base --kinepy-path .`. `--targets` does the
same with the suite's targets (`benchmarks/targets.py`: kine, etcd, kinepy on any backend), each started
afresh every round, and adds the database server's CPU per object where there is one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc

from benchmarks.targets import DatabaseServers, check_target, make_target, tree_cpu_seconds
from kinepy.proto import kv_pb2, rpc_pb2, rpc_pb2_grpc

PREFIX = b"/registry/configmaps/bench/"
_MOD = rpc_pb2.Compare.CompareTarget.MOD
_EQUAL = rpc_pb2.Compare.CompareResult.EQUAL


def _get(key: bytes) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))


def _put_txn(key: bytes, value: bytes, revision: int) -> rpc_pb2.TxnRequest:
    return rpc_pb2.TxnRequest(
        compare=[rpc_pb2.Compare(result=_EQUAL, target=_MOD, key=key, mod_revision=revision)],
        success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))],
        failure=[_get(key)],
    )


def _delete_txn(key: bytes, revision: int) -> rpc_pb2.TxnRequest:
    delete = rpc_pb2.DeleteRangeRequest(key=key, prev_kv=True)
    return rpc_pb2.TxnRequest(
        compare=[rpc_pb2.Compare(result=_EQUAL, target=_MOD, key=key, mod_revision=revision)],
        success=[rpc_pb2.RequestOp(request_delete_range=delete)],
        failure=[_get(key)],
    )


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _threads(pid: int) -> dict[str, tuple[float, int]]:
    """Per thread name of `pid` ("loop": the main thread): (CPU seconds, context switches), summed over
    threads of one name."""
    found: dict[str, tuple[float, int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            base = f"/proc/{pid}/task/{tid}"
            name = "loop" if tid == str(pid) else Path(base, "comm").read_text().strip()
            fields = Path(base, "stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
            switches = sum(
                int(line.split()[1])
                for line in Path(base, "status").read_text().splitlines()
                if line.endswith("ctxt_switches") or "ctxt_switches:" in line
            )
            old = found.get(name, (0.0, 0))
            found[name] = (old[0] + cpu, old[1] + switches)
    return found


def _thread_report(before: dict[str, tuple[float, int]], after: dict[str, tuple[float, int]], n: int) -> str:
    parts = []
    for name, (cpu, switches) in sorted(after.items()):
        cpu0, switches0 = before.get(name, (0.0, 0))
        parts.append(f"{name} {(cpu - cpu0) / n * 1e6:.0f} µs {(switches - switches0) / n:.1f} cs")
    return "; ".join(parts)


class _Watch:
    """One Watch on the prefix with prev_kv and progress notifications: counts the events it receives."""

    def __init__(self, channel: grpc.aio.Channel, prefix: bytes = PREFIX) -> None:
        self.events = 0
        self._prefix = prefix
        self._arrived = asyncio.Event()
        self._call = rpc_pb2_grpc.WatchStub(channel).Watch()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        prefix = self._prefix
        create = rpc_pb2.WatchCreateRequest(
            key=prefix, range_end=prefix[:-1] + b"0", prev_kv=True, progress_notify=True
        )
        await self._call.write(rpc_pb2.WatchRequest(create_request=create))
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for resp in self._call:
            self.events += len(resp.events)
            self._arrived.set()

    async def wait_for(self, events: int) -> None:
        while self.events < events:
            self._arrived.clear()
            await asyncio.wait_for(self._arrived.wait(), 30)

    async def aclose(self) -> None:
        self._call.cancel()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _in_parallel(clients: int, items: int, op: Callable[[int], Awaitable[None]]) -> None:
    todo = iter(range(items))

    async def worker() -> None:
        for i in todo:
            await op(i)

    await asyncio.gather(*(worker() for _ in range(clients)))


class _Run:
    def __init__(
        self, channel: grpc.aio.Channel, watch: _Watch, pid: int, db_pid: int, args: argparse.Namespace
    ) -> None:
        self._kv = rpc_pb2_grpc.KVStub(channel)
        self._watch = watch
        self._pid = pid
        self._db_pid = db_pid
        self._args = args
        self._value = b"v" * args.value_size
        self.revisions: dict[int, int] = {}

    def _key(self, i: int) -> bytes:
        return PREFIX + b"cm-%06d" % i

    async def _write(self, i: int, revision: int) -> None:
        resp = await self._kv.Txn(_put_txn(self._key(i), self._value, revision))
        assert resp.succeeded
        self.revisions[i] = resp.header.revision

    async def _delete(self, i: int) -> None:
        key = self._key(i)
        got = await self._kv.Range(rpc_pb2.RangeRequest(key=key))
        resp = await self._kv.Txn(_delete_txn(key, got.kvs[0].mod_revision))
        assert resp.succeeded

    async def phase(self, name: str, label: str) -> tuple[float, float]:
        """Runs phase `name`: (objects/s, server CPU µs per object)."""
        n, clients = self._args.objects, self._args.clients
        expected = self._watch.events + n
        threads = _threads(self._pid)
        cpu, started = tree_cpu_seconds(self._pid), time.perf_counter()
        db_cpu = tree_cpu_seconds(self._db_pid) if self._db_pid else 0.0
        if name == "create":
            await _in_parallel(clients, n, lambda i: self._write(i, 0))
        elif name == "update":
            await _in_parallel(clients, n, lambda i: self._write(i, self.revisions[i]))
        else:
            await _in_parallel(1, n, self._delete)
        await self._watch.wait_for(expected)
        elapsed = time.perf_counter() - started
        per_object = (tree_cpu_seconds(self._pid) - cpu) / n * 1e6
        database = ""
        if self._db_pid:
            database = f", database CPU {(tree_cpu_seconds(self._db_pid) - db_cpu) / n * 1e6:5.0f} µs/object"
        print(
            f"{label:>12} {name:>6}: {n / elapsed:7,.0f}/s, server CPU {per_object:5.0f} µs/object"
            f"{database} (load average {os.getloadavg()[0]:.2f})",
            flush=True,
        )
        if self._args.threads:
            print(f"{'':>21}per object: {_thread_report(threads, _threads(self._pid), n)}", flush=True)
        return n / elapsed, per_object


async def _drive(
    url: str, pid: int, args: argparse.Namespace, label: str, db_pid: int = 0
) -> dict[str, float]:
    # Unlimited replies, as kube-apiserver's client: kine may answer a new Watch with every event of a
    # round before (10 MB), over gRPC's default limit of 4 MiB.
    options = [("grpc.max_receive_message_length", -1)]
    async with grpc.aio.insecure_channel(url, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        watch = _Watch(channel)
        # kube-apiserver's watch cache watches every resource's prefix, each on a stream of its own.
        others = [_Watch(channel, b"/registry/resource-%02d/" % i) for i in range(args.other_watches)]
        for each in (watch, *others):
            await each.start()
        run = _Run(channel, watch, pid, db_pid, args)
        figures = {}
        try:
            for name in ("create", "update", "delete"):
                figures[name] = (await run.phase(name, label))[1]
        finally:
            for each in (watch, *others):
                await each.aclose()
        return figures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


FLOOR = "floor"
"""A `--kinepy-path` that is no checkout: a grpc.aio server on uvloop answering every call with a canned
reply and sending a canned event per Txn to every Watch (`_serve_floor`): what the calls alone cost."""


def _serve_floor(address: str) -> None:
    import uvloop

    kv = kv_pb2.KeyValue(key=PREFIX + b"cm", create_revision=2, mod_revision=2, version=1, value=b"v" * 1200)
    header = rpc_pb2.ResponseHeader(cluster_id=1, member_id=2, revision=2, raft_term=1)
    got = rpc_pb2.RangeResponse(header=header, kvs=[kv], count=1)
    txn = rpc_pb2.TxnResponse(header=header, succeeded=True, responses=[rpc_pb2.ResponseOp()])
    event = rpc_pb2.WatchResponse(
        header=header, events=[kv_pb2.Event(type=kv_pb2.Event.PUT, kv=kv, prev_kv=kv)]
    ).SerializeToString()
    queues: list[asyncio.Queue[bytes]] = []

    class KV(rpc_pb2_grpc.KVServicer):
        async def Range(self, request: object, context: object) -> rpc_pb2.RangeResponse:
            return got

        async def Txn(self, request: object, context: object) -> rpc_pb2.TxnResponse:
            for queue in queues:
                queue.put_nowait(event)
            return txn

    async def watch(requests: AsyncIterator[rpc_pb2.WatchRequest], context: object) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        if (await anext(requests)).create_request.key == PREFIX:  # the others watch other prefixes
            queues.append(queue)
        yield rpc_pb2.WatchResponse(header=header, created=True).SerializeToString()
        while True:
            yield await queue.get()

    async def serve() -> None:
        server = grpc.aio.server()
        rpc_pb2_grpc.add_KVServicer_to_server(KV(), server)
        handler = grpc.stream_stream_rpc_method_handler(
            watch, request_deserializer=rpc_pb2.WatchRequest.FromString, response_serializer=None
        )
        watch_service = grpc.method_handlers_generic_handler("etcdserverpb.Watch", {"Watch": handler})
        server.add_generic_rpc_handlers([watch_service])
        server.add_insecure_port(address)
        await server.start()
        await server.wait_for_termination()

    uvloop.run(serve())


@contextlib.contextmanager
def _server(kinepy_path: str) -> Iterator[tuple[str, int]]:
    """`python -m kinepy` of the checkout at `kinepy_path`, one worker, on a fresh SQLite file (or the
    floor server)."""
    with tempfile.TemporaryDirectory(prefix="kubewire-") as tmp:
        url = f"127.0.0.1:{_free_port()}"
        argv = [sys.executable, "-m", "kinepy", "--listen-address", url, "--workers", "1"]
        argv += ["--datastore-endpoint", f"sqlite://{tmp}/state.db", "--log-level", "warning"]
        env = {**os.environ, "PYTHONPATH": str(Path(kinepy_path).resolve())}
        if kinepy_path == FLOOR:
            argv = [sys.executable, "-m", "benchmarks.kubewire", "--serve-floor", url]
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        proc = subprocess.Popen(argv, env=env, cwd=tmp)
        try:
            yield url, proc.pid
        finally:
            proc.terminate()
            proc.wait(30)


async def _main(args: argparse.Namespace) -> None:
    if args.url:
        for _ in range(args.rounds):
            await _drive(args.url, args.pid, args, "server")
        return
    if args.targets:
        await _drive_targets(args)
        return
    paths = args.kinepy_path or ["."]
    totals: dict[str, list[float]] = {path: [] for path in paths}
    for _ in range(args.rounds):
        for path in paths:
            with _server(path) as (url, pid):
                figures = await _drive(url, pid, args, path)
                totals[path].append(sum(figures.values()))
    for path, sums in totals.items():
        print(
            f"{path}: create + update + delete server CPU per object, by round: "
            + ", ".join(f"{s:.0f} µs" for s in sums)
        )


async def _drive_targets(args: argparse.Namespace) -> None:
    """Each of `args.targets`, started afresh every round, in turn."""
    names = args.targets.split(",")
    for name in names:
        check_target(name)
    databases = DatabaseServers()
    try:
        for _ in range(args.rounds):
            for name in names:
                target = make_target(name, databases, lambda line: print(line, flush=True))
                target.start()
                try:
                    await _drive(target.endpoint, target.pid, args, name, target.db_pid or 0)
                finally:
                    target.stop()
    finally:
        databases.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--value-size", type=int, default=1200)
    parser.add_argument("--kinepy-path", action="append", help="a checkout to serve from (repeatable)")
    parser.add_argument(
        "--other-watches", type=int, default=56, help="streams watching other prefixes (kube-apiserver: 56)"
    )
    parser.add_argument("--threads", action="store_true", help="CPU and context switches per thread")
    parser.add_argument("--targets", help="the suite's targets (comma-separated)")
    parser.add_argument("--url", help="a server already running (one round per --rounds on new keys)")
    parser.add_argument("--pid", type=int, default=0, help="with --url: the server's pid")
    parser.add_argument("--serve-floor", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_floor:
        _serve_floor(args.serve_floor)
        return
    import uvloop

    uvloop.run(_main(args))


if __name__ == "__main__":
    main()
