"""What every kinepy process sets up: logging, systemd notifications, its event loop.

The CLI (`kinepy`), the supervisor of `kinepy --workers` and each worker use the same.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable

from kinepy.endpoint import parse_endpoint
from kinepy.errors import ConfigError, KinepyError


class JSONFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, object] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self._worker is not None:
            entry["worker"] = self._worker
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, fmt: str, *, worker: int | None = None) -> None:
    """One stderr handler on the root logger; `level` applies to the `kinepy.*` loggers; each line of
    a worker of `kinepy --workers` names it (`worker`).

    Other libraries' loggers stay at WARNING whatever `level` says: at DEBUG, grpc would otherwise
    log a `[_cygrpc] Loaded running loop` line for every call.
    """
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter(worker))
    else:
        tag = "" if worker is None else f"[worker {worker}] "
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s %(name)s: {tag}%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    number = logging.getLevelName(level.upper())
    root.setLevel(max(number, logging.WARNING))
    logging.getLogger("kinepy").setLevel(number)


def notify_systemd(state: str) -> None:
    """Tell systemd (Type=notify) about our state, when it is listening."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())


def event_loop_runner() -> asyncio.Runner:
    """An `asyncio.Runner` on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def secrets(endpoint: str) -> list[str]:
    """The passwords written in `endpoint` (as written and percent-decoded), longest first."""
    found: set[str] = set()
    try:
        password = getattr(parse_endpoint(endpoint), "password", None)
    except KinepyError:
        password = None
    if password:
        found.add(password)
    _, sep, rest = endpoint.partition("://")
    _, colon, raw = rest.rpartition("@")[0].partition(":") if sep else ("", "", "")
    if colon and raw:
        found.add(raw)
    found.update(m[1] for m in re.finditer(r"(?i)[?&](?:ssl)?password=([^&]+)", endpoint))
    return sorted(found, key=len, reverse=True)


def scrub(message: str, endpoint: str) -> str:
    """`message` with every password of `endpoint` shown as `***` (a last line of defence)."""
    for secret in secrets(endpoint):
        message = message.replace(secret, "***")
    return message


def exit_code(run: Callable[[], int | None], endpoint: str) -> int:
    """Run a server until it stops: its exit code (None: 0); 2 for a `ConfigError`, 1 when it cannot
    start or fails. Errors are one line on stderr, without the passwords of `endpoint`."""
    try:
        return run() or 0
    except ConfigError as exc:
        print(f"kinepy: {scrub(str(exc), endpoint)}", file=sys.stderr)
        return 2
    except KinepyError as exc:
        print(f"kinepy: {scrub(str(exc), endpoint)}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as exc:
        print(f"kinepy: cannot start: {scrub(str(exc), endpoint)}", file=sys.stderr)
        return 1
