"""Which connection errors are worth retrying at start: a server that is down or busy is; settings
that are wrong (TLS refused or failing, a TLS file that cannot be read, a bad option) are not."""

from __future__ import annotations

import ssl

import aiomysql
import pytest

from kinepy.backends.sql import mysql, postgres


def _caused(outer: Exception, cause: BaseException) -> Exception:
    outer.__cause__ = cause
    return outer


PERMANENT = [
    ConnectionError('PostgreSQL server at "127.0.0.1:5432" rejected SSL upgrade'),
    ssl.SSLCertVerificationError(1, "certificate verify failed: unable to get local issuer certificate"),
    FileNotFoundError(2, "No such file or directory", "/etc/db/ca.pem"),
    ValueError("`sslmode` parameter must be one of: disable, allow, prefer, require, verify-ca, verify-full"),
]
TRANSIENT = [ConnectionRefusedError(111, "Connection refused"), TimeoutError()]


@pytest.mark.parametrize("exc", PERMANENT, ids=type)
def test_wrong_settings_are_not_retried(exc: Exception) -> None:
    assert not postgres.is_retryable(exc)
    assert not mysql.is_retryable(_caused(aiomysql.OperationalError(2003, "Can't connect"), exc))


@pytest.mark.parametrize("exc", TRANSIENT, ids=type)
def test_an_unreachable_server_is_retried(exc: Exception) -> None:
    assert postgres.is_retryable(exc)
    assert mysql.is_retryable(_caused(aiomysql.OperationalError(2003, "Can't connect"), exc))


@pytest.mark.parametrize(
    ("options", "required"),
    [
        ({}, False),
        ({"tls": "true"}, True),
        ({"tls": "skip-verify"}, True),
        ({"tls": "preferred"}, False),
        ({"tls": "false"}, False),
        ({"ssl-ca": "/ca.pem"}, True),
        ({"ssl_cert": "/c.pem", "ssl_key": "/k.pem"}, True),
        ({"ssl-ca": "/ca.pem", "tls": "preferred"}, False),
    ],
)
def test_mysql_tls_that_must_not_fall_back_to_plain_text(options: dict[str, str], required: bool) -> None:
    assert mysql.tls_required(options) is required
