"""Reading a live etcd (the suite's real etcd 3.4) at one pinned revision."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import conftest
import etcd_data
import pytest

from kinepy.migrate.etcd_live import EtcdLive, EtcdSourceError
from kinepy.proto import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.etcd]


@pytest.fixture(scope="module")
def filled(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[conftest.EtcdServer, etcd_data.Filled]]:
    server = etcd_data.start_etcd(tmp_path_factory.mktemp("live"))
    yield server, etcd_data.fill(server.endpoint)
    server.stop()


def test_every_key_at_the_pinned_revision(filled: tuple[conftest.EtcdServer, etcd_data.Filled]) -> None:
    server, data = filled
    with EtcdLive(server.url, page_size=100) as source:
        pinned = source.revision
        assert pinned >= data.revision
        assert source.compact_revision == pinned
        # Writes after the pin are not in the copy.
        with etcd_data.channel(server.endpoint) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            kv.Put(rpc_pb2.PutRequest(key=b"/late", value=b"not copied"))
            kv.Put(rpc_pb2.PutRequest(key=b"/many/000001", value=b"changed late"))
        rows = list(source.keys())
        assert source.count() == len(rows)
        leases = source.leases()
    expected = etcd_data.current(server.endpoint, pinned)
    assert [(r.key, r.create_revision, r.revision, r.version, r.lease, r.value) for r in rows] == [
        (kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.lease, kv.value) for kv in expected
    ]
    assert not any(r.tombstone for r in rows)
    assert [lease.id for lease in leases] == [data.lease_id]
    assert leases[0].ttl == data.lease_ttl
    assert time.time() + data.lease_ttl - 60 < leases[0].expires_at <= time.time() + data.lease_ttl


def test_unreachable_etcd_gives_a_clear_error() -> None:
    with pytest.raises(EtcdSourceError, match="etcd did not answer: UNAVAILABLE"):
        EtcdLive(f"http://127.0.0.1:{conftest.free_port()}", timeout=2)


def test_not_an_etcd_url() -> None:
    with pytest.raises(EtcdSourceError, match="http://HOST:PORT"):
        EtcdLive("http://")


def test_compaction_past_the_pin_stops_the_copy(make_etcd_server: Callable[[], conftest.EtcdServer]) -> None:
    server = make_etcd_server()
    with etcd_data.channel(server.endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        kv.Put(rpc_pb2.PutRequest(key=b"/a", value=b"1"))
        with EtcdLive(server.url) as source:
            last = kv.Put(rpc_pb2.PutRequest(key=b"/a", value=b"2")).header.revision
            kv.Compact(rpc_pb2.CompactionRequest(revision=last))
            with pytest.raises(EtcdSourceError, match="compacted past revision 2 during the copy"):
                list(source.keys())
