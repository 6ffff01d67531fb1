"""``hpo up``: the embedded default in one command.

Migrates the database, starts the API and local workers as child processes, submits a demo
study on ``digits`` over the documented space, shows its progress, prints the best trial,
and keeps serving until Ctrl-C (or exits once the demo is done with ``--exit-when-done``).

The API listens on 127.0.0.1 unless ``--host`` says otherwise; the dashboard, which has
no authentication of its own, always does. Tokens not set in ``HPO_API_TOKEN`` and
``HPO_WORKER_TOKEN`` are generated for this run and printed once.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from service.api.auth import generate_token, token_problems
from service.config import Settings, get_settings
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


def _progress_line(study: dict[str, Any], elapsed: float) -> str:
    t = study["trials"]
    done = t["complete"] + t["pruned"] + t["fail"]
    best = study["best"]
    best_text = f"best {study['metric']} {best['value']:.4f}" if best else "no result yet"
    return (
        f"[{elapsed:5.0f}s] {study['name']}: {done}/{study['n_trials']} trials done "
        f"(complete {t['complete']}, pruned {t['pruned']}, failed {t['fail']}, "
        f"running {t['running']}), {best_text}"
    )


def _follow(client: httpx.Client, study_id: int) -> dict[str, Any]:
    """Print progress until the study ends; returns its final state."""
    started = time.monotonic()
    last = ""
    while True:
        study: dict[str, Any] = client.get(f"/studies/{study_id}").raise_for_status().json()
        line = _progress_line(study, time.monotonic() - started)
        if line.split("]", 1)[1] != last:
            print(line, flush=True)
            last = line.split("]", 1)[1]
        if study["status"] in ("stopped", "failed") or (
            study["status"] == "completed"
            and study["final_model"]["state"] in ("ready", "failed", "none")
        ):
            return study
        time.sleep(1.0)


def _tokens(settings: Settings) -> tuple[str, str]:
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
        print(
            "Generated for this run (shown once; export them to use the CLI or to add workers):",
            flush=True,
        )
        for name in fresh:
            print(f"  export {name}={tokens[name]}", flush=True)
    return tokens["HPO_API_TOKEN"], tokens["HPO_WORKER_TOKEN"]


def up(args: argparse.Namespace) -> int:
    settings = get_settings()
    try:
        user_token, worker_token = _tokens(settings)
    except RuntimeError as exc:
        print(f"hpo up: {exc}", file=sys.stderr)
        return 2
    migrate(settings.database_url, busy_timeout_s=settings.sqlite_busy_timeout_s)
    url = f"http://{args.host}:{args.port}"
    # The children log warnings only, so the progress lines stay readable.
    env = {
        "HPO_LOG_LEVEL": "WARNING",
        **os.environ,
        "HPO_API_URL": url,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "HPO_API_TOKEN": user_token,
        "HPO_WORKER_TOKEN": worker_token,
    }
    threads = max(1, (os.cpu_count() or 1) // max(args.workers, 1))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        api = _spawn(["api", "--host", args.host, "--port", str(args.port)], env)
        procs.append(api)
        _wait_healthy(api, url)
        print(f"API at {url} (OpenAPI: {url}/docs), database {settings.database_url}", flush=True)
        for _ in range(args.workers):
            procs.append(_spawn(["worker", "--api-url", url, "--tf-threads", str(threads)], env))
        print(f"{args.workers} local workers, {threads} TensorFlow thread(s) each", flush=True)
        if not args.no_dashboard:
            procs.append(
                subprocess.Popen(
                    [
                        _dashboard_command(),
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(args.dashboard_port),
                        "--artifact-dir",
                        str(settings.artifact_dir),
                        settings.database_url,
                    ],
                    env=env,
                    start_new_session=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            print(
                f"Optuna dashboard at http://127.0.0.1:{args.dashboard_port}/dashboard", flush=True
            )
        code = 0
        if not args.no_demo:
            with httpx.Client(
                base_url=url, timeout=30, headers={"Authorization": f"Bearer {user_token}"}
            ) as client:
                spec = demo_spec(args.trials, args.epochs)
                created = client.post("/studies", json=spec).raise_for_status().json()
                print(
                    f"submitted demo study {created['name']} (id {created['id']}): "
                    f"{spec['n_trials']} trials x {spec['epochs']} epochs on digits",
                    flush=True,
                )
                study = _follow(client, created["id"])
            best = study["best"]
            if study["status"] != "completed" or best is None:
                print(
                    f"demo study ended {study['status']} without a best trial"
                    + (f": {study['reason']}" if study.get("reason") else ""),
                    flush=True,
                )
                code = 1
            else:
                print(f"best trial #{best['number']}: {study['metric']} = {best['value']:.4f}")
                for name, value in best["params"].items():
                    print(f"  {name} = {value}")
                final = study["final_model"]
                if final["state"] == "ready":
                    print(
                        f"best model retrained on train + validation: "
                        f"{final['test_metric']} = {final['test_value']:.4f}; download it "
                        f"from {url}/studies/{study['id']}/model"
                    )
                else:
                    print(f"the best model could not be retrained: {final['reason']}")
                print(
                    f"read it with optuna.load_study(study_name={study['name']!r}, "
                    f"storage={settings.database_url!r})",
                    flush=True,
                )
        if args.exit_when_done:
            return code
        print(f"serving at {url}; press Ctrl-C to stop", flush=True)
        api.wait()
        return api.returncode or 0
    except KeyboardInterrupt:
        print("stopping", flush=True)
        return 0
    except (RuntimeError, httpx.HTTPError) as exc:
        print(f"hpo up: {exc}", file=sys.stderr)
        return 1
    finally:
        _stop_all(procs)
