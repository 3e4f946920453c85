"""Blocking etcd clients for tests that compare what several servers (or workers) answer: `Client`,
`Watch` (a stream whose responses are stamped with their arrival time), `event_tuple` (an event as
comparable values) and `revisions_between`."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import grpc

from kinepy.proto import kv_pb2, rpc_pb2, rpc_pb2_grpc

EVENT_TIMEOUT = 15.0


class Client:
    """Blocking etcd stubs on one channel."""

    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.insecure_channel(endpoint)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)
        self.watch = rpc_pb2_grpc.WatchStub(self.channel)

    def put(self, key: bytes, value: bytes, **kwargs: Any) -> int:
        return int(
            self.kv.Put(rpc_pb2.PutRequest(key=key, value=value, **kwargs), timeout=30).header.revision
        )

    def get(self, key: bytes, range_end: bytes = b"", **kwargs: Any) -> rpc_pb2.RangeResponse:
        resp: rpc_pb2.RangeResponse = self.kv.Range(
            rpc_pb2.RangeRequest(key=key, range_end=range_end, **kwargs), timeout=30
        )
        return resp

    def close(self) -> None:
        self.channel.close()


class Watch:
    """One Watch stream; a thread stamps each response with its arrival time (monotonic)."""

    def __init__(self, client: Client, create: rpc_pb2.WatchCreateRequest) -> None:
        self._requests: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()
        self._responses: queue.Queue[tuple[float, Any]] = queue.Queue()
        self._requests.put(rpc_pb2.WatchRequest(create_request=create))
        self._call = client.watch.Watch(iter(self._requests.get, None))
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for response in self._call:
                self._responses.put((time.monotonic(), response))
        except grpc.RpcError as exc:
            self._responses.put((time.monotonic(), exc))

    def next(self, timeout: float = EVENT_TIMEOUT) -> tuple[float, rpc_pb2.WatchResponse]:
        try:
            at, item = self._responses.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no watch response within {timeout} s") from None
        if isinstance(item, Exception):
            raise item
        return at, item

    def created(self) -> rpc_pb2.WatchResponse:
        _, response = self.next()
        assert response.created and not response.canceled, response
        return response

    def events_upto(self, revision: int) -> list[kv_pb2.Event]:
        """Every event until one at `revision` (inclusive; the whole revision's events)."""
        events: list[kv_pb2.Event] = []
        while not events or events[-1].kv.mod_revision < revision:
            _, response = self.next()
            assert not response.canceled, response
            events.extend(response.events)
        return events

    def timed_events(self, count: int) -> list[tuple[float, kv_pb2.Event]]:
        out: list[tuple[float, kv_pb2.Event]] = []
        while len(out) < count:
            at, response = self.next()
            out.extend((at, event) for event in response.events)
        return out

    def quiet(self, seconds: float) -> list[rpc_pb2.WatchResponse]:
        """Responses arriving within `seconds` (none expected)."""
        got = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.next(timeout=left)[1])
            except AssertionError:
                break
        return got

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()


def event_tuple(event: kv_pb2.Event) -> tuple[Any, ...]:
    kv, prev = event.kv, event.prev_kv
    return (
        event.type,
        kv.key,
        kv.value,
        kv.create_revision,
        kv.mod_revision,
        kv.version,
        kv.lease,
        event.HasField("prev_kv"),
        (prev.key, prev.value, prev.create_revision, prev.mod_revision, prev.version, prev.lease),
    )


def revisions_between(first: int, last: int) -> list[int]:
    return list(range(first, last + 1))
