"""Backend spec -> backend instance. Drivers are imported only when their scheme is used."""

from __future__ import annotations

from kinepy.backends.base import Backend
from kinepy.backends.changes import ChangePipes
from kinepy.backends.sql.dialect import ServerOptions
from kinepy.errors import ConfigError
from kinepy.specs import BackendSettings, BackendSpec, EtcdSpec, MySQLSpec, PostgresSpec, SQLiteSpec


def create_backend(spec: BackendSpec, settings: BackendSettings) -> Backend:
    if isinstance(spec, SQLiteSpec):
        from kinepy.backends.sql.sqlite import SQLiteBackend

        return SQLiteBackend(
            spec.path,
            synchronous_full=settings.synchronous,
            read_threads=settings.read_threads,
            create_directory=spec.create_directory,
            integrity_check=settings.sqlite_integrity_check,
            changes=_pipes(settings),
        )
    if isinstance(spec, PostgresSpec):
        from kinepy.backends.sql.postgres import PostgresBackend

        return PostgresBackend(spec, synchronous_commit=settings.synchronous, **_server_options(settings))
    if isinstance(spec, MySQLSpec):
        from kinepy.backends.sql.mysql import MySQLBackend

        return MySQLBackend(spec, **_server_options(settings))
    if isinstance(spec, EtcdSpec):
        raise ConfigError(f"datastore {spec.describe()} is a real etcd: it is passed through, not opened")
    raise ConfigError(f"unsupported datastore {spec!r}")


def _server_options(settings: BackendSettings) -> ServerOptions:
    return ServerOptions(
        pool_size=settings.max_connections,
        connect_timeout=settings.connect_timeout,
        idle_timeout=settings.max_idle_time,
        changes=_pipes(settings),
    )


def _pipes(settings: BackendSettings) -> ChangePipes | None:
    """The change pipes to the other workers of this server, when the supervisor made them."""
    if not settings.worker_pipes:
        return None
    return ChangePipes(settings.notify_read_fd, settings.notify_write_fds)
