"""Leases: grant, keep-alive, time-to-live and expiry.

As etcd's lessor: grants and revokes are durable (they go through the writer, a revoke is one
revision with one DELETE event per attached key), keep-alives are not. A keep-alive moves the
lease's deadline in memory only, and when a process starts every lease gets a fresh full TTL, as
etcd's leader gives one on election (`Promote`): a restart never expires a lease early, and never
forgets one.

Alone on its database, a process holds every lease's deadline in memory (`_Held`) and expires them
from there: a keep-alive costs no SQL at all. On a database shared with other kinepy processes
(`Backend.shared`), each process expires leases by the deadlines persisted in `leases.expires_at`,
so a deadline moved in memory by a keep-alive is written before anyone could act on the old one:
with the next batch when less than two thirds of the TTL is left of the persisted deadline (at most
one write per lease every third of its TTL, all due leases in one commit), and before the
keep-alive is answered when less than a third is left. A keep-alive there reads the lease (a read, not
a commit) when this process has not read or written it for `RECHECK_AFTER` (1 s), so a lease revoked
through another process answers 0 at most that long after. Expiry is a
revoke re-checked against the persisted deadline inside its transaction: a lease is revoked once,
however many processes expire it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from kinepy import errors
from kinepy.backends.base import Backend
from kinepy.store import tasks, txn
from kinepy.store.writer import Writer
from kinepy.types import Lease

log = logging.getLogger(__name__)

MAX_LEASE_TTL = 9_000_000_000  # etcd's MaxLeaseTTL, seconds
MIN_LEASE_TTL = 2  # etcd's minimum with default election timeouts: ceil(1.5 * 1 s)
_EXPIRE_PER_TICK = 1000  # etcd's leaseRevokeRate is 1000/s
# Shared database: how often renewals held in memory are looked at for writing, and when they are
# written: once less than this share of the TTL is left of the persisted deadline, and before the
# keep-alive is answered once less than `_WRITE_NOW` is left.
FLUSH_INTERVAL = 0.1
_WRITE_DUE = 2 / 3
_WRITE_NOW = 1 / 3
_FORGET_AFTER = 5.0  # seconds past its deadline a lease this process holds is forgotten (shared)
# Shared: a keep-alive reads the lease again (was it revoked through another process?) when this
# process last read or wrote it longer ago than this, in seconds.
RECHECK_AFTER = 1.0

Clock = Callable[[], float]
"""Unix time in seconds (`time.time`; tests pass their own)."""


def _pick_id() -> int:
    return secrets.randbits(63) or 1


@dataclass(slots=True)
class _Held:
    """What this process knows of a lease: its TTL, its deadline (keep-alives received here
    included) and the deadline in the database as last read or written here."""

    ttl: int
    deadline: float
    persisted: float
    checked: float = -math.inf  # shared: when the database's row was last read or written here
    expiring: bool = False  # its revoke is on its way: keep-alives find it expired, as in etcd

    def expires_at(self) -> float:
        return max(self.deadline, self.persisted)


class LeaseManager:
    def __init__(
        self, backend: Backend, writer: Writer, *, expiry_interval: float = 0.5, clock: Clock = time.time
    ) -> None:
        self._backend = backend
        self._writer = writer
        self._expiry_interval = expiry_interval
        self._clock = clock
        self._shared = backend.shared
        # Alone on the database: every lease. Shared: the leases this process has seen lately.
        self._held: dict[int, _Held] = {}
        self._unwritten: set[int] = set()  # shared: renewed here, the database not told yet
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, *, expire: bool = True) -> None:
        """On a shared database, write renewals in the background. With `expire` (one process of
        several suffices: `Store`'s leader), first give every lease a fresh TTL (etcd's `Promote`),
        then expire leases in the background."""
        if expire:
            await self._promote()
            self._tasks.append(asyncio.create_task(self._expiry_loop(), name="kinepy-lease-expiry"))
        if self._shared:
            self._tasks.append(asyncio.create_task(self._flush_loop(), name="kinepy-lease-flush"))

    async def aclose(self) -> None:
        await tasks.cancel(*self._tasks)
        self._tasks = []

    async def _promote(self) -> None:
        now = self._clock()
        leases = await self._backend.load_leases()
        if leases:
            log.info("%d leases, each with its whole TTL again", len(leases))
        if not self._shared:
            self._held = {lease.id: _Held(lease.ttl, now + lease.ttl, lease.expires_at) for lease in leases}
            return
        # Other processes expire by the persisted deadlines: the fresh TTLs are written (one batch).
        renewals = [
            self._writer.submit(txn.LeaseKeepAliveRequest(lease.id, now, now + lease.ttl, revive=True))
            for lease in leases
        ]
        for result in await asyncio.gather(*renewals):
            renewed = cast(txn.LeaseResponse, result).lease
            if renewed is not None:
                self._held[renewed.id] = _Held(renewed.ttl, renewed.expires_at, renewed.expires_at, now)

    async def grant(self, lease_id: int, ttl: int) -> tuple[int, Lease]:
        if ttl > MAX_LEASE_TTL:
            raise errors.LeaseTTLTooLargeError()
        ttl = max(ttl, MIN_LEASE_TTL)
        req = txn.LeaseGrantRequest(lease_id, ttl, self._clock(), _pick_id)
        resp = cast(txn.LeaseResponse, await self._writer.submit(req))
        lease = resp.lease
        assert lease is not None
        self._held[lease.id] = _Held(lease.ttl, lease.expires_at, lease.expires_at, req.now)
        return resp.revision, lease

    async def revoke(self, lease_id: int) -> int:
        try:
            resp = cast(txn.LeaseResponse, await self._writer.submit(txn.LeaseRevokeRequest(lease_id)))
        except errors.LeaseNotFoundError:
            self._forget(lease_id)
            raise
        self._forget(lease_id)
        return resp.revision

    def _forget(self, lease_id: int) -> None:
        self._held.pop(lease_id, None)
        self._unwritten.discard(lease_id)

    async def keep_alive(self, lease_id: int) -> int:
        """Renew a lease; returns its TTL, or 0 if it does not exist or has expired."""
        if self._shared:
            return await self._keep_alive_shared(lease_id)
        held = self._held.get(lease_id)
        now = self._clock()
        if held is None or held.expiring or held.deadline <= now:
            return 0
        held.deadline = max(held.deadline, now + held.ttl)
        return held.ttl

    async def _keep_alive_shared(self, lease_id: int) -> int:
        held = self._held.get(lease_id)
        if held is None or self._clock() - held.checked >= RECHECK_AFTER:
            lease = await self._backend.get_lease(lease_id)
            if lease is None:
                self._forget(lease_id)
                return 0
            held = self._held.get(lease_id)
            if held is None:
                held = self._held[lease_id] = _Held(lease.ttl, lease.expires_at, lease.expires_at)
            held.persisted = lease.expires_at
            held.checked = self._clock()
        now = self._clock()
        if held.expiring or held.expires_at() <= now:
            return 0
        held.deadline = max(held.deadline, now + held.ttl)
        if held.persisted - now >= held.ttl * _WRITE_NOW:
            self._unwritten.add(lease_id)
            return held.ttl
        # Late: the persisted deadline is close, another process may act on it soon.
        return held.ttl if await self._write([lease_id]) else 0

    async def _write(self, lease_ids: list[int]) -> list[int]:
        """Persist the deadlines held for `lease_ids` (one batch); returns those still alive.
        Renewals that could not be written are kept for the next try, and the error raised."""
        requests = []
        for lease_id in lease_ids:
            held = self._held[lease_id]
            self._unwritten.discard(lease_id)
            # `now` is when the renewal was received: a lease already expired then is not renewed.
            requests.append(txn.LeaseKeepAliveRequest(lease_id, held.deadline - held.ttl, held.deadline))
        results = await asyncio.gather(*(self._writer.submit(r) for r in requests), return_exceptions=True)
        alive = []
        failure: BaseException | None = None
        for lease_id, result in zip(lease_ids, results, strict=True):
            still = self._held.get(lease_id)
            if isinstance(result, BaseException):
                failure = result
                if still is not None:
                    self._unwritten.add(lease_id)
                continue
            renewed = cast(txn.LeaseResponse, result).lease
            if renewed is None:  # revoked, or expired before the renewal, through another process
                self._forget(lease_id)
            elif still is not None:
                still.persisted = renewed.expires_at
                still.checked = self._clock()
                alive.append(lease_id)
        if failure is not None:
            raise failure
        return alive

    async def flush(self, now: float) -> None:
        """Shared database: write the renewals whose persisted deadline is getting close, and forget
        the leases that expired (or were revoked) through other processes meanwhile."""
        for lease_id in [i for i, h in self._held.items() if h.expires_at() + _FORGET_AFTER < now]:
            if not self._held[lease_id].expiring:
                self._forget(lease_id)
        due = [
            lease_id
            for lease_id in self._unwritten
            if (held := self._held[lease_id]).persisted - now < held.ttl * _WRITE_DUE
        ]
        if due:
            await self._write(due)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                await self.flush(self._clock())
            except Exception as exc:
                log.warning("writing lease renewals failed, will retry: %s", exc)

    async def time_to_live(self, lease_id: int, *, keys: bool) -> tuple[Lease, int, list[bytes]] | None:
        """The lease, its remaining whole seconds and (if asked) its keys; None if unknown."""
        held = self._held.get(lease_id)
        if self._shared:
            lease = await self._backend.get_lease(lease_id)
            if lease is None:
                return None
            expires_at = lease.expires_at if held is None else max(lease.expires_at, held.deadline)
            lease = Lease(lease.id, lease.ttl, expires_at)
        elif held is None:
            return None
        else:
            lease = Lease(lease_id, held.ttl, held.deadline)
        remaining = max(0, math.floor(lease.expires_at - self._clock()))
        attached = await self._backend.lease_keys(lease_id) if keys else []
        return lease, remaining, attached

    async def leases(self) -> list[int]:
        if self._shared:
            return sorted(lease.id for lease in await self._backend.load_leases())
        return sorted(self._held)

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(self._expiry_interval)
            try:
                await self.expire(self._clock())
            except Exception as exc:
                log.warning("lease expiry failed, will retry: %s", exc)

    async def _expired(self, now: float) -> list[int]:
        """The leases to revoke at `now`, earliest deadline first, at most `_EXPIRE_PER_TICK`."""
        if not self._shared:
            found = [(h.deadline, i) for i, h in self._held.items() if h.deadline <= now and not h.expiring]
            return [lease_id for _, lease_id in sorted(found)[:_EXPIRE_PER_TICK]]
        expired, late = [], []
        for lease in await self._backend.expired_leases(now, _EXPIRE_PER_TICK):
            held = self._held.get(lease.id)
            if held is not None and held.deadline > now:
                late.append(lease.id)  # renewed here, not written in time (a slow database)
            elif held is None or not held.expiring:
                expired.append(lease.id)
        if late:
            await self._write(late)
        return expired

    async def expire(self, now: float) -> int:
        """Revoke every lease whose deadline is at or before `now`; returns how many."""
        expired = await self._expired(now)
        for lease_id in expired:
            if (held := self._held.get(lease_id)) is not None:
                held.expiring = True
        # Submitted together, the revokes commit in one batch. The transaction re-checks the
        # persisted deadline (shared: another process may have written a renewal meanwhile).
        expired_at = now if self._shared else None
        results = await asyncio.gather(
            *(self._writer.submit(txn.LeaseRevokeRequest(i, expired_at=expired_at)) for i in expired),
            return_exceptions=True,
        )
        revoked = 0
        failure: BaseException | None = None
        for lease_id, result in zip(expired, results, strict=True):
            if isinstance(result, errors.LeaseNotFoundError):
                self._forget(lease_id)  # revoked meanwhile (by a client or another kinepy)
            elif isinstance(result, BaseException):
                failure = result
                if (held := self._held.get(lease_id)) is not None:
                    held.expiring = False
            elif cast(txn.LeaseResponse, result).lease is None:
                if (held := self._held.get(lease_id)) is not None:  # renewed through another process
                    held.expiring = False
            else:
                self._forget(lease_id)
                revoked += 1
                log.debug("lease %x expired", lease_id)
        if failure is not None:
            raise failure
        return revoked
