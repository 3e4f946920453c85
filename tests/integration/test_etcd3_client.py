"""python-etcd3 parity: the same client session against real etcd and against kinepy must see the same.

The session is ``clients/etcd3_script.py`` (put, get, get_prefix with sorts, get_range, get_all, raw
count_only / limit / revision ranges, transactions with value, version, create and mod compares, delete,
delete_prefix, compact, status). It runs in a subprocess with the pure-Python protobuf runtime: etcd3 0.12's
generated modules fail to import on the C runtime of protobuf 5 to 7, and its descriptors would clash with
kinepy's in one interpreter (semantics doc §10.1, §10.2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).parent / "clients" / "etcd3_script.py"
ENV = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
TIMEOUT = 120  # seconds; the pure-Python protobuf runtime is slow, the session takes well under one

pytestmark = pytest.mark.kinepy_backends  # kinepy on each backend (conftest's kinepy_backend)


def run_etcd3_session(endpoint: str) -> dict[str, Any]:
    """Run the python-etcd3 session against ``endpoint``; ``{step: result}`` with the endpoint masked."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), endpoint],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, f"etcd3 session failed ({proc.returncode}):\n{proc.stderr}"
    steps = json.loads(proc.stdout.replace(endpoint, "<endpoint>"))
    results = {name: result for name, result in steps}
    assert len(results) == len(steps), "step names must be unique"
    return results


def test_etcd3_imports_with_pure_python_protobuf() -> None:
    code = "import etcd3, google.protobuf as p; print(etcd3.__version__, p.__version__)"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.etcd
def test_etcd3_session_on_etcd(etcd_server: Any) -> None:
    """The harness itself: what etcd 3.4 answers to the session, at the points we know."""
    results = run_etcd3_session(etcd_server.endpoint)
    assert results["status fresh"] == {
        "version_is_semver": True,
        "db_size_positive": True,
        "leader_is_a_member": True,
        "leader_client_urls": ["http://<endpoint>"],
        "members": 1,
        "revision": 1,
    }
    assert results["get missing"] is None
    assert results["put a"] == 2
    assert results["range count_only"] == {"revision": 9, "kvs": [], "more": False, "count": 3}
    assert results["range future revision"] == {
        "error": {
            "code": "OUT_OF_RANGE",
            "details": "etcdserver: mvcc: required revision is a future revision",
        }
    }
    assert results["range compacted revision"] == {
        "error": {"code": "OUT_OF_RANGE", "details": "etcdserver: mvcc: required revision has been compacted"}
    }
    assert results["txn value == → put"] == {"succeeded": True, "responses": ["response_put"]}
    assert results["txn value == → else get"]["succeeded"] is False
    assert results["txn version/create/mod"]["succeeded"] is True
    assert results["delete_prefix nothing"] == [13, 0]
    assert results["status after"]["revision"] == 13


@pytest.mark.etcd
@pytest.mark.kinepy
def test_etcd3_session_matches_etcd(etcd_server: Any, kinepy_server: Any) -> None:
    expected = run_etcd3_session(etcd_server.endpoint)
    assert run_etcd3_session(kinepy_server.endpoint) == expected
