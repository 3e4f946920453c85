"""Kubernetes' own storage tests (k8s.io/apiserver pkg/storage/etcd3) against kinepy.

``tests/apiserver/run.sh`` copies the k8s.io/apiserver module from the Go module cache, swaps its
embedded-etcd test server for a launcher that starts ``python -m kinepy`` on a fresh SQLite file per
test, builds the test binary and runs it through the real etcd Go client. This test runs that script
and fails if any Kubernetes test fails (or the binary crashes), quoting the per-test summary.

Without ``go`` the test is skipped with a loud reason, unless ``CI`` is set: then it fails.
``KINEPY_APISERVER_PACKAGES`` (default ``etcd3``; e.g. ``"etcd3 cacher"``) picks the packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
RUN_SH = REPO_ROOT / "tests" / "apiserver" / "run.sh"
TIMEOUT = 75 * 60.0  # seconds: module download + build + the suite (run.sh gives each binary 30 min)

pytestmark = [pytest.mark.slow, pytest.mark.kinepy]


def _require_go() -> None:
    if shutil.which("go"):
        return
    reason = (
        "!!! `go` not found: Kubernetes' storage test suites (tests/apiserver/run.sh) did NOT run. "
        "Install Go 1.25 or newer. !!!"
    )
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def test_kubernetes_storage_suites() -> None:
    _require_go()
    packages = os.environ.get("KINEPY_APISERVER_PACKAGES", "etcd3").split()
    env = {**os.environ, "KINEPY_REPO": str(REPO_ROOT), "KINEPY_PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(RUN_SH), *packages],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=TIMEOUT,
        check=False,
    )
    # run.sh prints its progress and the per-test summaries on stdout; pytest shows them on failure.
    print(proc.stdout)
    print(proc.stderr, file=sys.stderr)
    if proc.returncode != 0:
        summary = "\n".join(
            line
            for line in proc.stdout.splitlines()
            if line.startswith(("FAIL ", "--- FAIL", "==", "run.sh:"))
        )
        pytest.fail(
            f"tests/apiserver/run.sh {' '.join(packages)} exited {proc.returncode}:\n{summary}\n"
            f"{proc.stderr[-4000:]}\nfull output: tests/apiserver/.cache/results/",
            pytrace=False,
        )
