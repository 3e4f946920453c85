"""`--workers`: how many serving processes, and where several cannot serve."""

from __future__ import annotations

import os

from kinepy.endpoint import parse_endpoint
from kinepy.errors import ConfigError, KinepyError
from kinepy.listen import parse_listen_address
from kinepy.specs import SQLiteSpec

AUTO = "auto"


def _why_one(listen_address: str, endpoint: str) -> str | None:
    """Why only one worker can serve this configuration, or None."""
    try:
        listen = parse_listen_address(listen_address)
        spec = parse_endpoint(endpoint)
    except KinepyError:
        return None  # the server reports the malformed address or endpoint itself
    if listen.is_unix:
        return (
            "a Unix socket cannot be shared by several processes (SO_REUSEPORT is TCP's); "
            "listen on a TCP address or use --workers 1"
        )
    if isinstance(spec, SQLiteSpec) and (spec.path == ":memory:" or spec.path.startswith("file::memory:")):
        return "an in-memory SQLite database lives in one process; use a file or --workers 1"
    return None


def auto_workers(cpus: int) -> int:
    """`auto`'s count on a machine of `cpus` CPUs: one per two CPUs, at least one.

    The other half is for what shares the machine with kinepy: kube-apiserver beside it (k3s), the
    database, the clients. Measured on 2 CPUs (docs/performance.md, "How many workers by default"):
    one worker beat two in every write, watch and Kubernetes workload; two served 6-12 % more reads
    and keep-alives."""
    return max(1, cpus // 2)


def worker_count(text: str, listen_address: str, endpoint: str) -> int:
    """`--workers` (`auto` or a number) as a number: `auto` is `auto_workers` where several can serve,
    else 1. A number above 1 where only one can serve is a `ConfigError` saying why."""
    why_one = _why_one(listen_address, endpoint)
    if text.strip().lower() == AUTO:
        return 1 if why_one else auto_workers(os.cpu_count() or 1)
    try:
        count = int(text)
    except ValueError:
        raise ConfigError(f"--workers {text!r}: use a number of processes (1 or more) or auto") from None
    if count < 1:
        raise ConfigError(f"--workers {count}: use a number of processes (1 or more) or auto")
    if count > 1 and why_one:
        raise ConfigError(f"--workers {count}: {why_one}")
    return count
