"""Reading the log for watchers, with etcd's compaction rule applied by the store."""

from __future__ import annotations

from kinepy.backends.base import Backend
from kinepy.errors import CompactedError
from kinepy.types import Event, KeyRange


async def read_history(
    backend: Backend, key_range: KeyRange, *, after: int, upto: int, prev_kv: bool, limit: int = 0
) -> list[Event]:
    """The events of `(after, upto]` (`Backend.read_events`); `CompactedError` if revision
    `after + 1` is compacted.

    Another process may compact a shared database, and delete the history physically, before this
    one learns of it: the events read would then silently lack the deleted rows. So the compaction
    revision is read *after* the events. Physical deletion starts only once the logical compaction
    has committed, so if the compaction revision still allows `after + 1` after the read, nothing
    the read needed was deleted before it.
    """
    events = await backend.read_events(key_range, after=after, upto=upto, prev_kv=prev_kv, limit=limit)
    _, compact_revision = await backend.revisions()
    if after + 1 < compact_revision:
        raise CompactedError()
    return events
