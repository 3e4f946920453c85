"""The lease manager against the in-memory backend: grant, keep-alive, revoke, expiry exactly once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from fake_backend import FakeBackend

from kinepy import errors
from kinepy.store import txn
from kinepy.store.leases import MAX_LEASE_TTL, MIN_LEASE_TTL, LeaseManager
from kinepy.store.writer import Writer
from kinepy.types import Event, EventType, Lease, PutRequest


class Process:
    """What one kinepy process has: a writer and a lease manager, on a (maybe shared) backend."""

    def __init__(self, backend: FakeBackend, *, expiry_interval: float = 3600) -> None:
        self.events: list[Event] = []
        self.writer = Writer(backend, committed=self._committed)
        self.leases = LeaseManager(backend, self.writer, expiry_interval=expiry_interval)

    async def _committed(self, revision: int, events: list[Event]) -> None:
        self.events.extend(events)

    async def start(self) -> None:
        self.writer.start()
        await self.leases.start()

    async def aclose(self) -> None:
        await self.leases.aclose()
        await self.writer.aclose()


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend(shared=True)


@pytest.fixture
async def process(backend: FakeBackend) -> AsyncIterator[Process]:
    process = Process(backend)
    await process.start()
    yield process
    await process.aclose()


async def _grant_expired(process: Process, lease_id: int, *, ago: float = 10) -> Lease:
    """A lease whose deadline passed `ago` seconds ago (granted long ago, never kept alive)."""
    resp = await process.writer.submit(txn.LeaseGrantRequest(lease_id, 5, time.time() - 5 - ago))
    assert isinstance(resp, txn.LeaseResponse) and resp.lease is not None
    return resp.lease


async def test_grant_picks_an_id_and_enforces_the_ttl_bounds(process: Process, backend: FakeBackend) -> None:
    revision, lease = await process.leases.grant(0, 1)
    assert revision == 1 and lease.id > 0
    assert lease.ttl == MIN_LEASE_TTL  # etcd raises a TTL below its minimum to it
    assert backend.leases[lease.id] == lease
    _, chosen = await process.leases.grant(77, 30)
    assert chosen.id == 77 and chosen.ttl == 30
    with pytest.raises(errors.LeaseExistsError):
        await process.leases.grant(77, 30)
    with pytest.raises(errors.LeaseTTLTooLargeError):
        await process.leases.grant(0, MAX_LEASE_TTL + 1)
    assert await process.leases.leases() == sorted([lease.id, 77])


async def test_keep_alive_moves_the_persisted_deadline(process: Process, backend: FakeBackend) -> None:
    await process.leases.grant(5, 10)
    before = backend.leases[5].expires_at
    assert await process.leases.keep_alive(5) == 10
    assert backend.leases[5].expires_at >= before
    assert await process.leases.keep_alive(404) == 0  # unknown
    await _grant_expired(process, 6)
    assert await process.leases.keep_alive(6) == 0  # expired: not renewed


async def test_time_to_live_and_the_keys_of_a_lease(process: Process) -> None:
    await process.leases.grant(5, 10)
    await process.writer.submit(PutRequest(b"b", b"v", lease=5))
    await process.writer.submit(PutRequest(b"a", b"v", lease=5))
    found = await process.leases.time_to_live(5, keys=True)
    assert found is not None
    lease, remaining, keys = found
    assert lease.id == 5 and 8 <= remaining <= 10 and keys == [b"a", b"b"]
    found = await process.leases.time_to_live(5, keys=False)
    assert found is not None and found[2] == []
    assert await process.leases.time_to_live(404, keys=True) is None


async def test_revoke_deletes_the_keys_in_one_revision(process: Process, backend: FakeBackend) -> None:
    await process.leases.grant(5, 10)
    await process.writer.submit(PutRequest(b"a", b"v", lease=5))  # revision 2
    await process.writer.submit(PutRequest(b"b", b"v", lease=5))  # revision 3
    await process.writer.submit(PutRequest(b"c", b"v"))  # revision 4, no lease
    assert await process.leases.revoke(5) == 5
    deletes = [e for e in process.events if e.type == EventType.DELETE]
    assert [(e.kv.key, e.kv.mod_revision) for e in deletes] == [(b"a", 5), (b"b", 5)]
    assert sorted(backend.current) == [b"c"] and 5 not in backend.leases
    with pytest.raises(errors.LeaseNotFoundError):
        await process.leases.revoke(5)


async def test_expiry_revokes_only_leases_past_their_deadline(process: Process, backend: FakeBackend) -> None:
    await process.leases.grant(1, 60)
    await _grant_expired(process, 2)
    await process.writer.submit(PutRequest(b"k", b"v", lease=2))
    assert await process.leases.expire(time.time()) == 1
    assert sorted(backend.leases) == [1] and b"k" not in backend.current
    assert await process.leases.expire(time.time()) == 0


async def test_a_lease_expired_by_two_processes_at_once_is_revoked_once(backend: FakeBackend) -> None:
    one, two = Process(backend), Process(backend)
    for process in (one, two):
        await process.start()
    try:
        await _grant_expired(one, 9)
        await one.writer.submit(PutRequest(b"k", b"v", lease=9))  # revision 2
        now = time.time()
        counts = await asyncio.gather(one.leases.expire(now), two.leases.expire(now))
        assert sorted(counts) == [0, 1]
        deletes = [e for e in one.events + two.events if e.type == EventType.DELETE]
        assert [(e.kv.key, e.kv.mod_revision) for e in deletes] == [(b"k", 3)]
        assert backend.revision == 3
    finally:
        for process in (one, two):
            await process.aclose()


async def test_a_lease_kept_alive_after_it_was_found_expired_is_kept(
    process: Process, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = await _grant_expired(process, 3)
    await process.leases.grant(4, 60)
    monkeypatch.setattr(backend, "leases", {**backend.leases, 3: Lease(3, 5, time.time() + 5)})  # kept alive
    real = backend.expired_leases

    async def read_before_the_keep_alive(now: float, limit: int) -> list[Lease]:
        return [stale, *await real(now, limit)]

    monkeypatch.setattr(backend, "expired_leases", read_before_the_keep_alive)
    assert await process.leases.expire(time.time()) == 0
    assert 3 in backend.leases


async def test_an_expiry_error_is_raised_to_the_loop(
    process: Process, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _grant_expired(process, 3)
    backend.outcomes = [errors.BackendError("disk on fire")]
    with pytest.raises(errors.BackendError):
        await process.leases.expire(time.time())
    assert 3 in backend.leases


async def test_the_expiry_loop_revokes_and_survives_errors(
    backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    process = Process(backend, expiry_interval=0.01)
    backend.outcomes = [
        None,
        errors.BackendError("disk on fire"),
    ]  # the grant commits, the first revoke fails
    process.writer.start()
    lease = await _grant_expired(process, 3)
    with caplog.at_level(logging.WARNING, logger="kinepy.store.leases"):
        await process.leases.start()
        try:
            async with asyncio.timeout(2):
                await backend.until(lambda: lease.id not in backend.leases)
        finally:
            await process.aclose()
    assert "lease expiry failed, will retry" in caplog.text
