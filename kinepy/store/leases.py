"""Leases: grant, keep-alive, time-to-live and expiry.

The database is the only source of truth: deadlines live in `leases.expires_at` (unix seconds),
so a restart neither forgets a lease nor restarts its clock, and several kinepy processes on one
database agree on every lease. Each change goes through the writer; expiry is a revoke like any
other (one revision, one DELETE event per attached key), re-checked against the persisted deadline
inside its transaction, so a keep-alive that won the race keeps the lease and a lease expired by
two processes at once is revoked exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from typing import cast

from kinepy import errors
from kinepy.backends.base import Backend
from kinepy.store import txn
from kinepy.store.writer import Writer
from kinepy.types import Lease

log = logging.getLogger(__name__)

MAX_LEASE_TTL = 9_000_000_000  # etcd's MaxLeaseTTL, seconds
MIN_LEASE_TTL = 2  # etcd's minimum with default election timeouts: ceil(1.5 * 1 s)
_EXPIRE_PER_TICK = 1000  # etcd's leaseRevokeRate is 1000/s


def _pick_id() -> int:
    return secrets.randbits(63) or 1


class LeaseManager:
    def __init__(self, backend: Backend, writer: Writer, *, expiry_interval: float = 0.5) -> None:
        self._backend = backend
        self._writer = writer
        self._expiry_interval = expiry_interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._expiry_loop(), name="kinepy-lease-expiry")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def grant(self, lease_id: int, ttl: int) -> tuple[int, Lease]:
        if ttl > MAX_LEASE_TTL:
            raise errors.LeaseTTLTooLargeError()
        ttl = max(ttl, MIN_LEASE_TTL)
        req = txn.LeaseGrantRequest(lease_id, ttl, time.time(), _pick_id)
        resp = cast(txn.LeaseResponse, await self._writer.submit(req))
        assert resp.lease is not None
        return resp.revision, resp.lease

    async def revoke(self, lease_id: int) -> int:
        resp = cast(txn.LeaseResponse, await self._writer.submit(txn.LeaseRevokeRequest(lease_id)))
        return resp.revision

    async def keep_alive(self, lease_id: int) -> int:
        """Renew a lease; returns its TTL, or 0 if it does not exist or has expired."""
        req = txn.LeaseKeepAliveRequest(lease_id, time.time())
        resp = cast(txn.LeaseResponse, await self._writer.submit(req))
        return 0 if resp.lease is None else resp.lease.ttl

    async def time_to_live(self, lease_id: int, *, keys: bool) -> tuple[Lease, int, list[bytes]] | None:
        """The lease, its remaining whole seconds and (if asked) its keys; None if unknown."""
        lease = await self._backend.get_lease(lease_id)
        if lease is None:
            return None
        remaining = max(0, math.floor(lease.expires_at - time.time()))
        attached = await self._backend.lease_keys(lease_id) if keys else []
        return lease, remaining, attached

    async def leases(self) -> list[int]:
        return sorted(lease.id for lease in await self._backend.load_leases())

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(self._expiry_interval)
            try:
                await self.expire(time.time())
            except Exception as exc:
                log.warning("lease expiry failed, will retry: %s", exc)

    async def expire(self, now: float) -> int:
        """Revoke every lease whose deadline is at or before `now`; returns how many."""
        expired = await self._backend.expired_leases(now, _EXPIRE_PER_TICK)
        # Submitted together, the revokes commit in one batch.
        results = await asyncio.gather(
            *(self._writer.submit(txn.LeaseRevokeRequest(lease.id, expired_at=now)) for lease in expired),
            return_exceptions=True,
        )
        revoked = 0
        for lease, result in zip(expired, results, strict=True):
            if isinstance(result, errors.LeaseNotFoundError):
                continue  # revoked meanwhile (by a client or another kinepy)
            if isinstance(result, BaseException):
                raise result
            if cast(txn.LeaseResponse, result).lease is not None:
                revoked += 1
                log.debug("lease %x expired", lease.id)
        return revoked
