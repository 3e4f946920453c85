"""TimedBackend: slow datastore calls are logged by name, fast ones are not, values never."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import pytest

from kinepy.backends.base import Backend, RangeRows
from kinepy.backends.timing import TimedBackend
from kinepy.types import KeyRange, RangeQuery


class _Slow:
    """Just enough of a backend: `read_range` takes `delay` seconds."""

    shared = False
    max_key_bytes = 0
    cluster_id = 7
    member_id = 9

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def read_range(self, query: RangeQuery) -> RangeRows:
        await asyncio.sleep(self.delay)
        return RangeRows(5, -1, [], 0)


def _timed(delay: float, threshold: float, warning_threshold: float = 0.0) -> TimedBackend:
    return TimedBackend(cast(Backend, _Slow(delay)), threshold=threshold, warning_threshold=warning_threshold)


async def _read(backend: TimedBackend) -> RangeRows:
    return await backend.read_range(RangeQuery(KeyRange(b"top-secret-key", None)))


async def test_a_slow_call_is_logged_without_its_arguments(caplog: pytest.LogCaptureFixture) -> None:
    backend = _timed(0.05, threshold=0.01)
    with caplog.at_level(logging.INFO, logger="kinepy.backends.timing"):
        assert (await _read(backend)).revision == 5
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert "slow datastore call: read_range took" in record.getMessage()
    assert "top-secret" not in record.getMessage()


async def test_a_call_over_the_warning_threshold_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    # kine's --slow-sql-threshold (INFO) and --slow-sql-warning-threshold (WARNING)
    backend = _timed(0.05, threshold=10.0, warning_threshold=0.01)
    with caplog.at_level(logging.INFO, logger="kinepy.backends.timing"):
        await _read(backend)
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "(threshold 0.010s)" in record.getMessage()


async def test_fast_calls_and_plain_attributes_pass_through_silently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = _timed(0, threshold=1.0)
    with caplog.at_level(logging.INFO, logger="kinepy.backends.timing"):
        assert (await _read(backend)).revision == 5
    assert (backend.shared, backend.max_key_bytes, backend.cluster_id, backend.member_id) == (False, 0, 7, 9)
    assert caplog.records == []


async def test_threshold_zero_turns_the_warning_off(caplog: pytest.LogCaptureFixture) -> None:
    backend = _timed(0.02, threshold=0)
    with caplog.at_level(logging.INFO, logger="kinepy.backends.timing"):
        await _read(backend)
    assert caplog.records == []
