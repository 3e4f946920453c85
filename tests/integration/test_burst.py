"""Bursts of new calls are all served (issue 15, finding 1): a restarting kube-apiserver re-lists and
re-watches everything at once.

grpc-core refuses calls that find its pending-call queue full (1,000 soft, 3,000 hard by default) with
CANCELLED, or "Internal error from Core" in grpc.aio clients; etcd (grpc-go) has no such queue. The client
is a separate grpc.aio process (``clients/burst.py``) so that the server's event loop is kinepy's alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import conftest
import pytest

pytestmark = [pytest.mark.kinepy, pytest.mark.slow]

SCRIPT = Path(__file__).parent / "clients" / "burst.py"
CHANNELS = 4


def burst(endpoint: str, kind: str, count: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), endpoint, kind, str(count), str(CHANNELS)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(conftest.REPO_ROOT)},
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_ten_thousand_concurrent_ranges_are_all_served(kinepy_server: conftest.KinepyServer) -> None:
    result = burst(kinepy_server.endpoint, "ranges", 10_000)
    assert result["failed"] == {}
    assert result["ok"] == 10_000


def test_five_thousand_watch_streams_opened_at_once_are_all_created(
    kinepy_server: conftest.KinepyServer,
) -> None:
    result = burst(kinepy_server.endpoint, "watches", 5_000)
    assert result["failed"] == {}
    assert result["ok"] == 5_000
