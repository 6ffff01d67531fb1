"""The API and lease contract suite runs against both SQLite and PostgreSQL: the fixtures
here take a ``backend`` parameter, so every test below runs once per database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import Api, Postgres, start_api, stop

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]
"""Every test here runs on both; the PostgreSQL half is marked slow, so ``make test-fast``
runs the contract once (on SQLite) and ``make test`` runs it on both."""


def _database_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    if backend == "sqlite":
        return None
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.new_database()


@pytest.fixture(scope="module", params=BACKENDS)
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    server = start_api(
        tmp_path_factory.mktemp("api"), database_url=_database_url(request.param, request)
    )
    yield server
    stop(server.process)


@pytest.fixture(params=BACKENDS)
def fresh_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Api]]:
    started: list[Api] = []

    def start(**settings: str) -> Api:
        folder = tmp_path / f"api{len(started)}"
        folder.mkdir()
        server = start_api(folder, database_url=_database_url(request.param, request), **settings)
        started.append(server)
        return server

    yield start
    for server in started:
        stop(server.process)
