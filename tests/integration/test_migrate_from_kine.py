"""`kinepy migrate --from <kine's endpoint>`: kine v0.16.4 itself writes the source (SQLite, PostgreSQL,
MariaDB), kinepy serves the copy with kine's revisions.

kine is the benchmarks' build (benchmarks/targets.py `build_kine`: `go install` once, cached). It
writes through the Txn shapes kube-apiserver sends (create, update, delete), a key on a lease, and a
compaction (`--compact-min-retain 0`, so the Compact RPC compacts at once). The copy must list every
key with kine's create and mod revisions and lease, at kine's store revision, refuse reads below
kine's compaction point, and hold none of kine's bookkeeping rows (`compact_rev_key`, gap fills).
"""

from __future__ import annotations

import os
import queue
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import conftest
import grpc
import pytest
from test_migrate import Client, MakeKinepy, connect, kinepy_cli, ok

from kinepy.proto import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.kinepy]
__all__ = ["connect"]  # a fixture of test_migrate, used here

ALL = b"\x00"
KINE_READY_TIMEOUT = 30.0
LEASE_TTL = 600


def kine_binary() -> Path:
    from benchmarks.targets import TargetUnavailable, build_kine

    try:
        return build_kine(lambda line: print(line))
    except TargetUnavailable as exc:
        reason = f"!!! kine cannot be built, the kine migration tests did NOT run: {exc} !!!"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


@dataclass
class Kine:
    endpoint: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        conftest._terminate(self.proc)


def start_kine(url: str, root: Path) -> Kine:
    port = conftest.free_port()
    log_path = root / "kine.log"
    argv = [
        str(kine_binary()),
        "--listen-address",
        f"127.0.0.1:{port}",
        "--endpoint",
        url,
        "--metrics-bind-address",
        f"127.0.0.1:{conftest.free_port()}",
        "--compact-min-retain",
        "0",
    ]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    kine = Kine(f"127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + KINE_READY_TIMEOUT
    with grpc.insecure_channel(kine.endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        while True:
            try:
                kv.Range(rpc_pb2.RangeRequest(key=b"/ready"), timeout=2)
                return kine
            except grpc.RpcError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    kine.stop()
                    pytest.fail(f"kine did not start:\n{log_path.read_text(errors='replace')[-4000:]}")
                time.sleep(0.2)


class KineWriter:
    """Writes through the Txn shapes kine accepts (kube-apiserver's)."""

    def __init__(self, client: Client) -> None:
        self.kv = client.kv
        self.lease = client.lease

    def create(self, key: bytes, value: bytes, lease: int = 0) -> int:
        compare = rpc_pb2.Compare(
            key=key, target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL, mod_revision=0
        )
        put = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, lease=lease))
        reply = self.kv.Txn(rpc_pb2.TxnRequest(compare=[compare], success=[put]), timeout=30)
        assert reply.succeeded
        return int(reply.header.revision)

    def _mod(self, key: bytes) -> int:
        reply = self.kv.Range(rpc_pb2.RangeRequest(key=key), timeout=30)
        return int(reply.kvs[0].mod_revision)

    def update(self, key: bytes, value: bytes) -> int:
        compare = rpc_pb2.Compare(
            key=key, target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL, mod_revision=self._mod(key)
        )
        put = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))
        get = rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))
        reply = self.kv.Txn(rpc_pb2.TxnRequest(compare=[compare], success=[put], failure=[get]), timeout=30)
        assert reply.succeeded
        return int(reply.header.revision)

    def delete(self, key: bytes) -> int:
        compare = rpc_pb2.Compare(
            key=key, target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL, mod_revision=self._mod(key)
        )
        delete = rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key))
        get = rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))
        reply = self.kv.Txn(
            rpc_pb2.TxnRequest(compare=[compare], success=[delete], failure=[get]), timeout=30
        )
        assert reply.succeeded
        return int(reply.header.revision)


def write_through_kine(client: Client) -> tuple[int, dict[bytes, int]]:
    """A history with creates, updates, deletes, a re-created key, a leased key and a compaction;
    returns the compaction revision and the version etcd would give each live key."""
    w = KineWriter(client)
    versions: dict[bytes, int] = {}
    for i in range(30):
        w.create(b"/registry/pods/p%02d" % i, b"pod-%d" % i)
        versions[b"/registry/pods/p%02d" % i] = 1
    for i in range(0, 30, 3):
        w.update(b"/registry/pods/p%02d" % i, b"pod-%d-v2" % i)
        versions[b"/registry/pods/p%02d" % i] += 1
    for i in (4, 5):
        w.delete(b"/registry/pods/p%02d" % i)
        del versions[b"/registry/pods/p%02d" % i]
    lease = client.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=LEASE_TTL), timeout=30)
    assert lease.ID == LEASE_TTL  # kine's lease ids are their TTLs
    w.create(b"/registry/leases/l", b"leased", lease=lease.ID)
    versions[b"/registry/leases/l"] = 1
    compact = w.update(b"/registry/pods/p00", b"pod-0-v3")
    # Version 3, but the compaction leaves only this row: counted as 2, the lower bound kine's rows give.
    versions[b"/registry/pods/p00"] = 2
    client.kv.Compact(rpc_pb2.CompactionRequest(revision=compact), timeout=30)
    w.create(b"/registry/pods/p04", b"pod-4-again")
    versions[b"/registry/pods/p04"] = 1
    w.update(b"/registry/pods/p01", b"pod-1-v2")
    versions[b"/registry/pods/p01"] += 1
    w.delete(b"/registry/pods/p07")
    del versions[b"/registry/pods/p07"]
    w.update(b"/registry/pods/p09", b"pod-9-v3")
    versions[b"/registry/pods/p09"] += 1
    return compact, versions


def listing(client: Client, revision: int = 0) -> tuple[int, list[tuple[Any, ...]]]:
    request = rpc_pb2.RangeRequest(key=b"/registry/", range_end=b"/registry0", revision=revision)
    reply = client.kv.Range(request, timeout=30)
    kvs = [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.lease) for kv in reply.kvs]
    return int(reply.header.revision), [kv for kv in kvs if not kv[0].startswith(b"compact_rev_key")]


def watch_registry(client: Client, start: int, upto: int) -> list[tuple[Any, ...]]:
    """Every event under /registry/ from `start` to `upto`: (type, key, value, mod_revision)."""
    requests: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()
    create = rpc_pb2.WatchCreateRequest(key=b"/registry/", range_end=b"/registry0", start_revision=start)
    requests.put(rpc_pb2.WatchRequest(create_request=create))
    call = client.watch.Watch(iter(requests.get, None), timeout=30)
    events: list[tuple[Any, ...]] = []
    try:
        for response in call:
            events += [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision) for e in response.events]
            if events and events[-1][3] >= upto:
                break
    finally:
        requests.put(None)
        call.cancel()
    return events


@pytest.fixture
def kine_url(request: pytest.FixtureRequest, tmp_path: Path, kinepy_databases: Any) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'kine' / 'state.db'}"
        return
    database = kinepy_databases.fresh_database(request.param)
    yield str(database.url)
    try:
        database.server.drop_database(database.name)
    except Exception:  # the server removes everything at the end anyway
        pass


@pytest.mark.parametrize(
    "kine_url",
    [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", id="mariadb", marks=pytest.mark.mysql),
    ],
    indirect=True,
)
def test_kine_store_migrates_with_kines_revisions(
    kine_url: str,
    make_kinepy_server: MakeKinepy,
    connect: Callable[[str], Client],
    tmp_path: Path,
) -> None:
    (tmp_path / "kine").mkdir()
    kine = start_kine(kine_url, tmp_path / "kine")
    try:
        source = connect(kine.endpoint)
        compact, versions = write_through_kine(source)
        revision, keys = listing(source)
        events = watch_registry(source, compact + 1, revision)
    finally:
        kine.stop()

    target = tmp_path / "copy.db"
    out = ok(kinepy_cli("migrate", "--from", kine_url, "--to", f"sqlite://{target}"))
    assert f"revision {revision}, compacted at {compact}" in out
    server = make_kinepy_server(backend="sqlite", db_path=target)
    copy = connect(server.endpoint)
    assert listing(copy) == (revision, keys)
    reply = copy.kv.Range(rpc_pb2.RangeRequest(key=ALL, range_end=ALL), timeout=30)
    copied = {kv.key: kv.version for kv in reply.kvs}
    assert {key: copied[key] for key in versions} == versions  # kine keeps none; counted from its rows
    assert not any(kv.key.startswith(b"compact_rev_key") or kv.key.startswith(b"gap-") for kv in reply.kvs)
    assert watch_registry(copy, compact + 1, revision) == events
    with pytest.raises(grpc.RpcError) as below:
        copy.kv.Range(rpc_pb2.RangeRequest(key=ALL, range_end=ALL, revision=compact - 1), timeout=30)
    assert below.value.details() == "etcdserver: mvcc: required revision has been compacted"
    ttl = copy.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=LEASE_TTL, keys=True), timeout=30)
    assert ttl.grantedTTL == LEASE_TTL and 0 < ttl.TTL <= LEASE_TTL
    assert list(ttl.keys) == [b"/registry/leases/l"]
    got = conftest.run_etcdctl_json(server.endpoint, "get", "/registry/pods/p09")
    assert got["header"]["revision"] == revision
    assert got["kvs"][0]["mod_revision"] == revision


def test_kine_gap_rows_are_not_keys_and_an_unknown_schema_is_refused(tmp_path: Path) -> None:
    """kine's gap fills (written here as kine's Fill writes them) are skipped; a `kine` table of
    another shape is refused with its columns, and nothing is created."""
    (tmp_path / "kine").mkdir()
    url = f"sqlite://{tmp_path / 'kine' / 'state.db'}"
    kine = start_kine(url, tmp_path / "kine")
    client = Client(kine.endpoint)
    try:
        revision = KineWriter(client).create(b"/a", b"1")
    finally:
        client.close()
        kine.stop()
    with sqlite3.connect(tmp_path / "kine" / "state.db") as db:
        db.execute(
            "INSERT INTO kine(id, name, created, deleted, create_revision, prev_revision, lease, value, "
            "old_value) VALUES(?, ?, 0, 1, 0, 0, 0, NULL, NULL)",
            (revision + 1, f"gap-{revision + 1}"),
        )
    target = tmp_path / "copy.db"
    out = ok(kinepy_cli("migrate", "--from", url, "--to", f"sqlite://{target}"))
    assert (
        f"revision {revision + 1}, compacted at -1, 2 keys, 2 history rows" in out
    )  # /a and kine's /registry/health

    odd = tmp_path / "odd.db"
    with sqlite3.connect(odd) as db:
        db.execute("CREATE TABLE kine (id INTEGER PRIMARY KEY, name TEXT, value BLOB)")
    proc = kinepy_cli("migrate", "--from", f"sqlite://{odd}", "--to", f"sqlite://{tmp_path / 'none.db'}")
    assert proc.returncode == 1
    assert "table kine has columns (id, name, value), not kine v0.16.4's" in proc.stderr
    assert not (tmp_path / "none.db").exists()
