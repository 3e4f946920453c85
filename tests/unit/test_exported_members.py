"""`kinepy.__all__` names exactly the library API `kinepy/__init__.py` exposes (modules aside), and
`import kinepy` stays light: the server's names load at first use."""

from __future__ import annotations

import subprocess
import sys
import types

import kinepy

HEAVY = (
    "grpc",
    "grpc_health",
    "kinepy.app",
    "kinepy.server",
    "kinepy.store",
    "asyncpg",
    "aiomysql",
    "sqlite3",
)


def test_all_lists_every_public_member_and_nothing_else() -> None:
    for name in kinepy.__all__:
        getattr(kinepy, name)  # loads the lazy ones into the module
    public = sorted(
        name
        for name, value in vars(kinepy).items()
        if (not name.startswith("_") or name == "__version__") and not isinstance(value, types.ModuleType)
    )
    assert sorted(kinepy.__all__) == public
    assert set(kinepy.__all__) <= set(dir(kinepy))


def test_every_exported_member_is_documented() -> None:
    for name in kinepy.__all__:
        if name != "__version__":
            assert name in (kinepy.__doc__ or ""), f"kinepy's docstring does not mention {name}"


def test_server_is_app() -> None:
    from kinepy.app import App

    assert kinepy.Server is kinepy.App is App


def test_unknown_attribute_is_an_attribute_error() -> None:
    assert not hasattr(kinepy, "NoSuchThing")


def test_importing_kinepy_loads_neither_grpc_nor_the_server_nor_a_driver() -> None:
    # A fresh interpreter: this one has imported everything already.
    probe = (
        "import sys, kinepy, kinepy.config, kinepy.types, kinepy.errors, kinepy.specs, kinepy.endpoint\n"
        "kinepy.Config, kinepy.ConfigError, kinepy.UpstreamTLS\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m.startswith({HEAVY!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
    probe = "import sys, kinepy\nkinepy.Server\nprint('grpc' in sys.modules, 'kinepy.app' in sys.modules)\n"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["True", "True"]
