"""Warn about slow datastore calls, whatever the backend.

`TimedBackend` wraps any `Backend` and logs a WARNING for each call that takes longer than a
threshold, naming the call and its duration — never keys or values (Kubernetes keeps Secrets there).
Everything else passes through unchanged.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

_TIMED = frozenset(
    {
        "read_range",
        "write",
        "read_events",
        "compact_batch",
        "status",
        "revisions",
        "load_leases",
        "get_lease",
        "expired_leases",
        "lease_keys",
        "hash_kv",
        "defragment",
        "snapshot",
    }
)


class TimedBackend:
    """A backend whose calls slower than `threshold` seconds are logged."""

    def __init__(self, backend: Any, *, threshold: float) -> None:
        self._backend = backend
        self._threshold = threshold

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._backend, name)
        if name not in _TIMED or self._threshold <= 0:
            return attr
        return self._timed(name, attr)

    def _timed(self, name: str, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        threshold = self._threshold

        @functools.wraps(call)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await call(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                if elapsed > threshold:
                    log.warning(
                        "slow datastore call: %s took %.3fs (threshold %.3fs)", name, elapsed, threshold
                    )

        return timed
