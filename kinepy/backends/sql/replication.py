"""Replicated MySQL/MariaDB: Galera and Group Replication, as kinepy meets them.

What kind of server an endpoint is (`detect_replication`, from its global variables and status), what
kinepy sets in its sessions there (causal reads), which errors say a transaction lost a conflict
with another node's commit and may run again whole (`is_conflict`), and, on Galera, which node every
kinepy sends its writes through (`galera_writer`).

Why writes go through one node on Galera: every write batch updates the one `meta` row, so batches
committed on two nodes at once always conflict at certification and one is rolled back and run
again. Through one node the batches of every kinepy queue on that node's row lock instead, and none
is wasted (docs/databases.md, "Galera and Group Replication", has the figures). Reads stay on each
kinepy's own node, causal (`wsrep_sync_wait`).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

import aiomysql

from kinepy.backends.sql.dialect import CONFLICT_ATTEMPTS

log = logging.getLogger(__name__)

# Errors that roll a transaction back because a concurrent one conflicted with it: a deadlock
# (1213; Galera's certification failure and brute-force abort say the same) and Group Replication's
# certification failure, at commit (3101: "Plugin instructed the server to rollback the current
# transaction") or as the storage engine's "Got error 149 - 'Lock deadlock; Retry transaction'
# during COMMIT" (1180, a deadlock only when it says so: 1180 also reports a full disk).
_DEADLOCK = 1213
_ROLLBACK_DURING_COMMIT = 3101
_ERROR_DURING_COMMIT = 1180


def error_code(exc: BaseException) -> int:
    """The MySQL error number of `exc` (0 if it has none)."""
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else 0


def is_conflict(exc: BaseException) -> bool:
    """Whether `exc` says the transaction was rolled back because of a conflicting one, so that
    running it again whole may succeed (Galera, Group Replication, or a plain InnoDB deadlock)."""
    if not isinstance(exc, aiomysql.MySQLError):
        return False
    code = error_code(exc)
    if code in (_DEADLOCK, _ROLLBACK_DURING_COMMIT):
        return True
    text = str(exc.args[1]) if len(exc.args) > 1 else ""
    return code == _ERROR_DURING_COMMIT and ("149" in text or "deadlock" in text.lower())


@dataclass(frozen=True)
class Replication:
    """What kind of server kinepy talks to, and what it sets in each of its sessions for it."""

    engine: str  # "" (one server, or a replica set kinepy does not know), "galera", "group replication"
    session: str = ""
    """More `SET SESSION` assignments for every connection (after sql_mode and isolation)."""
    summary: str = ""
    """One line for the start-up log: what the server is and what kinepy does about it."""
    single_writer: bool = False
    """Writes must go to one node (Group Replication in single-primary mode)."""


# Galera's wsrep_sync_wait bit 1: reads (SELECT, SHOW, BEGIN/START TRANSACTION) first wait until
# this node has applied everything the cluster committed before they started. Writes start with a
# read of the meta row, so they wait too.
_GALERA_SESSION = "SESSION wsrep_sync_wait = 1"
# Group Replication's BEFORE: every transaction (read-only or not) first waits until this member
# has applied every transaction the group ordered before it.
_GROUP_REPLICATION_SESSION = "SESSION group_replication_consistency = 'BEFORE'"
_RETRIES = f"runs a write batch that fails certification again (at most {CONFLICT_ATTEMPTS} attempts)"
_REPLICATION_VARIABLES = (
    "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('wsrep_on', 'wsrep_provider', 'wsrep_cluster_address', "
    "'group_replication_group_name', 'group_replication_single_primary_mode', 'super_read_only')"
)
_REPLICATION_STATUS = (
    "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_cluster_size', 'wsrep_provider_version', "
    "'wsrep_ready')"
)
_GROUP_REPLICATION_MEMBERS = (
    "SELECT count(*) FROM performance_schema.replication_group_members WHERE member_state = 'ONLINE'"
)


def detect_replication(variables: dict[str, str], status: dict[str, str], members: int = 0) -> Replication:
    """The `Replication` of a server with these global `variables` and `status` (names in lower
    case; what `_REPLICATION_VARIABLES` and `_REPLICATION_STATUS` return) and `members` online
    Group Replication members."""

    def on(name: str, source: dict[str, str]) -> bool:
        return source.get(name, "").upper() in ("ON", "1")

    provider = variables.get("wsrep_provider", "").strip()
    if on("wsrep_on", variables) and provider and provider.lower() != "none":
        return Replication(
            "galera",
            _GALERA_SESSION,
            f"a node of a Galera cluster of {status.get('wsrep_cluster_size', '?')} "
            f"(provider {status.get('wsrep_provider_version', '?')}): kinepy sets wsrep_sync_wait=1 in its "
            "sessions (reads wait for the cluster's earlier commits: linearizable on every node) and "
            + _RETRIES,
        )
    if variables.get("group_replication_group_name") and members > 0:
        single = on("group_replication_single_primary_mode", variables)
        mode = "single-primary" if single else "multi-primary"
        summary = (
            f"a member of a {mode} Group Replication group of {members} online: kinepy sets "
            "group_replication_consistency='BEFORE' in its sessions (every transaction waits for the "
            "group's earlier ones: linearizable on every member)"
        )
        if single:
            summary += "; writes succeed only through the primary"
        else:
            summary += " and " + _RETRIES
        return Replication("group replication", _GROUP_REPLICATION_SESSION, summary, single_writer=single)
    return Replication("")


async def read_replication(cur: Any) -> tuple[Replication, bool]:
    """The `Replication` of the server `cur` (an aiomysql cursor) is connected to, and whether it is
    read-only (`super_read_only`: a secondary of a single-primary group)."""
    await cur.execute(_REPLICATION_VARIABLES)
    variables = {str(name).lower(): str(value) for name, value in await cur.fetchall()}
    await cur.execute(_REPLICATION_STATUS)
    status = {str(name).lower(): str(value) for name, value in await cur.fetchall()}
    members = 0
    if variables.get("group_replication_group_name"):
        try:
            await cur.execute(_GROUP_REPLICATION_MEMBERS)
            members = int((await cur.fetchall())[0][0])
        except aiomysql.MySQLError as exc:
            log.warning(
                "a Group Replication group is configured but its members cannot be read (%s): kinepy treats "
                "the server as a single one (GRANT SELECT ON performance_schema.replication_group_members)",
                exc,
            )
    read_only = variables.get("super_read_only", "").upper() in ("ON", "1")
    return detect_replication(variables, status, members), read_only


def _address_key(address: str) -> tuple[int, str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        return (0, f"{int(ipaddress.ip_address(host)):040d}", int(port))
    except ValueError:
        return (1, host, int(port))


def galera_writer(incoming_addresses: str) -> str | None:
    """The node every kinepy writes through: the lowest of the cluster's client addresses
    (`wsrep_incoming_addresses`, the same list on every node of the primary component), so all agree
    without talking to each other; None when no address is usable (a node reporting `AUTO`, no port)."""
    usable = []
    for address in incoming_addresses.split(","):
        address = address.strip()
        host, colon, port = address.rpartition(":")
        if not colon or not host or not port.isdigit() or int(port) == 0 or host.upper() == "AUTO":
            continue
        usable.append(address)
    return min(usable, key=_address_key) if usable else None
