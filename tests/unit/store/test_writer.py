"""The group-commit writer against the in-memory backend: batches, failures, cancellation, order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from fake_backend import FakeBackend

from kinepy import errors
from kinepy.store import txn
from kinepy.store.writer import Writer
from kinepy.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    Event,
    PutRequest,
    PutResponse,
    RangeRequest,
    TxnRequest,
)


class Recorder:
    """The writer's `committed` and `on_commit` callbacks, remembered."""

    def __init__(self) -> None:
        self.committed: list[tuple[int, list[Event]]] = []
        self.batches: list[int] = []
        self.fail_publish = False

    async def publish(self, revision: int, events: list[Event]) -> None:
        self.committed.append((revision, events))
        if self.fail_publish:
            raise RuntimeError("the watch hub is broken")

    def on_commit(self, seconds: float, size: int) -> None:
        assert seconds >= 0
        self.batches.append(size)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def writer(backend: FakeBackend, recorder: Recorder) -> AsyncIterator[Writer]:
    writer = Writer(backend, committed=recorder.publish, batch_max=4, on_commit=recorder.on_commit)
    writer.start()
    yield writer
    await writer.aclose()


def _range_txn(key: bytes) -> TxnRequest:
    return TxnRequest([], [RangeRequest(key)], [])


async def _first_batch_held(backend: FakeBackend, writer: Writer) -> asyncio.Task[txn.BatchResponse]:
    """Submit a put whose batch is held inside the backend's write, so the next ones queue up."""
    backend.hold_writes()
    first = asyncio.create_task(writer.submit(PutRequest(b"first", b"1")))
    await asyncio.wait_for(backend.write_waiting.wait(), 2)
    return first


async def test_requests_queued_during_a_commit_are_committed_together(
    backend: FakeBackend, writer: Writer, recorder: Recorder
) -> None:
    first = await _first_batch_held(backend, writer)
    queued = [asyncio.create_task(writer.submit(PutRequest(b"k%d" % i, b"v"))) for i in range(3)]
    await asyncio.sleep(0)  # every submit is queued
    backend.release_writes()
    responses = await asyncio.gather(first, *queued)
    assert recorder.batches == [1, 3]
    assert [r.revision for r in responses] == [2, 3, 4, 5]  # one revision each, in arrival order
    assert writer.stats.batches == 2 and writer.stats.requests == 4 and writer.stats.last_size == 3
    assert writer.submitted == 4
    assert backend.revision == 5


async def test_a_batch_holds_at_most_batch_max_requests(
    backend: FakeBackend, writer: Writer, recorder: Recorder
) -> None:
    first = await _first_batch_held(backend, writer)
    queued = [asyncio.create_task(writer.submit(PutRequest(b"k%d" % i, b"v"))) for i in range(6)]
    await asyncio.sleep(0)
    backend.release_writes()
    await asyncio.gather(first, *queued)
    assert recorder.batches == [1, 4, 2]


async def test_a_failed_commit_fails_every_caller_of_the_batch(
    backend: FakeBackend, writer: Writer, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    first = await _first_batch_held(backend, writer)
    queued = [asyncio.create_task(writer.submit(PutRequest(b"k%d" % i, b"v"))) for i in range(3)]
    await asyncio.sleep(0)
    boom = errors.BackendError("disk on fire")
    backend.outcomes = [None, boom]  # the held batch commits, the next one fails
    backend.release_writes()
    assert (await first).revision == 2
    results = await asyncio.gather(*queued, return_exceptions=True)
    assert results == [boom, boom, boom]
    assert backend.revision == 2 and sorted(backend.current) == [b"first"]  # nothing of the batch
    assert recorder.batches == [1]  # only committed batches are reported
    assert "write batch of 3 requests failed" in caplog.text
    # The writer goes on.
    assert (await writer.submit(PutRequest(b"after", b"v"))).revision == 3


@pytest.mark.parametrize(
    ("failure", "answer", "message"),
    [
        # A batch that kept conflicting (deadlocks, serialization failures): etcd's answer to overload.
        (
            errors.BackendConflict("MySQL: error 1213: Deadlock found"),
            errors.TooManyRequestsError,
            "etcdserver: too many requests",
        ),
        (
            errors.BackendNoSpace("disk full"),
            errors.NoSpaceError,
            "etcdserver: mvcc: database space exceeded",
        ),
    ],
    ids=["conflict", "no-space"],
)
async def test_a_failed_batch_is_answered_with_etcds_error_and_the_writer_goes_on(
    backend: FakeBackend, writer: Writer, failure: Exception, answer: type[errors.EtcdError], message: str
) -> None:
    backend.outcomes = [failure]
    with pytest.raises(answer) as refused:
        await writer.submit(PutRequest(b"k", b"v"))
    assert (refused.value.code, refused.value.message) == ("RESOURCE_EXHAUSTED", message)
    assert backend.revision == 1 and not backend.current
    assert (await writer.submit(PutRequest(b"k", b"v"))).revision == 2


async def test_an_etcd_error_fails_only_its_own_request(backend: FakeBackend, writer: Writer) -> None:
    first = await _first_batch_held(backend, writer)
    good = asyncio.create_task(writer.submit(PutRequest(b"a", b"1")))
    bad = asyncio.create_task(writer.submit(PutRequest(b"b", b"1", lease=42)))  # no such lease
    also_good = asyncio.create_task(writer.submit(DeleteRangeRequest(b"first")))
    await asyncio.sleep(0)
    backend.release_writes()
    await first
    assert (await good).revision == 3
    with pytest.raises(errors.LeaseNotFoundError):
        await bad
    assert (await also_good).revision == 4  # the failed request left no trace, not even a revision
    assert len(backend.writes) == 2


async def test_a_request_cancelled_before_its_batch_starts_is_not_committed(
    backend: FakeBackend, writer: Writer
) -> None:
    first = await _first_batch_held(backend, writer)
    cancelled = asyncio.create_task(writer.submit(PutRequest(b"cancelled", b"x")))
    kept = asyncio.create_task(writer.submit(PutRequest(b"kept", b"x")))
    await asyncio.sleep(0)
    cancelled.cancel()
    backend.release_writes()
    await first
    assert (await kept).revision == 3
    assert cancelled.cancelled()
    assert b"cancelled" not in backend.current and b"kept" in backend.current


async def test_a_batch_whose_every_request_was_cancelled_writes_nothing(
    backend: FakeBackend, writer: Writer
) -> None:
    first = await _first_batch_held(backend, writer)
    cancelled = asyncio.create_task(writer.submit(PutRequest(b"cancelled", b"x")))
    await asyncio.sleep(0)
    cancelled.cancel()
    backend.release_writes()
    await first
    assert (await writer.submit(PutRequest(b"next", b"x"))).revision == 3
    assert len(backend.writes) == 2  # the emptied batch never reached the backend


async def test_a_request_cancelled_after_its_batch_started_still_commits(
    backend: FakeBackend, writer: Writer
) -> None:
    first = await _first_batch_held(backend, writer)
    first.cancel()
    backend.release_writes()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (await writer.submit(_range_txn(b"first"))).responses[0].kvs[0].value == b"1"  # type: ignore[union-attr]


async def test_commits_are_published_in_order_before_their_callers_are_answered(
    backend: FakeBackend, recorder: Recorder
) -> None:
    answered_after: list[int] = []

    async def publish(revision: int, events: list[Event]) -> None:
        await recorder.publish(revision, events)

    writer = Writer(backend, committed=publish)
    writer.start()
    try:
        for i in range(3):
            resp = await writer.submit(PutRequest(b"k", b"%d" % i))
            answered_after.append(len(recorder.committed))
            assert isinstance(resp, PutResponse) and resp.revision == i + 2
        # A txn that only reads commits nothing but still reports the revision.
        await writer.submit(_range_txn(b"k"))
    finally:
        await writer.aclose()
    assert answered_after == [1, 2, 3]
    assert [revision for revision, _ in recorder.committed] == [2, 3, 4, 4]
    assert [[e.kv.value for e in events] for _, events in recorder.committed] == [[b"0"], [b"1"], [b"2"], []]


async def test_a_txn_reading_at_a_revision_starts_a_batch_of_its_own(
    backend: FakeBackend, writer: Writer, recorder: Recorder
) -> None:
    await writer.submit(PutRequest(b"k", b"old"))  # revision 2
    first = await _first_batch_held(backend, writer)
    put = asyncio.create_task(writer.submit(PutRequest(b"k", b"new")))
    at_2 = TxnRequest(
        [Compare(CompareResult.EQUAL, CompareTarget.VALUE, b"k", b"", b"old")],
        [RangeRequest(b"k", revision=2)],
        [],
    )
    historic = asyncio.create_task(writer.submit(at_2))
    after = asyncio.create_task(writer.submit(PutRequest(b"other", b"x")))
    await asyncio.sleep(0)
    backend.release_writes()
    await asyncio.gather(first, put, after)
    resp = await historic
    assert recorder.batches == [1, 1, 1, 2]  # the historic txn and what followed it: a batch of their own
    # Evaluated against the committed state, before anything queued after it: "new" was committed
    # in the batch before, so the compare fails.
    assert not resp.succeeded  # type: ignore[union-attr]


async def test_a_failed_publish_is_logged_and_the_write_still_answered(
    writer: Writer, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    recorder.fail_publish = True
    with caplog.at_level(logging.ERROR, logger="kinepy.store.writer"):
        assert (await writer.submit(PutRequest(b"k", b"v"))).revision == 2
    assert "publishing revision 2 to watchers failed" in caplog.text


async def test_closing_commits_what_is_queued_then_refuses(backend: FakeBackend, writer: Writer) -> None:
    first = await _first_batch_held(backend, writer)
    queued = asyncio.create_task(writer.submit(PutRequest(b"queued", b"x")))
    await asyncio.sleep(0)
    closing = asyncio.create_task(writer.aclose())
    await asyncio.sleep(0)
    backend.release_writes()
    await closing
    await asyncio.gather(first, queued)
    assert b"queued" in backend.current
    with pytest.raises(errors.UnavailableError):
        await writer.submit(PutRequest(b"late", b"x"))
    await writer.aclose()  # idempotent


async def test_closing_a_writer_never_started_does_nothing(backend: FakeBackend, recorder: Recorder) -> None:
    await Writer(backend, committed=recorder.publish).aclose()
