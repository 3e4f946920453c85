"""MySQL/MariaDB replication: which errors are conflicts worth running a transaction again for,
which servers are Galera nodes or Group Replication members, and the bounded conflict retry.

Group Replication cannot run here (Debian ships no MySQL server): its error numbers and variables
come from the MySQL manual (error 3101 ER_TRANSACTION_ROLLBACK_DURING_COMMIT; 1180 with the engine's
error 149, "Lock deadlock; Retry transaction"; `group_replication_single_primary_mode`)."""

from __future__ import annotations

import aiomysql
import pytest

from kinepy.backends.sql import dialect
from kinepy.backends.sql.mysql import MySQLBackend, is_retryable
from kinepy.backends.sql.replication import detect_replication, galera_writer, is_conflict
from kinepy.endpoint import parse_endpoint
from kinepy.errors import BackendConflict, BackendError, BackendUnavailable, ConfigError
from kinepy.specs import MySQLSpec

GALERA_CERTIFICATION = aiomysql.OperationalError(
    1213, "Deadlock found when trying to get lock; try restarting transaction"
)
GROUP_REPLICATION_CERTIFICATION = aiomysql.OperationalError(
    3101, "Plugin instructed the server to rollback the current transaction."
)
GROUP_REPLICATION_ENGINE_DEADLOCK = aiomysql.OperationalError(
    1180, "Got error 149 - 'Lock deadlock; Retry transaction' during COMMIT"
)
DISK_FULL_AT_COMMIT = aiomysql.OperationalError(1180, "Got error 28 'No space left on device' during COMMIT")
NOT_A_PRIMARY_COMPONENT = aiomysql.OperationalError(
    1047, "WSREP has not yet prepared node for application use"
)
DUPLICATE = aiomysql.IntegrityError(1062, "Duplicate entry '1' for key 'PRIMARY'")


@pytest.mark.parametrize(
    "exc",
    [GALERA_CERTIFICATION, GROUP_REPLICATION_CERTIFICATION, GROUP_REPLICATION_ENGINE_DEADLOCK],
    ids=["galera-1213", "group-replication-3101", "group-replication-1180-149"],
)
def test_certification_failures_are_conflicts(exc: Exception) -> None:
    assert is_conflict(exc)


@pytest.mark.parametrize(
    "exc",
    [DISK_FULL_AT_COMMIT, NOT_A_PRIMARY_COMPONENT, DUPLICATE, OSError("connection reset"), ValueError("x")],
    ids=["1180-disk-full", "1047", "1062", "oserror", "other"],
)
def test_other_errors_are_not_conflicts(exc: Exception) -> None:
    assert not is_conflict(exc)


def test_a_galera_node_outside_the_primary_component_is_unavailable() -> None:
    assert is_retryable(NOT_A_PRIMARY_COMPONENT)


def _backend() -> MySQLBackend:
    spec = parse_endpoint("mysql://kinepy:secret@tcp(127.0.0.1:3306)/kinepy")
    assert isinstance(spec, MySQLSpec)
    return MySQLBackend(spec)


def test_a_conflict_becomes_a_backend_conflict_and_other_errors_keep_their_class() -> None:
    backend = _backend()
    assert type(backend._error(GROUP_REPLICATION_CERTIFICATION)) is BackendConflict
    assert type(backend._error(NOT_A_PRIMARY_COMPONENT)) is BackendUnavailable
    assert type(backend._error(DISK_FULL_AT_COMMIT)) is BackendError


async def test_a_conflicting_transaction_runs_again_until_it_commits() -> None:
    backend = _backend()
    calls = []

    async def attempt() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise BackendConflict("MySQL: error 1213: Deadlock found")
        return "committed"

    assert await backend._retrying_conflicts("a write batch", attempt) == "committed"
    assert len(calls) == 4 and backend.conflicts == 3


async def test_conflict_retries_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    backend = _backend()
    calls = []

    async def attempt() -> str:
        calls.append(1)
        raise BackendConflict("MySQL: error 3101: Plugin instructed the server to rollback")

    with pytest.raises(BackendConflict):
        await backend._retrying_conflicts("a write batch", attempt)
    assert len(calls) == dialect.CONFLICT_ATTEMPTS
    assert f"a write batch conflicted {dialect.CONFLICT_ATTEMPTS} times in a row; giving up" in caplog.text


async def test_other_errors_are_not_retried() -> None:
    backend = _backend()
    calls = []

    async def attempt() -> str:
        calls.append(1)
        raise BackendUnavailable("MySQL: error 2013: Lost connection")

    with pytest.raises(BackendUnavailable):
        await backend._retrying_conflicts("a write batch", attempt)
    assert len(calls) == 1


def test_a_galera_node_is_detected_and_gets_causal_reads() -> None:
    replication = detect_replication(
        {"wsrep_on": "ON", "wsrep_provider": "/usr/lib/galera/libgalera_smm.so"},
        {"wsrep_cluster_size": "3", "wsrep_provider_version": "26.4.23"},
    )
    assert replication.engine == "galera"
    assert replication.session == "SESSION wsrep_sync_wait = 1"
    assert "a node of a Galera cluster of 3" in replication.summary
    assert not replication.single_writer


@pytest.mark.parametrize(
    "variables",
    [
        {"wsrep_on": "OFF", "wsrep_provider": "/usr/lib/galera/libgalera_smm.so"},  # MariaDB with galera-4
        {"wsrep_on": "ON", "wsrep_provider": "none"},
        {},  # MySQL without the plugin
        {"group_replication_group_name": ""},  # the plugin, no group
    ],
    ids=["wsrep-off", "no-provider", "plain-mysql", "no-group"],
)
def test_a_single_server_is_left_alone(variables: dict[str, str]) -> None:
    replication = detect_replication(variables, {})
    assert (replication.engine, replication.session) == ("", "")


def test_a_multi_primary_group_replication_member_reads_before() -> None:
    variables = {
        "group_replication_group_name": "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa",
        "group_replication_single_primary_mode": "OFF",
    }
    replication = detect_replication(variables, {}, members=3)
    assert replication.engine == "group replication"
    assert replication.session == "SESSION group_replication_consistency = 'BEFORE'"
    assert "multi-primary Group Replication group of 3 online" in replication.summary
    assert not replication.single_writer


def test_a_single_primary_group_replication_member_writes_through_the_primary() -> None:
    variables = {
        "group_replication_group_name": "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa",
        "group_replication_single_primary_mode": "ON",
    }
    replication = detect_replication(variables, {}, members=3)
    assert replication.single_writer
    assert "writes succeed only through the primary" in replication.summary


def test_a_group_replication_member_not_in_a_group_is_a_single_server() -> None:
    variables = {"group_replication_group_name": "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa"}
    assert detect_replication(variables, {}, members=0).engine == ""


def test_every_kinepy_picks_the_same_galera_writer_whatever_order_its_node_lists() -> None:
    assert galera_writer("10.0.0.12:3306,10.0.0.9:3306,10.0.0.10:3306") == "10.0.0.9:3306"
    assert galera_writer("10.0.0.10:3306,10.0.0.12:3306,10.0.0.9:3306") == "10.0.0.9:3306"
    assert galera_writer("127.0.0.1:40001,127.0.0.1:3999") == "127.0.0.1:3999"
    assert galera_writer("db-b:3306,db-a:3306") == "db-a:3306"
    assert galera_writer("[::1]:3307,[::1]:3306") == "[::1]:3306"


def test_no_galera_writer_without_a_usable_address() -> None:
    assert galera_writer("") is None
    assert galera_writer("AUTO,AUTO") is None
    assert galera_writer("10.0.0.1:0") is None
    assert galera_writer("AUTO,10.0.0.2:3306") == "10.0.0.2:3306"


def test_the_galera_writer_option_is_auto_or_local() -> None:
    def routes(query: str) -> bool:
        spec = parse_endpoint("mysql://kinepy:secret@tcp(127.0.0.1:3306)/kinepy" + query)
        assert isinstance(spec, MySQLSpec)
        return MySQLBackend(spec)._route_writes

    assert routes("") and routes("?galera_writer=auto") and routes("?galera-writer=AUTO")
    assert not routes("?galera_writer=local")
    with pytest.raises(ConfigError, match="galera_writer='primary'"):
        routes("?galera_writer=primary")
