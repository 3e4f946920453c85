"""docs/systemd: the unit is Type=notify in the k3s style, and the environment file names only real
settings and parses into a valid Config (commented lines included)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from kinepy.cli import _env_name, build_parser, parse_config

SYSTEMD = Path(__file__).resolve().parents[2] / "docs" / "systemd"


class _CaseSensitiveParser(configparser.ConfigParser):
    """systemd's keys are case-sensitive (``ExecStart``); ConfigParser lowers them by default."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def _unit() -> configparser.ConfigParser:
    parser = _CaseSensitiveParser(strict=False, interpolation=None, delimiters=("=",))
    parser.read_string((SYSTEMD / "kinepy.service").read_text(encoding="utf-8"))
    return parser


def test_unit_is_type_notify_with_environment_file_restart_and_file_limit() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify"
    assert service["EnvironmentFile"].lstrip("-") == "/etc/kinepy/kinepy.env"
    assert service["Restart"] == "always"
    assert int(service["LimitNOFILE"]) >= 65536
    assert service["KillSignal"] == "SIGTERM"
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"


def test_environment_file_sets_only_known_variables_and_parses() -> None:
    known = {_env_name(a.option_strings[0]) for a in build_parser({})._actions if a.option_strings}
    env: dict[str, str] = {}
    for line in (SYSTEMD / "kinepy.env").read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"#?(KINEPY_\w+)=(.*)", line)
        if match:
            assert match[1] in known, f"{match[1]} is not a kinepy setting"
            env[match[1]] = match[2]
    assert "KINEPY_DATASTORE_ENDPOINT" in env
    config = parse_config([], env)  # commented settings included: they must work when uncommented
    assert config.metrics_address == "127.0.0.1:9090"
    assert config.compact_interval == 300.0
