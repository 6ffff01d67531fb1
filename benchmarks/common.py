"""What every benchmark shares: its command line, the machine it ran on, real services and
workers to measure, and the JSON file each leaves for ``benchmarks.report``.

Each benchmark is a module with ``SIZES`` (``smoke`` for the test suite, ``full`` for
``make bench``) and ``run(size, params, tmp) -> dict``; ``main`` gives it a command line:

    python -m benchmarks.overhead --size smoke --out /tmp/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from tests.support import (
    AUTH,
    WORKER_TOKEN,
    Api,
    Postgres,
    start_api,
    stop,
)

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
"""One JSON file per benchmark; ``benchmarks.report`` turns them into RESULTS.md."""

PACKAGES = (
    "tensorflow",
    "keras",
    "optuna",
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "psycopg",
    "keras-tuner",
    "numpy",
)

Runner = Callable[[str, dict[str, Any], Path], dict[str, Any]]


def quiet_tensorflow(threads: int = 1) -> None:
    """TensorFlow without its start-up chatter, on ``threads`` threads (before it loads)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("HPO_TF_THREADS", str(threads))


def pin_tensorflow(threads: int = 1) -> None:
    """Pin this process's TensorFlow to ``threads`` threads, as each test worker is."""
    from workers.training import configure_tensorflow

    configure_tensorflow(threads)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float:
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return round(pages / 2**30, 1)
    except (ValueError, OSError):
        return 0.0


def postgres_version() -> str | None:
    from tests.support import _pg_bin

    try:
        out = subprocess.run(
            [str(_pg_bin() / "postgres"), "--version"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (RuntimeError, OSError, subprocess.SubprocessError):
        return None
    # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" -> "15.18"
    found = re.search(r"\(PostgreSQL\) (\S+)", out)
    return found.group(1) if found else out.strip()


def machine() -> dict[str, Any]:
    """The machine and the versions a result was measured with."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    versions["postgresql"] = postgres_version()
    versions["sqlite"] = __import__("sqlite3").sqlite_version
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "os": platform.platform(),
        "versions": versions,
    }


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 / p95 / p99 / mean / max of ``values`` (milliseconds in, milliseconds out)."""
    if not values:
        return {
            "p50": float("nan"),
            "p95": float("nan"),
            "p99": float("nan"),
            "mean": float("nan"),
            "max": float("nan"),
        }
    if len(values) == 1:
        cuts = [values[0]] * 99
    else:
        cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "p50": cuts[49],
        "p95": cuts[94],
        "p99": cuts[98],
        "mean": statistics.fmean(values),
        "max": max(values),
    }


def main(
    name: str,
    sizes: dict[str, dict[str, Any]],
    run: Runner,
    argv: list[str] | None = None,
    *,
    options: Mapping[str, tuple[Callable[[str], Any], str]] | None = None,
    verdict: Callable[[dict[str, Any]], str | None] | None = None,
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    after: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """The command line of one benchmark: run it at ``--size`` and write its JSON.

    ``options`` (parameter: (type, help)) become ``--parameter`` flags that override the
    size's value (the type converts the flag's text; ``bool`` makes a flag without a
    value); ``prepare(params)`` returns the parameters the run gets (and its JSON
    records) from the size's and the flags'; ``verdict(result)``, when it returns a
    message, fails the command (exit 1) once the JSON is written; ``after(document)`` runs
    last, once the JSON is written."""
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{name}",
        description=(sys.modules[run.__module__].__doc__ or "").strip().splitlines()[0],
    )
    parser.add_argument(
        "--size",
        choices=sorted(sizes),
        default="full",
        help="smoke: seconds, to keep the benchmark runnable (the test suite); "
        "full: the figures of RESULTS.md",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR,
        help=f"where {name}.json goes (default: {RESULTS_DIR})",
    )
    for key, (kind, text) in (options or {}).items():
        flag = "--" + key.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=None, dest=key, help=text)
            continue
        parser.add_argument(flag, type=kind, dest=key, help=f"{text} (default: the size's)")
    args = parser.parse_args(argv)
    params = dict(sizes[args.size])
    params.update({k: getattr(args, k) for k in options or {} if getattr(args, k) is not None})
    if prepare is not None:
        params = prepare(params)
    started = time.monotonic()
    print(f"[{name}] size {args.size}: {params}", flush=True)
    with tempfile.TemporaryDirectory(prefix=f"hpo-bench-{name}-") as tmp:
        result = run(args.size, params, Path(tmp))
    document = {
        "benchmark": name,
        "size": args.size,
        "params": params,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - started, 1),
        "machine": machine(),
        "result": result,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{name}.json"
    path.write_text(json.dumps(document, indent=2, allow_nan=True) + "\n")
    print(f"[{name}] done in {document['duration_s']} s: {path}", flush=True)
    problem = verdict(result) if verdict is not None else None
    if problem:
        print(f"[{name}] FAILED: {problem}", file=sys.stderr, flush=True)
    if after is not None:
        after(document)
    return 1 if problem else 0


# --- real services ----------------------------------------------------------------------


@contextmanager
def running_api(
    tmp: Path, *, database_url: str | None = None, processes: int = 1, **settings: str
) -> Iterator[Api]:
    """A real ``hpo api`` (uvicorn on 127.0.0.1) on a SQLite file in ``tmp`` or on
    ``database_url``, with ``processes`` uvicorn processes and ``settings`` as HPO_*
    variables; stopped on exit."""
    tmp.mkdir(parents=True, exist_ok=True)
    api = start_api(tmp, database_url=database_url, processes=processes, **settings)
    try:
        yield api
    finally:
        stop(api.process)


@contextmanager
def running_postgres() -> Iterator[Postgres]:
    """A PostgreSQL server of our own with its default durability (fsync on)."""
    server = Postgres(durable=True)
    try:
        yield server
    finally:
        server.close()


def user_client(api: Api) -> httpx.Client:
    return httpx.Client(base_url=api.url, timeout=60, auth=AUTH)


def create_study(api: Api, **spec: Any) -> dict[str, Any]:
    """POST /studies; raises with the service's message when it refuses."""
    with user_client(api) as c:
        response = c.post("/studies", json=spec)
    if response.status_code != 201:
        raise RuntimeError(f"POST /studies {response.status_code}: {response.text}")
    study: dict[str, Any] = response.json()
    return study


def get_study(api: Api, study_id: int) -> dict[str, Any]:
    with user_client(api) as c:
        response = c.get(f"/studies/{study_id}")
    response.raise_for_status()
    study: dict[str, Any] = response.json()
    return study


def wait_study(
    api: Api, study_id: int, statuses: tuple[str, ...], timeout_s: float, interval_s: float = 0.1
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        study = get_study(api, study_id)
        if study["status"] in statuses:
            return study
        if time.monotonic() > deadline:
            raise TimeoutError(f"study {study_id} still {study['status']} after {timeout_s}s")
        time.sleep(interval_s)


def in_process_worker(
    api_url: str, tmp: Path, *, client_class: type | None = None, **client_args: Any
) -> Any:
    """A real ``workers.loop.Worker`` in this process (it trains in a trainer process),
    optionally talking through a ``ServiceClient`` subclass that measures its calls."""
    from pydantic import SecretStr

    from workers.config import WorkerSettings
    from workers.loop import Worker

    settings = WorkerSettings(
        api_url=api_url,
        worker_token=SecretStr(WORKER_TOKEN),
        tf_threads=1,
        poll_interval_s=0.2,
        allow_downloads=False,
        cache_dir=tmp / "cache",
        artifact_dir=tmp / "artifacts",
    )
    worker = Worker(settings)
    if client_class is not None:
        worker.client.close()
        worker.client = client_class(
            api_url,
            worker=worker.identity,
            token=WORKER_TOKEN,
            stopping=worker._stopping,
            **client_args,
        )
    return worker


def default_space_configs(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` configurations drawn at random from the default search space (the searched
    parameters only: the rest take their defaults)."""
    import optuna

    from search_space import SearchSpace
    from search_space.optuna_space import suggest
    from search_space.params import BRIEF_PARAMS

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.parse(None, None)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configs = []
    for _ in range(n):
        params = suggest(study.ask(), space)
        configs.append({k: v for k, v in params.items() if k in BRIEF_PARAMS})
    return configs


def wait_pulling(logs: list[Path], timeout_s: float = 120) -> None:
    """Until every worker is asking for work (its log says it is pulling). Not from GET
    /workers: a worker that has polled and found nothing is not recorded there."""
    expected = len(logs)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(log.exists() and "pulling from" in log.read_text() for log in logs):
            return
        time.sleep(0.3)
    raise TimeoutError(f"{expected} workers did not come up in {timeout_s}s")
