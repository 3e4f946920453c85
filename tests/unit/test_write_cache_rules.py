"""The write cache of the server backends (backends/sql/write_cache.py): what it answers, and when it
stands back. Its use against real databases: tests/integration/test_write_cache.py."""

from __future__ import annotations

from kinepy.backends.base import ReadSet, Snapshot, WriteSet
from kinepy.backends.sql.write_cache import GUESS_PAUSE, WriteCache
from kinepy.types import Event, EventType, KeyRange, KeyValue, Lease


def _kv(key: bytes, revision: int, value: bytes = b"v") -> KeyValue:
    return KeyValue(key, revision, revision, 1, value, 0)


def _recorded(cache: WriteCache, version: int = 7, *, chained: bool = False) -> None:
    """A commit at revision 3 that read a (present), b (absent), lease 5 (present) and wrote c."""
    read_set = ReadSet(keys={b"a", b"b"}, leases={5})
    snapshot = Snapshot(2, -1, {b"a": _kv(b"a", 2)}, {5: Lease(5, 10, 100.0)}, {})
    cache.record(version, 0, read_set, snapshot, WriteSet(3, current={b"c": _kv(b"c", 3)}), chained=chained)


def test_it_answers_the_keys_and_leases_it_knows_and_names_the_keys_it_takes_to_be_absent() -> None:
    cache = WriteCache()
    _recorded(cache)
    answer = cache.snapshot(ReadSet(keys={b"a", b"b", b"c", b"d"}, leases={5}), 0, leases=True)
    assert answer is not None
    snapshot, unknown = answer
    assert (snapshot.revision, snapshot.compact_revision) == (3, -1)
    assert snapshot.rows == {b"a": _kv(b"a", 2), b"c": _kv(b"c", 3)}
    assert snapshot.leases == {5: Lease(5, 10, 100.0)}
    assert unknown == [b"d"]


def test_it_does_not_answer_what_it_cannot_know() -> None:
    cache = WriteCache()
    assert cache.snapshot(ReadSet(keys={b"a"}), 0, leases=True) is None  # nothing recorded yet
    _recorded(cache)
    assert cache.snapshot(ReadSet(ranges=[KeyRange(b"a", b"z")]), 0, leases=True) is None
    assert cache.snapshot(ReadSet(lease_keys={5}), 0, leases=True) is None
    assert cache.snapshot(ReadSet(historic=[(KeyRange(b"a", None), 2)]), 0, leases=True) is None
    assert cache.snapshot(ReadSet(leases={6}), 0, leases=True) is None  # a lease it never read
    assert cache.snapshot(ReadSet(leases={5}), 0, leases=False) is None  # MySQL caches no lease
    assert cache.snapshot(ReadSet(keys={b"a"}), 1, leases=True) is None  # a new connection since


def test_another_writer_makes_it_stand_back_until_a_read_finds_nobody_else_wrote() -> None:
    cache = WriteCache()
    _recorded(cache, 7)
    cache.failed()  # a guard failed
    assert cache.snapshot(ReadSet(keys={b"c"}), 0, leases=True) is None
    _recorded(cache, 9, chained=False)  # the batch that read found another version than 7
    assert cache.contended
    assert cache.snapshot(ReadSet(keys={b"c"}), 0, leases=True) is None
    _recorded(cache, 11, chained=True)  # the next one found 9: nobody else wrote
    assert not cache.contended
    assert cache.snapshot(ReadSet(keys={b"c"}), 0, leases=True) is not None


def test_a_key_wrongly_taken_to_be_absent_pauses_the_guessing_not_the_cache() -> None:
    cache = WriteCache()
    _recorded(cache, 7)
    assert cache.snapshot(ReadSet(keys={b"d"}), 0, leases=True) is not None  # d taken to be absent
    cache.failed()  # it was there
    _recorded(cache, 9, chained=True)  # the batch that read found 7: nobody else wrote
    assert not cache.contended
    assert cache.snapshot(ReadSet(keys={b"a"}), 0, leases=True) is not None  # what it knew, it knows
    assert cache.snapshot(ReadSet(keys={b"a", b"e"}), 0, leases=True) is None  # e: read, for a while
    for _ in range(GUESS_PAUSE):
        cache.snapshot(ReadSet(keys={b"a"}), 0, leases=True)
    assert cache.snapshot(ReadSet(keys={b"e"}), 0, leases=True) is not None


def test_another_processes_notification_forgets_everything() -> None:
    cache = WriteCache()
    _recorded(cache, 7)
    cache.invalidate()
    assert cache.snapshot(ReadSet(keys={b"a"}), 0, leases=True) is None
    _recorded(cache, 9, chained=True)  # a new chain from the batch that read
    assert not cache.contended
    answer = cache.snapshot(ReadSet(keys={b"a", b"c"}), 0, leases=True)
    assert answer is not None and answer[1] == []


def test_it_keeps_at_most_its_bound_dropping_the_oldest() -> None:
    cache = WriteCache(max_keys=3)
    for number in range(5):
        key = b"k%d" % number
        snapshot = Snapshot(number, -1, {}, {}, {})
        write_set = WriteSet(number + 1, current={key: _kv(key, number + 1)})
        cache.record(number, 0, ReadSet(keys={key}), snapshot, write_set, chained=True)
    answer = cache.snapshot(ReadSet(keys={b"k2", b"k3", b"k4"}), 0, leases=True)
    assert answer is not None and answer[1] == []
    answer = cache.snapshot(ReadSet(keys={b"k1"}), 0, leases=True)
    assert answer is not None and answer[1] == [b"k1"]  # dropped: no longer known


def test_deleting_in_the_order_of_creation_keeps_the_rows_not_yet_deleted() -> None:
    # Kubernetes deletes a namespace's objects in the order it created them: the oldest first, which
    # a bounded cache has dropped already. Their absence must not push out the rows still to delete.
    cache = WriteCache(max_keys=3)
    for number in range(5):  # k0 and k1 dropped, k2..k4 known
        key = b"k%d" % number
        snapshot = Snapshot(number, -1, {}, {}, {})
        write_set = WriteSet(number + 1, current={key: _kv(key, number + 1)})
        cache.record(number, 0, ReadSet(keys={key}), snapshot, write_set, chained=True)
    for number, key in enumerate((b"k0", b"k1"), start=5):  # read (unknown), then deleted
        snapshot = Snapshot(number, -1, {key: _kv(key, 1)}, {}, {})
        cache.record(
            number, 0, ReadSet(keys={key}), snapshot, WriteSet(number + 1, current={key: None}), chained=True
        )
    answer = cache.snapshot(ReadSet(keys={b"k0", b"k1", b"k2", b"k3", b"k4"}), 0, leases=True)
    assert answer is not None
    snapshot, unknown = answer
    assert sorted(snapshot.rows) == [b"k2", b"k3", b"k4"]
    assert unknown == []  # k0 and k1 known to be absent


def test_it_follows_a_commit_told_with_its_events_from_its_own_version_only() -> None:
    cache = WriteCache()
    _recorded(cache, 7)
    cache.failed()  # a guard failed: the other process's commit had not been told yet
    put, deleted = (
        Event(EventType.PUT, _kv(b"d", 4)),
        Event(EventType.DELETE, KeyValue(b"a", 0, 4, 0, b"", 0)),
    )
    assert not cache.follow(6, 8, 4, [put])  # from another version: not this cache's database
    assert (cache.version, cache.contended) == (7, True)
    assert cache.follow(7, 8, 4, [put, deleted])
    assert (cache.version, cache.contended) == (8, False)
    answer = cache.snapshot(ReadSet(keys={b"a", b"c", b"d"}), 0, leases=False)
    assert answer is not None
    snapshot, unknown = answer
    assert (snapshot.revision, snapshot.rows, unknown) == (4, {b"c": _kv(b"c", 3), b"d": _kv(b"d", 4)}, [])
    assert not cache.follow(7, 9, 5, [put])  # told twice, or out of order
    assert (cache.version, cache.contended) == (8, False)
