"""Check a concurrent history of etcd requests against the events the watchers delivered.

Clients record every request they send (`Op`: when it started and ended, what it asked, what came
back or which gRPC code it failed with); watchers opened at revision 1 on the whole key space record
every event. `check` then verifies, without trusting the server:

- the watchers agree: every watcher saw the same events, revisions in order, each revision once,
  none skipped (every write of the run is in the watched key space);
- nothing acknowledged is lost: each acknowledged put is the PUT event at its revision, with its
  value; each acknowledged delete that deleted a key is a DELETE event at its revision;
- nothing refused happened: a write refused as "too many requests" (retries exhausted before any
  commit) left no event; every PUT event carries a value some client sent;
- a DELETE event deletes a key that existed (an expired lease revoked twice would not);
- linearizable: the revisions respect real time (an operation that started after another ended has
  a revision at least as high, and a higher one when it is a write), and every read returned the
  key's state at its own revision in the watchers' history.

Since etcd orders every write by one revision, these checks decide linearizability of the
single-key reads and writes directly: the revision order is the linearization order.
"""

from __future__ import annotations

import bisect
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from blocking_clients import Client

from kinepy.proto import kv_pb2, rpc_pb2

PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE
TOO_MANY_REQUESTS = "etcdserver: too many requests"


@dataclass
class Op:
    """One request: `kind` is "put", "get" or "delete"; `revision` the response header's."""

    kind: str
    key: bytes
    started: float
    ended: float = 0.0
    value: bytes = b""  # put: sent; get: returned (empty when absent)
    found: bool = False  # get: whether the key existed
    mod_revision: int = 0  # get: the key's mod_revision
    deleted: int = 0  # delete: keys deleted
    revision: int = 0
    error: grpc.StatusCode | None = None
    details: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def writes(self) -> bool:
        return self.kind == "put" or (self.kind == "delete" and self.deleted > 0)


def _record(op: Op, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except grpc.RpcError as exc:
        op.error, op.details = exc.code(), exc.details() or ""
        return None
    finally:
        op.ended = time.monotonic()


def record_put(client: Client, key: bytes, value: bytes, lease: int = 0) -> Op:
    op = Op("put", key, time.monotonic(), value=value)
    resp = _record(
        op, lambda: client.kv.Put(rpc_pb2.PutRequest(key=key, value=value, lease=lease), timeout=30)
    )
    if resp is not None:
        op.revision = int(resp.header.revision)
    return op


def record_get(client: Client, key: bytes) -> Op:
    op = Op("get", key, time.monotonic())
    resp = _record(op, lambda: client.kv.Range(rpc_pb2.RangeRequest(key=key), timeout=30))
    if resp is not None:
        op.revision = int(resp.header.revision)
        if resp.kvs:
            op.found, op.value, op.mod_revision = True, resp.kvs[0].value, int(resp.kvs[0].mod_revision)
    return op


def record_delete(client: Client, key: bytes) -> Op:
    op = Op("delete", key, time.monotonic())
    resp = _record(op, lambda: client.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=key), timeout=30))
    if resp is not None:
        op.revision, op.deleted = int(resp.header.revision), int(resp.deleted)
    return op


def random_load(client: Client, worker: int, deadline: float, ops: list[Op], keys: int) -> None:
    """Until `deadline`: half puts, 40 % gets, 10 % deletes of `keys` shared keys, each recorded in `ops`."""
    rng = random.Random(worker)
    sequence = 0
    while time.monotonic() < deadline:
        key = b"g/%02d" % rng.randrange(keys)
        roll = rng.random()
        if roll < 0.5:
            sequence += 1
            ops.append(record_put(client, key, b"w%d.%d" % (worker, sequence)))
        elif roll < 0.9:
            ops.append(record_get(client, key))
        else:
            ops.append(record_delete(client, key))


@dataclass(frozen=True)
class Event:
    """A watch event: (revision, type, key, value)."""

    revision: int
    type: int
    key: bytes
    value: bytes

    @classmethod
    def of(cls, event: kv_pb2.Event) -> Event:
        return cls(int(event.kv.mod_revision), int(event.type), event.kv.key, event.kv.value)


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)

    def add(self, problem: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(problem)


def _check_watchers(watchers: Sequence[Sequence[Event]], first: int, report: Report) -> list[Event]:
    reference = list(watchers[0])
    for index, events in enumerate(watchers[1:], start=1):
        if list(events) != reference:
            mismatch = next(
                (i for i, (a, b) in enumerate(zip(events, reference, strict=False)) if a != b),
                min(len(events), len(reference)),
            )
            report.add(
                f"watcher {index} differs from watcher 0 at event {mismatch} "
                f"({len(events)} events against {len(reference)})"
            )
    revisions = [event.revision for event in reference]
    if revisions != sorted(revisions):
        report.add("watcher 0's events are out of revision order")
    distinct = sorted(set(revisions))
    if distinct and distinct != list(range(first, distinct[-1] + 1)):
        missing = sorted(set(range(first, distinct[-1] + 1)) - set(distinct))
        report.add(f"revisions missing from the watch: {missing[:10]}")
    return reference


class _States:
    """The value of each key at each revision, from the events."""

    def __init__(self, events: Iterable[Event], report: Report) -> None:
        self._revisions: dict[bytes, list[int]] = {}
        self._values: dict[bytes, list[bytes | None]] = {}
        current: dict[bytes, bytes] = {}
        for event in events:
            if event.type == DELETE and event.key not in current:
                report.add(f"revision {event.revision} deletes {event.key!r}, which did not exist")
            value = event.value if event.type == PUT else None
            if value is None:
                current.pop(event.key, None)
            else:
                current[event.key] = value
            self._revisions.setdefault(event.key, []).append(event.revision)
            self._values.setdefault(event.key, []).append(value)

    def at(self, key: bytes, revision: int) -> tuple[bytes | None, int]:
        """(value or None, mod_revision) of `key` at `revision`."""
        revisions = self._revisions.get(key, [])
        index = bisect.bisect_right(revisions, revision) - 1
        if index < 0:
            return None, 0
        value = self._values[key][index]
        return value, (revisions[index] if value is not None else 0)


def _check_real_time(ops: Sequence[Op], report: Report) -> None:
    """Sweep the operations by start time, knowing the highest revision of every one ended before."""
    done = sorted((op for op in ops if op.ok), key=lambda op: op.ended)
    ends = [op.ended for op in done]
    highest: list[int] = []
    top = 0
    for op in done:
        top = max(top, op.revision)
        highest.append(top)
    for op in done:
        before = bisect.bisect_left(ends, op.started)
        if before == 0:
            continue
        floor = highest[before - 1]
        if op.revision < floor or (op.writes and op.revision == floor):
            report.add(
                f"{op.kind} {op.key!r} started after an operation at revision {floor} had ended, "
                f"yet has revision {op.revision}"
            )


def check(ops: Sequence[Op], watchers: Sequence[Sequence[Event]], *, first_revision: int = 2) -> list[str]:
    """The problems found (none: the history is linearizable and the watchers exact)."""
    report = Report()
    events = _check_watchers(watchers, first_revision, report)
    by_revision: dict[int, list[Event]] = {}
    for event in events:
        by_revision.setdefault(event.revision, []).append(event)
    sent = {op.value for op in ops if op.kind == "put"}
    refused = {op.value for op in ops if op.kind == "put" and op.details == TOO_MANY_REQUESTS}
    for event in events:
        if event.type == PUT and event.value not in sent:
            report.add(f"revision {event.revision} puts a value no client sent: {event.value!r}")
        if event.type == PUT and event.value in refused:
            report.add(f"revision {event.revision} holds a put refused as too many requests")
    for op in ops:
        if not op.ok or not op.writes:
            continue
        wanted = PUT if op.kind == "put" else DELETE
        at = by_revision.get(op.revision, [])
        if not any(e.type == wanted and e.key == op.key and e.value == op.value for e in at):
            report.add(f"acknowledged {op.kind} of {op.key!r} at revision {op.revision} is not in the watch")
    states = _States(events, report)
    for op in ops:
        if op.ok and op.kind == "get":
            value, mod_revision = states.at(op.key, op.revision)
            got = (op.value if op.found else None, op.mod_revision if op.found else 0)
            if got != (value, mod_revision):
                report.add(
                    f"get {op.key!r} at revision {op.revision} returned {got}, "
                    f"the history says {(value, mod_revision)}"
                )
    _check_real_time(ops, report)
    return report.problems
