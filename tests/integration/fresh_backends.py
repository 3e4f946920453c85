"""Backends on a fresh database of the suite's PostgreSQL or MariaDB server, for tests that call a
backend directly rather than through a kinepy server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from kinepy.backends.base import Backend
from kinepy.backends.factory import create_backend
from kinepy.config import Config
from kinepy.endpoint import backend_spec
from kinepy.specs import BackendSettings
from kinepy.testing.databases import DatabaseServer


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
