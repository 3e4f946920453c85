"""The `kinepy.testing` pytest plugin, seen as another project sees it: `pytest examples/pytest-plugin`
in a subprocess, where only the installed entry point provides the fixtures."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys

import conftest
import pytest

EXAMPLE = conftest.REPO_ROOT / "examples" / "pytest-plugin"


def test_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    plugins = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    if plugins.get("kinepy") != "kinepy.testing":
        pytest.fail("kinepy's pytest11 entry point is not installed: run pip install -e '.[test]'")


def test_sample_project_runs_with_the_fixture() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE)],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The etcdctl test may skip where etcdctl is missing; the other three must run.
    summary = proc.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed[1]) >= 3 and "failed" not in summary and "error" not in summary, summary
