"""TimedBackend: slow datastore calls are logged by name, fast ones are not, values never."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kinepy.backends.timing import TimedBackend


class _Fake:
    shared = False

    async def read_range(self, secret: bytes, *, delay: float) -> str:
        await asyncio.sleep(delay)
        return "rows"


async def test_a_slow_call_is_logged_without_its_arguments(caplog: pytest.LogCaptureFixture) -> None:
    backend = TimedBackend(_Fake(), threshold=0.01)
    with caplog.at_level(logging.INFO, logger="kinepy.backends.timing"):
        assert await backend.read_range(b"top-secret-value", delay=0.05) == "rows"
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert "slow datastore call: read_range took" in record.getMessage()
    assert "top-secret" not in record.getMessage()


async def test_a_call_over_the_warning_threshold_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    # kine's --slow-sql-threshold (INFO) and --slow-sql-warning-threshold (WARNING)
    backend = TimedBackend(_Fake(), threshold=10.0, warning_threshold=0.01)
    with caplog.at_level(logging.INFO, logger="kinepy.backends.timing"):
        await backend.read_range(b"k", delay=0.05)
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "(threshold 0.010s)" in record.getMessage()


async def test_fast_calls_and_plain_attributes_pass_through_silently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = TimedBackend(_Fake(), threshold=1.0)
    with caplog.at_level(logging.WARNING, logger="kinepy.backends.timing"):
        assert await backend.read_range(b"k", delay=0) == "rows"
    assert backend.shared is False
    assert caplog.records == []


async def test_threshold_zero_turns_the_warning_off(caplog: pytest.LogCaptureFixture) -> None:
    backend = TimedBackend(_Fake(), threshold=0)
    with caplog.at_level(logging.INFO, logger="kinepy.backends.timing"):
        await backend.read_range(b"k", delay=0.02)
    assert caplog.records == []
