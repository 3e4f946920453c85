"""The alarm store: etcd 3.4's answers to Alarm calls, its Status text, and what NOSPACE refuses."""

from __future__ import annotations

import os

from kinepy.store.alarms import AlarmAction, AlarmMember, Alarms, AlarmType, adds_data
from kinepy.types import DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest


def test_activate_deactivate_and_get() -> None:
    alarms = Alarms()
    nospace = AlarmMember(7, AlarmType.NOSPACE)
    assert alarms.apply(AlarmAction.ACTIVATE, 7, AlarmType.NOSPACE) == [nospace]
    assert alarms.no_space
    # etcd answers an activation with the alarm, whether or not it was active already.
    assert alarms.apply(AlarmAction.ACTIVATE, 7, AlarmType.NOSPACE) == [nospace]
    assert not alarms.activate(nospace)
    assert alarms.apply(AlarmAction.ACTIVATE, 9, AlarmType.CORRUPT) == [AlarmMember(9, AlarmType.CORRUPT)]
    assert alarms.apply(AlarmAction.GET, 0, AlarmType.NONE) == [nospace, AlarmMember(9, AlarmType.CORRUPT)]
    assert alarms.apply(AlarmAction.GET, 0, AlarmType.CORRUPT) == [AlarmMember(9, AlarmType.CORRUPT)]
    assert alarms.apply(AlarmAction.DEACTIVATE, 8, AlarmType.NOSPACE) == []  # not active: nothing
    assert alarms.apply(AlarmAction.DEACTIVATE, 7, AlarmType.NOSPACE) == [nospace]
    assert not alarms.no_space
    assert alarms.apply(7, 7, AlarmType.NOSPACE) == []  # no such action: nothing changes
    assert alarms.active() == [AlarmMember(9, AlarmType.CORRUPT)]


def test_status_text_is_etcds() -> None:
    assert (
        AlarmMember(13668033151171901709, AlarmType.NOSPACE).text()
        == "memberID:13668033151171901709 alarm:NOSPACE "
    )
    assert AlarmMember(13668033151171901709, AlarmType.NONE).text() == "memberID:13668033151171901709 "
    assert AlarmMember(0, 5).text() == "alarm:5 "


def test_what_nospace_refuses() -> None:
    put = PutRequest(key=b"k", value=b"")
    assert adds_data(put)
    assert adds_data(TxnRequest(failure=[put]))
    assert not adds_data(TxnRequest(success=[TxnRequest(success=[put])]))  # etcd counts top-level puts
    assert not adds_data(TxnRequest(success=[DeleteRangeRequest(key=b"k"), RangeRequest(key=b"k")]))


def test_alarms_on_one_shared_table_are_everyones() -> None:
    """Two `Alarms` on one memfd (as two workers map the supervisor's): what one raises, the other
    lists and enforces; what the other disarms is gone for both."""
    fd = os.memfd_create("alarms-test")
    first, second = Alarms(fd), Alarms(fd)
    try:
        nospace = AlarmMember(7, AlarmType.NOSPACE)
        assert not second.no_space
        assert first.activate(nospace)
        assert second.no_space and second.active() == [nospace]
        assert not second.activate(nospace)  # active already, whoever raised it
        assert second.apply(AlarmAction.DEACTIVATE, 7, AlarmType.NOSPACE) == [nospace]
        assert not first.no_space and first.active() == []
    finally:
        first.close()
        second.close()
        os.close(fd)
