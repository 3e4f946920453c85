"""Warn about slow datastore calls, whatever the backend.

`TimedBackend` wraps any `Backend` and logs each call that takes longer than a threshold (INFO) or a
warning threshold (WARNING), as kine does, naming the call and its duration — never keys or values
(Kubernetes keeps Secrets there).
Everything else passes through unchanged.
"""

from __future__ import annotations

import functools
import logging
import math
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
    """A backend whose calls slower than `threshold` seconds are logged at INFO, slower than
    `warning_threshold` at WARNING (0 turns either off)."""

    def __init__(self, backend: Any, *, threshold: float, warning_threshold: float = 0.0) -> None:
        self._backend = backend
        self._threshold = threshold
        self._warning_threshold = warning_threshold

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._backend, name)
        if name not in _TIMED or (self._threshold <= 0 and self._warning_threshold <= 0):
            return attr
        return self._timed(name, attr)

    def _timed(self, name: str, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        info = self._threshold if self._threshold > 0 else math.inf
        warning = self._warning_threshold if self._warning_threshold > 0 else math.inf

        @functools.wraps(call)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await call(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                if elapsed > min(info, warning):
                    level, threshold = (
                        (logging.WARNING, warning) if elapsed > warning else (logging.INFO, info)
                    )
                    log.log(
                        level,
                        "slow datastore call: %s took %.3fs (threshold %.3fs)",
                        name,
                        elapsed,
                        threshold,
                    )

        return timed
