"""etcd's alarms (Maintenance.Alarm): which member raised which alarm, and what it forbids.

kinepy raises NOSPACE itself when the database's disk is full. While NOSPACE is active, requests that
add data are refused with NoSpaceError, as etcd's capped applier refuses them: Put, a Txn with a put
in either branch (top-level only, as etcd counts them), LeaseGrant. Deletes, reads, compaction,
defragmentation, lease renewals and revocations go on, so an operator can make room. `etcdctl alarm
disarm` deactivates it; the next write that finds the disk still full raises it again.

Alarms live in memory, not in the database: a full disk could not record them anyway, and a restart
forgets them (the first write that fails for want of space raises NOSPACE again). The workers of
`kinepy --workers N` share one table (`SharedAlarmTable`, a memfd the supervisor passes to each), so an
alarm raised by one worker is listed, enforced and disarmed by every one. Any alarm a
client activates is listed; only NOSPACE has an effect (etcd's CORRUPT stops the member; kinepy only
lists it).
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from kinepy.types import PutRequest, TxnRequest

ALARM_TABLE_BYTES = 4096  # a shared table's size: 340 alarms


class AlarmType(enum.IntEnum):
    """etcdserverpb.AlarmType."""

    NONE = 0
    NOSPACE = 1
    CORRUPT = 2


class AlarmAction(enum.IntEnum):
    """etcdserverpb.AlarmRequest.AlarmAction."""

    GET = 0
    ACTIVATE = 1
    DEACTIVATE = 2


@dataclass(slots=True, frozen=True, order=True)
class AlarmMember:
    member_id: int
    alarm: int

    def text(self) -> str:
        """As etcd's Status lists it in `errors` (gogo-protobuf's compact text; zero fields left out):
        `memberID:13668033151171901709 alarm:NOSPACE `."""
        text = f"memberID:{self.member_id} " if self.member_id else ""
        if self.alarm:
            text += f"alarm:{self.name} "
        return text

    @property
    def name(self) -> str:
        """The alarm's name (`NOSPACE`), or its number if it has none."""
        known = self.alarm in AlarmType.__members__.values()
        return AlarmType(self.alarm).name if known else str(self.alarm)


class SharedAlarmTable:
    """The active alarms in memory shared by processes: a file descriptor (the supervisor's memfd)
    of ALARM_TABLE_BYTES, mapped by each; changes under an exclusive `lockf` on it. Layout: a NOSPACE
    flag byte (read without the lock, on every write request), then a count and (member, alarm) pairs."""

    _HEAD = struct.Struct("<B3xI")
    _ENTRY = struct.Struct("<QI")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        os.ftruncate(fd, ALARM_TABLE_BYTES)  # a new memfd is empty; a table in use keeps its contents
        self._map = mmap.mmap(fd, ALARM_TABLE_BYTES)

    def no_space(self) -> bool:
        return self._map[0] == 1

    @contextlib.contextmanager
    def editing(self) -> Iterator[set[AlarmMember]]:
        """The active alarms, locked; what the caller leaves in the set is written back."""
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            _, count = self._HEAD.unpack_from(self._map, 0)
            offset = self._HEAD.size
            active = set()
            for i in range(count):
                active.add(AlarmMember(*self._ENTRY.unpack_from(self._map, offset + i * self._ENTRY.size)))
            yield active
            kept = sorted(active)[: (ALARM_TABLE_BYTES - offset) // self._ENTRY.size]
            for i, member in enumerate(kept):
                self._ENTRY.pack_into(
                    self._map, offset + i * self._ENTRY.size, member.member_id, member.alarm
                )
            no_space = any(a.alarm == AlarmType.NOSPACE for a in kept)
            self._HEAD.pack_into(self._map, 0, int(no_space), len(kept))
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()


class Alarms:
    """The active alarms, as etcd's alarm store keeps them (one per member and type), in a
    `SharedAlarmTable`: the workers' (`shared_fd`), or one of this process's own."""

    def __init__(self, shared_fd: int = -1) -> None:
        self._own_fd = os.memfd_create("kinepy-alarms") if shared_fd < 0 else -1
        self._table = SharedAlarmTable(shared_fd if shared_fd >= 0 else self._own_fd)

    @property
    def no_space(self) -> bool:
        """True while any member's NOSPACE alarm is active."""
        return self._table.no_space()

    def apply(self, action: int, member_id: int, alarm: int) -> list[AlarmMember]:
        """Maintenance.Alarm: GET lists the alarms of type `alarm` (NONE: all of them); ACTIVATE
        returns the alarm (active already or not), DEACTIVATE the alarm it removed (nothing if it
        was not active). Another action changes nothing and lists nothing."""
        member = AlarmMember(member_id, alarm)
        if action == AlarmAction.GET:
            with self._table.editing() as active:
                return sorted(a for a in active if alarm == AlarmType.NONE or a.alarm == alarm)
        if action == AlarmAction.ACTIVATE:
            self.activate(member)
            return [member]
        if action == AlarmAction.DEACTIVATE:
            with self._table.editing() as active:
                if member in active:
                    active.discard(member)
                    return [member]
        return []

    def activate(self, member: AlarmMember) -> bool:
        """Raise `member`'s alarm; False if it was active already."""
        with self._table.editing() as active:
            if member in active:
                return False
            active.add(member)
            return True

    def active(self) -> list[AlarmMember]:
        return self.apply(AlarmAction.GET, 0, AlarmType.NONE)

    def close(self) -> None:
        self._table.close()
        if self._own_fd >= 0:
            os.close(self._own_fd)
            self._own_fd = -1


def adds_data(request: PutRequest | TxnRequest) -> bool:
    """Whether etcd counts a cost for `request` in its quota (a put, or a txn with a put at its top
    level in either branch): what NOSPACE refuses."""
    if isinstance(request, PutRequest):
        return True
    return any(isinstance(op, PutRequest) for op in (*request.success, *request.failure))
