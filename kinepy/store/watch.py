"""The watch hub: live fan-out of committed events, catch-up from history, progress.

Like etcd's watchable store, each `Watcher` keeps `next_revision` (etcd's minRev), the next
revision it needs, and is either *synced* (fed live by `publish`) or *unsynced* (caught up by the
sync task, from the in-memory window of recent revisions or from the log in the database).

Guarantees: events reach a watcher in revision order, each exactly once, and the events of one
revision in one response; a progress notification is queued behind every event it covers, so it
never overtakes them. Each stream buffers a bounded number of events and bytes: a watcher whose
stream is full is not dropped, it becomes unsynced and catches up later, from the log if need be.

Memory is bounded in bytes as well as in events (`event_bytes`): the window of recent revisions
drops its oldest revisions beyond either cap (`window_events`, `window_bytes`), a stream counts as
full at either (`max_buffered_events`, `max_buffered_bytes`), and a catch-up from the log reads no
more events at once than the stream has room for, in events and, at the window's average event
size, in bytes. A cap never loses an event: what the window no longer holds is read from the log.

Everything here runs on the event loop. Where reading the hub's revision and joining a group must
be atomic, there is no `await` between them: on one loop, that is etcd's lock.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from dataclasses import dataclass, field

from kinepy.backends.base import Backend
from kinepy.config import DEFAULT_WATCH_STREAM_BUFFER_BYTES, DEFAULT_WATCH_WINDOW_BYTES
from kinepy.errors import WATCH_DUPLICATE_ID, WATCH_RANGE_EMPTY, CompactedError, StoppedError
from kinepy.store import tasks
from kinepy.store.history import read_history
from kinepy.store.keys import is_empty
from kinepy.types import Event, EventType, KeyRange

log = logging.getLogger(__name__)

# etcd sends at most this many revisions in one catch-up response (watchBatchMaxRevs).
CATCH_UP_MAX_REVISIONS = 1000
# ... and kinepy at most this many bytes of events (unless one revision alone is more), so that a catch-up
# response stays under gRPC's default 4 MiB receive limit, which most clients other than etcd's keep.
CATCH_UP_MAX_BYTES = 2 << 20
# Events read from the log at once while the window holds nothing to estimate their size from.
CATCH_UP_BLIND_EVENTS = 256
PROGRESS_WATCH_ID = -1
# What an Event and its KeyValue cost in memory beyond their keys' and values' bytes (CPython objects).
EVENT_OVERHEAD_BYTES = 256


def event_bytes(event: Event) -> int:
    """The memory `event` holds: its key and value, its prev_kv's, and the objects around them."""
    kv, prev = event.kv, event.prev_kv
    size = EVENT_OVERHEAD_BYTES + len(kv.key) + len(kv.value)
    if prev is not None:
        size += len(prev.key) + len(prev.value)
    return size


def events_bytes(events: list[Event]) -> int:
    return sum(map(event_bytes, events))


@dataclass(slots=True)
class WatchResponse:
    """What a stream sends; converted to protobuf by the server."""

    watch_id: int
    revision: int
    events: list[Event] = field(default_factory=list)
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""
    prev_kv: bool = False
    fragment: bool = False
    buffered_bytes: int = 0  # what its events count against the stream's buffer (`event_bytes`)


@dataclass(slots=True, eq=False)
class Watcher:
    id: int
    stream: WatchStream
    key_range: KeyRange
    next_revision: int
    prev_kv: bool = False
    no_put: bool = False
    no_delete: bool = False
    progress_notify: bool = False
    fragment: bool = False
    synced: bool = False
    sent_since_tick: bool = False

    def wants(self, event: Event) -> bool:
        if event.type == EventType.PUT:
            if self.no_put:
                return False
        elif self.no_delete:
            return False
        return event.kv.key in self.key_range


class WatchStream:
    """One gRPC Watch stream: its watchers and its bounded queue of responses."""

    def __init__(self, hub: WatchHub, *, max_buffered_events: int, max_buffered_bytes: int) -> None:
        self.hub = hub
        self.watchers: dict[int, Watcher] = {}
        self._next_id = 0
        self._queue: collections.deque[WatchResponse] = collections.deque()
        self._ready = asyncio.Event()
        self.buffered_events = 0
        self.max_buffered_events = max_buffered_events
        self.buffered_bytes = 0
        self.max_buffered_bytes = max_buffered_bytes
        self.progress_pending = False
        self.closed = False
        self.ended = False

    # -- what the server calls ---------------------------------------------------------------

    def create(
        self,
        key: bytes,
        range_end: bytes,
        *,
        start_revision: int = 0,
        watch_id: int = 0,
        prev_kv: bool = False,
        no_put: bool = False,
        no_delete: bool = False,
        progress_notify: bool = False,
        fragment: bool = False,
    ) -> None:
        """Create a watcher and queue its `created` response (before any of its events)."""
        hub = self.hub
        if not key:
            key = b"\x00"  # etcd: the smallest key
        if range_end == b"\x00":
            key_range = KeyRange(key, None)
        elif range_end:
            key_range = KeyRange(key, range_end)
        else:
            key_range = KeyRange(key, key + b"\x00")
        if range_end and range_end != b"\x00" and is_empty(key_range):
            self._push(
                WatchResponse(-1, hub.revision, created=True, canceled=True, cancel_reason=WATCH_RANGE_EMPTY)
            )
            return
        if start_revision < 0:
            self._push(
                WatchResponse(
                    -1, hub.revision, created=True, canceled=True, cancel_reason=CompactedError.message
                )
            )
            return
        if watch_id != 0:
            if watch_id in self.watchers:
                self._push(
                    WatchResponse(
                        -1, hub.revision, created=True, canceled=True, cancel_reason=WATCH_DUPLICATE_ID
                    )
                )
                return
        else:
            while self._next_id in self.watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        watcher = Watcher(
            watch_id,
            self,
            key_range,
            next_revision=0,
            prev_kv=prev_kv,
            no_put=no_put,
            no_delete=no_delete,
            progress_notify=progress_notify,
            fragment=fragment,
        )
        self.watchers[watch_id] = watcher
        # No await from here to the end: the created response and the group the watcher joins
        # are decided against the same hub revision.
        self._push(WatchResponse(watch_id, hub.revision, created=True))
        hub.add(watcher, start_revision)

    def cancel(self, watch_id: int) -> None:
        watcher = self.watchers.pop(watch_id, None)
        if watcher is None:
            return  # etcd: an unknown id gets no reply
        self.hub.remove(watcher)
        self._push(WatchResponse(watch_id, self.hub.revision, canceled=True))

    def request_progress(self) -> None:
        """A WatchProgressRequest: answered (watch_id -1) once every watcher is synced."""
        self.progress_pending = True
        self.maybe_send_progress()

    async def next_response(self) -> WatchResponse:
        """The next response to send; raises `StoppedError` once `end()` was called and the queue is
        empty, so the server ends the stream with a status clients retry (UNAVAILABLE)."""
        while not self._queue:
            if self.ended:
                raise StoppedError
            self._ready.clear()
            await self._ready.wait()
        resp = self._queue.popleft()
        if resp.events:
            resp = self._with_queued_behind(resp)
            self.buffered_events -= len(resp.events)
            self.buffered_bytes -= resp.buffered_bytes
            if (
                self.buffered_events < self.max_buffered_events // 2
                and self.buffered_bytes < self.max_buffered_bytes // 2
            ):
                self.hub.wake()
        return resp

    def _with_queued_behind(self, resp: WatchResponse) -> WatchResponse:
        """`resp` with the event responses queued right behind it for the same watcher: a stream that
        fell behind (a slow client, a busy event loop) catches up in fewer, larger messages, as from the
        log, instead of falling further behind at one message per revision. Whole revisions, at most
        CATCH_UP_MAX_REVISIONS responses and CATCH_UP_MAX_BYTES; nothing overtakes a response of
        another kind (a progress notification stays behind the events it covers)."""
        queue = self._queue
        if not queue or queue[0].watch_id != resp.watch_id or not queue[0].events:
            return resp
        events = list(resp.events)
        size = resp.buffered_bytes
        last = resp
        merged = 1
        while queue and merged < CATCH_UP_MAX_REVISIONS:
            behind = queue[0]
            if (
                behind.watch_id != resp.watch_id
                or not behind.events
                or size + behind.buffered_bytes > CATCH_UP_MAX_BYTES
            ):
                break
            queue.popleft()
            events += behind.events
            size += behind.buffered_bytes
            last = behind
            merged += 1
        return dataclasses.replace(resp, revision=last.revision, events=events, buffered_bytes=size)

    def end(self) -> None:
        """The server is stopping: send what is queued, then end the stream (`next_response`)."""
        self.ended = True
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        for watcher in self.watchers.values():
            self.hub.remove(watcher)
        self.watchers.clear()
        self._queue.clear()

    # -- what the hub calls ------------------------------------------------------------------

    def has_room(self) -> bool:
        return (
            self.buffered_events < self.max_buffered_events and self.buffered_bytes < self.max_buffered_bytes
        )

    def room(self) -> int:
        """Events the stream can still take (at least 1)."""
        return max(1, self.max_buffered_events - self.buffered_events)

    def byte_room(self) -> int:
        """Bytes of events the next catch-up response may carry: what the stream can still take, at
        most CATCH_UP_MAX_BYTES (at least 1)."""
        return max(1, min(CATCH_UP_MAX_BYTES, self.max_buffered_bytes - self.buffered_bytes))

    def _push(self, resp: WatchResponse) -> None:
        self._queue.append(resp)
        self._ready.set()

    def send_events(self, watcher: Watcher, events: list[Event], revision: int) -> None:
        size = events_bytes(events)
        self.buffered_events += len(events)
        self.buffered_bytes += size
        watcher.sent_since_tick = True
        self._push(
            WatchResponse(
                watcher.id,
                revision,
                events,
                prev_kv=watcher.prev_kv,
                fragment=watcher.fragment,
                buffered_bytes=size,
            )
        )

    def send_compacted(self, watcher: Watcher, compact_revision: int) -> None:
        self.watchers.pop(watcher.id, None)
        self._push(WatchResponse(watcher.id, 0, canceled=True, compact_revision=compact_revision))

    def send_progress(self, watch_id: int, revision: int) -> None:
        self._push(WatchResponse(watch_id, revision))

    def all_synced(self) -> bool:
        return all(w.synced for w in self.watchers.values())

    def maybe_send_progress(self) -> None:
        if self.progress_pending and self.all_synced():
            self.progress_pending = False
            if self.watchers:
                self.send_progress(PROGRESS_WATCH_ID, self.hub.revision)


class WatchHub:
    """Every watcher of this process, fed with the commits of this process and of the others on a shared
    database (`store/follower.py`)."""

    def __init__(
        self,
        backend: Backend,
        *,
        revision: int,
        compact_revision: int,
        window_events: int = 8192,
        window_bytes: int = DEFAULT_WATCH_WINDOW_BYTES,
        max_buffered_events: int = 4096,
        max_buffered_bytes: int = DEFAULT_WATCH_STREAM_BUFFER_BYTES,
        progress_interval: float = 5.0,
    ) -> None:
        self._progress_interval = progress_interval
        self._backend = backend
        self.revision = revision
        self.compact_revision = compact_revision
        # (revision, its events, their `events_bytes`), oldest first
        self._window: collections.deque[tuple[int, list[Event], int]] = collections.deque()
        self._window_events = 0
        self._window_bytes = 0
        self._window_max_events = window_events
        self._window_max_bytes = window_bytes
        self._max_buffered_events = max_buffered_events
        self._max_buffered_bytes = max_buffered_bytes
        self._synced: set[Watcher] = set()
        self._unsynced: set[Watcher] = set()
        self._streams: set[WatchStream] = set()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.events_sent = 0
        self.stopping = False

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._sync_loop(), name="kinepy-watch-sync"),
            asyncio.create_task(self._progress_loop(), name="kinepy-watch-progress"),
        ]

    async def aclose(self) -> None:
        await tasks.cancel(*self._tasks)
        self._tasks = []

    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self._progress_interval)
            self.progress_tick()

    @property
    def watcher_count(self) -> int:
        return len(self._synced) + len(self._unsynced)

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    def open_stream(self) -> WatchStream:
        stream = WatchStream(
            self, max_buffered_events=self._max_buffered_events, max_buffered_bytes=self._max_buffered_bytes
        )
        self._streams.add(stream)
        if self.stopping:
            stream.end()
        return stream

    def end_streams(self) -> None:
        """Shutdown: end every open stream (and any opened from now on) once its queue is sent."""
        self.stopping = True
        for stream in self._streams:
            stream.end()

    def close_stream(self, stream: WatchStream) -> None:
        stream.close()
        self._streams.discard(stream)

    def wake(self) -> None:
        if self._unsynced:
            self._wakeup.set()

    def add(self, watcher: Watcher, start_revision: int) -> None:
        if start_revision == 0 or start_revision > self.revision:
            watcher.next_revision = max(self.revision + 1, start_revision)
            watcher.synced = True
            self._synced.add(watcher)
        else:
            watcher.next_revision = start_revision
            watcher.synced = False
            self._unsynced.add(watcher)
            self._wakeup.set()

    def remove(self, watcher: Watcher) -> None:
        self._synced.discard(watcher)
        self._unsynced.discard(watcher)

    # -- live ----------------------------------------------------------------------------------

    def publish(self, revision: int, events: list[Event]) -> None:
        """Committed events, in revision order, up to `revision`. Called by the follower
        (`Follower.publish`), for this process's commits and the others'."""
        by_revision: list[tuple[int, list[Event]]] = []
        for event in events:
            rev = event.kv.mod_revision
            if by_revision and by_revision[-1][0] == rev:
                by_revision[-1][1].append(event)
            else:
                by_revision.append((rev, [event]))
        self._remember(by_revision)
        self.revision = revision
        first = by_revision[0][0] if by_revision else revision + 1
        # The events' keys span [low, high]: a watcher whose range misses it wants none of them, found
        # without looking at each event (kube-apiserver keeps ~57 watchers, each on one resource).
        keys = [event.kv.key for event in events]
        low, high = (min(keys), max(keys)) if keys else (b"", b"")
        for watcher in list(self._synced):
            if watcher.next_revision > revision:
                continue  # waits for a future revision
            if not watcher.stream.has_room():
                self._demote(watcher, max(first, watcher.next_revision))
                continue
            if keys and watcher.key_range.meets(low, high):
                after = watcher.next_revision
                wanted = [e for e in events if e.kv.mod_revision >= after and watcher.wants(e)]
                if wanted:
                    watcher.stream.send_events(watcher, wanted, revision)
                    self.events_sent += len(wanted)
            watcher.next_revision = revision + 1
        for stream in self._streams:
            if stream.progress_pending:
                stream.maybe_send_progress()

    def _remember(self, revisions: list[tuple[int, list[Event]]]) -> None:
        """Add published revisions to the window, then drop its oldest beyond either cap (the
        latest revision always stays, so the window says where the log must take over)."""
        window = self._window
        for rev, events in revisions:
            size = events_bytes(events)
            window.append((rev, events, size))
            self._window_events += len(events)
            self._window_bytes += size
        while len(window) > 1 and (
            self._window_events > self._window_max_events or self._window_bytes > self._window_max_bytes
        ):
            _, dropped, size = window.popleft()
            self._window_events -= len(dropped)
            self._window_bytes -= size

    def _read_limit(self, stream: WatchStream) -> int:
        """Events to read from the log at once for `stream`: its room in events and, at the window's
        average event size, in bytes (at least 1)."""
        room = stream.room()
        if self._window_events:
            room = min(room, stream.byte_room() * self._window_events // self._window_bytes)
        else:
            room = min(room, CATCH_UP_BLIND_EVENTS)
        return max(1, room)

    def _demote(self, watcher: Watcher, next_revision: int) -> None:
        log.warning(
            "watcher %d is behind (stream buffer full); it will catch up from revision %d",
            watcher.id,
            next_revision,
        )
        watcher.next_revision = next_revision
        watcher.synced = False
        self._synced.discard(watcher)
        self._unsynced.add(watcher)

    def skip_to(self, revision: int) -> None:
        """History up to `revision` was compacted (by another process) before this hub saw it:
        go on from there; watchers still waiting for it are cancelled as compacted."""
        for watcher in list(self._synced):
            if watcher.next_revision <= revision:
                watcher.synced = False
                self._synced.discard(watcher)
                self._unsynced.add(watcher)
        self._forget_window()
        self.revision = max(self.revision, revision)
        self._wakeup.set()

    def _forget_window(self) -> None:
        self._window.clear()
        self._window_events = 0
        self._window_bytes = 0

    def lost(self, revision: int) -> None:
        """The database lost revisions up to `revision` that this hub may have published, and goes
        on after `revision`, compacted there (`txn.BatchState.skip_lost`): every watcher is cancelled
        as compacted (its client lists again), and the window, which may hold lost events, is forgotten."""
        for watcher in [*self._synced, *self._unsynced]:
            self.remove(watcher)
            watcher.stream.send_compacted(watcher, revision)
        self._forget_window()
        self.revision = max(self.revision, revision)
        self.compact_revision = max(self.compact_revision, revision)

    def compacted(self, compact_revision: int) -> None:
        """The compaction revision moved; watchers behind it are cancelled by the sync loop."""
        self.compact_revision = max(self.compact_revision, compact_revision)
        self._wakeup.set()

    def progress_tick(self) -> None:
        """Periodic progress for `progress_notify` watchers that were sent nothing since the last tick."""
        for stream in self._streams:
            for watcher in stream.watchers.values():
                if watcher.progress_notify and watcher.synced and not watcher.sent_since_tick:
                    stream.send_progress(watcher.id, self.revision)
                watcher.sent_since_tick = False

    # -- catch-up ------------------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            try:
                progressed = await self._sync_once()
            except Exception:
                log.exception("watch catch-up failed; retrying")
                await asyncio.sleep(0.5)
                self._wakeup.set()
                continue
            if progressed:
                self._wakeup.set()
            await asyncio.sleep(0)

    async def _sync_once(self) -> bool:
        """One catch-up step for every unsynced watcher with room; True if any moved."""
        progressed = False
        for watcher in list(self._unsynced):
            if watcher not in self._unsynced or watcher.stream.closed:
                continue
            if not watcher.stream.has_room():
                continue
            if watcher.next_revision < self.compact_revision:
                self._unsynced.discard(watcher)
                watcher.stream.send_compacted(watcher, self.compact_revision)
                progressed = True
                continue
            if watcher.next_revision > self.revision:
                self._promote(watcher)
                progressed = True
                continue
            start = watcher.next_revision
            if self._window and self._window[0][0] <= start:
                wanted, upto = self._from_window(watcher, start)
            else:
                try:
                    events, upto = await self._from_log(watcher, start)
                except CompactedError:
                    continue  # by another process on a shared database: the follower tells us soon
                if watcher not in self._unsynced or watcher.next_revision != start:
                    continue  # cancelled (or moved) while we read
                if self.compact_revision > start:
                    continue  # history may be gone: the next pass cancels it as compacted
                wanted = [e for e in events if watcher.wants(e)]
            wanted = [self._without_compacted_prev_kv(e) for e in wanted]
            if wanted:
                watcher.stream.send_events(watcher, wanted, self.revision)
                self.events_sent += len(wanted)
            watcher.next_revision = upto + 1
            if watcher.next_revision > self.revision:
                self._promote(watcher)
            progressed = True
        return progressed

    async def _from_log(self, watcher: Watcher, start: int) -> tuple[list[Event], int]:
        """The events of the key range of `watcher` from revision `start` on, read from the log:
        whole revisions only, at most CATCH_UP_MAX_REVISIONS revisions and (unless one revision alone
        is more) what its stream has room for; and the last revision covered. `CompactedError` if
        `start` is compacted."""

        async def read(*, after: int, upto: int, limit: int = 0) -> list[Event]:
            return await read_history(
                self._backend, watcher.key_range, after=after, upto=upto, prev_kv=watcher.prev_kv, limit=limit
            )

        room = self._read_limit(watcher.stream)
        upto = min(self.revision, start - 1 + CATCH_UP_MAX_REVISIONS)
        events = await read(after=start - 1, upto=upto, limit=room + 1)
        if len(events) > room:
            # Stop before the last revision read (it may be cut short), unless it is the
            # only one: the events of one revision always travel together.
            last = events[-1].kv.mod_revision
            if events[0].kv.mod_revision == last:
                upto = last
                events = await read(after=last - 1, upto=last)
            else:
                upto = last - 1
                events = [e for e in events if e.kv.mod_revision < last]
        return _whole_revisions_within(events, upto, watcher.stream.byte_room())

    def _without_compacted_prev_kv(self, event: Event) -> Event:
        """etcd reads prev_kv at mod_revision - 1; once that revision is compacted the read fails and
        prev_kv is silently absent. The window (or the log) may still hold it: drop it, so a catch-up
        answers the same whichever of them served it."""
        if event.prev_kv is not None and event.kv.mod_revision - 1 < self.compact_revision:
            return dataclasses.replace(event, prev_kv=None)
        return event

    def _from_window(self, watcher: Watcher, start: int) -> tuple[list[Event], int]:
        """The events `watcher` wants from revision `start` on, whole revisions only, at most
        CATCH_UP_MAX_REVISIONS revisions and (unless one revision alone is more) what its stream
        has room for, in events and in bytes; and the last revision covered. The window holds every
        revision from its first entry to `self.revision`."""
        room, byte_room = watcher.stream.room(), watcher.stream.byte_room()
        wanted: list[Event] = []
        size = revisions = 0
        for rev, evs, _ in self._window:
            if rev < start:
                continue
            mine = [e for e in evs if watcher.wants(e)]
            mine_size = events_bytes(mine)
            if revisions == CATCH_UP_MAX_REVISIONS or (
                wanted and (len(wanted) + len(mine) > room or size + mine_size > byte_room)
            ):
                return wanted, rev - 1
            wanted.extend(mine)
            size += mine_size
            revisions += 1
        return wanted, self.revision

    def _promote(self, watcher: Watcher) -> None:
        watcher.synced = True
        self._unsynced.discard(watcher)
        self._synced.add(watcher)
        stream = watcher.stream
        if stream.progress_pending:
            stream.maybe_send_progress()


def _whole_revisions_within(events: list[Event], upto: int, byte_room: int) -> tuple[list[Event], int]:
    """The longest run of whole revisions of `events` (oldest first, covering revisions up to `upto`)
    within `byte_room` bytes, and the last revision it covers; the first revision always, however large."""
    size = 0
    for i, event in enumerate(events):
        size += event_bytes(event)
        if size > byte_room and i > 0:
            first_cut = event.kv.mod_revision
            if events[0].kv.mod_revision == first_cut:
                continue  # still the first revision: its events travel together
            return [e for e in events[:i] if e.kv.mod_revision < first_cut], first_cut - 1
    return events, upto
