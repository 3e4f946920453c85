"""What a datastore endpoint names, as data: the backend specs, the settings backends open with,
and the TLS files for an upstream etcd.

A leaf: `kinepy.endpoint` parses `--datastore-endpoint` into one of these specs, `kinepy.app` turns
`Config` into `BackendSettings`, and a backend is opened from the two knowing neither.
A password never appears in a spec's `str()` or `repr()`: they show `***`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

__all__ = [
    "DEFAULT_DATABASE",
    "DEFAULT_MYSQL_HOST",
    "DEFAULT_MYSQL_PORT",
    "DEFAULT_MYSQL_USER",
    "DEFAULT_POSTGRES_HOST",
    "DEFAULT_POSTGRES_PORT",
    "DEFAULT_POSTGRES_USER",
    "REDACTED",
    "BackendSettings",
    "BackendSpec",
    "EtcdSpec",
    "MySQLSpec",
    "PostgresSpec",
    "SQLiteSpec",
    "UpstreamTLS",
    "bracket_host",
    "upstream_tls",
]

DEFAULT_DATABASE = "kubernetes"
DEFAULT_POSTGRES_PORT = 5432
DEFAULT_POSTGRES_HOST = "localhost"
DEFAULT_POSTGRES_USER = "postgres"
DEFAULT_MYSQL_PORT = 3306
DEFAULT_MYSQL_HOST = "127.0.0.1"  # go-sql-driver's default address
DEFAULT_MYSQL_USER = "root"
REDACTED = "***"

# Query options whose value is a secret (libpq accepts ?password=...).
_SECRET_OPTIONS = frozenset({"password", "sslpassword"})


def _redact_options(options: dict[str, str]) -> dict[str, str]:
    return {k: REDACTED if k.lower() in _SECRET_OPTIONS else v for k, v in options.items()}


def _query(options: dict[str, str]) -> str:
    if not options:
        return ""
    return "?" + "&".join(f"{k}={v}" for k, v in _redact_options(options).items())


def bracket_host(host: str) -> str:
    """`host` as it is written in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def _redacted_repr(spec: PostgresSpec | MySQLSpec) -> str:
    """`spec`'s dataclass repr, its password and secret options shown as ***."""
    shown = []
    for item in fields(spec):
        value = getattr(spec, item.name)
        if item.name == "password" and value is not None:
            value = REDACTED
        elif item.name == "options":
            value = _redact_options(value)
        shown.append(f"{item.name}={value!r}")
    return f"{type(spec).__name__}({', '.join(shown)})"


def _userinfo(user: str, password: str | None) -> str:
    return f"{user}:{REDACTED}@" if password is not None else f"{user}@"


@dataclass(frozen=True, slots=True)
class SQLiteSpec:
    """A SQLite database file (or ":memory:"); `path` is as written, relative to the working directory."""

    path: str
    options: dict[str, str] = field(default_factory=dict)
    create_directory: bool = field(default=False, compare=False)
    """Create the file's missing directory (mode 0700): only for the default ./db/state.db; any other
    missing directory is an error, most likely a typo."""

    def describe(self) -> str:
        """The endpoint in canonical form."""
        return f"sqlite://{self.path}{_query(self.options)}"

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True, slots=True)
class PostgresSpec:
    """A PostgreSQL database; `options` (sslmode, sslrootcert, ...) go to the driver unchanged.

    `other_hosts`: the hosts after the first of a multi-host endpoint (`postgres://h1:5432,h2:5432/db`),
    tried in turn for the server `target_session_attrs` asks for (the primary)."""

    host: str = DEFAULT_POSTGRES_HOST
    port: int | None = DEFAULT_POSTGRES_PORT
    user: str = DEFAULT_POSTGRES_USER
    password: str | None = field(default=None, repr=False)
    database: str = DEFAULT_DATABASE
    options: dict[str, str] = field(default_factory=dict)
    other_hosts: tuple[tuple[str, int | None], ...] = ()

    @property
    def hosts(self) -> tuple[tuple[str, int | None], ...]:
        """Every (host, port) of the endpoint, in the order written."""
        return ((self.host, self.port), *self.other_hosts)

    def describe(self) -> str:
        """The endpoint in canonical form, password shown as ***."""
        hosts = ",".join(
            bracket_host(host) + (f":{port}" if port is not None else "") for host, port in self.hosts
        )
        userinfo = _userinfo(self.user, self.password)
        return f"postgres://{userinfo}{hosts}/{self.database}{_query(self.options)}"

    def __str__(self) -> str:
        return self.describe()

    def __repr__(self) -> str:
        return _redacted_repr(self)


@dataclass(frozen=True, slots=True)
class MySQLSpec:
    """A MySQL/MariaDB database over TCP (`host`, `port`) or a Unix socket (`unix_socket`; host is None)."""

    host: str | None = DEFAULT_MYSQL_HOST
    port: int | None = DEFAULT_MYSQL_PORT
    user: str = DEFAULT_MYSQL_USER
    password: str | None = field(default=None, repr=False)
    database: str = DEFAULT_DATABASE
    options: dict[str, str] = field(default_factory=dict)
    unix_socket: str | None = None

    def describe(self) -> str:
        """The endpoint in Go DSN form, password shown as ***."""
        if self.unix_socket is not None:
            address = f"unix({self.unix_socket})"
        else:
            port = f":{self.port}" if self.port is not None else ""
            address = f"tcp({bracket_host(self.host or DEFAULT_MYSQL_HOST)}{port})"
        userinfo = _userinfo(self.user, self.password)
        return f"mysql://{userinfo}{address}/{self.database}{_query(self.options)}"

    def __str__(self) -> str:
        return self.describe()

    def __repr__(self) -> str:
        return _redacted_repr(self)


@dataclass(frozen=True, slots=True)
class EtcdSpec:
    """A real etcd cluster: `endpoints` are `scheme://host:2379` URLs; `options` come from their queries."""

    endpoints: tuple[str, ...]
    options: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """The endpoint list, comma-separated, options appended."""
        return ",".join(self.endpoints) + _query(self.options)

    def __str__(self) -> str:
        return self.describe()


BackendSpec = SQLiteSpec | PostgresSpec | MySQLSpec | EtcdSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendSettings:
    """What a backend is opened with besides its spec (from `Config`; see there for each setting)."""

    synchronous: bool = True
    """Wait for each commit to reach the disk (False: `Config.unsafe_no_fsync`)."""

    read_threads: int = 4
    """SQLite: reader threads."""

    sqlite_integrity_check: str = "quick"
    """SQLite: the start-up check, "quick", "full" or "off"."""

    max_connections: int = 10
    """PostgreSQL/MySQL: the connection pool's size."""

    connect_timeout: float = 30.0
    """PostgreSQL/MySQL: seconds to keep retrying an unreachable database at start."""

    max_idle_time: float = 120.0
    """PostgreSQL/MySQL: seconds after which an idle pooled connection is closed; 0 = never."""

    notify_read_fd: int = -1
    """Workers of one server on a SQL database: readable when another worker committed (`WorkerRole`)."""

    notify_write_fds: tuple[int, ...] = ()
    """Workers of one server on a SQL database: the other workers' change pipes."""

    @property
    def worker_pipes(self) -> bool:
        """Several workers of one server share the database and tell each other of their commits, with
        their events (SQLite and MySQL have no LISTEN/NOTIFY; PostgreSQL's carries no events)."""
        return self.notify_read_fd >= 0


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    """TLS files (PEM) a client uses to reach etcd; None: the default (system CAs, no client certificate)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def upstream_tls(spec: EtcdSpec) -> UpstreamTLS:
    """TLS files for the upstream, from the endpoint's query (`?ca-file=…&cert-file=…&key-file=…`)."""
    opts = spec.options
    return UpstreamTLS(
        opts.get("ca-file") or opts.get("cacert"),
        opts.get("cert-file") or opts.get("cert"),
        opts.get("key-file") or opts.get("key"),
    )
