"""The listener's TLS files, read and checked (`App`, and the supervisor's metrics listener)."""

from __future__ import annotations

import ssl

from kinepy.config import Config
from kinepy.errors import ConfigError


def read_tls_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read TLS file {path}: {exc.strerror or exc}") from None


def tls_context(cert_file: str, key_file: str, trusted_ca_file: str) -> ssl.SSLContext:
    """A server TLS context from the listener's files; `ConfigError` naming the file that is missing
    or not PEM, or a key that does not match the certificate."""
    for path in (cert_file, key_file, trusted_ca_file):
        if path:
            read_tls_file(path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"the TLS certificate {cert_file} and key {key_file} do not load: {exc.reason or exc}"
        ) from None
    if trusted_ca_file:
        try:
            context.load_verify_locations(trusted_ca_file)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"the trusted CA file {trusted_ca_file} does not load: {exc.reason or exc}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def metrics_tls(config: Config) -> ssl.SSLContext | None:
    """Metrics' own TLS files when given (`--metrics-cert-file`); else, as kine and etcd do, the
    listener's TLS (client certificates included) unless told `--metrics-ignore-tls-config`."""
    if config.metrics_cert_file:
        return tls_context(config.metrics_cert_file, config.metrics_key_file, config.metrics_trusted_ca_file)
    if not config.server_cert_file or config.metrics_ignore_tls_config:
        return None
    return tls_context(config.server_cert_file, config.server_key_file, config.trusted_ca_file)
