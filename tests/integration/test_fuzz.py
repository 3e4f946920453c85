"""Fuzzing (issue 15, deliverable 2): hypothesis drives every etcd method against a running kinepy.

Requests come from strategies generated from the message descriptors (tests/integration/fuzzing.py), as
messages and as damaged encodings, on every unary method, on Snapshot, and as sequences on the Watch and
LeaseKeepAlive streams. Meanwhile a sentinel thread writes one key over and over and records each
acknowledged revision. The test asserts that:

- every reply decodes as the method's response, with a header, or is an etcd error code (never UNKNOWN,
  the mark of an exception kinepy did not expect);
- the server is still up and serving at the end, after its bounded number of examples;
- the history is intact and contiguous: a Watch from the compaction point to the current revision sees
  every revision, each with at least one event, and every acknowledged sentinel write at its revision with
  its value.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import conftest
import fuzzing
import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinepy.proto import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.kinepy, pytest.mark.slow]

EXAMPLES = 500  # unary calls: each example is up to 8 calls
STREAM_EXAMPLES = 150  # each a stream, open for up to STREAM_SECONDS
STREAM_SECONDS = 0.15
SENTINEL = b"/sentinel"
ALL = b"\x00"
TIMEOUT = 10.0

Events = dict[int, list[tuple[bytes, bytes]]]  # revision -> (key, value) of each event
StatusCode = grpc.StatusCode
# Codes etcd answers with; UNIMPLEMENTED for the cluster and auth methods kinepy does not serve;
# DEADLINE_EXCEEDED ends the streams the test leaves open.
ETCD_CODES = {
    StatusCode.INVALID_ARGUMENT,
    StatusCode.OUT_OF_RANGE,
    StatusCode.NOT_FOUND,
    StatusCode.FAILED_PRECONDITION,
    StatusCode.RESOURCE_EXHAUSTED,
    StatusCode.UNIMPLEMENTED,
    StatusCode.INTERNAL,
}

METHODS: list[MethodDescriptor] = [
    method for service in rpc_pb2.DESCRIPTOR.services_by_name.values() for method in service.methods
]
BY_NAME = {method.name: method for method in METHODS}  # names are unique across etcd's services
UNARY = [m.name for m in METHODS if not m.client_streaming]  # Snapshot's request is unary too
KV = [m.name for m in rpc_pb2.DESCRIPTOR.services_by_name["KV"].methods]  # drawn half of the time
STREAMS = [m.name for m in METHODS if m.client_streaming]


def _path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def _raw(data: bytes) -> bytes:
    return data


def check_reply(method: MethodDescriptor, data: bytes) -> None:
    cls = message_factory.GetMessageClass(method.output_type)
    reply = cls.FromString(data)  # raises if kinepy sent something that is not the method's response
    if "header" in method.output_type.fields_by_name:
        assert reply.HasField("header"), f"{method.name}: no header in {reply}"


def check_error(method: MethodDescriptor, exc: grpc.RpcError, *, stream: bool = False) -> None:
    code, details = exc.code(), exc.details() or ""
    allowed = ETCD_CODES | ({StatusCode.DEADLINE_EXCEEDED} if stream else set())
    assert code in allowed, f"{method.name}: {code.name} {details!r}"
    if code == StatusCode.INTERNAL:
        assert details.startswith("grpc: "), f"{method.name}: INTERNAL {details!r}"
    elif code not in (StatusCode.UNIMPLEMENTED, StatusCode.DEADLINE_EXCEEDED):
        assert details.startswith(("etcdserver: ", "grpc: ")), f"{method.name}: {code.name} {details!r}"


class Sentinel(threading.Thread):
    """Puts SENTINEL = 0, 1, 2, ... until stopped; `acknowledged` maps each revision to its value."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(name="sentinel", daemon=True)
        self.endpoint = endpoint
        self.acknowledged: dict[int, bytes] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        with grpc.insecure_channel(self.endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            n = 0
            while not self.stopping.is_set():
                value = str(n).encode()
                reply = kv.Put(rpc_pb2.PutRequest(key=SENTINEL, value=value), timeout=TIMEOUT)
                self.acknowledged[reply.header.revision] = value
                n += 1
                self.stopping.wait(0.01)


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kinepy_databases: Any
) -> Iterator[conftest.KinepyServer]:
    with conftest.kinepy_servers(request, tmp_path_factory, "sqlite", kinepy_databases) as make_kinepy:
        yield make_kinepy(log_level="info")


@pytest.fixture(scope="module")
def sentinel(server: conftest.KinepyServer) -> Iterator[Sentinel]:
    thread = Sentinel(server.endpoint)
    thread.start()
    yield thread
    thread.stopping.set()
    thread.join(timeout=TIMEOUT)


@pytest.fixture(scope="module")
def channel(server: conftest.KinepyServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.endpoint) as chan:
        yield chan


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


@st.composite
def _unary_calls(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.one_of(st.sampled_from(KV), st.sampled_from(UNARY)))
    return name, draw(fuzzing.wire(BY_NAME[name].input_type))


@FUZZ_SETTINGS
@given(calls=st.lists(_unary_calls(), min_size=1, max_size=8))
def test_unary_methods(channel: grpc.Channel, sentinel: Sentinel, calls: list[tuple[str, bytes]]) -> None:
    for name, data in calls:
        method = BY_NAME[name]
        if method.server_streaming:
            call = channel.unary_stream(_path(method), request_serializer=_raw, response_deserializer=_raw)
            try:
                for reply in call(data, timeout=TIMEOUT):
                    check_reply(method, reply)
            except grpc.RpcError as exc:
                check_error(method, exc)
            continue
        unary = channel.unary_unary(_path(method), request_serializer=_raw, response_deserializer=_raw)
        try:
            check_reply(method, unary(data, timeout=TIMEOUT))
        except grpc.RpcError as exc:
            check_error(method, exc)


@st.composite
def _stream_calls(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    name = draw(st.sampled_from(STREAMS))
    return name, draw(st.lists(fuzzing.wire(BY_NAME[name].input_type), min_size=1, max_size=6))


@settings(FUZZ_SETTINGS, max_examples=STREAM_EXAMPLES)
@given(call=_stream_calls())
def test_streams(channel: grpc.Channel, sentinel: Sentinel, call: tuple[str, list[bytes]]) -> None:
    """A stream gets the messages, then stays open (half-closed) until its short deadline."""
    name, messages = call
    method = BY_NAME[name]
    stream = channel.stream_stream(_path(method), request_serializer=_raw, response_deserializer=_raw)
    try:
        for reply in stream(iter(messages), timeout=STREAM_SECONDS):
            check_reply(method, reply)
    except grpc.RpcError as exc:
        check_error(method, exc, stream=True)


def test_server_is_up_and_history_intact(
    server: conftest.KinepyServer, channel: grpc.Channel, sentinel: Sentinel
) -> None:
    """Runs after the fuzzing tests (pytest keeps the file's order)."""
    sentinel.stopping.set()
    sentinel.join(timeout=TIMEOUT)
    assert server.proc is not None and server.proc.poll() is None, "kinepy exited"
    kv = rpc_pb2_grpc.KVStub(channel)
    head = kv.Range(rpc_pb2.RangeRequest(key=SENTINEL), timeout=TIMEOUT).header.revision
    assert sentinel.acknowledged, "the sentinel wrote nothing"

    events = history(channel, head)
    start = min(events)
    assert sorted(events) == list(range(start, head + 1)), "a revision without events"
    lost = {
        revision: value
        for revision, value in sentinel.acknowledged.items()
        if revision >= start and (SENTINEL, value) not in events[revision]
    }
    assert not lost, f"acknowledged sentinel writes missing from the history: {lost}"
    assert start <= max(sentinel.acknowledged), "the history checked was compacted away entirely"


def history(channel: grpc.Channel, head: int) -> Events:
    """Every event from the compaction point to `head`, by revision: (key, value)."""
    start = 1
    while True:
        events, compacted = _watch_all(channel, start, head)
        if not compacted:
            return events
        start = compacted


def _watch_all(
    channel: grpc.Channel, start: int, head: int
) -> tuple[dict[int, list[tuple[bytes, bytes]]], int]:
    """The events of a Watch on every key from `start` up to `head`, or the compaction point if `start` is
    compacted."""
    create = rpc_pb2.WatchCreateRequest(key=ALL, range_end=ALL, start_revision=start)
    done = threading.Event()

    def requests() -> Iterator[rpc_pb2.WatchRequest]:
        yield rpc_pb2.WatchRequest(create_request=create)
        done.wait(TIMEOUT * 6)

    events: Events = {}
    responses = rpc_pb2_grpc.WatchStub(channel).Watch(requests(), timeout=TIMEOUT * 6)
    try:
        for response in responses:
            if response.compact_revision:
                return {}, response.compact_revision
            for event in response.events:
                events.setdefault(event.kv.mod_revision, []).append((event.kv.key, event.kv.value))
            if events and max(events) >= head:
                return events, 0
    finally:
        done.set()
        responses.cancel()
    raise AssertionError(f"the watch ended before revision {head}")
