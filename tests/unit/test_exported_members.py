"""`kinepy.__all__` names exactly the library API `kinepy/__init__.py` exposes (modules aside)."""

from __future__ import annotations

import types

import kinepy


def test_all_lists_every_public_member_and_nothing_else() -> None:
    public = sorted(
        name
        for name, value in vars(kinepy).items()
        if (not name.startswith("_") or name == "__version__") and not isinstance(value, types.ModuleType)
    )
    assert sorted(kinepy.__all__) == public


def test_every_exported_member_is_documented() -> None:
    for name in kinepy.__all__:
        if name != "__version__":
            assert name in (kinepy.__doc__ or ""), f"kinepy's docstring does not mention {name}"


def test_server_is_app() -> None:
    assert kinepy.Server is kinepy.App
