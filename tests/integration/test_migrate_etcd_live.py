"""Reading a live etcd (the suite's real etcd 3.4) at one pinned revision."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import conftest
import etcd_data
import pytest
import trustme

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
    with pytest.raises(EtcdSourceError, match=r"http\(s\)://HOST:PORT"):
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


HOST = "127.0.0.5"


def test_etcd_with_tls_and_client_certificates(tmp_path: Path) -> None:
    """`https://HOST:PORT?ca-file=…&cert-file=…&key-file=…`, as k3s's embedded etcd needs, and as for
    passthrough; without the client certificate etcd refuses."""
    conftest._require_etcd()
    ca = trustme.CA()
    server_cert, client_cert = ca.issue_cert(HOST), ca.issue_cert("kinepy-client")
    certs = {name: tmp_path / f"{name}.pem" for name in ("ca", "server", "server-key", "cert", "key")}
    ca.cert_pem.write_to_path(str(certs["ca"]))
    server_cert.cert_chain_pems[0].write_to_path(str(certs["server"]))
    server_cert.private_key_pem.write_to_path(str(certs["server-key"]))
    client_cert.cert_chain_pems[0].write_to_path(str(certs["cert"]))
    client_cert.private_key_pem.write_to_path(str(certs["key"]))
    url = f"https://{HOST}:{conftest.free_port()}"
    peer = f"http://{HOST}:{conftest.free_port()}"
    tls = [f"--cacert={certs['ca']}", f"--cert={certs['cert']}", f"--key={certs['key']}"]
    with (tmp_path / "etcd.log").open("wb") as log:
        etcd = subprocess.Popen(
            [
                conftest.ETCD_BIN,
                "--name=tls",
                f"--data-dir={tmp_path / 'data'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=tls={peer}",
                f"--cert-file={certs['server']}",
                f"--key-file={certs['server-key']}",
                f"--trusted-ca-file={certs['ca']}",
                "--client-cert-auth",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while conftest.run_etcdctl(url, *tls, "put", "/tls/a", "1").returncode != 0:
            assert time.monotonic() < deadline, (tmp_path / "etcd.log").read_text()[-2000:]
            time.sleep(0.2)
        conftest.run_etcdctl(url, *tls, "put", "/tls/b", "2")
        query = f"?ca-file={certs['ca']}&cert-file={certs['cert']}&key-file={certs['key']}"
        with EtcdLive(url + query) as source:
            assert [(r.key, r.value) for r in source.keys()] == [(b"/tls/a", b"1"), (b"/tls/b", b"2")]
        with pytest.raises(EtcdSourceError, match="etcd did not answer"):
            EtcdLive(f"{url}?ca-file={certs['ca']}", timeout=3)  # no client certificate
    finally:
        etcd.terminate()
        etcd.wait(10)
