"""Certificates made by trustme for the TLS tests: a CA, a server certificate for 127.0.0.1, a client
certificate it signed, and a client certificate signed by a CA nobody trusts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_client_cert: Path  # signed by a CA kinepy does not trust
    other_client_key: Path


def make_certificates(directory: Path) -> Certificates:
    """Write the PEM files into `directory`."""
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("kube-apiserver-etcd-client")
    stranger = other_ca.issue_cert("stranger")
    paths = Certificates(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
        other_client_cert=directory / "stranger.pem",
        other_client_key=directory / "stranger-key.pem",
    )
    ca.cert_pem.write_to_path(str(paths.ca))
    for cert, chain_path, key_path in (
        (server, paths.server_cert, paths.server_key),
        (client, paths.client_cert, paths.client_key),
        (stranger, paths.other_client_cert, paths.other_client_key),
    ):
        for blob in cert.cert_chain_pems:
            blob.write_to_path(str(chain_path), append=True)
        cert.private_key_pem.write_to_path(str(key_path))
    return paths
