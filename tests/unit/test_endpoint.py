"""Parsing `--datastore-endpoint`: every accepted form, its defaults, and passwords that never leak."""

from __future__ import annotations

import re

import pytest

from kinepy.config import DEFAULT_SQLITE_PATH, Config
from kinepy.endpoint import ACCEPTED_FORMS, backend_spec, parse_endpoint, redact, with_datastore_tls
from kinepy.errors import ConfigError
from kinepy.specs import BackendSpec, EtcdSpec, MySQLSpec, PostgresSpec, SQLiteSpec

SECRET = "s3cr3t"

VALID: list[tuple[str, BackendSpec]] = [
    # SQLite: kine strips "sqlite://" and hands the rest to the driver; relative paths are relative to cwd.
    ("", SQLiteSpec(DEFAULT_SQLITE_PATH, {})),
    ("   ", SQLiteSpec(DEFAULT_SQLITE_PATH, {})),
    ("sqlite://", SQLiteSpec(DEFAULT_SQLITE_PATH, {})),
    ("sqlite://./db/x.db", SQLiteSpec("./db/x.db", {})),
    ("sqlite:///abs/path.db", SQLiteSpec("/abs/path.db", {})),
    ("sqlite://relative/path.db", SQLiteSpec("relative/path.db", {})),
    (
        "sqlite://file.db?_busy_timeout=30000&_journal=WAL",
        SQLiteSpec("file.db", {"_busy_timeout": "30000", "_journal": "WAL"}),
    ),
    ("sqlite://?_busy_timeout=5", SQLiteSpec(DEFAULT_SQLITE_PATH, {"_busy_timeout": "5"})),
    ("sqlite://:memory:", SQLiteSpec(":memory:", {})),
    ("sqlite://file:kine.db?cache=shared", SQLiteSpec("kine.db", {"cache": "shared"})),
    ("SQLite://a.db\n", SQLiteSpec("a.db", {})),
    # PostgreSQL
    (
        f"postgres://user:{SECRET}@host:5432/db?sslmode=disable",
        PostgresSpec("host", 5432, "user", SECRET, "db", {"sslmode": "disable"}),
    ),
    (f"postgresql://user:{SECRET}@host/db", PostgresSpec("host", 5432, "user", SECRET, "db", {})),
    ("postgres://", PostgresSpec("localhost", 5432, "postgres", None, "kubernetes", {})),
    ("postgres://db.example.com", PostgresSpec("db.example.com", 5432, "postgres", None, "kubernetes", {})),
    ("postgres://u@h:6543/", PostgresSpec("h", 6543, "u", None, "kubernetes", {})),
    ("postgres://u:@h/db", PostgresSpec("h", 5432, "u", "", "db", {})),
    ("postgres://u:p%40s%2Fs%3Aw%23d@h/db", PostgresSpec("h", 5432, "u", "p@s/s:w#d", "db", {})),
    ("postgres://us%65r:pw@h/my%2Ddb", PostgresSpec("h", 5432, "user", "pw", "my-db", {})),
    ("postgres://u:pw@[::1]:5433/db", PostgresSpec("::1", 5433, "u", "pw", "db", {})),
    ("postgres://[::1]/db", PostgresSpec("::1", 5432, "postgres", None, "db", {})),
    (
        "postgres://u:pw@h/db?sslmode=verify-full&sslrootcert=/ca.pem&sslcert=/c.pem&sslkey=/k.pem",
        PostgresSpec(
            "h",
            5432,
            "u",
            "pw",
            "db",
            {"sslmode": "verify-full", "sslrootcert": "/ca.pem", "sslcert": "/c.pem", "sslkey": "/k.pem"},
        ),
    ),
    # PostgreSQL, libpq's multi-host form: the primary among them
    (
        "postgres://u:pw@h1:5432,h2:5433/db?target_session_attrs=read-write",
        PostgresSpec("h1", 5432, "u", "pw", "db", {"target_session_attrs": "read-write"}, (("h2", 5433),)),
    ),
    (
        "postgres://h1,h2,h3/db",
        PostgresSpec("h1", 5432, "postgres", None, "db", {}, (("h2", 5432), ("h3", 5432))),
    ),
    ("postgres://u:p,w@[::1]:6,h2/db", PostgresSpec("::1", 6, "u", "p,w", "db", {}, (("h2", 5432),))),
    (
        "postgres://h1,h2/db?target_session_attrs=primary",
        PostgresSpec(
            "h1", 5432, "postgres", None, "db", {"target_session_attrs": "primary"}, (("h2", 5432),)
        ),
    ),
    # MySQL, URL form (percent-decoded)
    (f"mysql://user:{SECRET}@host:3306/db", MySQLSpec("host", 3306, "user", SECRET, "db", {})),
    ("mysql://u:p%40ss@host/db?tls=true", MySQLSpec("host", 3306, "u", "p@ss", "db", {"tls": "true"})),
    ("mysql://", MySQLSpec("127.0.0.1", 3306, "root", None, "kubernetes", {})),
    ("mysql://u:pw@[::1]:3307/db", MySQLSpec("::1", 3307, "u", "pw", "db", {})),
    # MySQL, Go DSN form (literal user and password, as go-sql-driver reads them)
    (f"mysql://user:{SECRET}@tcp(host:3306)/db", MySQLSpec("host", 3306, "user", SECRET, "db", {})),
    ("mysql://user:p@ss:w%40rd@tcp(host)/db", MySQLSpec("host", 3306, "user", "p@ss:w%40rd", "db", {})),
    ("mysql://root@tcp(127.0.0.1:3306)/k3s", MySQLSpec("127.0.0.1", 3306, "root", None, "k3s", {})),
    ("mysql://tcp(h)/", MySQLSpec("h", 3306, "root", None, "kubernetes", {})),
    ("mysql://u:pw@tcp([::1]:3307)/db", MySQLSpec("::1", 3307, "u", "pw", "db", {})),
    ("mysql://u:pw@tcp(h:3306)/db?tls=true", MySQLSpec("h", 3306, "u", "pw", "db", {"tls": "true"})),
    (
        "mysql://user:pw@unix(/path/mysqld.sock)/db",
        MySQLSpec(None, None, "user", "pw", "db", {}, unix_socket="/path/mysqld.sock"),
    ),
    # etcd passthrough
    ("http://h:2379", EtcdSpec(("http://h:2379",), {})),
    ("https://h:2379/", EtcdSpec(("https://h:2379",), {})),
    ("http://a:2379,http://b:2379", EtcdSpec(("http://a:2379", "http://b:2379"), {})),
    ("https://a:2379, https://b:2379", EtcdSpec(("https://a:2379", "https://b:2379"), {})),
    ("http://[::1]:2379", EtcdSpec(("http://[::1]:2379",), {})),
    ("https://h:2379?cacert=/ca.pem", EtcdSpec(("https://h:2379",), {"cacert": "/ca.pem"})),
    # ... on any port, as kine: 2379 when none is written; and on Unix sockets
    ("http://h:8080", EtcdSpec(("http://h:8080",), {})),
    ("https://h", EtcdSpec(("https://h:2379",), {})),
    ("unix:///run/etcd.sock", EtcdSpec(("unix:///run/etcd.sock",), {})),
    ("unixs://etcd.sock?ca-file=/ca.pem", EtcdSpec(("unixs://etcd.sock",), {"ca-file": "/ca.pem"})),
    ("http://a:2379,unix:///run/etcd.sock", EtcdSpec(("http://a:2379", "unix:///run/etcd.sock"), {})),
]


@pytest.mark.parametrize(("endpoint", "expected"), VALID, ids=[e or "empty" for e, _ in VALID])
def test_parse_accepted_forms(endpoint: str, expected: BackendSpec) -> None:
    assert parse_endpoint(endpoint) == expected


def test_default_endpoint_is_the_configured_sqlite_path() -> None:
    assert DEFAULT_SQLITE_PATH == "./db/state.db"
    assert parse_endpoint("") == SQLiteSpec("./db/state.db", {})


# describe() hides a password, so only specs without one can round-trip.
NO_PASSWORD = [(e, spec) for e, spec in VALID if getattr(spec, "password", None) is None]


@pytest.mark.parametrize(("endpoint", "expected"), NO_PASSWORD, ids=[e or "empty" for e, _ in NO_PASSWORD])
def test_describe_round_trips_without_a_password(endpoint: str, expected: BackendSpec) -> None:
    assert parse_endpoint(expected.describe()) == expected
    assert str(expected) == expected.describe()


LEAKY = [
    f"postgres://user:{SECRET}@host:5432/db?sslmode=disable",
    f"postgresql://user:{SECRET}@[::1]/db",
    f"postgres://user:{SECRET}@h1:5432,h2:5432/db?target_session_attrs=read-write",
    f"postgres://user@host/db?password={SECRET}",
    f"mysql://user:{SECRET}@host:3306/db",
    f"mysql://user:{SECRET}@tcp(host:3306)/db",
    f"mysql://user:{SECRET}@unix(/run/mysqld.sock)/db",
    f"mysql://user:{SECRET}@tcp(host)/db?tls=a@b",
]


@pytest.mark.parametrize("endpoint", LEAKY)
def test_password_never_in_str_or_repr(endpoint: str) -> None:
    spec = parse_endpoint(endpoint)
    for shown in (str(spec), repr(spec), spec.describe(), redact(endpoint)):
        assert SECRET not in shown
        assert "***" in shown


@pytest.mark.parametrize(
    ("endpoint", "redacted"),
    [
        ("", ""),
        ("sqlite:///a@b:c.db", "sqlite:///a@b:c.db"),
        ("postgres://host/db", "postgres://host/db"),
        ("postgres://user@host/db", "postgres://user@host/db"),
        (f"postgres://user:{SECRET}@host/db", "postgres://user:***@host/db"),
        (f"postgres://user:{SECRET}@host/db?password={SECRET}", "postgres://user:***@host/db?password=***"),
        (f"mysql://user:{SECRET}@tcp(h:1)/db", "mysql://user:***@tcp(h:1)/db"),
        (f"mysql://user:p@{SECRET}@tcp(h:1)/db?x=a@b", "mysql://user:***@tcp(h:1)/db?x=a@b"),
        # unencoded special characters: hide everything up to the last '@'
        (f"postgres://user:a/{SECRET}?#@host/db", "postgres://user:***@host/db"),
        (f"http://u:{SECRET}@a:2379,http://b:2379", "http://u:***@a:2379,http://b:2379"),
        (f"foo://u:{SECRET}@h", "foo://u:***@h"),
        (f"u:{SECRET}@h", "u:***@h"),
    ],
)
def test_redact(endpoint: str, redacted: str) -> None:
    assert redact(endpoint) == redacted


BAD = [
    "foo://u:PASSWORD@h/db",
    "nourl",
    "u:PASSWORD@host/db",
    "sqlite:a.db",
    "postgres://u:PASSWORD@h:99999/db",
    "postgres://u:PASSWORD@h:0/db",
    "postgres://u:PASSWORD@h:abc/db",
    "postgres://u:PASSWORD@[::1/db",
    "postgres://u:PASSWORD@h/a/b",
    "postgres://u:PASS#WORD@h/db",
    "postgres://u:PASS/WORD@h/db",
    "postgres://u:PASSWORD@h1,,h2/db",
    "postgres://u:PASSWORD@,h2/db",
    "postgres://u:PASSWORD@h1,h2:x/db",
    "postgres://u:PASSWORD@h1,h2:0/db",
    "postgres://u:PASSWORD@h1,h 2/db",
    "postgres://u:PASSWORD@h1,h2/db?target_session_attrs=any",
    "postgres://u:PASSWORD@h1/db?target_session_attrs=standby",
    "postgres://u:PASSWORD@h1,h2/db?target_session_attrs=read-only",
    "postgres://u:PASSWORD@h1,h2/db?target_session_attrs=prefer-standby",
    "postgres://u:PASSWORD@/db?host=h1,h2&target_session_attrs=any",
    "mysql://u:PASSWORD@h1,h2/db",
    "mysql://u:PASSWORD@tcp(h1:3306,h2:3306)/db",
    "mysql://u:PASSWORD@tcp(h:x)/db",
    "mysql://u:PASSWORD@tcp(h:70000)/db",
    "mysql://u:PASSWORD@tcp(::1)/db",
    "mysql://u:PASSWORD@tcp(h)x/db",
    "mysql://u:PASSWORD@udp(h)/db",
    "mysql://u:PASSWORD@unix()/db",
    "mysql://u:PASSWORD@tcp(h)/a/b",
    "http://:2379",
    "http://h:0",
    "unix://",
    "unixs://?ca-file=/ca.pem",
    "http://h:2379/v3",
    "http://h:2379,foo",
    "http://h:2379,postgres://u:PASSWORD@h/db",
    "http://u:PASSWORD@h:2379",
    "https://a:2379?ca=1,https://b:2379?ca=2",
]


@pytest.mark.parametrize("endpoint", BAD)
def test_bad_endpoint_names_accepted_forms_without_the_password(endpoint: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_endpoint(endpoint)
    message = str(info.value)
    assert message.startswith("invalid datastore endpoint '")
    assert message.endswith(f"expected one of: {ACCEPTED_FORMS}")
    for form in (
        "sqlite://PATH",
        "postgres://",
        "mysql://",
        "http(s)://HOST:PORT",
        "unix(s)://PATH",
        "./db/state.db",
    ):
        assert form in message
    assert "PASSWORD" not in message and "WORD" not in message


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ("postgres://h1,h2/db?target_session_attrs=any", "target_session_attrs=any with several hosts"),
        ("postgres://h/db?target_session_attrs=standby", "kinepy writes, so it needs the primary"),
        ("mysql://h1,h2/db", "the MySQL driver (aiomysql) connects to one"),
    ],
)
def test_a_host_list_that_could_give_kinepy_a_standby_says_why(endpoint: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(reason)):
        parse_endpoint(endpoint)


def test_a_single_host_may_keep_target_session_attrs_any() -> None:
    spec = parse_endpoint("postgres://h/db?target_session_attrs=any")
    assert isinstance(spec, PostgresSpec) and spec.options == {"target_session_attrs": "any"}


def test_an_etcd_list_item_of_another_kind_says_why() -> None:
    with pytest.raises(ConfigError, match="every item of an etcd list must be an http"):
        parse_endpoint("unix:///run/etcd.sock,mysql://h/db")


def test_specs_are_frozen() -> None:
    spec = parse_endpoint("postgres://h/db")
    with pytest.raises(AttributeError):
        spec.host = "other"  # type: ignore[misc, union-attr]


# -- kine's database TLS flags go into the spec's options, as kine writes them into the DSN --------


def test_database_tls_files_become_postgres_ssl_options() -> None:
    spec = with_datastore_tls(
        parse_endpoint("postgres://u@db/k8s"), ca_file="/ca.pem", cert_file="/c.pem", key_file="/k.pem"
    )
    assert isinstance(spec, PostgresSpec)
    assert spec.options == {
        "sslrootcert": "/ca.pem",
        "sslcert": "/c.pem",
        "sslkey": "/k.pem",
        "sslmode": "verify-full",
    }


def test_database_tls_options_in_the_endpoint_win() -> None:
    spec = with_datastore_tls(
        parse_endpoint("postgres://u@db/k8s?sslmode=require&sslrootcert=/mine.pem"), ca_file="/ca.pem"
    )
    assert spec.options == {"sslmode": "require", "sslrootcert": "/mine.pem"}


def test_database_tls_files_become_mysql_tls_options() -> None:
    spec = with_datastore_tls(
        parse_endpoint("mysql://u@tcp(db:3306)/k8s"), ca_file="/ca.pem", skip_verify=True
    )
    assert spec.options == {"ssl-ca": "/ca.pem", "tls": "skip-verify"}


def test_database_tls_files_reach_an_etcd_upstream_and_not_sqlite() -> None:
    etcd = with_datastore_tls(
        parse_endpoint("https://10.0.0.1:2379"), ca_file="/ca.pem", cert_file="/c.pem", key_file="/k.pem"
    )
    assert etcd.options == {"ca-file": "/ca.pem", "cert-file": "/c.pem", "key-file": "/k.pem"}
    sqlite = parse_endpoint("sqlite:///tmp/x.db")
    assert with_datastore_tls(sqlite, ca_file="/ca.pem") is sqlite


def test_backend_spec_applies_the_configs_database_tls() -> None:
    config = Config(
        datastore_endpoint="mysql://u@db/k8s", datastore_cert_file="/c.pem", datastore_key_file="/k.pem"
    )
    assert backend_spec(config).options == {"ssl-cert": "/c.pem", "ssl-key": "/k.pem", "tls": "true"}


@pytest.mark.parametrize(
    ("endpoint", "create"),
    [
        ("", True),
        ("sqlite://", True),
        ("sqlite://db/state.db", True),
        ("sqlite://./db/state.db", True),
        ("sqlite:///typo-dir/sub/state.db", False),
        ("sqlite://state.db", False),
        ("sqlite://db/other.db", False),
    ],
)
def test_only_the_default_sqlite_directory_is_created(endpoint: str, create: bool) -> None:
    spec = parse_endpoint(endpoint)
    assert isinstance(spec, SQLiteSpec) and spec.create_directory is create
