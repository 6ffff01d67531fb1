"""Real parts for the tests and the benchmarks: a real uvicorn on 127.0.0.1 over a SQLite
file or a PostgreSQL server of our own, and real worker processes. No pytest here: the
benchmarks (``make bench``) use it without the test extras."""

from __future__ import annotations

import itertools
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from service.storage.migrate import migrate

if TYPE_CHECKING:
    from service.protocol import Lease

REPO = Path(__file__).resolve().parent.parent

USER_TOKEN = "test-user-token-0123456789"
WORKER_TOKEN = "test-worker-token-0123456789"
"""Every API and worker the tests start uses these unless a test gives its own."""
WORKER_PREFIXES = ("/trials", "/jobs")


class TokenByRoute(httpx.Auth):
    """The token a route takes: the worker token on the trial protocol, the user token
    elsewhere. (tests/test_auth.py checks each route refuses the other one.)"""

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        worker = request.url.path.startswith(WORKER_PREFIXES)
        request.headers["Authorization"] = f"Bearer {WORKER_TOKEN if worker else USER_TOKEN}"
        yield request


AUTH = TokenByRoute()


# Ports for servers the tests start, one block per xdist worker, below the kernel's ephemeral
# range (32768+). A port the kernel hands out (bind to 0) can be handed to the next asker once
# closed: two workers' APIs then raced for one port, and the loser's health check reached the
# winner (a CI run's lease came from another test's database).
_PORT_BLOCK = 1000
_PORTS = itertools.count(random.Random(os.getpid()).randrange(_PORT_BLOCK))


def free_port() -> int:
    """A free port no other xdist worker of this run will pick."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    base = 20000 + (index % 12) * _PORT_BLOCK
    for _ in range(_PORT_BLOCK):
        port = base + next(_PORTS) % _PORT_BLOCK
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {base}..{base + _PORT_BLOCK - 1}")


def child_env(**settings: str) -> dict[str, str]:
    """The environment of a child process: this one's, with HPO_* settings on top, TensorFlow
    quiet and on one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    env.update(
        {
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "HPO_TF_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "HPO_API_TOKEN": USER_TOKEN,
            "HPO_WORKER_TOKEN": WORKER_TOKEN,
        }
    )
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
        """A client sending the right test token for each route."""
        return httpx.Client(base_url=self.url, timeout=30, auth=AUTH)


def start_api(
    tmp: Path,
    *,
    port: str | None = None,
    database_url: str | None = None,
    processes: int = 1,
    **settings: str,
) -> Api:
    """``hpo api`` on a migrated database (a SQLite file in ``tmp`` unless given)."""
    db_url = database_url or f"sqlite:///{tmp / 'hpo.db'}"
    migrate(db_url)
    port = port or str(free_port())
    log = tmp / "api.log"
    with log.open("wb") as out:  # the child keeps its own descriptor
        process = subprocess.Popen(
            hpo("api", "--host", "127.0.0.1", "--port", str(port), "--processes", str(processes)),
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


def start_worker(api_url: str, log: Path, *args: str, **settings: str) -> subprocess.Popen[bytes]:
    """A real ``hpo worker`` process against ``api_url``, its output in ``log``; settings
    become HPO_* variables (polling every 0.3 s unless given)."""
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            hpo("worker", "--api-url", api_url, *args),
            env=child_env(**{"poll_interval_s": "0.3", **settings}),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def raw_socket(url: str, timeout_s: float = 30) -> socket.socket:
    """A plain TCP connection to ``url``'s server, for sending what no HTTP client would."""
    host, _, port = url.removeprefix("http://").partition(":")
    return socket.create_connection((host, int(port)), timeout=timeout_s)


def read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset ends it too);
    raises TimeoutError if the server holds it open past the socket's timeout."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """The status, headers (lower-cased names) and body of one raw HTTP/1.1 answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return int(status_line.split()[1]), headers, body


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


# --- PostgreSQL: a real server of our own on 127.0.0.1, in a temporary directory ---------


def _pg_bin() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not candidates:
        raise RuntimeError(
            "PostgreSQL is not installed; `make test` and `make bench` "
            "install it (scripts/ensure-test-tools.sh)"
        )
    return candidates[-1].parent


class Postgres:
    """A PostgreSQL server of our own. As root it runs as the ``postgres`` user (the server
    refuses root). ``durable=False`` (the tests) turns fsync off; the benchmarks keep
    PostgreSQL's defaults."""

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
        self.bin = _pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="hpo-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._dbs = 0
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c max_connections=300" + ("" if self.durable else " -c fsync=off")
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        import psycopg

        self._dbs += 1
        name = f"hpo_test_{self._dbs}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


GOOD_TRIAL: dict[str, Any] = {
    "learning_rate": 0.003,
    "optimizer": "adam",
    "lr_schedule": "constant",
    "dropout_rate": 0.1,
    "kernel_initializer": "he_normal",
    "hidden_units": 64,
}
"""A configuration that trains well on digits in a few epochs (for trial_lease)."""


def trial_lease(
    params: dict[str, Any],
    epochs: int = 3,
    *,
    dataset: str = "digits",
    family: str = "mlp",
    metric: str = "val_accuracy",
    time_limit_s: float | None = None,
    fold: int = 0,
) -> Lease:
    """A trial's lease as the service would hand it out, for training without one."""
    from search_space.catalog import BUILTIN_DATASETS
    from service.protocol import Lease, ModelRef
    from service.states import JobKind

    return Lease(
        kind=JobKind.TRIAL,
        job_id=1,
        trial_id=1,
        number=0,
        study_id=1,
        study_name="t",
        params=params,
        dataset=BUILTIN_DATASETS[dataset],
        model=ModelRef(family=family),
        epochs=epochs,
        metric=metric,
        direction="minimize" if metric.endswith(("loss", "mae")) else "maximize",
        seed=7,
        fold=fold,
        lease_seconds=60,
        trial_time_limit_s=time_limit_s,
        tensorboard=False,
        max_model_params=10_000_000,
    )


@contextmanager
def running_dashboard(database_url: str, artifacts: Path) -> Iterator[str]:
    """``optuna-dashboard`` on ``database_url`` and its artifacts, on 127.0.0.1; its URL."""
    port = free_port()
    command = Path(sys.executable).parent / "optuna-dashboard"
    process = subprocess.Popen(
        [
            str(command),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--artifact-dir",
            str(artifacts),
            database_url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/api/studies", timeout=2).is_success
        except httpx.TransportError:
            return False

    try:
        wait_for(up, 60, "the dashboard")
        yield url
    finally:
        stop(process)
