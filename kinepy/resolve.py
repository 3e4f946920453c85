"""`resolve_endpoint`: where a program connects for a datastore endpoint, starting kinepy if need be.

This is what kine's `endpoint.Listen` does for k3s: a program takes one datastore setting and gets
back etcd client URLs. An etcd endpoint (`http(s)://host:port[,…]`, `unix(s)://path`) is returned as
it is, with its TLS files, and nothing starts: the program talks to etcd directly. Any other endpoint (empty,
`sqlite://…`, `postgres://…`, `mysql://…`) needs a kinepy server: one is started in this event loop
and its URL returned; the caller closes it with `Resolved.aclose()`.
"""

from __future__ import annotations

from dataclasses import dataclass

from kinepy.app import App
from kinepy.config import Config
from kinepy.endpoint import backend_spec
from kinepy.specs import EtcdSpec, UpstreamTLS, upstream_tls


@dataclass(frozen=True, slots=True)
class Resolved:
    """Where to connect: `endpoints` are etcd client URLs (`http://127.0.0.1:2379`), `tls` the files
    a client uses for them (None: plain gRPC), `server` the kinepy server started for them (None
    for an etcd endpoint)."""

    endpoints: list[str]
    tls: UpstreamTLS | None
    server: App | None

    async def aclose(self) -> None:
        """Stop the server `resolve_endpoint` started, if any; idempotent."""
        if self.server is not None:
            await self.server.aclose()


async def resolve_endpoint(config: Config) -> Resolved:
    """Resolve `config.datastore_endpoint`: an etcd endpoint's URLs and TLS files as they are, or a
    started kinepy server's URL.

    For a started server, `tls` is `None` without `config.server_cert_file`; with it, it names the server's
    own certificate, key and `trusted_ca_file` (a client presenting the same certificate is accepted
    where client certificates are checked), as kine does for k3s. Raises `ConfigError` for a bad
    endpoint, like `App.start()`.
    """
    spec = backend_spec(config)
    if isinstance(spec, EtcdSpec):
        tls = upstream_tls(spec)
        secure = any(url.lower().startswith(("https://", "unixs://")) for url in spec.endpoints)
        return Resolved(list(spec.endpoints), tls if secure else None, None)
    server = App(config)
    await server.__aenter__()
    server_tls: UpstreamTLS | None = None
    if config.server_cert_file:
        server_tls = UpstreamTLS(
            config.trusted_ca_file or None, config.server_cert_file, config.server_key_file
        )
    return Resolved([server.client_url], server_tls, server)
