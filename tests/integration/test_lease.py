"""Leases: etcdctl and raw gRPC against a real etcd 3.4.23 and against kinepy.

Answers that are the same on both servers are compared directly (``test_etcdctl_lease_commands_like_etcd``,
``test_lease_errors_like_etcd``, after normalising lease ids, which the server picks at random). Behaviours
that depend on timing (expiry) are asserted as a contract and run on both servers (the ``server`` fixture),
so the test itself is checked against etcd. The restart test is kinepy's own.

Every wait is bounded: expiry is polled with a deadline of TTL + 1 s, events are awaited under
``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import conftest
import grpc
import pytest
from google.protobuf import text_format

from kinepy.proto import kv_pb2, rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.etcd, pytest.mark.kinepy, pytest.mark.kinepy_backends]

WAIT = 10.0
Etcdctl = Callable[..., subprocess.CompletedProcess[str]]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server" in metafunc.fixturenames:
        metafunc.parametrize("server", conftest.etcd_and_kinepy_params(metafunc.config), indirect=True)


@pytest.fixture
def server(request: pytest.FixtureRequest) -> conftest.EtcdServer | conftest.KinepyServer:
    """Each contract test runs on a fresh real etcd and on a fresh kinepy on each backend."""
    if request.param == "etcd":
        etcd: conftest.EtcdServer = request.getfixturevalue("etcd_server")
        return etcd
    make_kinepy: Callable[..., conftest.KinepyServer] = request.getfixturevalue("make_kinepy_server")
    return make_kinepy(backend=request.param)


# --------------------------------------------------------------------------------------------------
# etcdctl.


def _normalise(text: str, endpoint: str, ids: dict[int, str]) -> list[str]:
    """Lease ids (hex in text output, decimal in JSON) become <L0>, <L1>, ...; the remaining TTL
    becomes <R> once checked to be within a second of the granted TTL."""
    for lease_id, name in ids.items():
        text = (
            text.replace(f"{lease_id:016x}", name).replace(f"{lease_id:x}", name).replace(str(lease_id), name)
        )
    text = text.replace(endpoint, "<endpoint>")
    # etcd lists a lease's keys in map order (random); kinepy sorts them.
    text = re.sub(
        r"attached keys\(\[([^\]]*)\]\)", lambda m: f"attached keys([{' '.join(sorted(m[1].split()))}])", text
    )
    text = re.sub(r'"keys":\[([^\]]*)\]', lambda m: f'"keys":[{",".join(sorted(m[1].split(",")))}]', text)
    lines = []
    for line in text.splitlines():  # etcdctl's own zap log lines: keep what the server decided
        if line.startswith('{"level"'):
            entry = json.loads(line)
            line = f"[{entry['level']}] {entry['msg']}: {entry.get('error')}"
        lines.append(line)
    text = "\n".join(lines)
    for granted, remaining in re.findall(r"TTL\((\d+)s\), remaining\((\d+)s\)", text):
        assert int(granted) - 2 <= int(remaining) <= int(granted), text
    text = re.sub(r"remaining\(\d+s\)", "remaining(<R>)", text)
    text = re.sub(r'"ttl":\d+', '"ttl":<R>', text)
    text = re.sub(r'"(cluster_id|member_id|raft_term)":\d+,?', "", text)
    return text.splitlines()


def _etcdctl_lease_script(etcdctl: Etcdctl, endpoint: str) -> list[tuple[int, list[str], list[str]]]:
    ids: dict[int, str] = {}
    out: list[tuple[int, list[str], list[str]]] = []

    def run(*args: str) -> str:
        proc = etcdctl(endpoint, *args)
        for match in re.findall(r"lease ([0-9a-f]{16}) granted", proc.stdout):
            ids.setdefault(int(match, 16), f"<L{len(ids)}>")
        raw = proc.stdout
        if args[-2:] == ("lease", "list") and args[0] == "-w":  # etcd lists leases in Go map order
            doc = json.loads(raw)
            doc["leases"].sort(key=lambda lease: ids[lease["id"]])
            raw = json.dumps(doc, separators=(",", ":"))
        stdout = _normalise(raw, endpoint, ids)
        if args[-2:] == ("lease", "list") and args[0] != "-w":
            stdout = stdout[:1] + sorted(stdout[1:])
        out.append((proc.returncode, stdout, _normalise(proc.stderr, endpoint, ids)))
        return proc.stdout

    first = int(re.findall(r"lease ([0-9a-f]+) granted", run("lease", "grant", "60"))[0], 16)
    # Long enough to outlive the script on a loaded machine; the minimum TTL has its own test.
    second = int(re.findall(r"lease ([0-9a-f]+) granted", run("lease", "grant", "30"))[0], 16)
    run("put", f"--lease={first:x}", "k1", "v1")
    run("put", f"--lease={first:x}", "k2", "v2")
    run("lease", "timetolive", f"{first:x}")
    run("lease", "timetolive", "--keys", f"{first:x}")
    run("-w", "json", "lease", "timetolive", "--keys", f"{first:x}")
    run("lease", "keep-alive", "--once", f"{first:x}")
    run("-w", "json", "lease", "keep-alive", "--once", f"{first:x}")
    run("lease", "list")
    run("-w", "json", "lease", "list")
    run("lease", "revoke", f"{first:x}")
    run("-w", "json", "get", "--prefix", "k")  # the revoke deleted both keys in one revision
    run("lease", "revoke", f"{second:x}")  # no keys: no new revision
    run("-w", "json", "get", "k1")
    run("lease", "revoke", f"{first:x}")  # gone
    run("lease", "timetolive", f"{first:x}")
    run("lease", "keep-alive", "--once", f"{first:x}")
    return out


def test_etcdctl_lease_commands_like_etcd(
    etcd_server: conftest.EtcdServer, kinepy_server: conftest.KinepyServer, etcdctl: Etcdctl
) -> None:
    expected = _etcdctl_lease_script(etcdctl, etcd_server.endpoint)
    got = _etcdctl_lease_script(etcdctl, kinepy_server.endpoint)
    assert got == expected
    stdout = [lines for _, lines, _ in expected]
    assert stdout[0] == ["lease <L0> granted with TTL(60s)"]
    assert stdout[1] == ["lease <L1> granted with TTL(30s)"]
    assert stdout[5] == ["lease <L0> granted with TTL(60s), remaining(<R>), attached keys([k1 k2])"]
    assert stdout[9] == ["found 2 leases", "<L0>", "<L1>"]
    assert '"revision":4' in stdout[12][0] and '"revision":4' in stdout[14][0]
    assert expected[15][0] == 1 and "requested lease not found" in expected[15][2][-1]


# --------------------------------------------------------------------------------------------------
# Raw gRPC errors and edge answers.


def _grpc_lease_script(endpoint: str) -> list[str]:
    """Each call's response (ids and member fields cleared) or its (code, details)."""
    out: list[str] = []
    with grpc.insecure_channel(endpoint) as channel:
        lease = rpc_pb2_grpc.LeaseStub(channel)

        def call(method: str, request: Any) -> Any:
            try:
                resp = getattr(lease, method)(request, timeout=WAIT)
            except grpc.RpcError as exc:
                out.append(f"{method}: {exc.code().name} {exc.details()}")
                return None
            resp.header.cluster_id = resp.header.member_id = resp.header.raft_term = 0
            out.append(f"{method}: {text_format.MessageToString(resp, as_one_line=True)}")
            return resp

        call("LeaseGrant", rpc_pb2.LeaseGrantRequest(ID=0x1234, TTL=30))  # client-chosen id
        call("LeaseGrant", rpc_pb2.LeaseGrantRequest(ID=0x1234, TTL=30))  # already exists
        call("LeaseGrant", rpc_pb2.LeaseGrantRequest(ID=0x99, TTL=1))  # raised to 2
        call("LeaseGrant", rpc_pb2.LeaseGrantRequest(ID=0x98, TTL=9_000_000_001))
        call("LeaseGrant", rpc_pb2.LeaseGrantRequest(ID=0x97, TTL=9_000_000_000))
        call("LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=0x4242))
        call("LeaseTimeToLive", rpc_pb2.LeaseTimeToLiveRequest(ID=0x4242, keys=True))
        leases = lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=WAIT)  # etcd: Go map order
        out.append(
            f"LeaseLeases: {sorted(status.ID for status in leases.leases)} at {leases.header.revision}"
        )
        keepalive = lease.LeaseKeepAlive(iter([rpc_pb2.LeaseKeepAliveRequest(ID=0x4242)]), timeout=WAIT)
        for resp in keepalive:
            resp.header.cluster_id = resp.header.member_id = resp.header.raft_term = 0
            out.append(f"LeaseKeepAlive: {text_format.MessageToString(resp, as_one_line=True)}")
    return out


def test_lease_errors_like_etcd(
    etcd_server: conftest.EtcdServer, kinepy_server: conftest.KinepyServer
) -> None:
    expected = _grpc_lease_script(etcd_server.endpoint)
    got = _grpc_lease_script(kinepy_server.endpoint)
    assert got == expected
    assert expected[1] == "LeaseGrant: FAILED_PRECONDITION etcdserver: lease already exists"
    assert expected[2].endswith("ID: 153 TTL: 2")
    assert expected[3] == "LeaseGrant: OUT_OF_RANGE etcdserver: too large lease TTL"
    assert expected[5] == "LeaseRevoke: NOT_FOUND etcdserver: requested lease not found"
    assert "TTL: -1" in expected[6]
    assert expected[7] == "LeaseLeases: [151, 153, 4660] at 1"
    assert expected[-1] == "LeaseKeepAlive: header { revision: 1 } ID: 16962"  # TTL 0: left out


# --------------------------------------------------------------------------------------------------
# Revoke and expiry, watched.


class _Conn:
    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.aio.insecure_channel(endpoint)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)
        self._requests: asyncio.Queue[rpc_pb2.WatchRequest] = asyncio.Queue()
        self._watch: Any = None

    async def watch(self, key: bytes, range_end: bytes) -> None:
        """Open a prev_kv watch and wait until it is created."""

        async def requests() -> AsyncIterator[rpc_pb2.WatchRequest]:
            while True:
                yield await self._requests.get()

        self._watch = rpc_pb2_grpc.WatchStub(self.channel).Watch(requests())
        create = rpc_pb2.WatchCreateRequest(key=key, range_end=range_end, prev_kv=True)
        self._requests.put_nowait(rpc_pb2.WatchRequest(create_request=create))
        assert (await self.next_response()).created

    async def next_response(self, within: float = WAIT) -> rpc_pb2.WatchResponse:
        async with asyncio.timeout(within):
            response: rpc_pb2.WatchResponse = await self._watch.read()
            return response

    async def grant(self, ttl: int, lease_id: int = 0) -> int:
        resp: rpc_pb2.LeaseGrantResponse = await self.lease.LeaseGrant(
            rpc_pb2.LeaseGrantRequest(ID=lease_id, TTL=ttl), timeout=WAIT
        )
        return resp.ID

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        resp: rpc_pb2.PutResponse = await self.kv.Put(
            rpc_pb2.PutRequest(key=key, value=value, lease=lease), timeout=WAIT
        )
        return resp.header.revision

    async def revision(self) -> int:
        resp: rpc_pb2.RangeResponse = await self.kv.Range(rpc_pb2.RangeRequest(key=b"\0"), timeout=WAIT)
        return resp.header.revision

    async def ttl(self, lease_id: int) -> rpc_pb2.LeaseTimeToLiveResponse:
        resp: rpc_pb2.LeaseTimeToLiveResponse = await self.lease.LeaseTimeToLive(
            rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=True), timeout=WAIT
        )
        return resp

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        await self.channel.close()


@pytest.fixture
async def conn(server: conftest.EtcdServer | conftest.KinepyServer) -> AsyncIterator[_Conn]:
    c = _Conn(server.endpoint)
    yield c
    await c.close()


async def test_revoke_deletes_every_key_in_one_revision(conn: _Conn) -> None:
    lease_id = await conn.grant(60)
    for key in (b"r/b", b"r/a", b"r/c"):
        await conn.put(key, b"v-" + key, lease=lease_id)
    await conn.put(b"r/free", b"stays")
    await conn.watch(b"r/", b"r0")
    before = await conn.revision()
    revoked = await conn.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lease_id), timeout=WAIT)
    assert revoked.header.revision == before + 1
    resp = await conn.next_response()
    assert [(e.type, e.kv.key, e.kv.mod_revision, e.prev_kv.value) for e in resp.events] == [
        (kv_pb2.Event.DELETE, key, before + 1, b"v-" + key) for key in (b"r/a", b"r/b", b"r/c")
    ]
    assert (await conn.ttl(lease_id)).TTL == -1


async def test_revoking_a_lease_without_keys_keeps_the_revision(conn: _Conn) -> None:
    lease_id = await conn.grant(60)
    await conn.put(b"x", b"1")
    before = await conn.revision()
    resp = await conn.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lease_id), timeout=WAIT)
    assert resp.header.revision == before == await conn.revision()


async def test_put_moves_a_key_between_leases(conn: _Conn) -> None:
    one, two = await conn.grant(60), await conn.grant(60)
    await conn.put(b"m", b"1", lease=one)
    assert list((await conn.ttl(one)).keys) == [b"m"]
    await conn.put(b"m", b"2", lease=two)
    assert list((await conn.ttl(one)).keys) == []
    assert list((await conn.ttl(two)).keys) == [b"m"]
    await conn.put(b"m", b"3")  # lease 0 detaches
    assert list((await conn.ttl(two)).keys) == []
    await conn.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=two), timeout=WAIT)
    got = await conn.kv.Range(rpc_pb2.RangeRequest(key=b"m"), timeout=WAIT)
    assert [(kv.value, kv.lease) for kv in got.kvs] == [(b"3", 0)]


async def test_expired_lease_deletes_its_key_with_a_delete_event(conn: _Conn) -> None:
    granted_at = time.monotonic()
    lease_id = await conn.grant(2)
    rev = await conn.put(b"e/key", b"short-lived", lease=lease_id)
    await conn.watch(b"e/", b"e0")
    # Expiry is checked about every 500 ms: the key must be gone within TTL + 1 s.
    resp = await conn.next_response(within=granted_at + 3.0 - time.monotonic())
    assert [(e.type, e.kv.key, e.prev_kv.value, e.prev_kv.mod_revision) for e in resp.events] == [
        (kv_pb2.Event.DELETE, b"e/key", b"short-lived", rev)
    ]
    assert time.monotonic() - granted_at >= 2.0 - 0.1
    assert not (await conn.kv.Range(rpc_pb2.RangeRequest(key=b"e/key"), timeout=WAIT)).kvs
    assert (await conn.ttl(lease_id)).TTL == -1
    keepalive = conn.lease.LeaseKeepAlive(iter([rpc_pb2.LeaseKeepAliveRequest(ID=lease_id)]), timeout=WAIT)
    assert [r.TTL async for r in keepalive] == [0]


# --------------------------------------------------------------------------------------------------
# Restart.


async def test_keep_alive_once_leaves_no_error_in_the_log(kinepy_server: conftest.KinepyServer) -> None:
    """clientv3's KeepAliveOnce (etcdctl `keep-alive --once`, etcd's `benchmark lease-keepalive`)
    cancels its stream once answered: the request the server was waiting for is read, not logged by
    asyncio as "never retrieved" (it was, for about one call in four, at 16 concurrent calls)."""
    async with grpc.aio.insecure_channel(kinepy_server.endpoint) as channel:
        lease = rpc_pb2_grpc.LeaseStub(channel)
        lease_id = (await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60), timeout=WAIT)).ID

        async def keep_alive_once() -> None:
            for _ in range(25):
                call = lease.LeaseKeepAlive(timeout=WAIT)
                await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
                assert (await call.read()).TTL == 60
                call.cancel()

        await asyncio.gather(*(keep_alive_once() for _ in range(16)))
        await lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id), timeout=WAIT)
    log = kinepy_server.log_of_last_start()
    assert "never retrieved" not in log and " ERROR " not in log, log[-2000:]


def _revision(etcdctl: Etcdctl, endpoint: str) -> int:
    return int(json.loads(etcdctl(endpoint, "-w", "json", "get", "any").stdout)["header"]["revision"])


@pytest.mark.slow  # lets 3 s of the lease's clock run, restarts, waits for the expiry (12 s per backend)
def test_a_restart_gives_every_lease_a_fresh_ttl(
    kinepy_server: conftest.KinepyServer, etcdctl: Etcdctl
) -> None:
    """As etcd's lessor on election (Promote): a restart renews every lease to its full TTL (kept
    alive or not, and keep-alives are held in memory), then it expires once, one revision."""
    ep, ttl = kinepy_server.endpoint, 6
    out = etcdctl(ep, "lease", "grant", str(ttl)).stdout
    lease_hex = re.findall(r"lease ([0-9a-f]+) granted", out)[0]
    assert etcdctl(ep, "put", f"--lease={lease_hex}", "survivor", "v").returncode == 0
    assert f"TTL({ttl})" in etcdctl(ep, "lease", "keep-alive", "--once", lease_hex).stdout
    renewed_at = time.monotonic()
    while time.monotonic() - renewed_at < 3.0:
        time.sleep(0.05)
    restarting = time.monotonic()
    kinepy_server.restart()
    answer = etcdctl(ep, "-w", "json", "lease", "timetolive", "--keys", lease_hex)
    since_restart = time.monotonic() - restarting
    assert answer.returncode == 0, answer.stderr
    remaining = int(re.findall(r'"ttl":(-?\d+)', answer.stdout)[0])
    # Without the fresh TTL at most ttl - 3 would be left.
    assert remaining >= math.floor(ttl - since_restart), (answer.stdout, since_restart)
    revision = _revision(etcdctl, ep)
    deadline = restarting + since_restart + ttl + 1.0
    while etcdctl(ep, "get", "survivor").stdout:
        assert time.monotonic() < deadline, "the key outlived its fresh TTL by more than 1 s"
        time.sleep(0.1)
    assert time.monotonic() - restarting >= ttl - 0.5, "the lease expired before its fresh TTL"
    assert (
        etcdctl(ep, "lease", "timetolive", lease_hex).stdout.strip() == f"lease {lease_hex} already expired"
    )
    time.sleep(1.0)  # two more expiry ticks
    assert _revision(etcdctl, ep) == revision + 1  # expired once: one revoke, one revision
