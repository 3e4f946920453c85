"""A varied store written into a real etcd over gRPC, and what etcd itself says it holds.

``fill(endpoint)`` writes, in order: many keys in Txns of 100 puts (several subs per revision; enough
keys for branch pages in bbolt), overwrites and deletes, a compaction, a value of 100 kB (overflow
pages), keys on a lease, a deleted-then-recreated key, and a few writes after the compaction. It returns
the revisions it reached. ``current(endpoint, revision)`` and ``history(endpoint, after)`` read the
state back through etcd's own API, for comparing with a copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import conftest
import grpc

from kinepy.proto import kv_pb2, rpc_pb2, rpc_pb2_grpc

MANY = 1500  # keys: about 30 leaf pages of 4 kB, so the `key` bucket has branch pages
BIG = 100_000  # bytes: a value over 24 pages of 4 kB


@dataclass(frozen=True)
class Filled:
    revision: int  # the store revision after fill()
    compact_revision: int
    lease_id: int
    lease_ttl: int


def start_etcd(
    root: Path, *, restored: tuple[Path, str, str] | None = None, binary: str = conftest.ETCD_BIN
) -> conftest.EtcdServer:
    """A fresh single-member etcd in `root` (the caller stops it), or one on a data directory made by
    `etcdctl snapshot restore` (`restored`: data directory, member name, peer URL); Debian's etcd
    unless `binary` says which."""
    if binary == conftest.ETCD_BIN:
        conftest._require_etcd()
    data_dir = restored[0] if restored else root / "data"
    server = conftest.EtcdServer(
        kind="etcd", port=conftest.free_port(), log_path=root / "etcd.log", data_dir=data_dir
    )
    name, peer = (restored[1], restored[2]) if restored else (f"etcd-{server.port}", "")
    peer = peer or f"http://127.0.0.1:{conftest.free_port()}"
    argv = [
        binary,
        f"--name={name}",
        f"--data-dir={server.data_dir}",
        f"--listen-client-urls={server.url}",
        f"--advertise-client-urls={server.url}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={name}={peer}",
    ]
    server._start(argv, lambda: conftest._etcd_healthy(server.endpoint))
    return server


def channel(endpoint: str) -> grpc.Channel:
    return grpc.insecure_channel(endpoint.removeprefix("http://"))


def _put(key: bytes, value: bytes, lease: int = 0) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, lease=lease))


def fill(endpoint: str, *, many: int = MANY) -> Filled:
    with channel(endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        lease = rpc_pb2_grpc.LeaseStub(ch)
        for start in range(0, many, 100):
            ops = [_put(b"/many/%06d" % i, b"value-%d" % i) for i in range(start, min(start + 100, many))]
            kv.Txn(rpc_pb2.TxnRequest(success=ops))
        for i in range(0, many, 7):
            kv.Put(rpc_pb2.PutRequest(key=b"/many/%06d" % i, value=b"again-%d" % i))
        kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"/many/000100", range_end=b"/many/000150"))
        kv.Put(rpc_pb2.PutRequest(key=b"/gone", value=b"soon"))
        kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"/gone"))
        compact = kv.Put(rpc_pb2.PutRequest(key=b"/mark", value=b"compact here")).header.revision
        kv.Compact(rpc_pb2.CompactionRequest(revision=compact, physical=True))
        kv.Put(rpc_pb2.PutRequest(key=b"/big", value=bytes(range(256)) * (BIG // 256)))
        granted = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=3600))
        kv.Txn(
            rpc_pb2.TxnRequest(
                success=[_put(b"/leased/a", b"1", granted.ID), _put(b"/leased/b", b"2", granted.ID)]
            )
        )
        kv.Put(rpc_pb2.PutRequest(key=b"/gone", value=b"back"))
        kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"/many/000200"))
        last = kv.Put(rpc_pb2.PutRequest(key=b"/many/000300", value=b"after compaction"))
        return Filled(last.header.revision, compact, granted.ID, 3600)


def current(endpoint: str, revision: int = 0) -> list[kv_pb2.KeyValue]:
    """Every key at `revision` (0: latest), in key order."""
    with channel(endpoint) as ch:
        reply = rpc_pb2_grpc.KVStub(ch).Range(
            rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", revision=revision)
        )
        return list(reply.kvs)


def history(endpoint: str, after: int, upto: int) -> Iterator[tuple[int, bool, kv_pb2.KeyValue]]:
    """Every change in `(after, upto]` as (revision, is_delete, kv), in etcd's order, from a watch."""
    with channel(endpoint) as ch:
        create = rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(key=b"\0", range_end=b"\0", start_revision=after + 1)
        )
        for reply in rpc_pb2_grpc.WatchStub(ch).Watch(iter([create]), timeout=30):
            for event in reply.events:
                yield event.kv.mod_revision, event.type == kv_pb2.Event.DELETE, event.kv
                if event.kv.mod_revision >= upto:
                    return


def lease_ids(endpoint: str) -> list[int]:
    with channel(endpoint) as ch:
        reply = rpc_pb2_grpc.LeaseStub(ch).LeaseLeases(rpc_pb2.LeaseLeasesRequest())
        return sorted(lease.ID for lease in reply.leases)


def current_revision(endpoint: str) -> int:
    with channel(endpoint) as ch:
        reply = rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"\0", count_only=True))
        return int(reply.header.revision)
