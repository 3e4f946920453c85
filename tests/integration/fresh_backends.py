"""Backends on a fresh database of the suite's PostgreSQL or MariaDB server, for tests that call a
backend directly rather than through a kinepy server."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

from kinepy.backends.base import Backend
from kinepy.backends.factory import create_backend
from kinepy.config import Config
from kinepy.endpoint import backend_spec
from kinepy.specs import BackendSettings
from kinepy.testing.databases import DatabaseServer

B = TypeVar("B", bound=Backend)

DEADLINE = 10.0
"""How long the server is asked before a connection's closing counts as not seen."""


@asynccontextmanager
async def fresh_backends(server: DatabaseServer, count: int = 1) -> AsyncIterator[tuple[list[Backend], str]]:
    """`count` started backends (as many kinepy processes) on a new database of `server`, and the
    database's name; the backends are closed and the database dropped afterwards."""
    name = server.create_database()
    started: list[Backend] = []
    try:
        spec = backend_spec(Config(datastore_endpoint=server.url(name)))
        for _ in range(count):
            backend = create_backend(spec, BackendSettings())
            await backend.start()
            started.append(backend)
        yield started, name
    finally:
        for backend in started:
            await backend.aclose()
        server.drop_database(name)


class FreshDatabase(Generic[B]):
    """A new database of `server` and the backends (of class `kind`) opened on it with chosen pool
    settings, with the connections the server has open to it; leaving it (`async with`) closes the
    backends and drops the database. For the tests of the backends' connection handling (the free lists)."""

    def __init__(self, server: DatabaseServer, kind: type[B]) -> None:
        self.server = server
        self.kind = kind
        self.name = server.create_database()
        self.opened: list[B] = []

    async def backend(self, *, pool_size: int = 10, idle_timeout: float = 120.0) -> B:
        settings = BackendSettings(max_connections=pool_size, max_idle_time=idle_timeout)
        backend = create_backend(
            backend_spec(Config(datastore_endpoint=self.server.url(self.name))), settings
        )
        assert isinstance(backend, self.kind)
        await backend.start()
        self.opened.append(backend)
        return backend

    async def server_connections(self) -> set[int]:
        """The ids (PostgreSQL: server pids) of the connections the server has open to the database,
        asked as the superuser over its Unix socket, from outside the database."""
        if self.server.kind == "postgres":
            statement = f"SELECT pid FROM pg_stat_activity WHERE datname = '{self.name}'"
        else:
            statement = f"SELECT id FROM information_schema.processlist WHERE db = '{self.name}'"
        return {int(row[0]) for row in await asyncio.to_thread(self.server.sql, statement)}

    async def settle(self, expected: int) -> int:
        """How many `server_connections` there are once there are `expected` (or after `DEADLINE`):
        the server drops a connection a moment after its client closed it."""
        deadline = time.monotonic() + DEADLINE
        for _ in itertools.count():  # the server, not this process, decides when: it is asked again
            count = len(await self.server_connections())
            if count == expected or time.monotonic() > deadline:
                return count
            await asyncio.sleep(0.05)
        raise AssertionError("unreachable")

    async def gone(self, connection: int) -> bool:
        """Whether the server has closed `connection` (asked until it has, or `DEADLINE`)."""
        deadline = time.monotonic() + DEADLINE
        for _ in itertools.count():  # as `settle`
            if connection not in await self.server_connections():
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        raise AssertionError("unreachable")

    async def __aenter__(self) -> FreshDatabase[B]:
        return self

    async def __aexit__(self, *_: object) -> None:
        """Close the backends opened, then drop the database."""
        for backend in self.opened:
            await backend.aclose()
        self.server.drop_database(self.name)
