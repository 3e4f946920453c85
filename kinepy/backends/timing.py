"""Warn about slow datastore calls, whatever the backend.

`TimedBackend` wraps any `Backend` and logs each call that takes longer than a threshold (INFO) or a
warning threshold (WARNING), as kine does, naming the call and its duration — never keys or values
(Kubernetes keeps Secrets there).
Starting, closing and `wait_for_change` (which waits on purpose) are not timed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable
from typing import TypeVar

from kinepy.backends.base import (
    Backend,
    BackendStatus,
    Commit,
    Evaluate,
    RangeRows,
    ReadSet,
    WriteSet,
)
from kinepy.types import Event, KeyRange, Lease, RangeQuery

log = logging.getLogger(__name__)

T = TypeVar("T")


class TimedBackend:
    """A backend whose calls slower than `threshold` seconds are logged at INFO, slower than
    `warning_threshold` at WARNING (0 turns either off)."""

    def __init__(self, backend: Backend, *, threshold: float, warning_threshold: float = 0.0) -> None:
        self._backend = backend
        self._info = threshold if threshold > 0 else math.inf
        self._warning = warning_threshold if warning_threshold > 0 else math.inf

    async def _timed(self, name: str, call: Awaitable[T]) -> T:
        slow = min(self._info, self._warning)
        if slow == math.inf:
            return await call
        started = time.perf_counter()
        try:
            return await call
        finally:
            elapsed = time.perf_counter() - started
            if elapsed > slow:
                level, threshold = (
                    (logging.WARNING, self._warning)
                    if elapsed > self._warning
                    else (logging.INFO, self._info)
                )
                log.log(
                    level, "slow datastore call: %s took %.3fs (threshold %.3fs)", name, elapsed, threshold
                )

    @property
    def shared(self) -> bool:
        return self._backend.shared

    @property
    def max_key_bytes(self) -> int:
        return self._backend.max_key_bytes

    @property
    def cluster_id(self) -> int:
        return self._backend.cluster_id

    @property
    def member_id(self) -> int:
        return self._backend.member_id

    async def start(self) -> None:
        await self._backend.start()

    async def aclose(self) -> None:
        await self._backend.aclose()

    async def wait_for_change(self, max_wait: float) -> list[Commit]:
        return await self._backend.wait_for_change(max_wait)

    async def revisions(self) -> tuple[int, int]:
        return await self._timed("revisions", self._backend.revisions())

    async def read_range(self, query: RangeQuery) -> RangeRows:
        return await self._timed("read_range", self._backend.read_range(query))

    async def write(self, read_set: ReadSet, evaluate: Evaluate) -> WriteSet | None:
        return await self._timed("write", self._backend.write(read_set, evaluate))

    async def read_events(
        self, key_range: KeyRange, *, after: int, upto: int, prev_kv: bool, limit: int = 0
    ) -> list[Event]:
        return await self._timed(
            "read_events",
            self._backend.read_events(key_range, after=after, upto=upto, prev_kv=prev_kv, limit=limit),
        )

    async def load_leases(self) -> list[Lease]:
        return await self._timed("load_leases", self._backend.load_leases())

    async def get_lease(self, lease_id: int) -> Lease | None:
        return await self._timed("get_lease", self._backend.get_lease(lease_id))

    async def expired_leases(self, now: float, limit: int) -> list[Lease]:
        return await self._timed("expired_leases", self._backend.expired_leases(now, limit))

    async def lease_keys(self, lease_id: int) -> list[bytes]:
        return await self._timed("lease_keys", self._backend.lease_keys(lease_id))

    async def compact_batch(
        self, compact_revision: int, after: int, upto: int, max_rows: int
    ) -> tuple[int, int]:
        return await self._timed(
            "compact_batch", self._backend.compact_batch(compact_revision, after, upto, max_rows)
        )

    async def status(self) -> BackendStatus:
        return await self._timed("status", self._backend.status())

    async def defragment(self) -> None:
        await self._timed("defragment", self._backend.defragment())

    async def snapshot(self, path: str) -> None:
        await self._timed("snapshot", self._backend.snapshot(path))

    async def hash_kv(self, revision: int) -> tuple[int, int]:
        return await self._timed("hash_kv", self._backend.hash_kv(revision))
