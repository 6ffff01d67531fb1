"""Shared fixtures: real SQLite files, a real uvicorn on 127.0.0.1, real worker processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.migrate import migrate

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def child_env(**settings: str) -> dict[str, str]:
    """The environment of a child process: this one's, with HPO_* settings on top, TensorFlow
    quiet and on one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "HPO_TF_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update({f"HPO_{k.upper()}": v for k, v in settings.items()})
    return env


def hpo(*args: str) -> list[str]:
    return [sys.executable, "-m", "service.cli", *args]


@dataclass
class Api:
    """A running ``hpo api`` process on a migrated SQLite file."""

    url: str
    database_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


def start_api(tmp: Path, *, port: str | None = None, **settings: str) -> Api:
    db_url = f"sqlite:///{tmp / 'hpo.db'}"
    migrate(db_url)
    port = port or str(free_port())
    log = tmp / "api.log"
    with log.open("wb") as out:  # the child keeps its own descriptor
        process = subprocess.Popen(
            hpo("api", "--host", "127.0.0.1", "--port", str(port)),
            env=child_env(database_url=db_url, **settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"hpo api exited {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return Api(url, db_url, process, log)
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"hpo api did not come up:\n{log.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
        server = start_api(tmp_path / f"api{len(started)}", **settings)
        started.append(server)
        return server

    (tmp_path / "api0").mkdir()
    (tmp_path / "api1").mkdir()
    yield start
    for server in started:
        stop(server.process)


@pytest.fixture
def client(api: Api) -> Iterator[httpx.Client]:
    with api.client() as c:
        yield c


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
