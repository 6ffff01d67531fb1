"""docker-compose.yml, checked by Debian's docker-compose (no Docker engine needed), and
the constraints that make `docker compose up --scale worker=N` work."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.support import REPO


def _config(**env: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("docker-compose") is None:
        pytest.fail(
            "docker-compose is not installed; `make test` installs it "
            "(scripts/ensure-test-tools.sh)"
        )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "HPO_"))}
    return subprocess.run(
        ["docker-compose", "-f", str(REPO / "docker-compose.yml"), "config"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


SECRETS = {
    "POSTGRES_PASSWORD": "s3cret",
    "HPO_API_TOKEN": "user-token-0123456789",
    "HPO_WORKER_TOKEN": "worker-token-0123456789",
}


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    done = _config(**SECRETS)
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = yaml.safe_load(done.stdout)
    return parsed


@pytest.fixture(scope="module")
def services(config: dict[str, Any]) -> dict[str, Any]:
    parsed: dict[str, Any] = config["services"]
    return parsed


def test_compose_file_is_valid_and_has_every_part(services: dict[str, Any]) -> None:
    assert set(services) == {"db", "migrate", "api", "worker", "dashboard"}


def test_workers_scale(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker
    env = worker["environment"]
    assert env["HPO_API_URL"] == "http://api:8000"
    assert not any("DATABASE" in key or "PASSWORD" in key for key in env)  # no credentials
    assert env["HPO_WORKER_TOKEN"] == SECRETS["HPO_WORKER_TOKEN"]
    assert "HPO_API_TOKEN" not in env  # a worker host cannot submit or read studies
    assert worker["depends_on"]["api"]["condition"] == "service_healthy"


def test_workers_reach_the_api_only(services: dict[str, Any]) -> None:
    """Not the database, and not the dashboard (no authentication of its own)."""
    nets = {name: set(service["networks"]) for name, service in services.items()}
    assert nets["worker"] & nets["api"]
    for other in ("db", "dashboard", "migrate"):
        assert not nets["worker"] & nets[other], other
    assert nets["api"] & nets["db"] and nets["dashboard"] & nets["db"]


def test_start_order_db_then_migrate_then_api(
    config: dict[str, Any], services: dict[str, Any]
) -> None:
    db, migrate, api = services["db"], services["migrate"], services["api"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    (volume,) = db["volumes"]
    source, target = (
        (volume["source"], volume["target"]) if isinstance(volume, dict) else volume.split(":")[:2]
    )
    assert target == "/var/lib/postgresql/data" and source in config["volumes"]  # named
    assert migrate["command"] == ["migrate"]
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    url = "postgresql+psycopg://hpo:s3cret@db:5432/hpo"
    assert migrate["environment"]["HPO_DATABASE_URL"] == url
    assert api["environment"]["HPO_DATABASE_URL"] == url
    assert url in services["dashboard"]["command"]  # the dashboard reads the same database


def _host_ip(port: dict[str, Any] | str) -> str:
    return str(port["host_ip"] if isinstance(port, dict) else port.split(":")[0])


def test_published_ports_stay_on_loopback_by_default(services: dict[str, Any]) -> None:
    for name in ("api", "dashboard"):
        (port,) = services[name]["ports"]
        assert _host_ip(port) == "127.0.0.1", (name, port)


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_the_password_and_both_tokens_are_required(missing: str) -> None:
    done = _config(**{k: v for k, v in SECRETS.items() if k != missing})
    assert done.returncode != 0
    assert f"set {missing} in .env" in done.stderr


def test_the_api_has_both_tokens_and_the_dashboard_stays_on_loopback() -> None:
    done = _config(**SECRETS, HPO_BIND="0.0.0.0")
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    env = services["api"]["environment"]
    assert env["HPO_API_TOKEN"] == SECRETS["HPO_API_TOKEN"]
    assert env["HPO_WORKER_TOKEN"] == SECRETS["HPO_WORKER_TOKEN"]
    (api_port,) = services["api"]["ports"]
    (dashboard_port,) = services["dashboard"]["ports"]
    assert _host_ip(api_port) == "0.0.0.0"
    assert _host_ip(dashboard_port) == "127.0.0.1"


def test_env_example_names_every_variable_the_compose_file_reads() -> None:
    used = set(re.findall(r"\$\{(\w+)", (REPO / "docker-compose.yml").read_text()))
    example = (REPO / ".env.example").read_text()
    assert used <= set(re.findall(r"^(\w+)=", example, re.M))


def test_dockerfile_is_slim_non_root_cpu_by_default_with_a_gpu_argument() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}-slim$", text, re.M)
    assert re.search(r"^USER hpo$", text, re.M)
    assert 'ARG EXTRAS=""' in text  # CPU TensorFlow unless EXTRAS=gpu
    assert "gpu" in (REPO / "pyproject.toml").read_text().split("[project.optional")[1]


def test_api_and_dashboard_share_the_artifact_store(services: dict[str, Any]) -> None:
    def mounts(service: dict[str, Any]) -> set[str]:
        return {
            v if isinstance(v, str) else f"{v['source']}:{v['target']}"
            for v in service.get("volumes", [])
        }

    shared = "artifacts:/home/hpo/artifacts"
    assert any(m.startswith(shared) for m in mounts(services["api"]))
    assert any(m.startswith(shared) for m in mounts(services["dashboard"]))
    assert "/home/hpo/artifacts" in services["dashboard"]["command"]
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "chown -R hpo:hpo /home/hpo" in dockerfile  # volumes writable by the non-root user
