"""A released etcd other than Debian's 3.4 (etcd and etcdutl), built once from the Go module proxy.

``etcd_release("v3.6.17")`` returns the directory holding ``etcd`` and ``etcdutl``:
``${KINEPY_CACHE:-~/.cache/kinepy}/etcd-VERSION/bin``, built on first use (`go get` of etcd's server and
etcdutl modules into a throwaway wrapper module, since their go.mod files hold replace directives that
`go install pkg@version` refuses; then `go build`, under `nice`, CGO off; about 2 minutes cold). Without
Go and without a cached build the caller's test is skipped with a loud reason, unless ``CI`` is set: then
it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

BUILD_TIMEOUT = 40 * 60.0  # seconds, both binaries, module downloads included, on 2 busy cores


def _unavailable(reason: str) -> None:
    text = f"!!! etcd release not available, the tests against it did NOT run: {reason} !!!"
    if os.environ.get("CI"):
        pytest.fail(text, pytrace=False)
    pytest.skip(text)


def etcd_release(version: str) -> Path:
    cache = Path(os.environ.get("KINEPY_CACHE", Path.home() / ".cache" / "kinepy"))
    bin_dir = cache / f"etcd-{version}" / "bin"
    if (bin_dir / "etcd").exists() and (bin_dir / "etcdutl").exists():
        return bin_dir
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        _unavailable("Go is not installed")
    assert go is not None
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOMAXPROCS": "2"}
    with tempfile.TemporaryDirectory(prefix="kinepy-etcd-build-") as work:

        def run(*args: str) -> None:
            proc = subprocess.run(
                ["nice", "-n", "19", go, *args],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT,
                check=False,
            )
            if proc.returncode != 0:
                _unavailable(f"go {' '.join(args)} failed:\n{proc.stderr[-3000:]}")

        run("mod", "init", "kinepy-etcd-build")
        run("get", f"go.etcd.io/etcd/etcdutl/v3@{version}", f"go.etcd.io/etcd/server/v3@{version}")
        out = Path(work) / "bin"
        run("build", "-o", str(out / "etcdutl"), "go.etcd.io/etcd/etcdutl/v3")
        run("build", "-o", str(out / "etcd"), "go.etcd.io/etcd/server/v3")
        bin_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="bin-", dir=bin_dir.parent))
        for name in ("etcd", "etcdutl"):
            shutil.move(str(out / name), staging / name)
        if not bin_dir.exists():
            staging.rename(bin_dir)
        else:
            shutil.rmtree(staging)
    return bin_dir
