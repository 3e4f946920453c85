"""Parse `--datastore-endpoint` into a `kinepy.specs` backend spec (pure parsing: no I/O, no drivers).

The accepted forms follow kine/k3s, so an endpoint that works there means the same here:

    ""                                          SQLite at ./db/state.db
    sqlite://PATH[?OPTS]                        relative PATH is relative to the working directory;
                                                sqlite:///abs.db is absolute; sqlite://:memory:;
                                                a go-sqlite3 "file:" prefix is dropped
    postgres://[USER[:PASS]@]HOST[:PORT][/DB][?OPTS]   also postgresql://; defaults postgres@localhost:5432
                                                /kubernetes; USER, PASS and DB are percent-decoded
    postgres://[USER[:PASS]@]H1[:P1],H2[:P2][,…][/DB][?OPTS]  libpq's multi-host form: kinepy uses the
                                                primary (target_session_attrs read-write, the default
                                                with several hosts, or primary)
    mysql://[USER[:PASS]@]HOST[:PORT][/DB][?OPTS]      URL form, percent-decoded
    mysql://[USER[:PASS]@]tcp(HOST[:PORT])/[DB][?OPTS] Go DSN form (go-sql-driver): USER and PASS
    mysql://[USER[:PASS]@]unix(SOCKET)/[DB][?OPTS]      are taken literally, as kine does; defaults
                                                root@127.0.0.1:3306/kubernetes
    http(s)://HOST[:PORT][,…]                    a real etcd, passed through, as kine does: any port
    unix(s)://PATH[,…]                          (2379 when none is written), or a Unix socket; `s`: TLS

Query options (`sslmode`, `tls`, `_busy_timeout`, ...) are kept, percent-decoded, for the backend to
interpret; of a repeated option the last wins.
A password never appears in `str()`, `repr()` or a `ConfigError`: they show `***`.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from typing import NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

from kinepy.config import DEFAULT_SQLITE_PATH, Config
from kinepy.errors import ConfigError
from kinepy.specs import (
    DEFAULT_DATABASE,
    DEFAULT_MYSQL_HOST,
    DEFAULT_MYSQL_PORT,
    DEFAULT_MYSQL_USER,
    DEFAULT_POSTGRES_HOST,
    DEFAULT_POSTGRES_PORT,
    DEFAULT_POSTGRES_USER,
    REDACTED,
    BackendSpec,
    EtcdSpec,
    MySQLSpec,
    PostgresSpec,
    SQLiteSpec,
    bracket_host,
)

__all__ = [
    "ACCEPTED_FORMS",
    "ETCD_PORT",
    "ETCD_SCHEMES",
    "backend_spec",
    "parse_endpoint",
    "redact",
    "with_datastore_tls",
]

ETCD_PORT = 2379  # etcd's client port: the port of an http(s):// etcd URL that names none
ETCD_SCHEMES = ("http", "https", "unix", "unixs")
ACCEPTED_FORMS = (
    f"empty (SQLite at {DEFAULT_SQLITE_PATH}), sqlite://PATH, "
    "postgres://USER:PASS@HOST:PORT[,HOST:PORT…]/DB, mysql://USER:PASS@tcp(HOST:PORT)/DB, "
    "http(s)://HOST:PORT[,…] or unix(s)://PATH[,…] (etcd passthrough)"
)

_SECRET_OPTION_RE = re.compile(r"(?i)([?&](?:ssl)?password=)[^&]*")
_GO_DSN_RE = re.compile(
    r"^(?:(?P<userinfo>.*)@)?(?P<proto>tcp|unix)\((?P<addr>[^)]*)\)(?:/(?P<db>[^?]*))?(?:\?(?P<query>.*))?$",
    re.DOTALL,
)
_HOST_RE = re.compile(r"[\w.\-:%]+")  # a name, IPv4 or IPv6 (brackets already removed)
_GO_DSN_ADDR_RE = re.compile(r"(?:^|@)(?:tcp|unix)\(")
# libpq's target_session_attrs values that never give kinepy a standby ("any": a single host's choice).
_WRITABLE_SESSION_ATTRS = ("read-write", "primary", "any")


def redact(endpoint: str) -> str:
    """`endpoint` with any password replaced by `***`; unparseable input is redacted conservatively.

    Everything between `://` and the last `@` counts as user information, so a password is hidden
    even when it holds unencoded `@`, `/` or `?` (at worst more than the password is hidden).
    """
    scheme, sep, rest = endpoint.partition("://")
    if sep and scheme.lower() == "sqlite":
        return endpoint  # no credentials; a path may legitimately contain ':' and '@'
    if not sep:
        scheme, rest = "", endpoint
    if scheme.lower() in ETCD_SCHEMES and "," in rest:
        items = endpoint.split(",")
        if all(re.match(r"(?i)(https?|unixs?)://", item.strip()) for item in items):
            return ",".join(redact(item) for item in items)
    prefix = f"{scheme}://" if sep else ""
    at = _userinfo_end(rest)
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        if colon:
            rest = f"{user}:{REDACTED}{rest[at:]}"
    return prefix + _SECRET_OPTION_RE.sub(rf"\1{REDACTED}", rest)


def _userinfo_end(rest: str) -> int:
    """Index of the `@` ending the user information in `rest` (after `scheme://`), or -1."""
    last_go_addr = None
    for m in re.finditer(r"@(?:tcp|unix)\(", rest):
        last_go_addr = m.start()
    return last_go_addr if last_go_addr is not None else rest.rfind("@")


def parse_endpoint(endpoint: str) -> BackendSpec:
    """Parse a datastore endpoint; raise `ConfigError` naming the accepted forms if it is not one."""
    text = endpoint.strip()
    if not text:
        return SQLiteSpec(DEFAULT_SQLITE_PATH, {}, create_directory=True)
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise _invalid(endpoint, "missing '://' after the scheme")
    if scheme == "sqlite":
        return _parse_sqlite(endpoint, rest)
    if scheme in ("postgres", "postgresql"):
        return _parse_postgres(endpoint, rest)
    if scheme == "mysql":
        return _parse_mysql(endpoint, rest)
    if scheme in ETCD_SCHEMES:
        return _parse_etcd(endpoint, text)
    raise _invalid(endpoint, f"unknown scheme {scheme!r}")


def _invalid(endpoint: str, reason: str) -> ConfigError:
    return ConfigError(
        f"invalid datastore endpoint {redact(endpoint)!r}: {reason}; expected one of: {ACCEPTED_FORMS}"
    )


def _options(query: str) -> dict[str, str]:
    """Query options as a dict; of a repeated key the last wins."""
    return dict(parse_qsl(query, keep_blank_values=True))


def _parse_sqlite(endpoint: str, rest: str) -> SQLiteSpec:
    path, _, query = rest.partition("?")
    path = path.removeprefix("file:")
    path = path or DEFAULT_SQLITE_PATH
    default = posixpath.normpath(path) == posixpath.normpath(DEFAULT_SQLITE_PATH)
    return SQLiteSpec(path, _options(query), create_directory=default)


class _ServerUrl(NamedTuple):
    host: str
    port: int
    user: str
    password: str | None
    database: str
    options: dict[str, str]


def _split_url(endpoint: str, url: str, *, host: str, port: int, user: str) -> _ServerUrl:
    """`url`'s parts, user, password and database decoded; `host`, `port`, `user` and
    `DEFAULT_DATABASE` stand for what it leaves out."""
    if "#" in url:
        raise _invalid(endpoint, "unexpected '#' (percent-encode special characters in the user or password)")
    try:
        parts = urlsplit(url)
        given_port = parts.port
    except ValueError:
        raise _invalid(
            endpoint, "bad host or port (percent-encode special characters in the user or password)"
        ) from None
    given_host = parts.hostname or ""
    if given_host and not _HOST_RE.fullmatch(given_host):
        raise _invalid(endpoint, "bad host")
    if given_port == 0:
        raise _invalid(endpoint, "bad port")
    path = parts.path.removeprefix("/")
    if "/" in path:
        raise _invalid(endpoint, "the path must be a single database name")
    return _ServerUrl(
        host=given_host or host,
        port=port if given_port is None else given_port,
        user=unquote(parts.username or "") or user,
        password=unquote(parts.password) if parts.password is not None else None,
        database=unquote(path) or DEFAULT_DATABASE,
        options=_options(parts.query),
    )


def _authority_end(rest: str) -> int:
    """Where the user information and host list of `rest` (after `scheme://`) end."""
    return min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))


def _parse_postgres(endpoint: str, rest: str) -> PostgresSpec:
    # libpq's multi-host form: the hosts after the first are split off here, the rest is one URL.
    authority_end = _authority_end(rest)
    userinfo_end = rest.rfind("@", 0, authority_end) + 1
    first, *others = rest[userinfo_end:authority_end].split(",")
    other_hosts = tuple(_postgres_host(endpoint, item) for item in others)
    if others and not first:
        raise _invalid(endpoint, "an empty host in the host list")
    rest = rest[:userinfo_end] + first + rest[authority_end:]
    url = _split_url(
        endpoint,
        "postgres://" + rest,
        host=DEFAULT_POSTGRES_HOST,
        port=DEFAULT_POSTGRES_PORT,
        user=DEFAULT_POSTGRES_USER,
    )
    several = bool(others) or "," in url.options.get("host", "")
    _check_target_session_attrs(endpoint, url.options, several=several)
    return PostgresSpec(
        url.host, url.port, url.user, url.password, url.database, url.options, other_hosts=other_hosts
    )


def _postgres_host(endpoint: str, item: str) -> tuple[str, int]:
    """One `HOST[:PORT]` (or `[V6][:PORT]`) of a multi-host list."""
    host, port = _split_host_port(endpoint, item.strip())
    if not host:
        raise _invalid(endpoint, "an empty host in the host list")
    if not _HOST_RE.fullmatch(host):
        raise _invalid(endpoint, "bad host")
    return host, port if port is not None else DEFAULT_POSTGRES_PORT


def _check_target_session_attrs(endpoint: str, options: dict[str, str], *, several: bool) -> None:
    """kinepy writes, and must read what it wrote: it may only ever use the primary."""
    value = options.get("target_session_attrs")
    if value is None:
        return
    if value not in _WRITABLE_SESSION_ATTRS:
        raise _invalid(
            endpoint,
            f"target_session_attrs={value!r}: kinepy writes, so it needs the primary (read-write or primary)",
        )
    if value == "any" and several:
        raise _invalid(
            endpoint,
            "target_session_attrs=any with several hosts may pick a standby: "
            "use read-write (the default with several hosts) or primary",
        )


_MYSQL_ONE_HOST = (
    "several hosts: the MySQL driver (aiomysql) connects to one; give one node of a Galera or "
    "Group Replication cluster, or a proxy in front of it (docs/databases.md)"
)


def _parse_mysql(endpoint: str, rest: str) -> MySQLSpec:
    if not _GO_DSN_ADDR_RE.search(rest):
        if "," in rest[: _authority_end(rest)]:
            raise _invalid(endpoint, _MYSQL_ONE_HOST)
        url = _split_url(
            endpoint,
            "mysql://" + rest,
            host=DEFAULT_MYSQL_HOST,
            port=DEFAULT_MYSQL_PORT,
            user=DEFAULT_MYSQL_USER,
        )
        return MySQLSpec(url.host, url.port, url.user, url.password, url.database, url.options)
    m = _GO_DSN_RE.match(rest)
    if m is None:
        raise _invalid(endpoint, "malformed Go DSN (expected USER:PASS@tcp(HOST:PORT)/DB)")
    # go-sql-driver takes USER and PASS literally (split at the first ':'); only DB is unescaped.
    user, colon, password = (m["userinfo"] or "").partition(":")
    database = unquote(m["db"] or "")
    if "/" in database:
        raise _invalid(endpoint, "the path must be a single database name")
    user = user or DEFAULT_MYSQL_USER
    secret = password if colon else None
    database = database or DEFAULT_DATABASE
    options = _options(m["query"] or "")
    if m["proto"] == "unix":
        if not m["addr"]:
            raise _invalid(endpoint, "unix() needs a socket path")
        return MySQLSpec(None, None, user, secret, database, options, unix_socket=m["addr"])
    if "," in m["addr"]:
        raise _invalid(endpoint, _MYSQL_ONE_HOST)
    host, port = _split_host_port(endpoint, m["addr"])
    return MySQLSpec(host or DEFAULT_MYSQL_HOST, port or DEFAULT_MYSQL_PORT, user, secret, database, options)


def _split_host_port(endpoint: str, addr: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` → (host without brackets, port or None)."""
    m = re.fullmatch(r"\[(?P<v6>[\w:.%]+)\](?::(?P<p1>[^:]*))?|(?P<h>[^:\[\]/ ]*)(?::(?P<p2>[^:]*))?", addr)
    if m is None:
        raise _invalid(endpoint, "bad host or port")
    host = m["v6"] or m["h"] or ""
    port_text = m["p1"] if m["v6"] else m["p2"]
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _invalid(endpoint, "bad port")
    return host, int(port_text)


def _parse_etcd(endpoint: str, text: str) -> EtcdSpec:
    urls: list[str] = []
    options: dict[str, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        scheme, sep, rest = item.partition("://")
        scheme = scheme.lower()
        if not sep or scheme not in ETCD_SCHEMES:
            raise _invalid(endpoint, "every item of an etcd list must be an http(s):// or unix(s):// URL")
        if scheme in ("unix", "unixs"):
            path, _, query = rest.partition("?")
            if not path:
                raise _invalid(endpoint, f"{scheme}:// needs the socket's path")
            url = f"{scheme}://{path}"
        else:
            url, query = _etcd_url(endpoint, scheme, item)
        for key, value in _options(query).items():
            if options.setdefault(key, value) != value:
                raise _invalid(endpoint, f"conflicting values for option {key!r}")
        urls.append(url)
    return EtcdSpec(tuple(urls), options)


def _etcd_url(endpoint: str, scheme: str, item: str) -> tuple[str, str]:
    """`scheme://HOST[:PORT]` in canonical form (port 2379 when none is written), and the query."""
    try:
        parts = urlsplit(item)
        port = parts.port
    except ValueError:
        raise _invalid(endpoint, "bad host or port") from None
    if parts.username is not None or parts.password is not None:
        raise _invalid(endpoint, "credentials in etcd URLs are not supported")
    if not parts.hostname or parts.fragment or parts.path not in ("", "/"):
        raise _invalid(endpoint, "an etcd URL is scheme://HOST:PORT with no path")
    if port == 0:
        raise _invalid(endpoint, "bad port")
    return f"{scheme}://{bracket_host(parts.hostname)}:{port or ETCD_PORT}", parts.query


def backend_spec(config: Config) -> BackendSpec:
    """`config.datastore_endpoint` parsed, with the datastore TLS files of `config` applied."""
    return with_datastore_tls(
        parse_endpoint(config.datastore_endpoint),
        ca_file=config.datastore_ca_file,
        cert_file=config.datastore_cert_file,
        key_file=config.datastore_key_file,
        skip_verify=config.datastore_skip_verify,
    )


def with_datastore_tls(
    spec: BackendSpec,
    *,
    ca_file: str = "",
    cert_file: str = "",
    key_file: str = "",
    skip_verify: bool = False,
) -> BackendSpec:
    """`spec` with kine's database TLS settings (`--ca-file`, `--cert-file`, `--key-file`,
    `--skip-verify`) written into its options, as kine writes them into the driver's DSN: an option
    already in the endpoint's query wins. SQLite has no TLS and is returned unchanged.

    PostgreSQL: `sslrootcert`, `sslcert`, `sslkey`, and `sslmode=verify-full` (`require` with
    skip_verify). MySQL: `ssl-ca`, `ssl-cert`, `ssl-key`, and `tls=true` (`skip-verify`).
    etcd: `ca-file`, `cert-file`, `key-file` for the https:// / unixs:// upstreams.
    """
    if isinstance(spec, SQLiteSpec) or not (ca_file or cert_file or key_file or skip_verify):
        return spec
    if isinstance(spec, PostgresSpec):
        names, mode_key, mode = ("sslrootcert", "sslcert", "sslkey"), "sslmode", "verify-full"
        if skip_verify:
            mode = "require"
    elif isinstance(spec, MySQLSpec):
        names, mode_key, mode = ("ssl-ca", "ssl-cert", "ssl-key"), "tls", "true"
        if skip_verify:
            mode = "skip-verify"
    else:
        names, mode_key, mode = ("ca-file", "cert-file", "key-file"), "", ""
    present = {key.lower().replace("_", "-") for key in spec.options}
    added = {
        name: value
        for name, value in zip(names, (ca_file, cert_file, key_file), strict=True)
        if value and name.replace("_", "-") not in present
    }
    if mode_key and mode_key not in present:
        added[mode_key] = mode
    return dataclasses.replace(spec, options={**spec.options, **added})
