"""etcd's alarms (Maintenance.Alarm): which member raised which alarm, and what it forbids.

kinepy raises NOSPACE itself when the database's disk is full. While NOSPACE is active, requests that
add data are refused with NoSpaceError, as etcd's capped applier refuses them: Put, a Txn with a put
in either branch (top-level only, as etcd counts them), LeaseGrant. Deletes, reads, compaction,
defragmentation, lease renewals and revocations go on, so an operator can make room. `etcdctl alarm
disarm` deactivates it; the next write that finds the disk still full raises it again.

Alarms live in this process's memory: a full disk could not record them anyway, and a restart
forgets them (the first write that fails for want of space raises NOSPACE again). Any alarm a
client activates is listed; only NOSPACE has an effect (etcd's CORRUPT stops the member; kinepy only
lists it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kinepy.types import PutRequest, TxnRequest


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
            known = self.alarm in AlarmType.__members__.values()
            text += f"alarm:{AlarmType(self.alarm).name if known else self.alarm} "
        return text


class Alarms:
    """The active alarms, as etcd's alarm store keeps them (one per member and type)."""

    def __init__(self) -> None:
        self._active: set[AlarmMember] = set()
        self.no_space = False
        """True while any member's NOSPACE alarm is active."""

    def apply(self, action: int, member_id: int, alarm: int) -> list[AlarmMember]:
        """Maintenance.Alarm: GET lists the alarms of type `alarm` (NONE: all of them); ACTIVATE
        returns the alarm (active already or not), DEACTIVATE the alarm it removed (nothing if it
        was not active). Another action changes nothing and lists nothing."""
        member = AlarmMember(member_id, alarm)
        if action == AlarmAction.GET:
            return sorted(a for a in self._active if alarm == AlarmType.NONE or a.alarm == alarm)
        if action == AlarmAction.ACTIVATE:
            self.activate(member)
            return [member]
        if action == AlarmAction.DEACTIVATE and member in self._active:
            self._active.discard(member)
            self._changed()
            return [member]
        return []

    def activate(self, member: AlarmMember) -> bool:
        """Raise `member`'s alarm; False if it was active already."""
        if member in self._active:
            return False
        self._active.add(member)
        self._changed()
        return True

    def active(self) -> list[AlarmMember]:
        return self.apply(AlarmAction.GET, 0, AlarmType.NONE)

    def _changed(self) -> None:
        self.no_space = any(a.alarm == AlarmType.NOSPACE for a in self._active)


def adds_data(request: PutRequest | TxnRequest) -> bool:
    """Whether etcd counts a cost for `request` in its quota (a put, or a txn with a put at its top
    level in either branch): what NOSPACE refuses."""
    if isinstance(request, PutRequest):
        return True
    return any(isinstance(op, PutRequest) for op in (*request.success, *request.failure))
