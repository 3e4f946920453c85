"""Time `kinepy migrate` from SQLite to PostgreSQL (or MariaDB) on a large store.

    python -m benchmarks.migrate --keys 1000000 --updates 1000000

builds a SQLite store of `--keys` keys, each written once, then `--updates` of them written again (so
`keys + updates` history rows), through the copy engine's own bulk path (a synthetic Source, no
server: seconds instead of hours of Puts); starts a PostgreSQL as the tests do
(`kinepy.testing.databases`); runs `python -m kinepy migrate --progress log` into a fresh database,
and prints the command's wall time and its summary line; with `--backup`, then times `kinepy backup`
of that database into a SQLite file. docs/performance.md records the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from kinepy.backends.base import LogRow
from kinepy.migrate.copy import CopyOptions, copy_store
from kinepy.migrate.endpoints import open_target
from kinepy.migrate.model import Header
from kinepy.migrate.progress import LogProgress
from kinepy.testing.databases import start_database_server
from kinepy.types import Lease

LEASES = 100


class SyntheticSource:
    """A store of `keys` keys written once, then `updates` of them written again, `value_bytes` each."""

    description = "synthetic store"

    def __init__(self, keys: int, updates: int, value_bytes: int) -> None:
        self._keys, self._updates, self._value = keys, updates, b"v" * value_bytes

    async def open(self, *, current_only: bool) -> Header:
        total = self._keys + self._updates
        return Header(1 + total, -1, 0, 0, total, self._keys)

    @staticmethod
    def key(i: int) -> bytes:
        return b"/registry/configmaps/ns-%03d/cm-%07d" % (i % 1000, i)

    async def log(self, *, batch_rows: int) -> AsyncIterator[list[LogRow]]:
        revision = 1
        batch: list[LogRow] = []
        for version, count in ((1, self._keys), (2, self._updates)):
            for i in range(count):
                revision += 1
                create = 2 + i
                lease = 1000 + i % LEASES if i % 10 == 0 else 0
                batch.append(LogRow(revision, 0, self.key(i), create, version, lease, self._value, False))
                if len(batch) >= batch_rows:
                    yield batch
                    batch = []
        if batch:
            yield batch

    async def leases(self) -> list[Lease]:
        return [Lease(1000 + i, 3600, time.time() + 3600) for i in range(LEASES)]

    async def hash_kv(self, revision: int) -> int | None:
        return None

    async def aclose(self) -> None:
        return None


async def build(path: Path, keys: int, updates: int, value_bytes: int) -> None:
    source = SyntheticSource(keys, updates, value_bytes)
    await copy_store(source, open_target(f"sqlite://{path}"), CopyOptions(batch_rows=20000), LogProgress(30))


def timed(command: list[str], batch_rows: int, what: str, rows: int, keys: int) -> bool:
    """Run `python -m kinepy COMMAND` with log progress; print its summary and wall time."""
    argv = [sys.executable, "-m", "kinepy", *command, "--progress", "log", "--batch-rows", str(batch_rows)]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=dict(os.environ))
    seconds = time.monotonic() - started
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        print(f"{what} failed ({proc.returncode})")
        return False
    print(proc.stdout.strip())
    print(f"{what}: {rows} history rows, {keys} keys in {seconds:.1f} s", flush=True)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--updates", type=int, default=1_000_000)
    parser.add_argument("--value-bytes", type=int, default=128)
    parser.add_argument("--to", choices=("postgres", "mariadb"), default="postgres")
    parser.add_argument("--batch-rows", type=int, default=5000)
    parser.add_argument("--backup", action="store_true", help="then time `kinepy backup` of the target")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kinepy-migrate-bench-"))
    source = root / "source.db"
    started = time.monotonic()
    asyncio.run(build(source, args.keys, args.updates, args.value_bytes))
    print(
        f"built {source} ({source.stat().st_size >> 20} MiB) in {time.monotonic() - started:.1f} s",
        flush=True,
    )
    server = start_database_server(args.to)
    try:
        target = server.url(server.create_database())
        rows = args.keys + args.updates
        command = ["migrate", "--from", f"sqlite://{source}", "--to", target]
        if not timed(command, args.batch_rows, f"kinepy migrate sqlite -> {args.to}", rows, args.keys):
            return 1
        if args.backup:
            backup = root / "backup.db"
            if not timed(
                ["backup", "--from", target, str(backup)],
                args.batch_rows,
                f"kinepy backup of {args.to}",
                rows,
                args.keys,
            ):
                return 1
            backup.unlink(missing_ok=True)
    finally:
        server.remove()
        source.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
