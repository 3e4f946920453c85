"""The lease manager against the in-memory backend: grant, keep-alive, revoke, expiry exactly once;
keep-alives held in memory (written on a shared database only, when due); a fresh TTL at start."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from fake_backend import FakeBackend

from kinepy import errors
from kinepy.store import txn
from kinepy.store.leases import MAX_LEASE_TTL, MIN_LEASE_TTL, RECHECK_AFTER, LeaseManager
from kinepy.store.writer import Writer
from kinepy.types import Event, EventType, Lease, PutRequest


class Clock:
    """Unix time that moves only when told."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Process:
    """What one kinepy process has: a writer and a lease manager, on a (maybe shared) backend."""

    def __init__(
        self, backend: FakeBackend, *, expiry_interval: float = 3600, clock: Clock | None = None
    ) -> None:
        self.events: list[Event] = []
        self.writer = Writer(backend, committed=self._committed)
        self.leases = LeaseManager(
            backend, self.writer, expiry_interval=expiry_interval, clock=clock or time.time
        )

    async def _committed(self, revision: int, events: list[Event]) -> None:
        self.events.extend(events)

    async def start(self, *, expire: bool = True) -> None:
        self.writer.start()
        await self.leases.start(expire=expire)

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


async def test_keep_alive_answers_the_ttl_and_refuses_unknown_or_expired_leases(process: Process) -> None:
    await process.leases.grant(5, 10)
    assert await process.leases.keep_alive(5) == 10
    assert await process.leases.keep_alive(404) == 0  # unknown
    await _grant_expired(process, 6)
    assert await process.leases.keep_alive(6) == 0  # expired: not renewed


async def test_alone_keep_alives_cost_no_write_and_expiry_follows_them() -> None:
    """Alone on its database (SQLite), a keep-alive moves the deadline in memory only; expiry goes
    by that deadline, exactly once."""
    backend, clock = FakeBackend(), Clock()
    process = Process(backend, clock=clock)
    await process.start()
    try:
        granted_at = clock.now
        await process.leases.grant(5, 10)
        await process.writer.submit(PutRequest(b"k", b"v", lease=5))
        writes = len(backend.writes)
        for _ in range(100):
            clock.now += 0.05
            assert await process.leases.keep_alive(5) == 10
        assert len(backend.writes) == writes  # not one write for 100 keep-alives
        assert backend.leases[5].expires_at == granted_at + 10  # the database was not told
        found = await process.leases.time_to_live(5, keys=True)
        assert found is not None and found[1] == 10 and found[2] == [b"k"]
        clock.now = granted_at + 12  # past the granted deadline, within the renewed one
        assert await process.leases.expire(clock.now) == 0
        clock.now = granted_at + 5 + 10.01
        assert await process.leases.keep_alive(5) == 0  # expired now, even before its revoke
        assert await process.leases.expire(clock.now) == 1
        assert await process.leases.expire(clock.now) == 0  # once
        assert 5 not in backend.leases and b"k" not in backend.current
        assert [e.type for e in process.events] == [EventType.PUT, EventType.DELETE]
        assert await process.leases.time_to_live(5, keys=False) is None
    finally:
        await process.aclose()


@pytest.mark.parametrize("shared", [False, True])
async def test_a_start_gives_every_lease_a_fresh_ttl(shared: bool) -> None:
    """As etcd's lessor on election (Promote): whatever was left of a deadline, even nothing, the
    lease gets its full TTL again when kinepy starts. Shared: written, for the other processes."""
    backend, clock = FakeBackend(shared=shared), Clock()
    first = Process(backend, clock=clock)
    await first.start()
    await first.leases.grant(1, 30)
    await first.leases.grant(2, 10)
    await first.aclose()
    clock.now += 20  # lease 1 has 10 s left, lease 2 expired while nobody ran
    second = Process(backend, clock=clock)
    await second.start()
    try:
        for lease_id, ttl in ((1, 30), (2, 10)):
            found = await second.leases.time_to_live(lease_id, keys=False)
            assert found is not None and found[1] == ttl
        assert await second.leases.expire(clock.now + 9.9) == 0
        if shared:
            assert backend.leases[1].expires_at == clock.now + 30
    finally:
        await second.aclose()


async def test_shared_renewals_are_written_when_due_and_keep_other_processes_from_expiring(
    backend: FakeBackend,
) -> None:
    """Shared: a keep-alive through A (a worker that does not expire leases) is held in memory and
    written once less than two thirds of the TTL is left of the persisted deadline, so B, which
    expires by persisted deadlines, keeps the lease; once the renewals stop, it is expired once."""
    clock = Clock()
    a, b = Process(backend, clock=clock), Process(backend, clock=clock)
    await a.start(expire=False)
    await b.start()
    try:
        start = clock.now
        await a.leases.grant(7, 9)  # persisted deadline start + 9
        clock.now = start + 2
        assert await a.leases.keep_alive(7) == 9  # deadline start + 11 in A's memory
        await a.leases.flush(clock.now)
        assert backend.leases[7].expires_at == start + 9  # 7 s left: not due
        clock.now = start + 3.5
        writes = len(backend.writes)
        await a.leases.flush(clock.now)  # 5.5 s left < 6: due
        assert backend.leases[7].expires_at == start + 11 and len(backend.writes) == writes + 1
        clock.now = start + 9.5
        assert await b.leases.expire(clock.now) == 0
        found = await b.leases.time_to_live(7, keys=False)
        assert found is not None and found[1] == 1
        clock.now = start + 11
        assert sorted(await asyncio.gather(a.leases.expire(clock.now), b.leases.expire(clock.now))) == [0, 1]
        assert 7 not in backend.leases
        assert await a.leases.keep_alive(7) == 0
    finally:
        for process in (a, b):
            await process.aclose()


async def test_a_late_shared_keep_alive_is_written_before_it_is_answered(
    process: Process, backend: FakeBackend
) -> None:
    await _grant_expired(process, 8, ago=-1)  # 1 s left of a 5 s TTL: less than a third
    now = time.time()
    assert await process.leases.keep_alive(8) == 5
    assert backend.leases[8].expires_at >= now + 5


async def test_a_shared_keep_alive_of_a_lease_revoked_elsewhere_answers_0(backend: FakeBackend) -> None:
    """Within RECHECK_AFTER of its last look at the row, a process trusts what it holds; after, it
    reads the row again and finds the lease gone."""
    clock, reads = Clock(), []
    read_lease = backend.get_lease

    async def get_lease(lease_id: int) -> Lease | None:
        reads.append(lease_id)
        return await read_lease(lease_id)

    backend.get_lease = get_lease  # type: ignore[method-assign]
    a, b = Process(backend, clock=clock), Process(backend, clock=clock)
    for process in (a, b):
        await process.start()
    try:
        await a.leases.grant(9, 60)
        clock.now += RECHECK_AFTER / 2
        assert await a.leases.keep_alive(9) == 60
        assert reads == []  # soon after the grant: no read
        await b.leases.revoke(9)
        clock.now += RECHECK_AFTER
        assert await a.leases.keep_alive(9) == 0
        assert await a.leases.time_to_live(9, keys=False) is None
    finally:
        for process in (a, b):
            await process.aclose()


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
    process.writer.start()
    with caplog.at_level(logging.WARNING, logger="kinepy.store.leases"):
        await process.leases.start()
        backend.outcomes = [None, errors.BackendError("disk on fire")]  # the grant commits, a revoke fails
        lease = await _grant_expired(process, 3)
        try:
            async with asyncio.timeout(2):
                await backend.until(lambda: lease.id not in backend.leases)
        finally:
            await process.aclose()
    assert "lease expiry failed, will retry" in caplog.text


def _writer_only(backend: FakeBackend, clock: Clock) -> Process:
    """A process whose lease manager runs no background task: the test calls `flush` and `expire`."""
    process = Process(backend, clock=clock)
    process.writer.start()
    return process


async def test_a_renewal_that_could_not_be_written_is_written_by_the_next_flush(backend: FakeBackend) -> None:
    clock = Clock()
    process = _writer_only(backend, clock)
    try:
        start = clock.now
        await process.leases.grant(7, 9)
        clock.now = start + 3.5
        assert await process.leases.keep_alive(7) == 9  # 5.5 s left of the persisted deadline: held
        backend.outcomes = [errors.BackendError("disk on fire")]
        with pytest.raises(errors.BackendError):
            await process.leases.flush(clock.now)
        assert backend.leases[7].expires_at == start + 9
        await process.leases.flush(clock.now)
        assert backend.leases[7].expires_at == start + 12.5
    finally:
        await process.aclose()


async def test_a_renewal_whose_write_finds_the_lease_gone_forgets_it_at_once(backend: FakeBackend) -> None:
    """Revoked through another process: the keep-alives that follow answer 0 from then on, not only
    once RECHECK_AFTER has passed since this process last looked at the row."""
    clock = Clock()
    a, b = _writer_only(backend, clock), _writer_only(backend, clock)
    try:
        start = clock.now
        await a.leases.grant(7, 2)
        await b.leases.revoke(7)
        clock.now = start + 0.8
        assert await a.leases.keep_alive(7) == 2  # within RECHECK_AFTER: A trusts what it holds
        await a.leases.flush(clock.now)  # 1.2 s left < two thirds of 2 s: written, and found gone
        clock.now = start + 0.9
        assert clock.now - start < RECHECK_AFTER
        assert await a.leases.keep_alive(7) == 0
        assert 7 not in backend.leases
    finally:
        for process in (a, b):
            await process.aclose()


async def test_a_lease_renewed_here_but_not_yet_written_is_written_instead_of_expired(
    backend: FakeBackend,
) -> None:
    clock = Clock()
    process = _writer_only(backend, clock)
    try:
        start = clock.now
        await process.leases.grant(5, 9)
        await process.writer.submit(PutRequest(b"k", b"v", lease=5))
        clock.now = start + 4
        assert await process.leases.keep_alive(5) == 9  # deadline start + 13, held in memory
        clock.now = start + 9.5  # past the persisted deadline, within the renewed one
        assert await process.leases.expire(clock.now) == 0
        assert backend.leases[5].expires_at == start + 13 and b"k" in backend.current
        clock.now = start + 13
        assert await process.leases.expire(clock.now) == 1
        assert 5 not in backend.leases and b"k" not in backend.current
    finally:
        await process.aclose()


async def test_a_revoke_that_failed_is_tried_again_by_the_next_expiry() -> None:
    backend, clock = FakeBackend(), Clock()
    process = _writer_only(backend, clock)
    try:
        await process.leases.grant(3, 5)
        clock.now += 6
        backend.outcomes = [errors.BackendError("disk on fire")]
        with pytest.raises(errors.BackendError):
            await process.leases.expire(clock.now)
        assert await process.leases.keep_alive(3) == 0  # expired all the same
        assert await process.leases.expire(clock.now) == 1
        assert 3 not in backend.leases
    finally:
        await process.aclose()


async def test_a_held_lease_renewed_through_another_process_before_its_revoke_is_kept(
    backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its deadline passed here, but another process wrote a renewal before the revoke's transaction
    re-checked it: the lease lives on, and keep-alives through this process renew it again."""
    clock = Clock()
    process = _writer_only(backend, clock)
    try:
        start = clock.now
        await process.leases.grant(3, 5)
        stale = backend.leases[3]
        clock.now = start + 6
        renewed = Lease(3, 5, start + 11)
        monkeypatch.setattr(backend, "leases", {**backend.leases, 3: renewed})  # by another process

        async def read_before_the_renewal(now: float, limit: int) -> list[Lease]:
            return [stale]

        monkeypatch.setattr(backend, "expired_leases", read_before_the_renewal)
        assert await process.leases.expire(clock.now) == 0
        assert backend.leases[3] == renewed
        assert await process.leases.keep_alive(3) == 5
    finally:
        await process.aclose()


async def test_a_flush_forgets_the_leases_long_past_their_deadline(backend: FakeBackend) -> None:
    """Shared: expired (or revoked) through another process, a lease held here is forgotten
    `_FORGET_AFTER` past its deadline, so a process's memory holds only the leases it serves."""
    clock = Clock()
    a, b = _writer_only(backend, clock), _writer_only(backend, clock)
    try:
        start = clock.now
        await a.leases.grant(4, 2)
        await a.leases.grant(5, 60)
        clock.now = start + 3
        assert await b.leases.expire(clock.now) == 1
        await a.leases.flush(clock.now)
        assert sorted(a.leases._held) == [4, 5]  # just past its deadline: kept a while
        clock.now = start + 2 + 5.1
        await a.leases.flush(clock.now)
        assert sorted(a.leases._held) == [5]
    finally:
        for process in (a, b):
            await process.aclose()
