"""The Go programs the benchmarks run, built once and cached outside the repository.

    kine        ``go install github.com/k3s-io/kine@KINE_VERSION`` (cgo: its SQLite driver needs gcc)
                into CACHE_DIR/bin/kine-VERSION; ``KINE_BIN`` overrides it
    etcd tools  etcd ETCD_VERSION's server (``etcd``) and its load tool (``benchmark``, from the
                go.etcd.io/etcd/v3 module's tools/benchmark), built with ``go build -mod=readonly`` from the
                wrapper module benchmarks/go/etcd-ETCD_VERSION into CACHE_DIR/etcd-ETCD_VERSION/bin

The etcd modules' go.mod files hold replace lines (``go.etcd.io/etcd/api/v3 => ./api`` …), which
``go install pkg@version`` refuses and a dependent module ignores, so the wrapper module requires and
replaces every etcd submodule at the one release. Its go.mod and go.sum are committed: the build needs no
resolution, only downloads through the module proxy. A stamp (sha256 of go.mod and go.sum) beside the
binaries says which wrapper built them; a stale one rebuilds. Builds run under ``nice -n 19`` with
GOMAXPROCS=2, hold a lock so concurrent callers wait for one build, and move the binaries into place only
when all are built. About 3 minutes cold on 2 cores (5 for kine).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kinepy-bench"
KINE_VERSION = "v0.16.4"
KINE_MODULE = "github.com/k3s-io/kine"
ETCD_VERSION = "v3.6.5"
ETCD_WRAPPER = REPO_ROOT / "benchmarks" / "go" / f"etcd-{ETCD_VERSION}"
ETCD_PROGRAMS = {"etcd": "go.etcd.io/etcd/server/v3", "benchmark": "go.etcd.io/etcd/v3/tools/benchmark"}
BUILD_TIMEOUT = 1800.0


class TargetUnavailable(Exception):
    """A target cannot run on this machine (missing binary, failed build); the message says why."""


def find_go() -> str:
    """The go command (on PATH, or Go's default /usr/local/go); `TargetUnavailable` without one."""
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise TargetUnavailable("Go is not installed (https://go.dev/dl/)")
    return go


def _go(args: list[str], *, cwd: Path, env: dict[str, str], what: str) -> None:
    proc = subprocess.run(
        ["nice", "-n", "19", find_go(), *args],
        cwd=cwd,
        env={**os.environ, "GOMAXPROCS": "2", "GOFLAGS": "-buildvcs=false", **env},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise TargetUnavailable(f"{what} failed:\n{proc.stderr[-3000:]}")


def build_kine(log: Callable[[str], None]) -> Path:
    """The kine binary: $KINE_BIN, else CACHE_DIR/bin/kine-VERSION, built with `go install` if missing.
    Raises `TargetUnavailable` saying why it cannot be had (no Go, no cgo/gcc for go-sqlite3, build error)."""
    if os.environ.get("KINE_BIN"):
        return Path(os.environ["KINE_BIN"])
    binary = CACHE_DIR / "bin" / f"kine-{KINE_VERSION}"
    if binary.exists():
        return binary
    cgo = subprocess.run(
        [find_go(), "env", "CGO_ENABLED"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if cgo != "1" or shutil.which("gcc") is None:
        raise TargetUnavailable(
            f"kine's SQLite driver (mattn/go-sqlite3) needs cgo: CGO_ENABLED={cgo!r}, gcc "
            f"{'found' if shutil.which('gcc') else 'missing'}"
        )
    gobin = CACHE_DIR / "gobin"
    gobin.mkdir(parents=True, exist_ok=True)
    log(f"building kine {KINE_VERSION} with go install (first run only; a few minutes)…")
    _go(
        ["install", f"{KINE_MODULE}@{KINE_VERSION}"],
        cwd=CACHE_DIR,
        env={"GOBIN": str(gobin), "CGO_ENABLED": "1"},
        what=f"go install {KINE_MODULE}@{KINE_VERSION}",
    )
    binary.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(gobin / "kine"), binary)
    return binary


def _stamp(module: Path) -> str:
    return hashlib.sha256((module / "go.mod").read_bytes() + (module / "go.sum").read_bytes()).hexdigest()


def etcd_tools(log: Callable[[str], None]) -> Path:
    """The directory holding etcd ETCD_VERSION's `etcd` and `benchmark`, built on first use."""
    bin_dir = CACHE_DIR / f"etcd-{ETCD_VERSION}" / "bin"
    stamp = _stamp(ETCD_WRAPPER)

    def current() -> bool:
        stamp_file = bin_dir / ".stamp"
        return all((bin_dir / name).exists() for name in ETCD_PROGRAMS) and (
            stamp_file.exists() and stamp_file.read_text().strip() == stamp
        )

    if current():
        return bin_dir
    bin_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(bin_dir.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another caller may be building it: wait, then look again
        if current():
            return bin_dir
        log(f"building etcd {ETCD_VERSION} and its benchmark tool (first run only; about 3 minutes)…")
        staging = Path(tempfile.mkdtemp(prefix="bin-", dir=bin_dir.parent))
        try:
            for name, package in ETCD_PROGRAMS.items():
                _go(
                    ["build", "-mod=readonly", "-trimpath", "-o", str(staging / name), package],
                    cwd=ETCD_WRAPPER,
                    env={"CGO_ENABLED": "0"},
                    what=f"go build {package} (in {ETCD_WRAPPER})",
                )
            (staging / ".stamp").write_text(stamp + "\n")
            shutil.rmtree(bin_dir, ignore_errors=True)
            staging.rename(bin_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return bin_dir
