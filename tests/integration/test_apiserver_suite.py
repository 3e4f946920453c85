"""Kubernetes' own storage tests (k8s.io/apiserver pkg/storage/etcd3 and cacher) against kinepy.

``tests/apiserver/run.sh`` copies the k8s.io/apiserver module from the Go module cache, swaps its
embedded-etcd test server for a launcher that starts ``python -m kinepy`` on a fresh store per test,
builds the test binaries and runs them through the real etcd Go client. This test runs that script once
per backend and fails if any Kubernetes test fails (or a binary crashes), quoting the per-test summary.

Backends: ``sqlite`` (a fresh file per test), ``postgres`` and ``mariadb`` (the session servers of
kinepy/testing/databases.py; the launcher gets ``KINEPY_APISERVER_DATASTORE`` = the server's endpoint with a
``{db}`` placeholder, and every test's kinepy creates its own ``kt_<hex>`` database, which this test
drops afterwards).

Packages by default (CI budget: the whole CI must stay under ~45 min on 2 cores):

    sqlite            etcd3 (~2.5 min) and cacher (~4.5 min)
    postgres, mariadb etcd3 only. cacher exercises the watch cache over the same etcd3 store, whose
                      datastore-facing behaviour etcd3's tests already cover on every backend; another
                      ~5 min per backend would not fit the budget.

``KINEPY_APISERVER_PACKAGES`` (e.g. ``"etcd3 cacher"``) overrides the packages for every backend,
``KINEPY_APISERVER_PACKAGES_<BACKEND>`` (e.g. ``KINEPY_APISERVER_PACKAGES_POSTGRES=cacher``) for one.
run.sh runs cacher with ``-test.parallel 4`` (its TestGet needs its parallel subtests to overlap) and
etcd3 with 1; see run.sh's header. ``KINEPY_APISERVER_SNAPSHOT=HEAD`` runs kinepy from ``git archive HEAD``
instead of the working tree (run.sh ``--snapshot``), for stable results in a checkout others are editing.

Without ``go`` the test is skipped with a loud reason, unless ``CI`` is set: then it fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kinepy.testing.databases import DatabaseServer

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
RUN_SH = REPO_ROOT / "tests" / "apiserver" / "run.sh"
TIMEOUT = 75 * 60.0  # seconds: module download + build + the suites (run.sh gives each binary 30 min)
DEFAULT_PACKAGES = {"sqlite": "etcd3 cacher", "postgres": "etcd3", "mariadb": "etcd3"}

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


def _packages(backend: str) -> list[str]:
    return (
        os.environ.get(f"KINEPY_APISERVER_PACKAGES_{backend.upper()}")
        or os.environ.get("KINEPY_APISERVER_PACKAGES")
        or DEFAULT_PACKAGES[backend]
    ).split()


def _drop_test_databases(server: DatabaseServer) -> None:
    """Drop the launcher's kt_* databases (one per Kubernetes test), so that later tests in this session
    do not share the server with a few hundred of them."""
    if server.kind == "postgres":
        rows = server.sql(r"SELECT datname FROM pg_database WHERE datname LIKE 'kt\_%'")
    else:
        rows = server.sql(r"SHOW DATABASES LIKE 'kt\_%'")
    for (name,) in rows:
        with contextlib.suppress(Exception):
            server.drop_database(name)


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", id="mariadb", marks=pytest.mark.mysql),
    ],
)
def test_kubernetes_storage_suites(backend: str, request: pytest.FixtureRequest) -> None:
    _require_go()
    packages = _packages(backend)
    env = {**os.environ, "KINEPY_REPO": str(REPO_ROOT), "KINEPY_PYTHON": sys.executable}
    env.pop("KINEPY_APISERVER_DATASTORE", None)
    server: DatabaseServer | None = None
    if backend != "sqlite":
        server = request.getfixturevalue(f"{backend}_server")
        env["KINEPY_APISERVER_DATASTORE"] = server.url("{db}")
    try:
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
    finally:
        if server is not None:
            with contextlib.suppress(Exception):  # the server is deleted at session end anyway
                _drop_test_databases(server)
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
            f"tests/apiserver/run.sh {' '.join(packages)} on {backend} exited {proc.returncode}:\n"
            f"{summary}\n{proc.stderr[-4000:]}\nfull output: tests/apiserver/.cache/results/",
            pytrace=False,
        )
