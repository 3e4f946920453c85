"""etcd's HTTP health endpoints, served beside `/metrics` on `--metrics-address`, as etcd serves them on
`--listen-metrics-urls` (`server/etcdserver/api/etcdhttp/health.go` in etcd 3.6; answers checked
against etcd 3.6.5, see docs/operations.md, "Health checks"):

- `GET /health[?exclude=ALARM][&serializable=true]`: 200 `{"health":"true","reason":""}`, or 503
  `{"health":"false","reason":"ALARM NOSPACE"}` (an active alarm not excluded) or
  `{"health":"false","reason":"RANGE ERROR:<error>"}` (a one-key keys-only Range failed);
- `GET /livez` (check `serializable_read`) and `GET /readyz` (`serializable_read`, `linearizable_read`,
  `non_learner`, `data_corruption`): 200 `ok`, with a `[+]NAME ok` line per check before it under
  `?verbose`; 503 with `[-]NAME failed: <error>` lines; `?exclude=NAME` skips a check; `/livez/NAME`,
  `/readyz/NAME` run one.

kinepy has no raft: no leader check (etcd's `RAFT NO LEADER`), never a learner, and a serializable read
and a linearizable one are the same read of the database, so one read per request answers both
checks. The read runs on the store's event loop, bounded by `READ_TIMEOUT`; a store that does not
answer in time fails with etcd's own `etcdserver: request timed out` (the read is cancelled and left
to end by itself), and the listener's thread waits `LOOP_MARGIN` more for an event loop that does not
get to it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol
from urllib.parse import parse_qs

from kinepy.errors import BackendError, EtcdError, client_message
from kinepy.store.store import Store
from kinepy.types import RangeRequest

READ_TIMEOUT = 5.0  # seconds the health read may take (etcd: its request timeout, 7 s by default)
LOOP_MARGIN = 1.0  # more seconds for the event loop to take the read and hand its answer back
TIMED_OUT = "etcdserver: request timed out"  # etcd's ErrTimeout
NO_STORE = "kinepy: no store to check (the datastore is an etcd)"
NO_WORKER = "kinepy: no worker is serving"
PROBE_KEY = b"\x00"  # etcd reads the empty key, which kinepy's Range refuses (as etcd's gRPC API does)

LIVEZ_CHECKS = ("serializable_read",)
READYZ_CHECKS = ("serializable_read", "linearizable_read", "non_learner", "data_corruption")
READ_CHECKS = frozenset({"serializable_read", "linearizable_read"})
TEXT = "text/plain; charset=utf-8"

Answer = tuple[str, list[tuple[str, str]], bytes]


class Probe(NamedTuple):
    """What a health check needs to know: the active alarms' names (`NOSPACE`) and, when a read was
    asked for, its error (None: it succeeded)."""

    alarms: tuple[str, ...]
    read_error: str | None = None

    def to_json(self) -> bytes:
        return json.dumps({"alarms": self.alarms, "read_error": self.read_error}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Probe:
        fields = json.loads(data)
        return cls(tuple(str(a) for a in fields["alarms"]), fields["read_error"])


class Prober(Protocol):
    """Answers `probe` from the metrics listener's thread, in at most `READ_TIMEOUT + 2 * LOOP_MARGIN`
    seconds."""

    def probe(self, read: bool) -> Probe: ...


async def probe_store(store: Store, read: bool) -> Probe:
    """`store`'s alarms and, if `read`, the outcome of a one-key keys-only Range (etcd's health read);
    on the store's event loop."""
    alarms = tuple(member.name for member in store.active_alarms())
    if not read:
        return Probe(alarms)
    reading = asyncio.ensure_future(store.range(RangeRequest(key=PROBE_KEY, limit=1, keys_only=True)))
    done, _ = await asyncio.wait({reading}, timeout=READ_TIMEOUT)
    if not done:
        # Cancelled, not waited for: a driver's clean-up may itself wait on a database that hangs.
        reading.cancel()
        reading.add_done_callback(_consume)
        return Probe(alarms, TIMED_OUT)
    exc = reading.exception()
    if isinstance(exc, EtcdError | BackendError):
        return Probe(alarms, client_message(exc))
    if exc is not None:
        raise exc
    return Probe(alarms)


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned read's outcome, so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


class StoreProber:
    """The prober of one kinepy process: `probe_store` on the store's event loop."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        self._store, self._loop = store, loop

    def probe(self, read: bool) -> Probe:
        probing = probe_store(self._store, read)
        try:
            future = asyncio.run_coroutine_threadsafe(probing, self._loop)
        except RuntimeError:  # the loop is closed: the server is stopping
            probing.close()
            return Probe((), "etcdserver: server stopped")
        try:
            return future.result(READ_TIMEOUT + LOOP_MARGIN)
        except concurrent.futures.TimeoutError:  # the loop itself did not get to it
            future.cancel()
            return Probe((), TIMED_OUT)


def answer(method: str, path: str, query: str, prober: Prober) -> Answer | None:
    """etcd's answer to `method path?query`; None for a path that is not a health endpoint."""
    root, slash, check = path[1:].partition("/")
    health = path == "/health"
    if not health and not (root in ("livez", "readyz") and (not slash or check in _checks(root))):
        return None
    if method != "GET":
        return _error("405 Method Not Allowed", "Method Not Allowed", [("Allow", "GET")])
    params = parse_qs(query, keep_blank_values=True)
    return _health(params, prober) if health else _checks_answer(root, check, params, prober)


def _checks(root: str) -> Sequence[str]:
    return LIVEZ_CHECKS if root == "livez" else READYZ_CHECKS


def _health(params: dict[str, list[str]], prober: Prober) -> Answer:
    """/health: the alarms, then (if none counts) the read; `serializable=true` asks for a member-local
    read, which in kinepy is the same read."""
    excluded = {name for name in params.get("exclude", []) if name}
    reason = ""
    for name in prober.probe(read=False).alarms:
        if name not in excluded:
            reason = f"ALARM {name}" if name in ("NOSPACE", "CORRUPT") else "ALARM UNKNOWN"
            break
    else:
        read_error = prober.probe(read=True).read_error
        if read_error is not None:
            reason = f"RANGE ERROR:{read_error}"
    body = json.dumps({"health": "false" if reason else "true", "reason": reason}, separators=(",", ":"))
    if reason:
        return _error("503 Service Unavailable", body)
    return "200 OK", [("Content-Type", TEXT), ("Content-Length", str(len(body)))], body.encode()


def _checks_answer(root: str, check: str, params: dict[str, list[str]], prober: Prober) -> Answer:
    """/livez, /readyz and their one-check paths."""
    excluded = set(params.get("exclude", []))
    names = [check] if check else [name for name in _checks(root) if name not in excluded]
    probe = prober.probe(read=bool(READ_CHECKS.intersection(names)))
    lines, failed = [], False
    for name in names:
        error = _check_error(name, probe)
        failed = failed or error is not None
        lines.append(f"[+]{name} ok\n" if error is None else f"[-]{name} failed: {error}\n")
    if failed:
        return _error("503 Service Unavailable", "".join(lines))
    body = ("".join(lines) if "verbose" in params else "") + "ok\n"
    headers = [("Content-Type", TEXT), ("X-Content-Type-Options", "nosniff")]
    return "200 OK", [*headers, ("Content-Length", str(len(body)))], body.encode()


def _check_error(name: str, probe: Probe) -> str | None:
    if name in READ_CHECKS:
        return probe.read_error
    if name == "data_corruption" and "CORRUPT" in probe.alarms:
        return "alarm activated: CORRUPT"
    return None  # non_learner: kinepy is never a learner


def _error(status: str, text: str, headers: Sequence[tuple[str, str]] = ()) -> Answer:
    """As Go's `http.Error`: the text and a newline, marked not to be sniffed."""
    body = (text + "\n").encode()
    return (
        status,
        [
            *headers,
            ("Content-Type", TEXT),
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Length", str(len(body))),
        ],
        body,
    )
