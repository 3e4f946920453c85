"""The line protocol between the supervisor and a worker, over a socket pair of their own.

    supervisor -> worker   {"config": {...}, "role": {...}}\\n   once, first: what to serve (JSON)
    worker -> supervisor   READY <port>\\n                       serving (`port`: the one bound)
    supervisor -> worker   METRICS\\n                            a scrape
    worker -> supervisor   METRICS <length>\\n<exposition>       the worker's registry, text format
    supervisor -> worker   HEALTH 0|1\\n                         a health probe (1: with a read)
    worker -> supervisor   HEALTH <length>\\n<probe>              `kinepy.metrics.health.Probe`, JSON

The worker answers requests in order; a reply the supervisor stopped waiting for is read and dropped
before the next one's.

The settings travel on this socket, not on the command line, so that a database password never
shows in `ps`. The worker stops when the supervisor's end closes (the supervisor died).
"""

from __future__ import annotations

import dataclasses
import json
import socket
from typing import Any

from kinepy.config import Config, WorkerRole

READY = b"READY"
METRICS = b"METRICS"
HEALTH = b"HEALTH"
REPLY_TIMEOUT = 5.0  # seconds the supervisor waits for a worker's answer


def settings_line(config: Config, role: WorkerRole) -> bytes:
    return (
        json.dumps({"config": dataclasses.asdict(config), "role": dataclasses.asdict(role)}).encode() + b"\n"
    )


def parse_settings(line: bytes) -> tuple[Config, WorkerRole]:
    data: dict[str, Any] = json.loads(line)
    role = data["role"]
    role["notify_write_fds"] = tuple(role["notify_write_fds"])
    return Config(**data["config"]), WorkerRole(**role)


def read_line(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """One line from a blocking socket, without its newline; b"" at end of stream."""
    chunks: list[bytes] = []
    size = 0
    while True:
        byte = sock.recv(1)
        if not byte:
            return b""
        if byte == b"\n":
            return b"".join(chunks)
        chunks.append(byte)
        size += 1
        if size > limit:
            raise ValueError("control line too long")
