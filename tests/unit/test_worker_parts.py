"""The workers' pieces that need no server: metrics merged over workers, the change pipes, the protocol."""

from __future__ import annotations

import asyncio
import os
import socket
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric

from kinepy.backends.changes import ChangePipes
from kinepy.config import Config, WorkerRole
from kinepy.listen import parse_listen_address
from kinepy.workers import control
from kinepy.workers.aggregate import merge
from kinepy.workers.supervisor import listen_address_on


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


async def test_change_pipes_wake_the_other_worker_and_coalesce() -> None:
    first, second = os.pipe(), os.pipe()
    try:
        zero = ChangePipes(first[0], (second[1],))
        one = ChangePipes(second[0], (first[1],))
        waiting = asyncio.create_task(one.wait(30))
        await asyncio.sleep(0)
        for _ in range(3):
            zero.notify()
        await asyncio.wait_for(waiting, 5)  # woken well before the 30 s
        started = time.monotonic()
        await one.wait(0.05)  # the three bytes were one wake-up: this waits the whole time
        assert time.monotonic() - started >= 0.04
        zero.close()
        one.close()
    finally:
        for fd in (*first, *second):
            os.close(fd)


def test_notify_never_blocks_on_a_full_pipe() -> None:
    read_fd, write_fd = os.pipe()
    try:
        pipes = ChangePipes(read_fd, (write_fd,))
        for _ in range(100_000):  # far more than a pipe holds (64 KiB)
            pipes.notify()
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
