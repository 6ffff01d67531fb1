"""Shared fixtures: real SQLite files, a real uvicorn on 127.0.0.1, real worker processes
(the helpers themselves live in ``tests.support``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import Api, Postgres, start_api, stop


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One API per test module, for tests that do not lease (leasing would cross studies)."""
    server = start_api(tmp_path_factory.mktemp("api"))
    yield server
    stop(server.process)


@pytest.fixture
def fresh_api(tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """Start an API of its own for one test, with optional settings (lease_seconds=...)."""
    started: list[Api] = []

    def start(**settings: str) -> Api:
        folder = tmp_path / f"api{len(started)}"
        folder.mkdir()
        server = start_api(folder, **settings)
        started.append(server)
        return server

    yield start
    for server in started:
        stop(server.process)


@pytest.fixture
def client(api: Api) -> Iterator[httpx.Client]:
    with api.client() as c:
        yield c


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = Postgres()
    yield server
    server.close()
