"""The workers' pieces that need no server: metrics merged over workers, the change pipes, the protocol."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric

from kinepy.backends.base import Commit, WriteSet
from kinepy.backends.changes import MESSAGE_MAX, ChangePipes, encode
from kinepy.config import Config, WorkerRole
from kinepy.listen import parse_listen_address
from kinepy.types import Event, EventType, KeyValue
from kinepy.workers import control
from kinepy.workers.aggregate import merge
from kinepy.workers.supervisor import Supervisor, _Worker, listen_address_on


def _exposition(calls: int, revision: int, latencies: list[float]) -> str:
    registry = CollectorRegistry()
    Counter("kinepy_grpc_requests", "calls", ["method"], registry=registry).labels("KV/Put").inc(calls)
    Gauge("kinepy_revision", "revision", registry=registry).set(revision)
    Gauge("kinepy_watchers", "watchers", registry=registry).set(calls)
    histogram = Histogram("kinepy_commit_duration_seconds", "commits", buckets=(0.01, 1.0), registry=registry)
    for latency in latencies:
        histogram.observe(latency)
    return generate_latest(registry).decode()


def _samples(families: list[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}


def test_merge_adds_counters_histograms_and_gauges_but_takes_the_largest_revision() -> None:
    merged = _samples(merge([_exposition(3, 10, [0.005, 0.5]), _exposition(4, 12, [0.5])]))
    assert merged[("kinepy_grpc_requests_total", (("method", "KV/Put"),))] == 7
    assert merged[("kinepy_watchers", ())] == 7
    assert merged[("kinepy_revision", ())] == 12
    assert merged[("kinepy_commit_duration_seconds_bucket", (("le", "0.01"),))] == 1
    assert merged[("kinepy_commit_duration_seconds_bucket", (("le", "1.0"),))] == 3
    assert merged[("kinepy_commit_duration_seconds_count", ())] == 3
    created = [value for (name, _), value in merged.items() if name.endswith("_created")]
    assert created and all(value <= time.time() for value in created)


def test_merge_of_nothing_is_nothing() -> None:
    assert merge([]) == []


def _commit(after: int, *events: Event, compacts: bool = False) -> WriteSet:
    return WriteSet(
        revision=after + len(events),
        base_revision=after,
        events=list(events),
        compact_revision=after if compacts else None,
    )


_PUT = Event(
    EventType.PUT, KeyValue(b"k", 2, 3, 2, b"new", lease=7), KeyValue(b"k", 2, 2, 1, b"old", lease=7)
)
_DELETE = Event(EventType.DELETE, KeyValue(b"gone", 0, 4, 0, b""))


@contextlib.contextmanager
def _pipe_pair() -> Iterator[tuple[ChangePipes, ChangePipes, int]]:
    """Worker 0's pipes, worker 1's, and the write end of worker 1's pipe."""
    first, second = os.pipe(), os.pipe()
    zero = ChangePipes(first[0], (second[1],))
    one = ChangePipes(second[0], (first[1],))
    try:
        yield zero, one, second[1]
    finally:
        zero.close()
        one.close()
        for fd in (*first, *second):
            os.close(fd)


def test_the_workers_of_one_server_share_a_group_that_other_pipes_do_not_have() -> None:
    with _pipe_pair() as (zero, one, _), _pipe_pair() as (other, _, _):
        assert zero.group == one.group
        assert other.group != zero.group


async def test_change_pipes_tell_the_other_worker_each_commit_with_its_events_in_one_wake_up() -> None:
    with _pipe_pair() as (zero, one, _):
        waiting = asyncio.create_task(one.wait(30))
        await asyncio.sleep(0)
        zero.announce(_commit(2, _PUT))
        zero.announce(_commit(3, _DELETE))
        zero.announce(_commit(4))  # nothing a watcher sees: a look
        told = await asyncio.wait_for(waiting, 5)  # woken well before the 30 s, once for all three
        assert told == [Commit(2, 3, [_PUT]), Commit(3, 4, [_DELETE]), Commit(0, 0, None)]
        started = time.monotonic()
        assert await one.wait(0.05) == []  # nothing more: this waits the whole time
        assert time.monotonic() - started >= 0.04


async def test_what_the_backend_adds_is_told_with_the_events_and_a_look_wakes_the_waiter() -> None:
    with _pipe_pair() as (zero, one, _):
        zero.announce(_commit(2, _PUT), (4242, 700, 701))  # PostgreSQL: pid, xmin before and after
        one.look()  # a NOTIFY of another kinepy process's commit
        told = await asyncio.wait_for(one.wait(30), 5)
        assert sorted(told, key=lambda commit: commit.revision) == [
            Commit(0, 0, None),
            Commit(2, 3, [_PUT], (4242, 700, 701)),
        ]


async def test_a_commit_whose_events_do_not_fit_or_that_compacts_is_told_without_them() -> None:
    big = Event(EventType.PUT, KeyValue(b"big", 2, 3, 1, b"x" * MESSAGE_MAX))
    many = [Event(EventType.PUT, KeyValue(b"key%d" % i, 3 + i, 3 + i, 1, b"v" * 30)) for i in range(100)]
    with _pipe_pair() as (zero, one, _):
        zero.announce(_commit(2, big))
        zero.announce(_commit(2, *many))
        zero.announce(_commit(2, _PUT, compacts=True))
        zero.announce(_commit(2, *many[:10]))
        told = await one.wait(5)
    assert told == [Commit(0, 0, None)] * 3 + [Commit(2, 12, many[:10])]


async def test_what_is_not_a_message_is_a_look_and_the_messages_after_it_still_arrive() -> None:
    with _pipe_pair() as (zero, one, to_one):
        os.write(to_one, b"\xff\xff not a message")
        assert await one.wait(5) == [Commit(0, 0, None)]
        os.write(to_one, b"\x05\x00junk!")  # a length, then five bytes marshal cannot read
        zero.announce(_commit(2, _PUT))
        assert await one.wait(5) == [Commit(0, 0, None), Commit(2, 3, [_PUT])]


async def test_a_message_read_in_two_parts_arrives_whole() -> None:
    message = encode(_commit(2, _PUT))
    with _pipe_pair() as (_, one, to_one):
        os.write(to_one, message[:9])
        assert await one.wait(5) == []
        os.write(to_one, message[9:])
        assert await one.wait(5) == [Commit(2, 3, [_PUT])]


def test_announce_never_blocks_on_a_full_pipe() -> None:
    read_fd, write_fd = os.pipe()
    try:
        pipes = ChangePipes(read_fd, (write_fd,))
        for _ in range(10_000):  # far more than a pipe holds (64 KiB)
            pipes.announce(_commit(2, _PUT))
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_settings_travel_whole_over_the_control_socket() -> None:
    config = Config(datastore_endpoint="postgres://u:secret@db/k", workers=3, compact_interval=5.0)
    role = WorkerRole(index=2, count=3, notify_read_fd=7, notify_write_fds=(8, 9))
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.sendall(control.settings_line(config, role))
        assert control.parse_settings(control.read_line(theirs)) == (config, role)


def test_the_port_worker_zero_bound_replaces_port_zero() -> None:
    assert listen_address_on(parse_listen_address("127.0.0.1:0"), 2379) == "127.0.0.1:2379"
    assert listen_address_on(parse_listen_address(":0"), 2379) == ":2379"
    assert listen_address_on(parse_listen_address("[::1]:0"), 2379) == "[::1]:2379"


async def test_a_commit_that_cannot_be_encoded_is_told_without_its_events() -> None:
    odd = Event(EventType.PUT, KeyValue(b"k", 2, 2, 1, object()))  # type: ignore[arg-type]
    with _pipe_pair() as (zero, one, _):
        zero.announce(_commit(1, odd))
        assert await one.wait(5) == [Commit(0, 0, None)]


async def test_a_reply_the_supervisor_gave_up_on_is_dropped_not_taken_for_the_next_one() -> None:
    """A worker that answers a health probe late: the supervisor stops waiting, and its next request
    gets its own reply, not the late one."""
    ours, theirs = socket.socketpair()
    worker = _Worker(0, ready=True)
    worker.reader, worker.writer = await asyncio.open_connection(sock=ours)
    worker_reader, worker_writer = await asyncio.open_connection(sock=theirs)
    supervisor = Supervisor(Config())

    async def answer_late_then_at_once() -> None:
        for delay, reply in ((0.5, b"late"), (0.0, b"second")):
            kind = (await worker_reader.readline()).split()[0]
            await asyncio.sleep(delay)
            worker_writer.write(kind + b" %d\n" % len(reply) + reply)
            await worker_writer.drain()

    answering = asyncio.create_task(answer_late_then_at_once())
    try:
        assert await supervisor._ask(worker, control.HEALTH + b" 1", 0.1) is None
        assert worker.owed == 1
        assert await supervisor._ask(worker, control.METRICS, 5.0) == b"second"
        assert worker.owed == 0
        await answering
    finally:
        worker.writer.close()
        worker_writer.close()
