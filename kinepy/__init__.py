"""kinepy: the etcd v3 API over SQL databases.

The library API, all importable from `kinepy`:

- `Server` (also `App`): one kinepy server; `async with kinepy.Server(kinepy.Config(...)) as server:`
  then connect to `server.endpoint` (`host:port`) or `server.client_url` (`http://host:port`).
- `Config`: every setting, with its default.
- `resolve_endpoint(config)` → `Resolved`: where to connect for a datastore endpoint, starting a
  server unless it names a real etcd; `UpstreamTLS` holds the TLS files to use.
- The errors: `KinepyError` and its subclasses `ConfigError`, `ListenError`, `BackendError`,
  `BackendUnavailable`, `EtcdError` (see `kinepy.errors`).

`kinepy.testing` is a pytest plugin with a `kinepy_endpoint` fixture; see docs/library.md.
"""

import importlib
import typing

from kinepy.config import Config
from kinepy.errors import BackendError, BackendUnavailable, ConfigError, EtcdError, KinepyError, ListenError
from kinepy.specs import UpstreamTLS

if typing.TYPE_CHECKING:
    from kinepy.app import App
    from kinepy.resolve import Resolved, resolve_endpoint

    Server = App

__version__ = "0.1.0"

# The server's names are loaded at first use, so that `import kinepy` (or a leaf such as
# kinepy.config, or the generated kinepy.proto a client needs) does not import grpc, the server
# or a database driver.
_LAZY = {
    "App": ("kinepy.app", "App"),
    "Server": ("kinepy.app", "App"),  # the docs' name: `async with kinepy.Server(config) as server:`
    "Resolved": ("kinepy.resolve", "Resolved"),
    "resolve_endpoint": ("kinepy.resolve", "resolve_endpoint"),
}


def __getattr__(name: str) -> object:
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "App",
    "BackendError",
    "BackendUnavailable",
    "Config",
    "ConfigError",
    "EtcdError",
    "KinepyError",
    "ListenError",
    "Resolved",
    "Server",
    "UpstreamTLS",
    "__version__",
    "resolve_endpoint",
]
