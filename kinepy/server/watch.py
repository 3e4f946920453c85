"""The etcdserverpb.Watch service: one bidirectional stream, many watchers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

import grpc

from kinepy.config import GRPC_OVERHEAD_BYTES
from kinepy.errors import StoppedError
from kinepy.interceptors import WrappingServer
from kinepy.proto import kv_pb2, rpc_pb2, rpc_pb2_grpc
from kinepy.server import convert
from kinepy.server.status import status_code
from kinepy.store.store import Store
from kinepy.store.watch import WatchResponse, WatchStream, event_bytes
from kinepy.types import Event, EventType

log = logging.getLogger(__name__)

_EVENT_TYPES = {EventType.PUT: kv_pb2.Event.PUT, EventType.DELETE: kv_pb2.Event.DELETE}
_NOPUT = rpc_pb2.WatchCreateRequest.NOPUT
_NODELETE = rpc_pb2.WatchCreateRequest.NODELETE

V = TypeVar("V")
# Most bytes each conversion cache holds: a revision goes to every stream within moments, so a few
# MiB dedupe the fan-out of small values, and 1 MiB values cannot pile up GiBs (issue 15).
CACHE_BYTES = 16 << 20


class _IdentityCache(Generic[V]):
    """Conversions of committed events, keyed by the identities of the events they came from (plus
    whatever else they depend on). An entry keeps its source objects alive, so their ids cannot be
    reused while it is cached; cleared wholesale when it grows past `size` entries or `max_bytes`
    (what its entries' sources and values hold, as the caller counts them)."""

    __slots__ = ("_bytes", "_entries", "_max_bytes", "_size")

    def __init__(self, size: int, max_bytes: int = CACHE_BYTES) -> None:
        self._entries: dict[tuple[object, ...], tuple[object, V]] = {}
        self._size = size
        self._bytes = 0
        self._max_bytes = max_bytes

    def get(self, key: tuple[object, ...]) -> V | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def put(self, key: tuple[object, ...], sources: object, value: V, nbytes: int) -> None:
        if len(self._entries) >= self._size or self._bytes + nbytes > self._max_bytes:
            self._entries.clear()
            self._bytes = 0
        self._entries[key] = (sources, value)
        self._bytes += nbytes


def _event_message(event: Event, prev_kv: bool) -> kv_pb2.Event:
    out = kv_pb2.Event(type=_EVENT_TYPES[event.type], kv=convert.kv(event.kv))
    if prev_kv and event.prev_kv is not None:
        out.prev_kv.CopyFrom(convert.kv(event.prev_kv))
    return out


def add_watch_servicer(servicer: WatchServicer, server: WrappingServer) -> None:
    """As `rpc_pb2_grpc.add_WatchServicer_to_server`, but the servicer yields serialized messages."""
    handlers = {
        "Watch": grpc.stream_stream_rpc_method_handler(
            servicer.Watch, request_deserializer=rpc_pb2.WatchRequest.FromString, response_serializer=None
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("etcdserverpb.Watch", handlers),))
    server.add_registered_method_handlers("etcdserverpb.Watch", handlers)


class WatchServicer(rpc_pb2_grpc.WatchServicer):
    def __init__(self, store: Store, headers: convert.Headers, *, max_request_bytes: int) -> None:
        self._store = store
        self._headers = headers
        # Each committed event converted once however many watchers get it, and each revision's
        # response serialized once for every stream it goes to alike.
        self._events: _IdentityCache[kv_pb2.Event] = _IdentityCache(4096)
        self._encodings: _IdentityCache[list[bytes]] = _IdentityCache(256)
        # etcd's watch server splits at MaxRequestBytes + grpcOverheadBytes (NewWatchServer), not at
        # MaxRequestBytes: 2 MiB with the defaults.
        self._max_request_bytes = max_request_bytes + GRPC_OVERHEAD_BYTES

    async def Watch(
        self, request_iterator: AsyncIterator[rpc_pb2.WatchRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        with self._store.open_watch() as stream:
            reader = asyncio.create_task(self._read(request_iterator, stream), name="kinepy-watch-reader")
            try:
                while True:
                    try:
                        resp = await stream.next_response()
                    except StoppedError as exc:
                        await context.abort(status_code(exc.code), exc.message)
                    for message in self._encoded(resp):
                        yield message
            finally:
                reader.cancel()

    async def _read(self, requests: AsyncIterator[rpc_pb2.WatchRequest], stream: WatchStream) -> None:
        # A client that half-closes its side keeps its watchers, as with etcd.
        try:
            async for request in requests:
                which = request.WhichOneof("request_union")
                if which == "create_request":
                    c = request.create_request
                    stream.create(
                        c.key,
                        c.range_end,
                        start_revision=c.start_revision,
                        watch_id=c.watch_id,
                        prev_kv=c.prev_kv,
                        no_put=_NOPUT in c.filters,
                        no_delete=_NODELETE in c.filters,
                        progress_notify=c.progress_notify,
                        fragment=c.fragment,
                    )
                elif which == "cancel_request":
                    stream.cancel(request.cancel_request.watch_id)
                elif which == "progress_request":
                    stream.request_progress()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client went away mid-message
            log.debug("watch stream reader ended: %s", exc)

    def _encoded(self, resp: WatchResponse) -> list[bytes]:
        """`resp` as serialized messages. A revision's events sent alike to many streams (same watch
        id and options, as every first watcher of a stream has id 0) are serialized once: per
        message, the protobuf build and serialization were a fifth of the fan-out's loop time."""
        if not resp.events or resp.created or resp.canceled:
            return [m.SerializeToString() for m in self._messages(resp)]
        key = (resp.watch_id, resp.revision, resp.prev_kv, resp.fragment, *map(id, resp.events))
        encoded = self._encodings.get(key)
        if encoded is None:
            encoded = [m.SerializeToString() for m in self._messages(resp)]
            self._encodings.put(key, resp.events, encoded, resp.buffered_bytes + sum(map(len, encoded)))
        return encoded

    def _event(self, event: Event, prev_kv: bool) -> kv_pb2.Event:
        key = (id(event), prev_kv and event.prev_kv is not None)
        converted = self._events.get(key)
        if converted is None:
            converted = _event_message(event, key[1])
            self._events.put(key, event, converted, 2 * event_bytes(event))
        return converted

    def _messages(self, resp: WatchResponse) -> list[rpc_pb2.WatchResponse]:
        message = rpc_pb2.WatchResponse(
            header=self._headers(resp.revision),
            watch_id=resp.watch_id,
            created=resp.created,
            canceled=resp.canceled,
            compact_revision=resp.compact_revision,
            cancel_reason=resp.cancel_reason,
            events=[self._event(e, resp.prev_kv) for e in resp.events],
        )
        if not resp.fragment or len(message.events) < 2 or message.ByteSize() < self._max_request_bytes:
            return [message]
        return self._fragments(message)

    def _fragments(self, whole: rpc_pb2.WatchResponse) -> list[rpc_pb2.WatchResponse]:
        """etcd's sendFragments: pieces under the request size limit, all but the last marked."""
        pieces: list[rpc_pb2.WatchResponse] = []
        current = rpc_pb2.WatchResponse(header=whole.header, watch_id=whole.watch_id, fragment=True)
        for event in whole.events:
            current.events.append(event)
            if len(current.events) > 1 and current.ByteSize() >= self._max_request_bytes:
                del current.events[-1]
                pieces.append(current)
                current = rpc_pb2.WatchResponse(header=whole.header, watch_id=whole.watch_id, fragment=True)
                current.events.append(event)
        current.fragment = False
        pieces.append(current)
        return pieces
