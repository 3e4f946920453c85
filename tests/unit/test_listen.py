"""`--listen-address` is parsed before anything is created: the accepted forms and one clear error
for each kind of mistake (docs/configuration.md#--listen-address)."""

from __future__ import annotations

import socket

import pytest

from kinepy.errors import ConfigError
from kinepy.listen import FORMS, ListenAddress, parse_listen_address

EVERY = "::" if socket.has_ipv6 else "0.0.0.0"


@pytest.mark.parametrize(
    ("text", "address", "target", "described"),
    [
        ("127.0.0.1:2379", ListenAddress("127.0.0.1", 2379), "127.0.0.1:2379", "127.0.0.1:2379"),
        ("localhost:0", ListenAddress("localhost", 0), "localhost:0", "localhost:0"),
        (":2379", ListenAddress(None, 2379), f"[{EVERY}]:2379" if ":" in EVERY else f"{EVERY}:2379", None),
        ("0.0.0.0:2379", ListenAddress("0.0.0.0", 2379), "0.0.0.0:2379", "0.0.0.0:2379 (every interface)"),
        ("[::1]:2379", ListenAddress("::1", 2379), "[::1]:2379", "[::1]:2379"),
        ("[::]:2379", ListenAddress("::", 2379), "[::]:2379", "[::]:2379 (every interface)"),
        (
            "unix:///run/kine.sock",
            ListenAddress(path="/run/kine.sock"),
            "unix:/run/kine.sock",
            "unix:///run/kine.sock",
        ),
        ("unix://kine.sock", ListenAddress(path="kine.sock"), "unix:kine.sock", "unix://kine.sock"),
    ],
)
def test_accepted_forms(text: str, address: ListenAddress, target: str, described: str | None) -> None:
    parsed = parse_listen_address(text)
    assert parsed == address
    assert parsed.grpc_target() == target
    assert parsed.describe() == (described or f"{target} (every interface)")


def test_the_logged_address_is_the_bound_port() -> None:
    assert parse_listen_address("127.0.0.1:0").describe(43210) == "127.0.0.1:43210"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("127.0.0.1", "the port is missing"),
        ("garbage", "the port is missing"),
        ("127.0.0.1:", "the port is missing"),
        ("127.0.0.1:99999", "port '99999' is not a number from 0 to 65535"),
        ("127.0.0.1:-1", "port '-1' is not a number from 0 to 65535"),
        (":http", "port 'http' is not a number from 0 to 65535"),
        ("unix://", "the Unix socket path is empty"),
        ("unix://a\0b", "the Unix socket path contains a NUL byte"),
        ("http://127.0.0.1:2379", "http:// is not a listen address scheme (only unix:// is)"),
        ("unixs:///run/k.sock", "unixs:// is not a listen address scheme (only unix:// is)"),
        ("::1:2379", "write an IPv6 address in brackets, e.g. [::1]:2379"),
        ("[::1]", "an IPv6 address is written [ADDRESS]:PORT"),
        ("[nope]:2379", "'nope' is not an IPv6 address"),
        ("a b:2379", "'a b' is not a host name or IPv4 address"),
    ],
)
def test_mistakes_are_one_clear_config_error(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_listen_address(text)
    assert str(exc.value) == f"invalid listen address {text!r}: {reason}; use {FORMS}"
