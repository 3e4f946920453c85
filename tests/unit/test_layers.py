"""Imports point down (cli -> app -> server -> store -> backends; errors, types, config, specs and
interceptors are leaves).

Passthrough (a proxy to a real etcd) is a mode of its own beside the server, using neither it nor the
store. Backends use nothing of kinepy but the leaves: they are opened from a spec and settings
(`kinepy.specs`), never from the endpoint parser or `Config`, and raise no etcd error: etcd's rules live in
the store. Servicers and metrics see the store through its facade (`kinepy.store.store`) and the watch
streams it opens, never its parts nor a backend.

Every `import` statement counts, including those inside functions, so a lazy import cannot hide a
dependency that points up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kinepy import errors

PACKAGE = Path(__file__).resolve().parents[2] / "kinepy"

DRIVERS = ("sqlite3", "asyncpg", "aiomysql")

# What each layer must never import (a name matches itself and everything below it). A layer is a
# package (kinepy/store/) or a module (kinepy/passthrough.py).
FORBIDDEN = {
    "store": (
        "grpc",
        "grpc_health",
        "kinepy.proto",
        "kinepy.server",
        "kinepy.passthrough",
        "kinepy.metrics",
        "kinepy.app",
        "kinepy.resolve",
        "kinepy.cli",
        "kinepy.endpoint",
        "kinepy.backends.factory",
        "kinepy.backends.sql",
    ),
    "backends": ("grpc", "grpc_health", "kinepy.proto"),
    "server": (*DRIVERS, "kinepy.passthrough", "kinepy.app", "kinepy.cli"),
    "metrics": ("kinepy.server", "kinepy.passthrough", "kinepy.app", "kinepy.cli", "kinepy.backends"),
    "passthrough": (*DRIVERS, "kinepy.store", "kinepy.backends", "kinepy.server", "kinepy.app", "kinepy.cli"),
    # Copies run on the backends' bulk paths (no SQL, so no driver, here) or speak to an etcd as a
    # client (grpc): never through kinepy's own server or store.
    "migrate": (*DRIVERS, "kinepy.store", "kinepy.server", "kinepy.app", "kinepy.cli"),
    # The supervisor and its workers sit between the CLI and the App; the database is the workers'
    # only shared state (no store, server or backend of their own).
    "workers": ("kinepy.cli", "kinepy.store", "kinepy.server", "kinepy.backends", *DRIVERS),
}
# The only kinepy modules a layer may import, when it has such a list.
ALLOWED = {
    "backends": ("kinepy.backends", "kinepy.errors", "kinepy.types", "kinepy.specs"),
    # Servicers see the store through its facade (and the watch streams it opens), never its parts
    # (writer, txn rules, leases, hub) nor a backend.
    "server": (
        "kinepy.server",
        "kinepy.store.store",
        "kinepy.store.watch",
        "kinepy.proto",
        "kinepy.errors",
        "kinepy.types",
        "kinepy.config",
        "kinepy.interceptors",
    ),
    "metrics": (
        "kinepy.metrics",
        "kinepy.store.store",
        "kinepy.errors",
        "kinepy.types",
        "kinepy.config",
        "kinepy.specs",
        "kinepy.interceptors",
    ),
}
LEAVES = ("errors.py", "types.py", "config.py", "specs.py", "interceptors.py")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Every module `path` (or `source`, as if it lived at `path`) imports; `from a import b` yields
    `a` and `a.b` (b may be a module)."""
    text = path.read_text(encoding="utf-8") if source is None else source
    tree = ast.parse(text, filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(
    path: Path, forbidden: tuple[str, ...], allowed: tuple[str, ...] | None = None, source: str | None = None
) -> list[str]:
    """The imports of `path` (or `source`) that are `forbidden`, or kinepy modules not in `allowed`."""
    return sorted(
        name
        for name in imported_modules(path, source)
        if _within(name, forbidden)
        or (
            allowed is not None
            and name != "kinepy"
            and _within(name, ("kinepy",))
            and not _within(name, allowed)
        )
    )


def modules_of(layer: str) -> list[Path]:
    module = PACKAGE / f"{layer}.py"
    return [module] if module.is_file() else sorted((PACKAGE / layer).rglob("*.py"))


LAYERED = [(layer, path) for layer in FORBIDDEN for path in modules_of(layer)]


def test_every_layer_has_modules() -> None:
    # Guards against a vacuous pass after a move or rename.
    for layer in FORBIDDEN:
        assert modules_of(layer), f"kinepy/{layer} has no modules"


@pytest.mark.parametrize(
    ("layer", "path"), LAYERED, ids=[str(path.relative_to(PACKAGE.parent)) for _, path in LAYERED]
)
def test_layer_imports_point_down(layer: str, path: Path) -> None:
    assert violations(path, FORBIDDEN[layer], ALLOWED.get(layer)) == [], (
        f"{module_name(path)} imports from above its layer"
    )


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_modules_import_nothing_from_kinepy(leaf: str) -> None:
    assert violations(PACKAGE / leaf, ("kinepy",)) == []


def test_import_walker_sees_lazy_relative_and_from_imports() -> None:
    # The walker itself: a module hiding every kind of import must be caught.
    source = (
        "import grpc.aio\n"
        "from kinepy import proto\n"
        "def later():\n"
        "    from ..server import kv\n"
        "    from . import writer\n"
    )
    names = imported_modules(PACKAGE / "store" / "probe.py", source)
    assert {"grpc.aio", "kinepy.proto", "kinepy.server.kv", "kinepy.store.writer"} <= names


def test_allowed_list_catches_what_is_not_on_it() -> None:
    # A backend may use a leaf but not the endpoint parser or Config, however it imports them.
    source = (
        "from kinepy import errors, specs\n"
        "from kinepy.backends import base\n"
        "def later():\n"
        "    import kinepy.config\n"
        "    from kinepy.endpoint import parse_endpoint\n"
    )
    found = violations(PACKAGE / "backends" / "probe.py", FORBIDDEN["backends"], ALLOWED["backends"], source)
    assert found == ["kinepy.config", "kinepy.endpoint", "kinepy.endpoint.parse_endpoint"]


def etcd_errors_imported(path: Path, source: str | None = None) -> list[str]:
    """The etcd errors (`EtcdError` and its subclasses) `path` (or `source`) imports from kinepy.errors or
    names as `errors.X`."""
    text = path.read_text(encoding="utf-8") if source is None else source
    names = {n.rpartition(".")[2] for n in imported_modules(path, text) if n.startswith("kinepy.errors.")}
    names.update(
        node.attr
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "errors"
    )
    return sorted(
        n
        for n in names
        if isinstance(cls := getattr(errors, n, None), type) and issubclass(cls, errors.EtcdError)
    )


BACKENDS = modules_of("backends")


@pytest.mark.parametrize("path", BACKENDS, ids=[str(path.relative_to(PACKAGE.parent)) for path in BACKENDS])
def test_backends_raise_no_etcd_error(path: Path) -> None:
    # etcd's rules (compacted, future revision, ...) live in the store; a backend raises BackendError
    # and its kin, and the store answers with etcd's error.
    assert etcd_errors_imported(path) == [], f"{module_name(path)} imports etcd errors"


def test_etcd_error_check_catches_an_import() -> None:
    source = (
        "from kinepy.errors import BackendError, CompactedError\n"
        "def later():\n"
        "    from kinepy import errors\n"
        "    raise errors.FutureRevisionError()\n"
    )
    found = etcd_errors_imported(PACKAGE / "backends" / "probe.py", source)
    assert found == ["CompactedError", "FutureRevisionError"]


def test_servicers_may_not_reach_past_the_store_facade() -> None:
    source = (
        "from kinepy.store.store import Store\nfrom kinepy.store import writer\nimport kinepy.backends.base\n"
    )
    found = violations(PACKAGE / "server" / "probe.py", FORBIDDEN["server"], ALLOWED["server"], source)
    assert found == ["kinepy.backends.base", "kinepy.store", "kinepy.store.writer"]
