"""Every backend through real gRPC: the same KV, watch and lease checks on SQLite, PostgreSQL and MariaDB.

Each test gets a fresh database (``database`` from ``tests/conftest.py``: a SQLite file, or a new
database on the session's PostgreSQL or MariaDB server) and a ``python -m kinepy`` subprocess on it.
The checks are etcd's rules, so a backend that orders, stores or reads rows differently fails here:
revisions from 1, limits and counts, history at old revisions, compaction, bytewise key order for keys
a collation would fold (case, trailing spaces, NUL, 0xFF), watches replayed from the database's log,
lease expiry, and a clean exit with a bad password.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import blocking_clients
import conftest
import grpc
import pytest
from conftest import KinepyServer
from google.protobuf.message import Message

from kinepy.proto import kv_pb2, rpc_pb2, rpc_pb2_grpc
from kinepy.testing.databases import TestDatabase

pytestmark = pytest.mark.kinepy

RR = rpc_pb2.RangeRequest
PUT = kv_pb2.Event.PUT
DELETE = kv_pb2.Event.DELETE
COMPACTED = (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
FUTURE = (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
EVENT_TIMEOUT = 15.0

MakeKinepy = Callable[..., KinepyServer]


class Client(blocking_clients.Client):
    """`blocking_clients.Client` with Maintenance; `call` returns the response or `(code, details)`."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint)
        self.maintenance = rpc_pb2_grpc.MaintenanceStub(self.channel)

    def call(self, stub: Any, method: str, request: Message) -> Any:
        try:
            return getattr(stub, method)(request, timeout=30)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()


class Watch:
    """One Watch stream; responses are collected by a thread, `next()` waits at most EVENT_TIMEOUT."""

    def __init__(self, client: Client, create: rpc_pb2.WatchCreateRequest) -> None:
        self._requests: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()
        self._responses: queue.Queue[rpc_pb2.WatchResponse | Exception] = queue.Queue()
        self._requests.put(rpc_pb2.WatchRequest(create_request=create))
        self._call = client.watch.Watch(iter(self._requests.get, None))
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for response in self._call:
                self._responses.put(response)
        except grpc.RpcError as exc:
            self._responses.put(exc)

    def next(self) -> rpc_pb2.WatchResponse:
        try:
            item = self._responses.get(timeout=EVENT_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no watch response within {EVENT_TIMEOUT} s") from None
        if isinstance(item, Exception):
            raise item
        return item

    def events(self, count: int) -> list[kv_pb2.Event]:
        """The next `count` events, skipping responses without events (the created response)."""
        events: list[kv_pb2.Event] = []
        while len(events) < count:
            events.extend(self.next().events)
        return events

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()


@pytest.fixture
def server(database: TestDatabase, make_kinepy_on: MakeKinepy) -> KinepyServer:
    return make_kinepy_on(database.url)


@pytest.fixture
def client(server: KinepyServer) -> Iterator[Client]:
    c = Client(server.endpoint)
    yield c
    c.close()


def _keys(response: rpc_pb2.RangeResponse) -> list[bytes]:
    return [kv.key for kv in response.kvs]


# --------------------------------------------------------------------------------------------------
# KV.


def test_revisions_start_at_one_and_ranges_limit_count_and_more(client: Client) -> None:
    empty = client.get(b"a")
    assert (empty.header.revision, list(empty.kvs), empty.count) == (1, [], 0)
    assert [client.put(k, b"v-" + k) for k in (b"a/1", b"a/2", b"a/3", b"b/1")] == [2, 3, 4, 5]
    assert client.put(b"a/2", b"v2") == 6

    one = client.get(b"a/2")
    assert (one.kvs[0].value, one.kvs[0].create_revision, one.kvs[0].mod_revision, one.kvs[0].version) == (
        b"v2",
        3,
        6,
        2,
    )
    prefix = client.get(b"a/", b"a0")
    assert (_keys(prefix), prefix.count, prefix.more) == ([b"a/1", b"a/2", b"a/3"], 3, False)
    limited = client.get(b"a/", b"a0", limit=2)
    assert (_keys(limited), limited.count, limited.more) == ([b"a/1", b"a/2"], 3, True)
    counted = client.get(b"\0", b"\0", count_only=True)
    assert (list(counted.kvs), counted.count) == ([], 4)
    keys_only = client.get(b"a/", b"a0", keys_only=True, limit=1)
    assert (_keys(keys_only), keys_only.kvs[0].value, keys_only.more) == ([b"a/1"], b"", True)
    assert client.get(b"a/1", b"a/3").count == 2  # [a/1, a/3)
    assert client.get(b"zzz").header.revision == 6


def test_paginated_list_counts_the_keys_still_ahead_at_the_pinned_revision(client: Client) -> None:
    """kube-apiserver's list: page 1 at the latest revision, then `[last key + \\0, end)` at that
    revision while writes go on. Every page's count is the keys of its range at the pinned revision,
    as a count_only read at that revision says (kinepy carries it from page to page)."""
    keys = [b"p/%03d" % i for i in range(23)]
    for k in keys:
        client.put(k, b"v")
    first = client.get(b"p/", b"p0", limit=5)
    pinned = first.header.revision
    pages, page = [first], first
    while page.more:
        # Writes between pages: a create inside the range, a delete of a key ahead, an update.
        client.put(b"p/%03d~" % len(pages), b"new")
        client.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=keys[-len(pages)]), timeout=30)
        client.put(keys[len(pages)], b"changed")
        page = client.get(page.kvs[-1].key + b"\0", b"p0", limit=5, revision=pinned)
        pages.append(page)
    assert [k for p in pages for k in _keys(p)] == keys
    assert [p.count for p in pages] == [23, 18, 13, 8, 3]
    for p in pages:
        oracle = client.get(p.kvs[0].key, b"p0", count_only=True, revision=pinned)
        assert p.count == oracle.count
    latest = client.get(b"p/", b"p0", count_only=True)
    assert latest.count == 23 + 4 - 4  # four creates, four deletes since


def test_history_reads_at_old_revisions(client: Client) -> None:
    client.put(b"k", b"v1")  # 2
    client.put(b"k", b"v2")  # 3
    client.put(b"other", b"o")  # 4
    client.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"k"))  # 5
    client.put(b"k", b"v3")  # 6

    def at(revision: int) -> list[tuple[bytes, bytes, int, int, int]]:
        r = client.get(b"\0", b"\0", revision=revision)
        assert r.header.revision == 6
        return [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in r.kvs]

    assert at(1) == []
    assert at(2) == [(b"k", b"v1", 2, 2, 1)]
    assert at(3) == [(b"k", b"v2", 2, 3, 2)]
    assert at(4) == [(b"k", b"v2", 2, 3, 2), (b"other", b"o", 4, 4, 1)]
    assert at(5) == [(b"other", b"o", 4, 4, 1)]
    assert at(6) == [(b"k", b"v3", 6, 6, 1), (b"other", b"o", 4, 4, 1)]
    old = client.get(b"\0", b"\0", revision=4, limit=1)
    assert (_keys(old), old.count, old.more) == ([b"k"], 2, True)
    assert client.get(b"\0", b"\0", revision=4, count_only=True).count == 2
    assert client.call(client.kv, "Range", RR(key=b"k", revision=7)) == FUTURE

    # A page at an old revision merges unchanged keys (kv_current) and changed ones (kv_log) in key order.
    for i in range(10):
        client.put(b"p/%d" % i, b"old")  # 7..16
    pinned = client.put(b"q", b"after the pages")  # 17
    client.put(b"p/1", b"new")  # 18
    client.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"p/2"))  # 19
    client.put(b"p/00", b"created later")  # 20
    page = client.get(b"p/", b"p0", revision=pinned, limit=3)
    assert [(kv.key, kv.value) for kv in page.kvs] == [(b"p/0", b"old"), (b"p/1", b"old"), (b"p/2", b"old")]
    assert (page.count, page.more) == (10, True)
    keys = client.get(b"p/", b"p0", revision=pinned, limit=4, keys_only=True)
    assert [(kv.key, kv.value, kv.mod_revision) for kv in keys.kvs] == [
        (b"p/0", b"", 7),
        (b"p/1", b"", 8),
        (b"p/2", b"", 9),
        (b"p/3", b"", 10),
    ]
    now = client.get(b"p/", b"p0", limit=3)
    assert (_keys(now), now.count) == ([b"p/0", b"p/00", b"p/1"], 10)


def test_txn_compare_and_swap(client: Client) -> None:
    rev = client.put(b"lock", b"free")

    def swap(expected_mod: int, value: bytes) -> rpc_pb2.TxnResponse:
        resp: rpc_pb2.TxnResponse = client.kv.Txn(
            rpc_pb2.TxnRequest(
                compare=[
                    rpc_pb2.Compare(
                        key=b"lock",
                        target=rpc_pb2.Compare.MOD,
                        result=rpc_pb2.Compare.EQUAL,
                        mod_revision=expected_mod,
                    )
                ],
                success=[
                    rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"lock", value=value, prev_kv=True))
                ],
                failure=[rpc_pb2.RequestOp(request_range=RR(key=b"lock"))],
            ),
            timeout=30,
        )
        return resp

    won = swap(rev, b"held")
    assert won.succeeded and won.header.revision == rev + 1
    assert won.responses[0].response_put.prev_kv.value == b"free"
    lost = swap(rev, b"stolen")
    assert not lost.succeeded and lost.header.revision == rev + 1
    assert lost.responses[0].response_range.kvs[0].value == b"held"
    # A txn of several puts and a delete: one revision for all of them.
    ops = [rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=k)) for k in (b"t1", b"t2", b"t3")]
    ops.append(rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=b"lock")))
    multi = client.kv.Txn(rpc_pb2.TxnRequest(success=ops), timeout=30)
    assert multi.header.revision == rev + 2
    assert [(kv.key, kv.mod_revision) for kv in client.get(b"\0", b"\0").kvs] == [
        (b"t1", rev + 2),
        (b"t2", rev + 2),
        (b"t3", rev + 2),
    ]


def test_delete_range_returns_prev_kvs_and_advances_once(client: Client) -> None:
    for key in (b"d/1", b"d/2", b"d/3", b"e"):
        client.put(key, b"x" + key)
    deleted = client.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"d/", range_end=b"d0", prev_kv=True))
    assert (deleted.deleted, deleted.header.revision) == (3, 6)
    assert [(kv.key, kv.value, kv.mod_revision) for kv in deleted.prev_kvs] == [
        (b"d/1", b"xd/1", 2),
        (b"d/2", b"xd/2", 3),
        (b"d/3", b"xd/3", 4),
    ]
    nothing = client.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"d/", range_end=b"d0"))
    assert (nothing.deleted, nothing.header.revision) == (0, 6)
    assert _keys(client.get(b"\0", b"\0")) == [b"e"]
    again = client.put(b"d/2", b"new")
    created = client.get(b"d/2").kvs[0]
    assert (created.create_revision, created.version, again) == (7, 1, 7)


def test_compaction_keeps_reads_at_and_above_the_compaction_point(client: Client) -> None:
    for i in range(1, 6):
        client.put(b"c", b"v%d" % i)  # revisions 2..6
    client.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"gone-later"))  # nothing: no revision
    client.put(b"gone", b"g")  # 7
    client.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"gone"))  # 8
    client.put(b"c", b"v6")  # 9
    client.kv.Compact(rpc_pb2.CompactionRequest(revision=5, physical=True), timeout=30)

    assert client.call(client.kv, "Range", RR(key=b"c", revision=4)) == COMPACTED
    assert client.get(b"c", revision=5).kvs[0].value == b"v4"
    assert client.get(b"c", revision=8).kvs[0].value == b"v5"
    assert _keys(client.get(b"\0", b"\0", revision=7)) == [b"c", b"gone"]
    assert client.get(b"c").kvs[0].version == 6  # versions survive compaction
    assert client.call(client.kv, "Compact", rpc_pb2.CompactionRequest(revision=3)) == COMPACTED
    assert client.call(client.kv, "Compact", rpc_pb2.CompactionRequest(revision=99)) == FUTURE

    client.kv.Compact(rpc_pb2.CompactionRequest(revision=9, physical=True), timeout=30)
    assert client.call(client.kv, "Range", RR(key=b"c", revision=8)) == COMPACTED
    assert [(kv.key, kv.value) for kv in client.get(b"\0", b"\0", revision=9).kvs] == [(b"c", b"v6")]
    status = client.maintenance.Status(rpc_pb2.StatusRequest(), timeout=30)
    assert status.header.revision == 9 and status.dbSize > 0
    hashed = client.maintenance.HashKV(rpc_pb2.HashKVRequest(), timeout=30)
    assert hashed.compact_revision == 9
    client.maintenance.Defragment(rpc_pb2.DefragmentRequest(), timeout=60)
    assert client.maintenance.HashKV(rpc_pb2.HashKVRequest(), timeout=30).hash == hashed.hash
    assert [(kv.key, kv.value) for kv in client.get(b"\0", b"\0").kvs] == [(b"c", b"v6")]


def test_snapshot_streams_on_every_backend(client: Client) -> None:
    client.put(b"k", b"v")
    chunks = list(client.maintenance.Snapshot(rpc_pb2.SnapshotRequest(), timeout=30))
    assert sum(len(c.blob) for c in chunks) > 0


# Keys a case-insensitive or PAD SPACE collation would fold together, or a text column would refuse.
TRAP_KEYS = [
    b"",  # not a key (etcd refuses empty keys); removed below
    b"\x00",
    b"\x00\x00",
    b"\x00\xff",
    b"A",
    b"B",
    b"a",
    b"a ",
    b"a  ",
    b"a\x00",
    b"a\t",
    b"aB",
    b"ab",
    b"b",
    b"\x7f",
    b"\x80",
    b"\xc3\xa9",  # é in UTF-8
    b"e",
    b"\xff",
    b"\xff\x00",
    b"\xff\xff",
    bytes(range(256)),
]


def test_binary_keys_are_distinct_and_sorted_bytewise(client: Client) -> None:
    keys = [k for k in TRAP_KEYS if k]
    for i, key in enumerate(reversed(keys)):
        client.put(key, b"value-%d" % i + key)
    everything = client.get(b"\0", b"\0")
    assert _keys(everything) == sorted(keys)
    assert everything.count == len(keys)
    for key in keys:
        got = client.get(key)
        assert _keys(got) == [key], key
        assert got.kvs[0].value.endswith(key)
    assert _keys(client.get(b"a", b"b")) == [k for k in sorted(keys) if b"a" <= k < b"b"]
    assert _keys(client.get(b"\xff", b"\0")) == [b"\xff", b"\xff\x00", b"\xff\xff"]
    assert _keys(client.get(b"a", b"a\x01")) == [b"a", b"a\x00"]
    assert client.get(b"\0", b"\0", limit=3).more is True
    deleted = client.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"a", prev_kv=True))
    assert [kv.key for kv in deleted.prev_kvs] == [b"a"]
    assert b"A" in _keys(client.get(b"\0", b"\0")) and b"a " in _keys(client.get(b"\0", b"\0"))
    # Old revisions order the same way (the read merges kv_current and kv_log).
    assert _keys(client.get(b"\0", b"\0", revision=everything.header.revision)) == sorted(keys)


def test_concurrent_writes_get_consecutive_revisions(client: Client) -> None:
    """Many clients at once: the group-commit writer batches them; every revision is used once."""
    count = 120
    with ThreadPoolExecutor(12) as pool:
        revisions = sorted(pool.map(lambda i: client.put(b"k/%02d" % (i % 10), b"v%d" % i), range(count)))
    assert revisions == list(range(2, count + 2))
    listing = client.get(b"k/", b"k0")
    assert listing.count == 10 and sum(kv.version for kv in listing.kvs) == count
    assert {kv.create_revision for kv in listing.kvs} <= set(revisions)


def test_keys_beyond_the_index_limit_are_refused_cleanly(database: TestDatabase, client: Client) -> None:
    if database.kind == "sqlite":
        pytest.skip("SQLite has no key length limit below etcd's request size")
    limit = {"postgres": 2684, "mariadb": 3064}[database.kind]
    assert client.put(b"k" * limit, b"fits") == 2
    code, details = client.call(client.kv, "Put", rpc_pb2.PutRequest(key=b"k" * (limit + 1), value=b"x"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"limit of {limit}" in details
    assert client.put(b"after", b"ok") == 3  # nothing half-written, the revision sequence goes on


# --------------------------------------------------------------------------------------------------
# Watch, leases, restart.


def test_watch_from_an_old_revision_replays_the_log_with_prev_kv(
    database: TestDatabase, make_kinepy_on: MakeKinepy
) -> None:
    server = make_kinepy_on(database.url)
    client = Client(server.endpoint)
    client.put(b"w/a", b"1")  # 2
    client.put(b"w/b", b"1")  # 3
    client.put(b"w/a", b"2")  # 4
    client.put(b"x", b"outside")  # 5
    client.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"w/", range_end=b"w0"))  # 6: deletes w/a, w/b
    client.put(b"w/a", b"3")  # 7
    client.close()
    # A restarted server has no recent events in memory: the replay must come from kv_log.
    server.restart()
    client = Client(server.endpoint)
    watch = Watch(
        client, rpc_pb2.WatchCreateRequest(key=b"w/", range_end=b"w0", start_revision=2, prev_kv=True)
    )
    try:
        assert watch.next().created
        replayed = watch.events(6)
        client.put(b"w/b", b"live")  # 8: after the replay, with no gap and no duplicate
        live = watch.events(1)
    finally:
        watch.close()
        client.close()
    got = [
        (
            e.type,
            e.kv.key,
            e.kv.mod_revision,
            e.kv.value,
            e.kv.version,
            (e.prev_kv.value, e.prev_kv.mod_revision) if e.HasField("prev_kv") else None,
        )
        for e in replayed + live
    ]
    assert got == [
        (PUT, b"w/a", 2, b"1", 1, None),
        (PUT, b"w/b", 3, b"1", 1, None),
        (PUT, b"w/a", 4, b"2", 2, (b"1", 2)),
        (DELETE, b"w/a", 6, b"", 0, (b"2", 4)),
        (DELETE, b"w/b", 6, b"", 0, (b"1", 3)),
        (PUT, b"w/a", 7, b"3", 1, None),
        (PUT, b"w/b", 8, b"live", 1, None),
    ]


def test_lease_expiry_deletes_attached_keys(client: Client) -> None:
    lease = client.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=2), timeout=30)
    assert lease.ID and lease.TTL == 2
    client.put(b"ephemeral/1", b"a", lease=lease.ID)
    client.put(b"ephemeral/2", b"b", lease=lease.ID)
    client.put(b"durable", b"c")
    watch = Watch(
        client, rpc_pb2.WatchCreateRequest(key=b"ephemeral/", range_end=b"ephemeral0", prev_kv=True)
    )
    try:
        assert watch.next().created
        events = watch.events(2)
    finally:
        watch.close()
    assert [(e.type, e.kv.key, e.prev_kv.value) for e in events] == [
        (DELETE, b"ephemeral/1", b"a"),
        (DELETE, b"ephemeral/2", b"b"),
    ]
    assert events[0].kv.mod_revision == events[1].kv.mod_revision == 5  # one revision for the revoke
    assert _keys(client.get(b"\0", b"\0")) == [b"durable"]
    ttl = client.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lease.ID), timeout=30)
    assert ttl.TTL == -1


def test_restart_keeps_data_leases_and_revisions(database: TestDatabase, make_kinepy_on: MakeKinepy) -> None:
    server = make_kinepy_on(database.url)
    client = Client(server.endpoint)
    lease = client.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=600), timeout=30)
    client.put(b"r/1", b"one", lease=lease.ID)
    client.put(b"r/2", b"two")
    before = client.maintenance.Status(rpc_pb2.StatusRequest(), timeout=30)
    client.close()
    server.restart()  # the schema exists now: start must reuse it, not fail or reset it
    client = Client(server.endpoint)
    kvs = client.get(b"r/", b"r0").kvs
    assert [(kv.key, kv.value, kv.lease) for kv in kvs] == [(b"r/1", b"one", lease.ID), (b"r/2", b"two", 0)]
    after = client.maintenance.Status(rpc_pb2.StatusRequest(), timeout=30)
    assert after.header.revision == 3 and after.header.cluster_id == before.header.cluster_id
    leases = client.lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=30)
    assert [item.ID for item in leases.leases] == [lease.ID]
    assert client.put(b"r/3", b"three") == 4
    client.close()


# --------------------------------------------------------------------------------------------------
# Server databases only: creation, bad passwords, schema versions.


def _server_only(database: TestDatabase) -> Any:
    if database.server is None:
        pytest.skip("a SQLite file has no server, database or password")
    return database.server


def _run_kinepy(url: str, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "kinepy", "--listen-address", f"127.0.0.1:{conftest.free_port()}"]
    argv += ["--datastore-endpoint", url, "--log-level", "warning"]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=conftest.REPO_ROOT
    )


def test_bad_password_exits_nonzero_with_one_line_without_the_password(database: TestDatabase) -> None:
    server = _server_only(database)
    wrong = "Wr0ng-pa55word-XYZ"
    started = time.monotonic()
    proc = _run_kinepy(server.url(database.name, password=wrong))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kinepy: "), lines
    assert "auth" in lines[0].lower() or "denied" in lines[0].lower(), lines
    for secret in (wrong, "Wr0ng", "pa55word"):
        assert secret not in proc.stderr + proc.stdout
    assert time.monotonic() - started < 20, "an authentication failure must not be retried"


def test_missing_database_is_created(database: TestDatabase, make_kinepy_on: MakeKinepy) -> None:
    server = _server_only(database)
    name = database.name + "_new"
    try:
        kinepy = make_kinepy_on(server.url(name))
        client = Client(kinepy.endpoint)
        assert client.put(b"k", b"v") == 2
        client.close()
        kinepy.stop()
    finally:
        server.drop_database(name)


def test_refuses_a_newer_schema_version(database: TestDatabase, make_kinepy_on: MakeKinepy) -> None:
    server = _server_only(database)
    make_kinepy_on(database.url).stop()
    server.sql("UPDATE meta SET schema_version = 99", database=database.name)
    proc = _run_kinepy(database.url)
    assert proc.returncode == 1
    assert "schema version 99 is newer" in proc.stderr


def test_two_servers_on_one_database_share_revisions_and_watch_each_other(
    database: TestDatabase, make_kinepy_on: MakeKinepy
) -> None:
    _server_only(database)
    a, b = Client(make_kinepy_on(database.url).endpoint), Client(make_kinepy_on(database.url).endpoint)
    try:
        assert a.put(b"s/a", b"1") == 2
        assert b.put(b"s/b", b"1") == 3  # b's writer reads the revision under the meta row lock
        assert _keys(a.get(b"s/", b"s0")) == _keys(b.get(b"s/", b"s0")) == [b"s/a", b"s/b"]
        watch = Watch(b, rpc_pb2.WatchCreateRequest(key=b"s/", range_end=b"s0", prev_kv=True))
        try:
            assert watch.next().created
            a.put(b"s/a", b"2")  # 4, committed by the other process
            event = watch.events(1)[0]
            assert (event.kv.key, event.kv.mod_revision, event.prev_kv.value) == (b"s/a", 4, b"1")
        finally:
            watch.close()
        with ThreadPoolExecutor(8) as pool:
            revisions = sorted(pool.map(lambda i: (a, b)[i % 2].put(b"s/%d" % i, b"v"), range(40)))
        assert revisions == list(range(5, 45))
    finally:
        a.close()
        b.close()
