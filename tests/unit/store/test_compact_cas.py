"""Compaction through the writer: etcd's revision rules, and the compare-and-swap automatic
compaction uses so that two processes on one database never both compact."""

from __future__ import annotations

import pytest

from kinepy import errors
from kinepy.backends.base import Snapshot
from kinepy.store import txn


def _state(revision: int, compact: int) -> txn.BatchState:
    return txn.BatchState.of(Snapshot(revision, compact, {}, {}, {}))


def test_compaction_is_refused_when_another_process_compacted_first() -> None:
    state = _state(20, 8)
    with pytest.raises(errors.CompactedError):
        txn.apply(state, txn.CompactRequest(15, expected_compact=5))
    assert state.write_set() is None


def test_compaction_succeeds_when_the_compaction_revision_is_the_expected_one() -> None:
    state = _state(20, 8)
    resp = txn.apply(state, txn.CompactRequest(15, expected_compact=8))
    assert isinstance(resp, txn.CompactResponse) and resp.revision == 20
    write_set = state.write_set()
    assert write_set is not None and write_set.compact_revision == 15 and write_set.log == []


@pytest.mark.parametrize(
    ("revision", "error"),
    [(8, errors.CompactedError), (3, errors.CompactedError), (21, errors.FutureRevisionError)],
)
def test_compaction_revision_rules(revision: int, error: type[errors.EtcdError]) -> None:
    with pytest.raises(error):
        txn.apply(_state(20, 8), txn.CompactRequest(revision))


def test_compact_zero_on_a_fresh_store_and_compact_current_are_allowed() -> None:
    assert txn.apply(_state(1, -1), txn.CompactRequest(0)).revision == 1
    assert txn.apply(_state(20, 8), txn.CompactRequest(20)).revision == 20
