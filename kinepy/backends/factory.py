"""Backend spec -> backend instance. Drivers are imported only when their scheme is used."""

from __future__ import annotations

from kinepy.backends.base import Backend
from kinepy.config import Config
from kinepy.endpoint import BackendSpec, EtcdSpec, MySQLSpec, PostgresSpec, SQLiteSpec
from kinepy.errors import ConfigError


def create_backend(spec: BackendSpec, config: Config) -> Backend:
    if isinstance(spec, SQLiteSpec):
        from kinepy.backends.sql.sqlite import SQLiteBackend

        return SQLiteBackend(
            spec.path, synchronous_full=not config.unsafe_no_fsync, read_threads=config.read_threads
        )
    if isinstance(spec, PostgresSpec):
        from kinepy.backends.sql.postgres import PostgresBackend

        return PostgresBackend(
            spec,
            pool_size=config.datastore_max_connections,
            connect_timeout=config.datastore_connect_timeout,
            synchronous_commit=not config.unsafe_no_fsync,
        )
    if isinstance(spec, MySQLSpec):
        from kinepy.backends.sql.mysql import MySQLBackend

        return MySQLBackend(
            spec,
            pool_size=config.datastore_max_connections,
            connect_timeout=config.datastore_connect_timeout,
        )
    if isinstance(spec, EtcdSpec):
        raise ConfigError(f"datastore {spec.describe()} is a real etcd: it is passed through, not opened")
    raise ConfigError(f"unsupported datastore {spec!r}")
