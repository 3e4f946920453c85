"""kinepy: the etcd v3 API over SQL databases.

The library API, all importable from `kinepy`:

- `Server` (also `App`): one kinepy server; `async with kinepy.Server(kinepy.Config(...)) as server:`
  then connect to `server.endpoint` (`host:port`) or `server.client_url` (`http://host:port`).
- `Config`: every setting, with its default.
- `resolve_endpoint(config)` → `Resolved`: where to connect for a datastore endpoint, starting a
  server unless it names a real etcd; `UpstreamTLS` holds the TLS files to use.
- The errors: `KinepyError` and its subclasses `ConfigError`, `BackendError`, `BackendUnavailable`,
  `EtcdError` (see `kinepy.errors`).

`kinepy.testing` is a pytest plugin with a `kinepy_endpoint` fixture; see docs/library.md.
"""

# Before the imports: kinepy.cli and kinepy.server.maintenance import it while this module loads.
__version__ = "0.1.0"

from kinepy.app import App
from kinepy.config import Config
from kinepy.errors import BackendError, BackendUnavailable, ConfigError, EtcdError, KinepyError
from kinepy.resolve import Resolved, resolve_endpoint
from kinepy.specs import UpstreamTLS

Server = App
"""The name the docs use for `App`: `async with kinepy.Server(config) as server: ...`."""

__all__ = [
    "App",
    "BackendError",
    "BackendUnavailable",
    "Config",
    "ConfigError",
    "EtcdError",
    "KinepyError",
    "Resolved",
    "Server",
    "UpstreamTLS",
    "__version__",
    "resolve_endpoint",
]
