"""``hpo up``: the embedded default in one command.

Migrates the database, starts the API and local workers as child processes, submits a demo
study on ``digits`` over the documented space, shows its progress, prints the best trial,
and keeps serving until Ctrl-C (or exits once the demo is done with ``--exit-when-done``).

The API listens on 127.0.0.1 unless ``--host`` says otherwise; the dashboard, which has
no authentication of its own, always does. Tokens not set in ``HPO_API_TOKEN`` and
``HPO_WORKER_TOKEN`` are generated for this run and printed once.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from pydantic import SecretStr
from rich.console import Console

from service.api.auth import generate_token, token_problems
from service.cli import render
from service.client import Client, ServiceError
from service.config import Settings, get_settings
from service.states import StudyStatus
from service.storage.migrate import migrate

DEMO_SEED = 42


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A session of its own: Ctrl-C reaches only `hpo up`, which then stops the workers
    # (they release their trials to the still-running API) before the API.
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args], env=env, start_new_session=True
    )


def _dashboard_command() -> str:
    """optuna-dashboard from this environment (it is a dependency)."""
    beside = Path(sys.executable).parent / "optuna-dashboard"
    return str(beside) if beside.exists() else shutil.which("optuna-dashboard") or str(beside)


def _wait_healthy(api: subprocess.Popen[bytes], url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise RuntimeError(
                f"the API exited with code {api.returncode} before it was up (is the port in use?)"
            )
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the API did not answer at {url}/healthz within {timeout_s:g}s")


def _stop(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """SIGTERM, then SIGKILL whoever is still running after ``timeout_s``."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Workers first (each finishes its epoch and releases its trial), then the API."""
    _stop(procs[1:], timeout_s=30.0)
    _stop(procs[:1], timeout_s=15.0)


def demo_spec(trials: int, epochs: int) -> dict[str, Any]:
    """The demo: the five parameters the brief names, over their documented ranges."""
    return {
        "name": "demo-digits-" + datetime.now().strftime("%Y%m%d-%H%M%S"),
        "dataset": "digits",
        "n_trials": trials,
        "epochs": epochs,
        "metric": "val_accuracy",
        "seed": DEMO_SEED,
    }


def _tokens(settings: Settings, out: Console) -> tuple[str, str]:
    """The user and worker tokens: the configured ones, or fresh ones printed once."""
    given = {"HPO_API_TOKEN": settings.api_token, "HPO_WORKER_TOKEN": settings.worker_token}
    tokens = {name: secret.get_secret_value() if secret else "" for name, secret in given.items()}
    fresh = [name for name, value in tokens.items() if not value]
    for name in fresh:
        tokens[name] = generate_token()
    problems = token_problems(
        settings.model_copy(
            update={
                "api_token": SecretStr(tokens["HPO_API_TOKEN"]),
                "worker_token": SecretStr(tokens["HPO_WORKER_TOKEN"]),
            }
        )
    )
    if problems:
        raise RuntimeError("; ".join(problems))
    if fresh:
        out.print(
            "Generated for this run (shown once; export them to use the CLI or to add workers):"
        )
        for name in fresh:
            out.print(f"  export {name}={tokens[name]}", markup=False)
    return tokens["HPO_API_TOKEN"], tokens["HPO_WORKER_TOKEN"]


@dataclass(frozen=True)
class UpOptions:
    """``hpo up``'s options."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    trials: int = 20
    epochs: int = 20
    demo: bool = True
    dashboard_port: int = 8080
    dashboard: bool = True
    exit_when_done: bool = False


def _start_dashboard(
    settings: Settings, port: int, env: dict[str, str], out: Console
) -> subprocess.Popen[bytes]:
    dashboard = subprocess.Popen(
        [
            _dashboard_command(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--artifact-dir",
            str(settings.artifact_dir),
            settings.database_url,
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out.print(f"Optuna dashboard at http://127.0.0.1:{port}/dashboard", markup=False)
    return dashboard


def _run_demo(opts: UpOptions, url: str, token: str, settings: Settings, out: Console) -> int:
    """Submit the demo, follow it, print its best trial; 1 if it ended without one."""
    with Client(url, token) as client:
        study = client.submit(demo_spec(opts.trials, opts.epochs))
        out.print(
            f"submitted demo study {study.name} (id {study.id}): "
            f"{study.n_trials} trials x {study.epochs} epochs on {study.dataset}",
            markup=False,
        )
        with render.Follow(out) as follow:
            study = client.wait(study, on_progress=follow)
    if study.status != StudyStatus.COMPLETED or study.best is None:
        out.print(
            f"demo study ended {study.status} without a best trial"
            + (f": {study.reason}" if study.reason else ""),
            markup=False,
        )
        return 1
    out.print(render.best_text(study, url), markup=False)
    out.print(
        f"read it with optuna.load_study(study_name={study.name!r}, "
        f"storage={settings.database_url!r})",
        markup=False,
    )
    return 0


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(opts: UpOptions) -> int:
    """Run ``hpo up``; returns the exit code."""
    settings = get_settings()
    out = render.console()
    try:
        user_token, worker_token = _tokens(settings, out)
    except RuntimeError as exc:
        render.error("up", exc)
        return 2
    migrate(settings.database_url, busy_timeout_s=settings.sqlite_busy_timeout_s)
    url = f"http://{opts.host}:{opts.port}"
    # The children log warnings only, so the progress stays readable.
    env = {
        "HPO_LOG_LEVEL": "WARNING",
        **os.environ,
        "HPO_API_URL": url,
        "HPO_API_TOKEN": user_token,
        "HPO_WORKER_TOKEN": worker_token,
    }
    # TensorFlow's C++ side logs "failed call to cuInit" and the like at ERROR: 3 hides it.
    worker_env = {**env, "TF_CPP_MIN_LOG_LEVEL": "3"}
    threads = max(1, (os.cpu_count() or 1) // max(opts.workers, 1))
    procs: list[subprocess.Popen[bytes]] = []
    # `kill` (SIGTERM, as a supervisor stops a process) ends `hpo up` as Ctrl-C does: the
    # workers release their trials, then the API stops. The children run in sessions of
    # their own, so without this they would outlive it.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        api = _spawn(["api", "--host", opts.host, "--port", str(opts.port)], env)
        procs.append(api)
        _wait_healthy(api, url)
        out.print(
            f"API at {url} (OpenAPI: {url}/docs), database {settings.database_url}", markup=False
        )
        for _ in range(opts.workers):
            args = ["worker", "--api-url", url, "--tf-threads", str(threads)]
            procs.append(_spawn(args, worker_env))
        out.print(f"{opts.workers} local workers, {threads} TensorFlow thread(s) each")
        if opts.dashboard:
            procs.append(_start_dashboard(settings, opts.dashboard_port, env, out))
        code = _run_demo(opts, url, user_token, settings, out) if opts.demo else 0
        if opts.exit_when_done:
            return code
        out.print(f"serving at {url}; press Ctrl-C to stop", markup=False)
        api.wait()
        return api.returncode or 0
    except KeyboardInterrupt:
        out.print("stopping")
        return 0
    except (RuntimeError, ServiceError) as exc:
        render.error("up", exc)
        return 1
    finally:
        _stop_all(procs)
