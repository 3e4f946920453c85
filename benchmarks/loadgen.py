"""The load generator: one workload against one endpoint, in its own process, reporting its own CPU.

    python -m benchmarks.loadgen '{"endpoint": "127.0.0.1:2379", "workload": "create", "params": {...}}'

prints one JSON object on stdout:

    {"ops": 1234, "seconds": 5.01, "latencies_ms": {"p50": .., "p99": .., "max": ..},
     "client_cpu_s": 3.2, "errors": 0, "unsupported": null, "extra": {...}}

``client_cpu_s`` is this process's user + system CPU while the workload ran (``resource.getrusage``), so a
client that used a whole core is visible next to the server's figure: on a 2-core machine the load
generator and the server share the CPU, and a client-bound run must not be read as a server limit.

It speaks only the etcd v3 gRPC API (``grpc.aio``, on uvloop when installed) over ``channels`` separate
HTTP/2 connections (``grpc.use_local_subchannel_pool`` keeps them apart). Each workload is one ``async``
function below, named after it; ``WORKLOADS`` maps names to them. A server that rejects a request shape
(kine accepts four Txn shapes, no lease keepalive) makes the run end with ``unsupported`` set to the
server's message instead of an error count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import resource
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from kinepy.proto import rpc_pb2, rpc_pb2_grpc

# Status codes and texts by which a server says "I do not do this" rather than "this failed".
_UNSUPPORTED_CODES = {grpc.StatusCode.UNIMPLEMENTED}
_UNSUPPORTED_TEXTS = ("not implemented", "not supported", "unsupported")
_MAX_MESSAGE = 64 * 1024 * 1024


class Unsupported(Exception):
    """The server rejected the workload's request shape (kine's limited surface)."""


def _classify(exc: grpc.aio.AioRpcError) -> None:
    """Raise `Unsupported` if `exc` says the server does not implement the request; else return."""
    text = (exc.details() or "").lower()
    if exc.code() in _UNSUPPORTED_CODES or any(t in text for t in _UNSUPPORTED_TEXTS):
        raise Unsupported(f"{exc.code().name}: {exc.details()}") from exc


def prefix_end(prefix: bytes) -> bytes:
    """The etcd range end covering every key that starts with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def percentile(sorted_values: list[float], q: float) -> float:
    """The `q` quantile (0..1) of already-sorted values, nearest-rank; 0 for no values."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


@dataclass
class Client:
    """`channels` gRPC channels to one endpoint; `kv(i)` / `watch(i)` / `lease(i)` pick one round-robin.

    An endpoint `host:port,host:port,…` (several kinepy processes on one replicated database) spreads
    every channel's calls over all of them, round-robin per call (gRPC's `round_robin` policy)."""

    endpoint: str
    channels: int = 1
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    async def __aenter__(self) -> Client:
        options: list[tuple[str, int | str]] = [
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
        ]
        target = self.endpoint
        if "," in target:
            target = "ipv4:" + target
            options.append(("grpc.lb_policy_name", "round_robin"))
        self._channels = [
            grpc.aio.insecure_channel(target, options=options) for _ in range(max(1, self.channels))
        ]
        for channel in self._channels:
            await asyncio.wait_for(channel.channel_ready(), timeout=20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for channel in self._channels:
            await channel.close()

    def _channel(self, i: int) -> grpc.aio.Channel:
        return self._channels[i % len(self._channels)]

    def kv(self, i: int = 0) -> rpc_pb2_grpc.KVStub:
        return rpc_pb2_grpc.KVStub(self._channel(i))

    def watch(self, i: int = 0) -> rpc_pb2_grpc.WatchStub:
        return rpc_pb2_grpc.WatchStub(self._channel(i))

    def lease(self, i: int = 0) -> rpc_pb2_grpc.LeaseStub:
        return rpc_pb2_grpc.LeaseStub(self._channel(i))


@dataclass
class Recorder:
    """Latencies (seconds) of completed operations, plus error and extra counters."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = repr(exc)[:500]

    def count(self, name: str, n: float = 1) -> None:
        self.extra[name] = self.extra.get(name, 0) + n


def create_txn(key: bytes, value: bytes) -> rpc_pb2.TxnRequest:
    """kube-apiserver's create: put only if the key does not exist (mod_revision == 0)."""
    return rpc_pb2.TxnRequest(
        compare=[
            rpc_pb2.Compare(key=key, target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL, mod_revision=0)
        ],
        success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))],
    )


def update_txn(key: bytes, value: bytes, mod_revision: int) -> rpc_pb2.TxnRequest:
    """kube-apiserver's GuaranteedUpdate: put if unchanged since `mod_revision`, else read the key."""
    return rpc_pb2.TxnRequest(
        compare=[
            rpc_pb2.Compare(
                key=key, target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL, mod_revision=mod_revision
            )
        ],
        success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))],
        failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))],
    )


async def run_closed_loop(
    concurrency: int, seconds: float, op: Callable[[int, int], Awaitable[None]], rec: Recorder
) -> float:
    """Run `concurrency` workers, each calling `op(worker, n)` back to back until `seconds` pass;
    record each call's latency; return the wall time. `Unsupported` stops the run."""
    deadline = time.perf_counter() + seconds
    unsupported: list[Unsupported] = []

    async def worker(w: int) -> None:
        n = 0
        while time.perf_counter() < deadline and not unsupported:
            started = time.perf_counter()
            try:
                await op(w, n)
            except Unsupported as exc:
                unsupported.append(exc)
                return
            except grpc.aio.AioRpcError as exc:
                try:
                    _classify(exc)
                except Unsupported as unsup:
                    unsupported.append(unsup)
                    return
                rec.error(exc)
                await asyncio.sleep(0.01)
            else:
                rec.latencies.append(time.perf_counter() - started)
            n += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    wall = time.perf_counter() - started
    if unsupported:
        raise unsupported[0]
    return wall


# --------------------------------------------------------------------------------------------------
# Workloads. Each takes (client, params, recorder) and returns the measured wall time in seconds.


async def put_seq(c: Client, p: dict[str, Any], rec: Recorder) -> float:
    """Sequential Put from one client: `value_size`-byte values on fresh keys."""
    kv, value, prefix = c.kv(), os.urandom(p["value_size"]), p["prefix"].encode()

    async def op(w: int, n: int) -> None:
        await kv.Put(rpc_pb2.PutRequest(key=b"%s%08d" % (prefix, n), value=value))

    return await run_closed_loop(1, p["seconds"], op, rec)


async def create(c: Client, p: dict[str, Any], rec: Recorder) -> float:
    """kube-style create txns (compare mod_revision = 0 → put) on fresh keys, `concurrency` in flight."""
    value, prefix = os.urandom(p["value_size"]), p["prefix"].encode()

    async def op(w: int, n: int) -> None:
        resp = await c.kv(w).Txn(create_txn(b"%s%04d/%08d" % (prefix, w, n), value))
        if not resp.succeeded:
            rec.count("conflicts")

    return await run_closed_loop(p["concurrency"], p["seconds"], op, rec)


async def _known_revisions(c: Client, prefix: bytes) -> dict[bytes, int]:
    """mod_revision of every key under `prefix` (one unpaginated range; used on at most a few 1000 keys)."""
    resp = await c.kv().Range(rpc_pb2.RangeRequest(key=prefix, range_end=prefix_end(prefix), keys_only=True))
    return {kv.key: kv.mod_revision for kv in resp.kvs}


async def update(c: Client, p: dict[str, Any], rec: Recorder) -> float:
    """kube-style update txns (compare mod = X → put, else get) on the `keys` keys under `prefix`,
    `concurrency` in flight; a lost race refreshes X from the failure branch's get, as the apiserver does."""
    prefix, value = p["prefix"].encode(), os.urandom(p["value_size"])
    known = await _known_revisions(c, prefix)
    keys = sorted(known)
    if not keys:
        raise RuntimeError(f"no keys under {prefix!r}: dataset not loaded")
    rng = random.Random(1)

    async def op(w: int, n: int) -> None:
        key = rng.choice(keys)
        resp = await c.kv(w).Txn(update_txn(key, value, known[key]))
        if resp.succeeded:
            known[key] = resp.header.revision
        else:
            rec.count("conflicts")
            kvs = resp.responses[0].response_range.kvs
            known[key] = kvs[0].mod_revision if kvs else 0

    return await run_closed_loop(p["concurrency"], p["seconds"], op, rec)


async def list_pages(c: Client, p: dict[str, Any], rec: Recorder) -> float:
    """Paginated list of `prefix` (`limit` per page, revision pinned by the first page, as the apiserver
    does); every page is one operation. Whole lists repeat until `seconds` pass (a list in progress is
    finished, so a slow target still completes one); `extra.list_seconds` holds each whole list's time."""
    kv, prefix, limit = c.kv(), p["prefix"].encode(), p["limit"]
    end = prefix_end(prefix)
    deadline = time.perf_counter() + p["seconds"]
    started = time.perf_counter()
    lists: list[float] = []
    while time.perf_counter() < deadline or not lists:
        list_started, key, revision, keys = time.perf_counter(), prefix, 0, 0
        while True:
            t0 = time.perf_counter()
            try:
                resp = await kv.Range(
                    rpc_pb2.RangeRequest(key=key, range_end=end, limit=limit, revision=revision)
                )
            except grpc.aio.AioRpcError as exc:
                _classify(exc)
                raise
            rec.latencies.append(time.perf_counter() - t0)
            revision = revision or resp.header.revision
            keys += len(resp.kvs)
            if not resp.more or not resp.kvs:
                break
            key = resp.kvs[-1].key + b"\0"
        lists.append(time.perf_counter() - list_started)
        if keys != p["expect_keys"]:
            rec.error(RuntimeError(f"list returned {keys} keys, expected {p['expect_keys']}"))
    rec.extra["lists"] = len(lists)
    rec.extra["list_seconds_median"] = sorted(lists)[len(lists) // 2]
    return time.perf_counter() - started


async def count(c: Client, p: dict[str, Any], rec: Recorder) -> float:
    """count_only ranges over `prefix`, one at a time; checks the count."""
    kv, prefix = c.kv(), p["prefix"].encode()
    req = rpc_pb2.RangeRequest(key=prefix, range_end=prefix_end(prefix), count_only=True)

    async def op(w: int, n: int) -> None:
        resp = await kv.Range(req)
        if resp.count != p["expect_keys"]:
            raise RuntimeError(f"count {resp.count}, expected {p['expect_keys']}")

    return await run_closed_loop(1, p["seconds"], op, rec)


async def watch_latency(c: Client, p: dict[str, Any], rec: Recorder) -> float:
    """`watchers` watchers on `prefix` (one Watch stream each, spread over the channels) while one writer
    puts `rate` keys per second, each value stamped with its send time; each event's latency is
    put-sent → event-received, so it includes the write. Events not received 5 s after the last put
    count as `extra.lost`."""
    prefix, watchers, rate = p["prefix"].encode(), p["watchers"], p["rate"]
    padding = os.urandom(max(0, p["value_size"] - 8))
    expected_per_watcher = 0
    received = [0] * watchers
    total, expected = [0], [0]  # events received by all watchers; how many they should get (once known)
    all_received = asyncio.Event()
    done = asyncio.Event()
    streams_ready = [asyncio.Event() for _ in range(watchers)]

    async def requests(i: int) -> Any:
        yield rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(key=prefix, range_end=prefix_end(prefix))
        )
        await done.wait()

    async def watcher(i: int) -> None:
        call = c.watch(i).Watch(requests(i))
        try:
            async for resp in call:
                if resp.created:
                    streams_ready[i].set()
                now = time.perf_counter()
                for ev in resp.events:
                    (sent,) = struct.unpack_from("<d", ev.kv.value)
                    rec.latencies.append(now - sent)
                    received[i] += 1
                total[0] += len(resp.events)
                if expected[0] and total[0] >= expected[0]:
                    all_received.set()
                if resp.canceled:
                    rec.error(RuntimeError(f"watch cancelled: {resp.cancel_reason}"))
                    return
        except grpc.aio.AioRpcError as exc:
            if not done.is_set():
                _classify(exc)
                rec.error(exc)
        finally:
            call.cancel()

    tasks = [asyncio.create_task(watcher(i)) for i in range(watchers)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in streams_ready)), timeout=30)
    kv = c.kv()

    async def put(key: bytes) -> None:
        await kv.Put(rpc_pb2.PutRequest(key=key, value=struct.pack("<d", time.perf_counter()) + padding))

    started = time.perf_counter()
    interval = 1.0 / rate
    in_flight: set[asyncio.Task[Any]] = set()
    n = 0
    while time.perf_counter() - started < p["seconds"]:
        target = started + n * interval
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(put(b"%s%08d" % (prefix, n)))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        n += 1
        if len(in_flight) > 256:  # the target cannot keep up with `rate`: stop piling on
            await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.gather(*in_flight)
    expected_per_watcher = n
    expected[0] = n * watchers
    if total[0] >= expected[0]:
        all_received.set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            await all_received.wait()
    wall = time.perf_counter() - started
    done.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    rec.extra["puts"] = n
    rec.extra["put_rate_achieved"] = n / p["seconds"]
    rec.extra["lost"] = expected_per_watcher * watchers - sum(received)
    if rec.extra["lost"]:
        rec.error(RuntimeError(f"{rec.extra['lost']} events not delivered within 5 s"))
    return wall


async def lease_churn(c: Client, p: dict[str, Any], rec: Recorder) -> float:
    """Lease churn, `concurrency` in flight: each operation grants a lease (TTL `ttl`), refreshes it
    once on the worker's KeepAlive stream, and revokes it."""
    queues = [asyncio.Queue[rpc_pb2.LeaseKeepAliveRequest | None]() for _ in range(p["concurrency"])]
    calls = []

    async def gen(q: asyncio.Queue[rpc_pb2.LeaseKeepAliveRequest | None]) -> Any:
        while (item := await q.get()) is not None:
            yield item

    for w, q in enumerate(queues):
        calls.append(c.lease(w).LeaseKeepAlive(gen(q)))

    async def op(w: int, n: int) -> None:
        lease = c.lease(w)
        granted = await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=p["ttl"]))
        if granted.error:
            raise RuntimeError(granted.error)
        await queues[w].put(rpc_pb2.LeaseKeepAliveRequest(ID=granted.ID))
        try:
            resp = await calls[w].read()
        except grpc.aio.AioRpcError as exc:
            _classify(exc)
            raise
        if resp is grpc.aio.EOF or resp.TTL <= 0:
            raise RuntimeError(f"keepalive of lease {granted.ID} failed: {resp}")
        await lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=granted.ID))

    try:
        return await run_closed_loop(p["concurrency"], p["seconds"], op, rec)
    finally:
        for q in queues:
            q.put_nowait(None)
        for call in calls:
            call.cancel()


async def mixed(c: Client, p: dict[str, Any], rec: Recorder) -> float:
    """A kube-like mix, `concurrency` in flight: `read_fraction` reads (nine in ten a get of one key,
    one in ten a page of `list_limit` keys of the prefix) and the rest writes (four in five an update
    txn on a known key, one in five a create txn on a fresh key)."""
    prefix, value = p["prefix"].encode(), os.urandom(p["value_size"])
    known = await _known_revisions(c, prefix)
    keys = sorted(known)
    end = prefix_end(prefix)
    rng = random.Random(2)
    kinds = ("get", "list", "update", "create")

    async def op(w: int, n: int) -> None:
        kv = c.kv(w)
        r = rng.random()
        if r < p["read_fraction"]:
            if rng.random() < 0.9:
                kind = "get"
                await kv.Range(rpc_pb2.RangeRequest(key=rng.choice(keys)))
            else:
                kind = "list"
                await kv.Range(rpc_pb2.RangeRequest(key=prefix, range_end=end, limit=p["list_limit"]))
        elif rng.random() < 0.8:
            kind, key = "update", rng.choice(keys)
            resp = await kv.Txn(update_txn(key, value, known[key]))
            if resp.succeeded:
                known[key] = resp.header.revision
            else:
                kvs = resp.responses[0].response_range.kvs
                known[key] = kvs[0].mod_revision if kvs else 0
        else:
            kind = "create"
            await kv.Txn(create_txn(b"%snew/%04d/%08d" % (prefix, w, n), value))
        rec.count(kind)

    wall = await run_closed_loop(p["concurrency"], p["seconds"], op, rec)
    for kind in kinds:
        rec.extra.setdefault(kind, 0)
    return wall


async def preload(c: Client, p: dict[str, Any], rec: Recorder) -> float:
    """Setup, not measured: `keys` keys `prefix`00000000… of `value_size` bytes, `batch` puts per txn
    (1 = a create txn per key, for kine), 32 in flight. With `rounds` > 1 every key is written that many
    times (superseded revisions for the compaction run)."""
    prefix, value, batch, total = p["prefix"].encode(), os.urandom(p["value_size"]), p["batch"], p["keys"]
    rounds = p.get("rounds", 1)
    chunks = [(r, start) for r in range(rounds) for start in range(0, total, batch)]
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    for chunk in chunks:
        queue.put_nowait(chunk)

    async def worker(w: int) -> None:
        kv = c.kv(w)
        while not queue.empty():
            _, start = queue.get_nowait()
            keys = [b"%s%08d" % (prefix, i) for i in range(start, min(total, start + batch))]
            if batch == 1:
                req = rpc_pb2.PutRequest(key=keys[0], value=value)
                for attempt in range(5):
                    try:
                        await kv.Put(req)
                        break
                    except grpc.aio.AioRpcError:
                        if attempt == 4:
                            raise
                        await asyncio.sleep(0.2)
            else:
                ops = [rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=value)) for k in keys]
                await kv.Txn(rpc_pb2.TxnRequest(success=ops))

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(32)))
    rec.extra["keys"] = total
    return time.perf_counter() - started


async def compact_during_writes(c: Client, p: dict[str, Any], rec: Recorder) -> float:
    """One writer puts sequentially (latencies recorded) while the history under the store is compacted
    up to the current revision in `batches` Compact calls, one after another. `extra` holds the longest
    write stall (the slowest put while compaction ran), the writer's rate meanwhile and the compaction's
    total time."""
    kv, prefix = c.kv(), p["prefix"].encode()
    value = os.urandom(p["value_size"])
    head = (await kv.Range(rpc_pb2.RangeRequest(key=b"\0"))).header.revision
    stop = asyncio.Event()
    during: list[float] = []
    compacting = asyncio.Event()

    async def writer() -> None:
        n = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            await kv.Put(rpc_pb2.PutRequest(key=b"%swriter/%08d" % (prefix, n % 1000), value=value))
            latency = time.perf_counter() - t0
            rec.latencies.append(latency)
            if compacting.is_set():
                during.append(latency)
            n += 1

    task = asyncio.create_task(writer())
    started = time.perf_counter()
    await asyncio.sleep(0.5)  # a baseline before compaction starts
    start_rev = p.get("start_revision", 1)
    steps = max(1, p["batches"])
    compacting.set()
    compact_started = time.perf_counter()
    batch_seconds = []
    try:
        for i in range(1, steps + 1):
            revision = start_rev + (head - start_rev) * i // steps
            t0 = time.perf_counter()
            try:
                await kv.Compact(rpc_pb2.CompactionRequest(revision=revision, physical=True))
            except grpc.aio.AioRpcError as exc:
                _classify(exc)
                if "compacted" not in (exc.details() or ""):
                    raise
            batch_seconds.append(time.perf_counter() - t0)
        compaction = time.perf_counter() - compact_started
        compacting.clear()
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await task
    rec.extra["compaction_seconds"] = compaction
    rec.extra["compacted_revisions"] = head - start_rev
    rec.extra["longest_batch_seconds"] = max(batch_seconds)
    rec.extra["longest_write_stall_ms"] = max(during, default=0.0) * 1000
    rec.extra["writes_per_s_while_compacting"] = len(during) / compaction if compaction else 0.0
    rec.extra["writes_during_compaction"] = len(during)
    return time.perf_counter() - started


WORKLOADS: dict[str, Callable[[Client, dict[str, Any], Recorder], Awaitable[float]]] = {
    "put_seq": put_seq,
    "create": create,
    "update": update,
    "list_pages": list_pages,
    "count": count,
    "watch_latency": watch_latency,
    "lease_churn": lease_churn,
    "mixed": mixed,
    "preload": preload,
    "compact_during_writes": compact_during_writes,
}


def _cpu_seconds() -> float:
    """User + system CPU seconds used by this process (all its threads, gRPC's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    params = spec.get("params", {})
    rec = Recorder()
    result: dict[str, Any] = {"unsupported": None}
    channels = params.get("channels", min(4, max(1, params.get("concurrency", 1), params.get("watchers", 1))))
    async with Client(spec["endpoint"], channels) as client:
        cpu_before = _cpu_seconds()
        try:
            seconds = await WORKLOADS[spec["workload"]](client, params, rec)
        except Unsupported as exc:
            result["unsupported"] = str(exc)
            seconds = 0.0
        result["client_cpu_s"] = _cpu_seconds() - cpu_before
    lat = sorted(rec.latencies)
    result.update(
        ops=len(lat),
        seconds=seconds,
        ops_per_s=len(lat) / seconds if seconds else 0.0,
        latencies_ms={
            "p50": percentile(lat, 0.50) * 1000,
            "p99": percentile(lat, 0.99) * 1000,
            "max": (lat[-1] if lat else 0.0) * 1000,
        },
        errors=rec.errors,
        first_error=rec.first_error,
        extra=rec.extra,
    )
    return result


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        loop_name = "uvloop"
    except ImportError:
        runner = asyncio.Runner()
        loop_name = "asyncio"
    with runner:
        result = runner.run(run(spec))
    result["client_cpu_s_total"] = _cpu_seconds()  # with start-up (imports, connecting)
    result["client_loop"] = loop_name
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
