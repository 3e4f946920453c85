"""The lean paths of issue 12: what one put costs in database round trips, and what a single-key Range
costs in and around the store.

    python -m benchmarks.lean put --kind postgres|mariadb [--puts 1000] [--rounds 2]
    python -m benchmarks.lean read [--keys 10000] [--calls 20000] [--rounds 5]
    python -m benchmarks.lean range [--seconds 5] [--in-flight 16] [--floor]
    python -m benchmarks.lean kube [--kind postgres|mariadb] [--objects 10000] [--url URL --db-pid PID]
                                   [--loop asyncio|server]

`put` starts its own database server, counts the statements (each one round trip) one put sends
(asyncpg's query logger; on MySQL, aiomysql's `Cursor.execute` and `commit`), then times sequential
puts through the store. `read` times `read_range` of one key (through `TimedBackend`) and
`Store.range` of it, in process on a SQLite file: CPU per call, best of the rounds. `range` starts
`python -m kinepy` on SQLite (or, with `--floor`, a grpc.aio server on uvloop answering every Range
with a canned one-key reply) and keeps `--in-flight` single-key Ranges in flight from a grpc.aio
client here; it reports calls/s and the server's CPU per call from /proc (which other processes on a
busy machine inflate less than they inflate latency).
`kube` sends, in process, what kube-apiserver sends the store for each object of the Kubernetes
workload (benchmarks/kube.py): a create (a txn: compare mod_revision = 0, put), then, in creation
order, a deletion (a txn: compare mod_revision, delete with prev_kv) and the get that follows it;
it reports kinepy's and the database server's CPU per operation (the server's own, or `--url` with
the `--db-pid` of its postmaster), on asyncio's own event loop, or with `--loop server` on the
server's (uvloop when installed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from kinepy.backends.base import Backend, LogRow, ReadSet, Snapshot, WriteSet
from kinepy.backends.factory import create_backend
from kinepy.backends.sql.sqlite import SQLiteBackend
from kinepy.backends.timing import TimedBackend
from kinepy.config import Config
from kinepy.endpoint import backend_spec
from kinepy.proto import kv_pb2, rpc_pb2, rpc_pb2_grpc
from kinepy.runtime import event_loop_runner
from kinepy.specs import BackendSettings
from kinepy.store.store import Store
from kinepy.testing.databases import free_port, start_database_server
from kinepy.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    KeyRange,
    KeyValue,
    PutRequest,
    RangeQuery,
    RangeRequest,
    RequestOp,
    TxnRequest,
)

KEY = b"/registry/k/0500"


async def _close(store: Store, backend: Backend) -> None:
    await store.aclose()
    await backend.aclose()


# -- put: round trips --------------------------------------------------------------------------------


def _count_statements(backend: Backend, kind: str, statements: list[str]) -> None:
    """Append every statement the backend's connections send to `statements`."""
    if kind == "mariadb":
        import aiomysql

        execute: Callable[..., Any] = aiomysql.Cursor.execute
        commit: Callable[..., Any] = aiomysql.Connection.commit

        async def counted_execute(self: Any, query: str, args: Any = None) -> Any:
            statements.append(query)
            return await execute(self, query, args)

        async def counted_commit(self: Any) -> Any:
            statements.append("COMMIT")
            return await commit(self)

        aiomysql.Cursor.execute = counted_execute
        aiomysql.Connection.commit = counted_commit
        return
    for holder in backend._pool.pool._holders:  # type: ignore[attr-defined]
        if holder._con is not None:
            holder._con.add_query_logger(lambda record: statements.append(record.query))


def _forget_writes(backend: Backend) -> None:
    """Drop the backend's write cache as a write of another process does (the next batch reads)."""
    cache = getattr(backend, "_cache", None)
    if cache is not None:
        cache.invalidate()


@contextlib.asynccontextmanager
async def _store_on(url: str) -> AsyncIterator[tuple[Store, Backend]]:
    """A started store on the backend of `url`, closed on leaving."""
    backend = create_backend(backend_spec(Config(datastore_endpoint=url)), BackendSettings())
    await backend.start()
    store = Store(backend)
    await store.start()
    try:
        yield store, backend
    finally:
        await _close(store, backend)


async def _puts(url: str, kind: str, puts: int, rounds: int) -> None:
    async with _store_on(url) as (store, backend):
        await store.put(PutRequest(key=b"/warm", value=b"x"))
        statements: list[str] = []
        _count_statements(backend, kind, statements)
        # A put that must read first (the key was never seen: the batch is evaluated on what it reads),
        # then puts in the steady state (the backend's write cache answers the read set).
        cases = (("a put after another process wrote", b"/warm2"), ("a put of a new key", b"/registry/one"))
        for what, key in cases:
            statements.clear()
            if key == b"/warm2":
                _forget_writes(backend)
            await store.put(PutRequest(key=key, value=b"v" * 256))
            print(f"{kind}: {what} sends {len(statements)} statements (round trips):")
            for statement in statements:
                print("   ", statement[:120].replace("\n", " "))
        statements.clear()
        await store.put(PutRequest(key=b"/registry/one", value=b"w" * 256))
        print(f"{kind}: an update of that key sends {len(statements)} statements (round trips)")
        for number in range(rounds):
            latencies = []
            cpu = time.process_time()
            for i in range(puts):
                started = time.perf_counter()
                await store.put(PutRequest(key=b"/registry/k/%05d" % i, value=b"v" * 256))
                latencies.append(time.perf_counter() - started)
            cpu = time.process_time() - cpu
            latencies.sort()
            print(
                f"round {number}: {puts} sequential puts, p50 {1e3 * latencies[len(latencies) // 2]:.2f} ms, "
                f"p99 {1e3 * latencies[int(len(latencies) * 0.99)]:.2f} ms, "
                f"kinepy CPU {1e6 * cpu / puts:.0f} µs/put"
            )


def put(args: argparse.Namespace) -> None:
    server = start_database_server(args.kind)
    try:
        asyncio.run(_puts(server.url("kinepy_lean"), args.kind, args.puts, args.rounds))
    finally:
        server.remove()


# -- read: in process ----------------------------------------------------------------------------------


async def _reads(keys: int, calls: int, rounds: int) -> None:
    directory = tempfile.mkdtemp(prefix="kinepy-lean-")
    sqlite = SQLiteBackend(os.path.join(directory, "state.db"))
    await sqlite.start()
    names = [b"/registry/k/%05d" % i for i in range(keys)]

    def load(snapshot: Snapshot) -> WriteSet:
        revision = snapshot.revision + 1
        write_set = WriteSet(revision)
        for sub, key in enumerate(names):
            write_set.log.append(LogRow(revision, sub, key, revision, 1, 0, b"v" * 100, False))
            write_set.current[key] = KeyValue(key, revision, revision, 1, b"v" * 100, 0)
        return write_set

    await sqlite.write(ReadSet(), load)
    backend = TimedBackend(sqlite, threshold=0.5, warning_threshold=1.0)
    store = Store(backend)
    await store.start()
    key = names[keys // 2]
    query = RangeQuery(KeyRange(key, key + b"\x00"))
    request = RangeRequest(key=key)

    async def backend_reads() -> None:
        for _ in range(calls):
            await backend.read_range(query)

    async def store_reads() -> None:
        for _ in range(calls):
            await store.range(request)

    try:
        for name, reads in (
            ("read_range (TimedBackend, SQLite)", backend_reads),
            ("Store.range", store_reads),
        ):
            best = float("inf")
            for _ in range(rounds):
                cpu = time.process_time()
                await reads()
                best = min(best, time.process_time() - cpu)
            print(
                f"{name}: {1e6 * best / calls:.2f} µs CPU per call "
                f"(best of {rounds}, {calls} calls, {keys} keys)"
            )
    finally:
        await _close(store, sqlite)


def read(args: argparse.Namespace) -> None:
    asyncio.run(_reads(args.keys, args.calls, args.rounds))


# -- range: through gRPC ------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _floor(address: str) -> None:
    """The floor server (run as `python -m benchmarks.lean floor-server ADDRESS`)."""
    import uvloop

    reply = rpc_pb2.RangeResponse(
        header=rpc_pb2.ResponseHeader(cluster_id=1, member_id=2, revision=1001, raft_term=1),
        kvs=[kv_pb2.KeyValue(key=KEY, create_revision=502, mod_revision=502, version=1, value=b"v" * 256)],
        count=1,
    )

    class Canned(rpc_pb2_grpc.KVServicer):
        async def Range(
            self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext
        ) -> rpc_pb2.RangeResponse:
            return reply

    async def serve() -> None:
        server = grpc.aio.server()
        rpc_pb2_grpc.add_KVServicer_to_server(Canned(), server)
        server.add_insecure_port(address)
        await server.start()
        await server.wait_for_termination()

    uvloop.install()
    asyncio.run(serve())


async def _ranges(address: str, server: subprocess.Popen[bytes], args: argparse.Namespace) -> None:
    channel = grpc.aio.insecure_channel(address)
    await asyncio.wait_for(channel.channel_ready(), 30)
    kv = rpc_pb2_grpc.KVStub(channel)
    if not args.floor:
        for i in range(1000):
            await kv.Put(rpc_pb2.PutRequest(key=b"/registry/k/%04d" % i, value=b"v" * 256))
    request = rpc_pb2.RangeRequest(key=KEY)
    stop = False
    calls = 0

    async def loop() -> None:
        nonlocal calls
        while not stop:
            reply = await kv.Range(request)
            assert len(reply.kvs) == 1
            calls += 1

    cpu, started = _cpu_seconds(server.pid), time.perf_counter()
    tasks = [asyncio.create_task(loop()) for _ in range(args.in_flight)]
    await asyncio.sleep(args.seconds)
    stop = True
    await asyncio.gather(*tasks)
    cpu, elapsed = _cpu_seconds(server.pid) - cpu, time.perf_counter() - started
    what = "floor (canned reply)" if args.floor else "kinepy on SQLite"
    print(
        f"{what}: single-key Range, {args.in_flight} in flight: {calls / elapsed:,.0f}/s, "
        f"server CPU {1e6 * cpu / calls:.0f} µs per call"
    )
    await channel.close()


def range_(args: argparse.Namespace) -> None:
    address = f"127.0.0.1:{free_port()}"
    if args.floor:
        argv = [sys.executable, "-m", "benchmarks.lean", "floor-server", address]
    else:
        directory = tempfile.mkdtemp(prefix="kinepy-lean-")
        argv = [sys.executable, "-m", "kinepy", "--listen-address", address]
        argv += ["--datastore-endpoint", f"sqlite://{directory}/state.db"]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        asyncio.run(_ranges(address, server, args))
    finally:
        server.terminate()
        server.wait()


# -- kube: what kube-apiserver sends per object -------------------------------------------------------


def _server_cpu(pid: int) -> float:
    from benchmarks.targets import tree_cpu_seconds

    return tree_cpu_seconds(pid)


async def _kube_creates(store: Store, names: list[bytes], value: bytes) -> list[int]:
    """kube-apiserver's create of each of `names`; the revisions they were created at."""
    revisions = []
    for key in names:
        compare = [Compare(CompareResult.EQUAL, CompareTarget.MOD, key, operand=0)]
        reply = await store.txn(TxnRequest(compare, [PutRequest(key, value)], [RangeRequest(key)]))
        revisions.append(reply.revision)
    return revisions


async def _kube_deletions(store: Store, names: list[bytes], revisions: list[int]) -> None:
    """kube-apiserver's deletion of each of `names` and the get that follows it."""
    for key, revision in zip(names, revisions, strict=True):
        compare = [Compare(CompareResult.EQUAL, CompareTarget.MOD, key, operand=revision)]
        ops: list[RequestOp] = [DeleteRangeRequest(key, prev_kv=True)]
        reply = await store.txn(TxnRequest(compare, ops, [RangeRequest(key)]))
        assert reply.succeeded
        await store.range(RangeRequest(key, limit=1))


async def _kube_ops(url: str, db_pid: int, objects: int, rounds: int) -> None:
    async with _store_on(url) as (store, _):
        for number in range(rounds):
            names = [b"/registry/configmaps/bench%d/cm-%06d" % (number, i) for i in range(objects)]
            revisions: list[int] = []
            for phase in ("create", "delete + get"):
                cpu, db, started = time.process_time(), _server_cpu(db_pid), time.perf_counter()
                if phase == "create":
                    revisions = await _kube_creates(store, names, b"v" * 1200)
                else:
                    await _kube_deletions(store, names, revisions)
                elapsed = time.perf_counter() - started
                cpu, db = time.process_time() - cpu, _server_cpu(db_pid) - db
                print(
                    f"round {number} {phase}: {objects / elapsed:,.0f}/s, per object kinepy CPU "
                    f"{1e6 * cpu / objects:.0f} µs, database CPU {1e6 * db / objects:.0f} µs "
                    f"(load average {os.getloadavg()[0]:.1f})"
                )


def kube(args: argparse.Namespace) -> None:
    # asyncio's own loop (the figures in docs/performance.md), or the server's (`event_loop_runner`:
    # uvloop when installed) with --loop server.
    runner = event_loop_runner() if args.loop == "server" else asyncio.Runner()
    if args.url:
        with runner:
            runner.run(_kube_ops(args.url, args.db_pid, args.objects, args.rounds))
        return
    server = start_database_server(args.kind)
    try:
        assert server.proc is not None
        with runner:
            runner.run(_kube_ops(server.url("kinepy_lean"), server.proc.pid, args.objects, args.rounds))
    finally:
        server.remove()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lean", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("put", help="round trips and latency of one client's puts")
    p.add_argument("--kind", choices=["postgres", "mariadb"], default="postgres")
    p.add_argument("--puts", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=2)
    p.set_defaults(run=put)
    r = commands.add_parser("read", help="a single-key read in process, on SQLite")
    r.add_argument("--keys", type=int, default=10_000)
    r.add_argument("--calls", type=int, default=20_000)
    r.add_argument("--rounds", type=int, default=5)
    r.set_defaults(run=read)
    g = commands.add_parser("range", help="a single-key Range through gRPC")
    g.add_argument("--seconds", type=float, default=5.0)
    g.add_argument("--in-flight", type=int, default=16)
    g.add_argument("--floor", action="store_true", help="the canned-reply server instead of kinepy")
    g.set_defaults(run=range_)
    k = commands.add_parser("kube", help="kube-apiserver's creates and deletions in process")
    k.add_argument("--kind", choices=["postgres", "mariadb"], default="postgres")
    k.add_argument("--objects", type=int, default=10_000)
    k.add_argument("--rounds", type=int, default=1)
    k.add_argument("--url", default="", help="a kinepy endpoint on a running server instead of a new one")
    k.add_argument("--db-pid", type=int, default=0, help="with --url: the server's postmaster pid")
    k.add_argument(
        "--loop", choices=["asyncio", "server"], default="asyncio", help="asyncio's or the server's (uvloop)"
    )
    k.set_defaults(run=kube)
    f = commands.add_parser("floor-server", help=argparse.SUPPRESS)
    f.add_argument("address")
    f.set_defaults(run=lambda args: _floor(args.address))
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
