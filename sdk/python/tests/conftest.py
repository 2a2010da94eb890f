"""Fixtures: one real palisade-server per test session, on a fresh database with a fresh
development PKI, and clients for it with tokens of each role."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import palisade

from . import support


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    base = os.environ.get("DATABASE_URL")
    if not base:
        pytest.fail("DATABASE_URL is not set: export DATABASE_URL=$(scripts/ensure-postgres.sh)")
    with support.fresh_database(base) as url:
        yield url


@pytest.fixture(scope="session")
def tokens(database_url: str) -> dict[str, str]:
    """A token of each role, by role name (created before the server starts: the tool
    migrates the database itself)."""
    return {role: support.token(database_url, role, f"pytest-{role}") for role in ("viewer", "editor", "admin")}


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, database_url: str, tokens: dict[str, str]
) -> Iterator[support.Server]:
    with support.server(tmp_path_factory.mktemp("server"), database_url) as running:
        yield running


@pytest.fixture
def client(server: support.Server, tokens: dict[str, str]) -> Iterator[palisade.Client]:
    """An admin client."""
    with palisade.connect(server.address, ca_cert=server.ca, token=tokens["admin"]) as connected:
        yield connected


@pytest.fixture
def reporter(server: support.Server) -> Iterator[tuple[str, palisade.Client]]:
    """A node's name and a client holding its certificate, to report events as that node
    (AgentService) without a kernel."""
    name = support.unique("reporter")
    cert, key = server.issue_node(name)
    with palisade.connect(server.address, ca_cert=server.ca, client_cert=cert, client_key=key) as connected:
        yield name, connected


@pytest.fixture(autouse=True)
def no_cli_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """connect() falls back to the CLI's variables; a test sets the ones it means."""
    for name in ("PALISADE_SERVER", "PALISADE_CA_CERT", "PALISADE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
