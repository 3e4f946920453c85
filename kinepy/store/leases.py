"""Leases: grant, keep-alive, time-to-live and expiry.

Deadlines live in the database (`leases.expires_at`, unix seconds), so a restart neither forgets a
lease nor restarts its clock. Every change goes through the writer; expiry is a revoke like any
other (one revision, one DELETE event per attached key), re-checked inside its transaction so a
keep-alive that won the race keeps the lease.
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
from kinepy.store import mvcc
from kinepy.store.writer import Writer
from kinepy.types import Lease

log = logging.getLogger(__name__)

MAX_LEASE_TTL = 9_000_000_000  # etcd's MaxLeaseTTL, seconds
MIN_LEASE_TTL = 2  # etcd's minimum with default election timeouts: ceil(1.5 * 1 s)


def _pick_id() -> int:
    return secrets.randbits(63) or 1


class LeaseManager:
    def __init__(self, backend: Backend, writer: Writer, *, expiry_interval: float = 0.5) -> None:
        self._backend = backend
        self._writer = writer
        self._expiry_interval = expiry_interval
        self._leases: dict[int, Lease] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._leases = {lease.id: lease for lease in await self._backend.load_leases()}
        if self._leases:
            log.info("loaded %d leases", len(self._leases))
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
        req = mvcc.LeaseGrantRequest(lease_id, ttl, time.time(), _pick_id)
        resp = cast(mvcc.LeaseResponse, await self._writer.submit(req))
        assert resp.lease is not None
        self._leases[resp.lease.id] = resp.lease
        return resp.revision, resp.lease

    async def revoke(self, lease_id: int) -> int:
        resp = cast(mvcc.LeaseResponse, await self._writer.submit(mvcc.LeaseRevokeRequest(lease_id)))
        self._leases.pop(lease_id, None)
        return resp.revision

    async def keep_alive(self, lease_id: int) -> int:
        """Renew a lease; returns its TTL, or 0 if it does not exist or has expired."""
        lease = self._leases.get(lease_id)
        if lease is None or lease.expires_at <= time.time():
            return 0
        resp = cast(mvcc.LeaseResponse, await self._writer.submit(mvcc.LeaseKeepAliveRequest(lease_id, time.time())))
        if resp.lease is None:
            return 0
        self._leases[lease_id] = resp.lease
        return resp.lease.ttl

    async def time_to_live(self, lease_id: int, *, keys: bool) -> tuple[Lease, int, list[bytes]] | None:
        """The lease, its remaining whole seconds and (if asked) its keys; None if unknown."""
        lease = self._leases.get(lease_id)
        if lease is None:
            return None
        remaining = max(0, math.floor(lease.expires_at - time.time()))
        attached = await self._backend.lease_keys(lease_id) if keys else []
        return lease, remaining, attached

    def leases(self) -> list[int]:
        return sorted(self._leases)

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(self._expiry_interval)
            now = time.time()
            for lease in [lease for lease in self._leases.values() if lease.expires_at <= now]:
                try:
                    resp = await self._writer.submit(mvcc.LeaseRevokeRequest(lease.id, expired_at=now))
                except errors.LeaseNotFoundError:
                    self._leases.pop(lease.id, None)
                    continue
                except Exception as exc:
                    log.warning("expiring lease %x failed, will retry: %s", lease.id, exc)
                    continue
                resp = cast(mvcc.LeaseResponse, resp)
                if resp.lease is not None:
                    self._leases.pop(lease.id, None)
                    log.debug("lease %x expired", lease.id)
