"""PostgreSQL fails over under load: the primary dies (SIGKILL), its standby is promoted, and kinepy, on
the multi-host endpoint `postgres://…@primary,standby/db?target_session_attrs=read-write`, follows it
without a restart.

Synchronous replication (`synchronous_standby_names` on the primary): writers, a reader and watchers
run through the failover; every acknowledged write is there after it, at the revision it was
acknowledged with; writes are acknowledged again; and tests/integration/histories.py finds revisions
contiguous, every watcher (resuming after the revision it saw last when its stream ends UNAVAILABLE, as
clients do) seeing every event exactly once, in order, and the history linearizable.

Asynchronous replication, the standby cut off from the primary (a TCP proxy) before the last writes:
those acknowledged writes are lost with the primary, which cannot be helped; kinepy notices, never
reuses their revisions, compacts just after them and cancels every watch as compacted, so clients list
again (a watch resumed after the last event its client saw too).

The failover time (last write acknowledged before the kill to the first after) is printed; run with -s.
"""

from __future__ import annotations

import functools
import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from conftest import KinepyServer
from histories import Event, Op, check
from test_outage import wait_for

from kinepy.proto import rpc_pb2, rpc_pb2_grpc
from kinepy.store.txn import LOST_GAP
from kinepy.testing.databases import ReplicatedPostgres

pytestmark = [pytest.mark.kinepy, pytest.mark.slow, pytest.mark.postgres]

PREFIX, PREFIX_END = b"/f/", b"/f0"
WRITERS = 4
WATCHERS = 3
LOAD_SECONDS = 4.0  # of load before the kill, and again once writes are acknowledged again
CALL_TIMEOUT = 5.0
RECOVERY_LIMIT = 60.0  # seconds from the kill to the first write acknowledged again

MakePair = Callable[..., ReplicatedPostgres]
MakeKinepy = Callable[..., KinepyServer]


@dataclass
class Load:
    """Writer threads putting keys of their own under PREFIX (each key once; a failed put's outcome is
    unknown, so the next goes to a new key) and a reader getting keys written before, every request
    recorded as a `histories.Op`."""

    kv: rpc_pb2_grpc.KVStub
    ops: list[Op] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, writers: int) -> None:
        targets = [functools.partial(self._write, n) for n in range(writers)] + [self._read]
        for target in targets:
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self.threads.append(thread)

    def _record(self, op: Op, call: Callable[[], Any]) -> Any:
        try:
            resp = call()
        except grpc.RpcError as exc:
            op.error, op.details = exc.code(), exc.details() or ""
            time.sleep(0.05)
            return None
        finally:
            op.ended = time.monotonic()
            self.ops.append(op)
        op.revision = int(resp.header.revision)
        return resp

    def _write(self, n: int) -> None:
        for i in itertools.count():
            if self.stop.is_set():
                return
            op = Op("put", PREFIX + b"%d/%06d" % (n, i), time.monotonic(), value=b"v%d.%d" % (n, i))
            request = rpc_pb2.PutRequest(key=op.key, value=op.value)
            self._record(op, lambda: self.kv.Put(request, timeout=CALL_TIMEOUT))  # noqa: B023

    def _read(self) -> None:
        while not self.stop.is_set():
            written = [op.key for op in self.ops[-50:] if op.kind == "put"]
            op = Op("get", written[-1] if written else PREFIX, time.monotonic())
            request = rpc_pb2.RangeRequest(key=op.key)
            resp = self._record(op, lambda: self.kv.Range(request, timeout=CALL_TIMEOUT))  # noqa: B023
            if resp is not None and resp.kvs:
                op.found, op.value, op.mod_revision = True, resp.kvs[0].value, int(resp.kvs[0].mod_revision)

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=2 * CALL_TIMEOUT)

    def acknowledged(self, *, sent_after: float = 0.0) -> list[Op]:
        """The acknowledged writes, of those sent after `sent_after` only if given."""
        return [op for op in self.ops if op.kind == "put" and op.ok and op.started > sent_after]

    def failover_seconds(self, killed: float) -> float:
        """From the last write acknowledged before `killed` to the first acknowledged of those sent after."""
        before = max(op.ended for op in self.acknowledged() if op.ended < killed)
        return min(op.ended for op in self.acknowledged(sent_after=killed)) - before


@dataclass
class Watcher:
    """A watch on PREFIX from `start`. When its stream ends UNAVAILABLE it resumes from the revision
    after the last event it saw, as etcd clients do; a compacted cancel ends it."""

    channel: grpc.Channel
    start: int
    events: list[Event] = field(default_factory=list)
    compacted: int = 0
    resumed: int = 0
    error: str = ""
    stopping: bool = False
    calls: list[grpc.Future] = field(default_factory=list)
    thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        stub = rpc_pb2_grpc.WatchStub(self.channel)
        while not self.stopping:
            start = self.events[-1].revision + 1 if self.events else self.start
            requests: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()
            create = rpc_pb2.WatchCreateRequest(key=PREFIX, range_end=PREFIX_END, start_revision=start)
            requests.put(rpc_pb2.WatchRequest(create_request=create))
            call = stub.Watch(iter(requests.get, None))
            self.calls.append(call)
            try:
                for resp in call:
                    if resp.canceled:
                        self.compacted = int(resp.compact_revision)
                        self.error = "" if resp.compact_revision else f"cancelled: {resp.cancel_reason}"
                        return
                    self.events += [Event.of(e) for e in resp.events]
            except grpc.RpcError as exc:
                if self.stopping:
                    return
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    self.error = f"{exc.code().name} {exc.details()}"
                    return
                self.resumed += 1
                time.sleep(0.1)

    def reached(self, revision: int) -> bool:
        return bool(self.events) and self.events[-1].revision >= revision

    def close(self) -> None:
        self.stopping = True
        for call in self.calls:
            call.cancel()
        assert self.thread is not None
        self.thread.join(timeout=CALL_TIMEOUT)


def _current_revision(kv: rpc_pb2_grpc.KVStub) -> int:
    return int(kv.Range(rpc_pb2.RangeRequest(key=PREFIX), timeout=CALL_TIMEOUT).header.revision)


def test_kinepy_follows_a_synchronous_standby_promoted_under_load_and_loses_nothing(
    make_replicated_postgres: MakePair, make_kinepy_on: MakeKinepy
) -> None:
    pair = make_replicated_postgres(synchronous=True)
    kinepy = make_kinepy_on(pair.url(pair.primary.create_database()), log_level="info")
    assert "commits wait for a synchronous standby" in kinepy.log_tail()
    channel = grpc.insecure_channel(kinepy.endpoint)
    kv = rpc_pb2_grpc.KVStub(channel)
    start = _current_revision(kv) + 1
    watchers = [Watcher(channel, start) for _ in range(WATCHERS)]
    load = Load(kv)
    load.start(WRITERS)
    try:
        wait_for("writes before the kill", lambda: len(load.acknowledged()) >= 50, 30)
        time.sleep(LOAD_SECONDS)
        promotion = pair.fail_over()
        killed = pair.killed_at
        wait_for(
            "a write acknowledged after the failover", lambda: bool(load.acknowledged(sent_after=killed)), 60
        )
        time.sleep(LOAD_SECONDS)
    finally:
        load.join()
    failover = load.failover_seconds(killed)
    after = len(load.acknowledged(sent_after=killed))
    failed = [f"{op.error.name} {op.details}" for op in load.ops if op.error is not None]
    print(
        f"\n[synchronous standby] failover {failover:.2f} s (last write acknowledged before the kill to the "
        f"first after; the promotion itself {promotion:.2f} s); {len(load.acknowledged()) - after} writes "
        f"acknowledged before, {after} after; {len(failed)} of {len(load.ops)} requests failed, first: "
        f"{failed[:1]}"
    )
    assert failover < RECOVERY_LIMIT

    # Every acknowledged write is there, at the revision it was acknowledged with.
    final = kv.Range(rpc_pb2.RangeRequest(key=PREFIX, range_end=PREFIX_END), timeout=CALL_TIMEOUT)
    stored = {item.key: (item.value, int(item.mod_revision)) for item in final.kvs}
    lost = [op for op in load.acknowledged() if stored.get(op.key) != (op.value, op.revision)]
    assert not lost, f"{len(lost)} acknowledged writes lost or changed, first: {lost[:3]}"

    # The watchers, and one more reading the whole history after: every event exactly once, in
    # order, revisions contiguous, every acknowledged write at its revision, reads linearizable.
    last = int(final.header.revision)
    watchers.append(Watcher(channel, start))
    for watcher in watchers:
        wait_for("a watcher to reach the last revision", lambda: watcher.reached(last), 30)  # noqa: B023
        watcher.close()
        assert not watcher.error and not watcher.compacted, (watcher.error, watcher.compacted)
    problems = check(load.ops, [watcher.events for watcher in watchers], first_revision=start)
    assert not problems, "\n".join(problems)
    print(f"[synchronous standby] watchers resumed {[w.resumed for w in watchers]} times; history checked")
    channel.close()
    assert kinepy.proc is not None and kinepy.proc.poll() is None, "kinepy restarted"


def test_writes_a_promoted_asynchronous_standby_never_received_are_fenced_off(
    make_replicated_postgres: MakePair, make_kinepy_on: MakeKinepy
) -> None:
    pair = make_replicated_postgres(synchronous=False, proxied=True)
    kinepy = make_kinepy_on(pair.url(pair.primary.create_database()), log_level="info")
    assert "commits do not wait for a standby" in kinepy.log_tail()
    channel = grpc.insecure_channel(kinepy.endpoint)
    kv = rpc_pb2_grpc.KVStub(channel)
    start = _current_revision(kv) + 1
    watcher = Watcher(channel, start)

    def put(key: bytes) -> int:
        return int(
            kv.Put(rpc_pb2.PutRequest(key=PREFIX + key, value=key), timeout=CALL_TIMEOUT).header.revision
        )

    kept = [put(b"kept/%d" % i) for i in range(5)]
    wait_for("the standby to replay the first writes", pair.replayed, 30)
    assert pair.replication is not None
    pair.replication.cut()  # the primary goes on alone: asynchronous, it does not wait
    doomed = [put(b"doomed/%d" % i) for i in range(5)]
    wait_for("the watcher to see every write", lambda: watcher.reached(doomed[-1]), 15)
    pair.fail_over()

    # The first write after the failover: a revision after every acknowledged one, never one reused.
    revisions: list[int] = []

    def put_again() -> bool:
        try:
            revisions.append(put(b"after"))
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            return False
        return True

    wait_for("a write acknowledged after the failover", put_again, RECOVERY_LIMIT)
    fence = doomed[-1] + LOST_GAP  # two empty revisions, compacted: see txn.BatchState.skip_lost
    assert revisions[0] == fence + 1

    # The writes the standby never received are gone; what it had is there.
    stored = kv.Range(rpc_pb2.RangeRequest(key=PREFIX, range_end=PREFIX_END), timeout=CALL_TIMEOUT).kvs
    assert sorted(int(item.mod_revision) for item in stored) == [*kept, revisions[0]]
    # Reading at a lost revision, or watching from one, is refused as compacted; the open watch was
    # cancelled as compacted after the events it had, so that its client lists again.
    with pytest.raises(grpc.RpcError) as info:
        kv.Range(rpc_pb2.RangeRequest(key=PREFIX, revision=doomed[0]), timeout=CALL_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    wait_for("the open watch to be cancelled", lambda: watcher.compacted > 0, 15)
    assert watcher.compacted == fence
    assert [event.revision for event in watcher.events] == [*kept, *doomed]
    resumed = Watcher(channel, doomed[-1] + 1)  # a client resuming after the last event it saw
    wait_for("the resumed watch to be cancelled", lambda: resumed.compacted > 0, 15)
    assert resumed.compacted == fence and not resumed.events
    after = Watcher(channel, fence)
    wait_for("a new watch to see the write after", lambda: after.reached(revisions[0]), 15)
    after.close()
    assert [event.revision for event in after.events] == revisions
    assert "the datastore lost revisions" in kinepy.log_tail(10**7)
    channel.close()
