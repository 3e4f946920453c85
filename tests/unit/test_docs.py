"""The docs describe the real CLI: generated blocks are current, every flag and `Config` field is documented.

A failure here is fixed by `scripts/update-docs` (generated blocks) or by writing the missing section of
`docs/configuration.md`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.machinery
import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from kinepy.cli import build_parser
from kinepy.config import Config
from kinepy.endpoint import parse_endpoint
from kinepy.errors import KinepyError, ListenError
from kinepy.listen import parse_listen_address

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = ROOT / "docs" / "configuration.md"
FIX = "run scripts/update-docs and commit the result"


def _load_update_docs() -> ModuleType:
    """`scripts/update-docs` as a module, so the test renders exactly as the script does."""
    path = ROOT / "scripts" / "update-docs"
    loader = importlib.machinery.SourceFileLoader("kinepy_update_docs", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


update_docs = _load_update_docs()


def _without_generated_blocks(text: str) -> str:
    for start, end in (update_docs.HELP_MARKERS, update_docs.FLAGS_MARKERS):
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), "", text, flags=re.DOTALL)
    return text


def _flags() -> list[str]:
    """kinepy's name of every flag shown in --help."""
    return [
        action.option_strings[0]
        for action in build_parser({})._actions
        if action.option_strings
        and action.dest not in ("help", "version")
        and action.help != argparse.SUPPRESS
    ]


def test_help_block_matches_kinepy_help() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    start, end = update_docs.HELP_MARKERS
    block = text.split(start, 1)[1].split(end, 1)[0]
    assert block == "\n```text\n" + update_docs.render_help() + "```\n", f"the --help block is stale: {FIX}"


def test_help_is_rendered_without_kinepy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KINEPY_LISTEN_ADDRESS", "10.9.8.7:1")
    monkeypatch.setenv("K3S_DATASTORE_ENDPOINT", "sqlite:///from-k3s.db")
    rendered = update_docs.render_help()
    assert "10.9.8.7" not in rendered and "from-k3s" not in rendered
    assert "(default: 127.0.0.1:2379)" in " ".join(rendered.split())


@pytest.mark.parametrize("path", ["README.md", "docs/configuration.md"])
def test_generated_blocks_are_current(path: str) -> None:
    assert (ROOT / path).read_text(encoding="utf-8") == update_docs.updated()[ROOT / path], f"{path}: {FIX}"


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Config)])
def test_config_field_is_documented(field: str) -> None:
    assert f"`{field}`" in CONFIGURATION.read_text(encoding="utf-8"), (
        f"Config.{field} is missing from docs/configuration.md (add a row to the Config fields table)"
    )


@pytest.mark.parametrize("flag", _flags())
def test_flag_has_its_own_section(flag: str) -> None:
    # The help block and the generated table list every flag anyway; the prose must too.
    prose = _without_generated_blocks(CONFIGURATION.read_text(encoding="utf-8"))
    assert re.search(rf"^###.*`{re.escape(flag)}`", prose, re.MULTILINE), (
        f"docs/configuration.md has no '### `{flag}`' section"
    )


@pytest.mark.parametrize("flag", _flags())
def test_flag_environment_variable_is_documented(flag: str) -> None:
    variable = "KINEPY_" + flag.removeprefix("--").replace("-", "_").upper()
    prose = _without_generated_blocks(CONFIGURATION.read_text(encoding="utf-8"))
    assert variable in prose, f"docs/configuration.md does not explain {variable}"


def test_k3s_fallback_is_documented() -> None:
    prose = _without_generated_blocks(CONFIGURATION.read_text(encoding="utf-8"))
    assert "K3S_DATASTORE_ENDPOINT" in prose


def test_readme_starts_with_install_and_test_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.DOTALL)
    assert len(blocks) >= 2
    assert "pip install ." in blocks[0] and "kinepy" in blocks[0].split("pip install .", 1)[1]
    assert "scripts/test" in blocks[1]


@pytest.mark.parametrize("page", ["configuration.md", "architecture.md", "operations.md", "library.md"])
def test_readme_links_every_page(page: str) -> None:
    assert f"(docs/{page})" in (ROOT / "README.md").read_text(encoding="utf-8")


# -- claims the docs make about the command line, checked against the code ----------------------


def _error(call: Callable[[], object]) -> str:
    try:
        call()
    except Exception as exc:  # whichever error the call raises, its text is the message shown
        return str(exc)
    raise AssertionError("no error")


def test_endpoint_error_example_is_the_real_message() -> None:
    message = _error(lambda: parse_endpoint("foo://x"))
    assert f"kinepy: {message}" in CONFIGURATION.read_text(encoding="utf-8")


def test_listen_address_error_example_is_the_real_message() -> None:
    message = _error(lambda: parse_listen_address("127.0.0.1"))
    assert f"`kinepy: {message}`" in CONFIGURATION.read_text(encoding="utf-8")


def test_passthrough_port_rule_is_kines() -> None:
    # docs/configuration.md#etcd-passthrough: any port, 2379 when none is written, Unix sockets too
    prose = CONFIGURATION.read_text(encoding="utf-8")
    assert "on any port (`2379`, etcd's client port, when\nnone is written" in prose
    assert parse_endpoint("https://etcd.example").describe() == "https://etcd.example:2379"
    assert (
        parse_endpoint("http://h:8080,unix:///run/etcd.sock").describe()
        == "http://h:8080,unix:///run/etcd.sock"
    )
    assert "must be 2379" not in prose and "must use port" not in prose


def test_the_library_docs_name_listen_error_for_an_address_in_use() -> None:
    library = (ROOT / "docs" / "library.md").read_text(encoding="utf-8")
    assert "`kinepy.ListenError`" in library and "`OSError`" not in library
    assert issubclass(ListenError, KinepyError)


def test_exit_codes_table_says_1_for_an_unreachable_datastore() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    row_1 = next(line for line in operations.splitlines() if line.startswith("| 1 |"))
    row_2 = next(line for line in operations.splitlines() if line.startswith("| 2 |"))
    assert "datastore unreachable" in row_1 and "unavailable" not in row_2
