"""The database server stops under load and starts again; kinepy rides it out without a restart.

kinepy runs on a PostgreSQL (and a MariaDB) server of the test's own (``make_database_server``), while
a writer loop puts keys and records every acknowledged write. The server is stopped: requests then
fail with UNAVAILABLE and a message saying the datastore is unavailable (without the password), and a
watch stays open (or ends with UNAVAILABLE). The server starts again on the same port and data
directory: writes are acknowledged again within `RECOVERY_LIMIT` seconds, with no restart of kinepy,
every write acknowledged before and after is there, and the open watch delivered every revision in
order.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest
from conftest import KinepyServer

from kinepy.proto import rpc_pb2, rpc_pb2_grpc
from kinepy.testing.databases import PASSWORD, DatabaseServer

pytestmark = [pytest.mark.kinepy, pytest.mark.slow]

DOWN_SECONDS = 3.0
RECOVERY_LIMIT = 15.0  # seconds from the database accepting connections to kinepy acknowledging writes
CALL_TIMEOUT = 5.0


@dataclass
class WriterLog:
    acked: dict[bytes, tuple[bytes, int]] = field(default_factory=dict)  # key -> (value, revision)
    acked_at: list[float] = field(default_factory=list)
    errors: list[tuple[float, grpc.StatusCode, str]] = field(default_factory=list)


def _writer(kv: rpc_pb2_grpc.KVStub, stop: threading.Event, out: WriterLog) -> None:
    i = 0
    while not stop.is_set():
        key, value = b"w/%06d" % i, b"v%d" % i
        i += 1
        try:
            resp = kv.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            out.errors.append((time.monotonic(), exc.code(), exc.details() or ""))
            time.sleep(0.05)
            continue
        out.acked[key] = (value, int(resp.header.revision))
        out.acked_at.append(time.monotonic())
        time.sleep(0.01)


def wait_for(what: str, condition: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mysql),
    ],
)
def test_database_outage_fails_requests_cleanly_and_recovers_by_itself(
    kind: str,
    make_database_server: Callable[[str], DatabaseServer],
    make_kinepy_on: Callable[..., KinepyServer],
) -> None:
    server = make_database_server(kind)
    kinepy = make_kinepy_on(server.url(server.create_database()))
    channel = grpc.insecure_channel(kinepy.endpoint)
    kv = rpc_pb2_grpc.KVStub(channel)
    lease = rpc_pb2_grpc.LeaseStub(channel)
    lease_id = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=600), timeout=CALL_TIMEOUT).ID
    watch_requests: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()
    watch_requests.put(
        rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"w/", range_end=b"w0"))
    )
    watch_call = rpc_pb2_grpc.WatchStub(channel).Watch(iter(watch_requests.get, None))
    watched: list[int] = []
    watch_end: list[grpc.RpcError] = []

    def pump() -> None:
        try:
            for response in watch_call:
                watched.extend(e.kv.mod_revision for e in response.events)
        except grpc.RpcError as exc:
            watch_end.append(exc)

    threading.Thread(target=pump, daemon=True).start()
    out = WriterLog()
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(kv, stop, out), daemon=True)
    writer.start()
    try:
        wait_for("20 writes before the outage", lambda: len(out.acked) >= 20, 30)
        stopping = time.monotonic()
        server.stop()
        stopped = time.monotonic()  # the server process has exited
        wait_for(
            "a write to fail while the database is down",
            lambda: any(e[0] > stopped for e in out.errors),
            2 * CALL_TIMEOUT,
        )
        time.sleep(DOWN_SECONDS)

        # While it is down: UNAVAILABLE, saying so, without the password; reads too.
        with pytest.raises(grpc.RpcError) as info:
            kv.Range(rpc_pb2.RangeRequest(key=b"w/000000"), timeout=CALL_TIMEOUT)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "datastore unavailable" in (info.value.details() or "")
        # A lease renewal ends its stream UNAVAILABLE too, which etcd's clients retry (UNKNOWN, from an
        # unexpected exception, would stop their keep-alive loop and let the lease expire).
        renewals = lease.LeaseKeepAlive(
            iter([rpc_pb2.LeaseKeepAliveRequest(ID=lease_id)]), timeout=CALL_TIMEOUT
        )
        with pytest.raises(grpc.RpcError) as info:
            list(renewals)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
        assert "datastore unavailable" in (info.value.details() or "")
        for _, code, details in out.errors:
            assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
            assert "datastore unavailable" in details, details
            assert PASSWORD not in details
        acked_before = len(out.acked)
        acked_during = [t for t in out.acked_at if t > stopped + 0.5]
        assert not acked_during, "a write was acknowledged while the database was down"

        ready = server.start()
        restarted = time.monotonic()
        recovery = wait_for(
            "writes acknowledged again",
            lambda: len(out.acked) > acked_before and out.acked_at[-1] > restarted,
            RECOVERY_LIMIT,
        )
        wait_for("20 writes after the outage", lambda: len(out.acked) >= acked_before + 20, 30)
    finally:
        stop.set()
        writer.join(timeout=2 * CALL_TIMEOUT)
    failed = [e for e in out.errors if e[0] > stopping]
    print(
        f"\n[{kind}] database down {restarted - stopped:.1f} s (stopping it took {stopped - stopping:.1f} s, "
        f"its restart {ready:.1f} s); "
        f"writes acknowledged again {recovery:.2f} s after it accepted connections; "
        f"{len(failed)} writes failed meanwhile, first: {failed[0][1].name} {failed[0][2]!r}"
    )

    # Every acknowledged write is there, at the revision it was acknowledged with.
    resp = kv.Range(rpc_pb2.RangeRequest(key=b"w/", range_end=b"w0"), timeout=CALL_TIMEOUT)
    stored = {kv_.key: (kv_.value, kv_.mod_revision) for kv_ in resp.kvs}
    missing = {k: v for k, v in out.acked.items() if stored.get(k) != v}
    assert not missing, f"acknowledged writes missing or changed: {sorted(missing)[:5]}"

    # The watch stayed open and delivered every revision, in order, or ended retryably.
    last = int(resp.header.revision)
    if watch_end:
        assert watch_end[0].code() == grpc.StatusCode.UNAVAILABLE, watch_end[0]
    else:
        wait_for("the watch to reach the last revision", lambda: bool(watched) and watched[-1] >= last, 15)
        assert watched == list(range(watched[0], last + 1))
        assert set(r for _, r in out.acked.values()) <= set(watched)
        print(f"[{kind}] the watch stayed open: revisions {watched[0]}..{last}, none missing")
    watch_requests.put(None)
    watch_call.cancel()
    channel.close()
    # kinepy was never restarted: still the same process, and it stops cleanly.
    assert kinepy.proc is not None and kinepy.proc.poll() is None
