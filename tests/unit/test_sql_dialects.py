"""The PostgreSQL and MySQL backends' pure parts: statement conversion, literals, options, error mapping.

The backends themselves run against real servers in tests/integration/test_backends.py.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import aiomysql
import asyncpg
import pytest

from kinepy.backends.sql import dialect, mysql, postgres
from kinepy.errors import BackendError, BackendUnavailable, ConfigError
from kinepy.specs import MySQLSpec, PostgresSpec

SECRET = "hunter2-Secret"


def test_numbered_placeholders_and_empty_bytea() -> None:
    text = "SELECT key, x'' FROM kv_current WHERE key >= ? AND key < ? LIMIT ?"
    assert dialect.numbered(text) == (
        "SELECT key, ''::bytea FROM kv_current WHERE key >= $1 AND key < $2 LIMIT $3"
    )


def test_pyformat_quotes_the_key_column_only() -> None:
    text = (
        "SELECT key, l.key, m.key FROM kv_log l JOIN kv_current c ON c.key = l.key "
        "WHERE kv_log_key_revision = '5%' AND `key` = ? ON DUPLICATE KEY UPDATE PRIMARY KEY"
    )
    assert dialect.pyformat(text) == (
        "SELECT `key`, l.`key`, m.`key` FROM kv_log l JOIN kv_current c ON c.`key` = l.`key` "
        "WHERE kv_log_key_revision = '5%%' AND `key` = %s ON DUPLICATE KEY UPDATE PRIMARY KEY"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"", "X''"),
        (b"\x00a\xff", "X'0061ff'"),
        (b"'; DROP TABLE kv_log; --", "X'" + b"'; DROP TABLE kv_log; --".hex() + "'"),
        (0, "0"),
        (-(2**63), str(-(2**63))),
        (True, "1"),
        (1.5, "1.5"),
        (1732630000.123456, "1732630000.123456"),
        (None, "NULL"),
        ("kinepy_schema", "_utf8mb4 X'" + b"kinepy_schema".hex() + "'"),
    ],
)
def test_mysql_literals(value: object, expected: str) -> None:
    assert mysql.literal(value) == expected


def test_mysql_render_fills_placeholders_and_keeps_percent_signs() -> None:
    assert mysql.render("SELECT '100%', key FROM t WHERE key = ? AND n < ?", [b"k", 3]) == (
        "SELECT '100%', `key` FROM t WHERE `key` = X'6b' AND n < 3"
    )
    with pytest.raises(TypeError):
        mysql.literal(object())


def test_byte_batches_bound_the_bytes_per_statement() -> None:
    rows = [(i, b"x" * 100) for i in range(10)]
    batches = dialect.byte_batches(rows, limit=350)
    assert [len(b) for b in batches] == [2, 2, 2, 2, 2]
    assert [row for batch in batches for row in batch] == rows
    assert dialect.byte_batches([(1, b"x" * 1000)], limit=10) == [[(1, b"x" * 1000)]]
    assert dialect.byte_batches([], limit=10) == []


def test_mysql_tls_options() -> None:
    assert mysql.ssl_context({}) is None
    assert mysql.ssl_context({"tls": "false"}) is None
    verified = mysql.ssl_context({"tls": "true"})
    assert verified is not None and verified.verify_mode == ssl.CERT_REQUIRED and verified.check_hostname
    for mode in ("skip-verify", "preferred"):
        unverified = mysql.ssl_context({"tls": mode})
        assert unverified is not None and unverified.verify_mode == ssl.CERT_NONE
    with pytest.raises(ConfigError, match="tls='custom'"):
        mysql.ssl_context({"tls": "custom"})


@pytest.mark.parametrize(
    ("text", "seconds"), [("10", 10.0), ("2.5", 2.5), ("5s", 5.0), ("500ms", 0.5), ("1m30s", 90.0)]
)
def test_mysql_timeout_durations(text: str, seconds: float) -> None:
    assert mysql._seconds(text) == seconds


def test_mysql_bad_timeout() -> None:
    with pytest.raises(ConfigError, match="bad MySQL timeout"):
        mysql._seconds("soon")


def _caused_by(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (ConnectionRefusedError(111, "Connection refused"), True),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), False),
        (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), True),
        (asyncpg.InvalidPasswordError("password authentication failed"), False),
        (asyncpg.TooManyConnectionsError("too many clients"), True),
        (asyncpg.SerializationError("could not serialize"), True),
        (asyncpg.CannotConnectNowError("the database system is starting up"), True),
        (asyncpg.UniqueViolationError("duplicate key"), False),
        (asyncpg.InterfaceError("connection is closed"), True),
    ],
)
def test_postgres_retryable_errors(exc: BaseException, retryable: bool) -> None:
    assert postgres.is_retryable(exc) is retryable


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (aiomysql.OperationalError(2003, "Can't connect to MySQL server on 'db'"), True),
        (
            _caused_by(
                aiomysql.OperationalError(2003, "Can't connect to MySQL server on 'db.invalid'"),
                socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            ),
            False,
        ),
        (aiomysql.OperationalError(2013, "Lost connection to server during query"), True),
        (aiomysql.OperationalError(1213, "Deadlock found"), True),
        (aiomysql.OperationalError(1045, "Access denied for user 'kine'@'h' (using password: YES)"), False),
        (aiomysql.OperationalError(1406, "Data too long for column 'key'"), False),
        (aiomysql.InterfaceError(0, ""), True),
    ],
)
def test_mysql_retryable_errors(exc: BaseException, retryable: bool) -> None:
    assert mysql.is_retryable(exc) is retryable


def test_errors_never_carry_the_password() -> None:
    pg = postgres.PostgresBackend(PostgresSpec(host="db", user="kine", password=SECRET))
    error = pg._error(OSError(f"connect to postgres://kine:{SECRET}@db failed"), "at somewhere")
    assert isinstance(error, BackendUnavailable) and SECRET not in str(error)
    my = mysql.MySQLBackend(MySQLSpec(host="db", user="kine", password=SECRET))
    error = my._error(aiomysql.OperationalError(1045, f"denied {SECRET}"))
    assert type(error) is BackendError and SECRET not in str(error) and "1045" in str(error)


async def test_snapshot_of_a_closed_server_backend_fails_and_writes_nothing(tmp_path: Path) -> None:
    # A started one writes a SQLite file (kinepy/backends/sql/bulk.py; tests/integration/test_migrate.py).
    for backend in (postgres.PostgresBackend(PostgresSpec()), mysql.MySQLBackend(MySQLSpec())):
        with pytest.raises(BackendUnavailable, match="closed"):
            await backend.snapshot(str(tmp_path / "snapshot.db"))
        assert not (tmp_path / "snapshot.db").exists()
