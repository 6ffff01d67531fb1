"""Who may call what. The walk goes over every operation of the OpenAPI schema, so a new
route is checked the day it is added: without a token, with a wrong one, with another
scheme, and with the other role's token, each is a 401 that says nothing more; with its own
token it is not."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    USER_TOKEN,
    WORKER_PREFIXES,
    WORKER_TOKEN,
    Api,
    child_env,
    free_port,
    hpo,
    parse_answer,
    raw_socket,
    read_to_close,
    start_worker,
)

OPEN = {("GET", "/healthz")}
EITHER = {("GET", "/datasets/{name}/file")}


def _operations(client: httpx.Client) -> list[tuple[str, str]]:
    schema: dict[str, Any] = client.get("/openapi.json").json()
    return sorted((method.upper(), path) for path, ops in schema["paths"].items() for method in ops)


def _role(method: str, path: str) -> str:
    if (method, path) in OPEN:
        return "open"
    if (method, path) in EITHER:
        return "either"
    return "worker" if path.startswith(WORKER_PREFIXES) else "user"


def _call(
    api: Api, method: str, path: str, token: str | None, scheme: str = "Bearer"
) -> httpx.Response:
    url = path.replace("{name}", "digits")
    for param in ("{study_id}", "{trial_id}", "{job_id}"):
        url = url.replace(param, "1")
    headers = {} if token is None else {"Authorization": f"{scheme} {token}"}
    # An empty body: a refusal must come before the body is even validated.
    return httpx.request(
        method, api.url + url, headers=headers, timeout=30, json={} if method == "POST" else None
    )


def test_every_route_refuses_missing_wrong_and_foreign_tokens(api: Api) -> None:
    with api.client() as c:
        operations = _operations(c)
    assert len(operations) >= 20, operations  # the walk is not vacuous
    refusal = None
    for method, path in operations:
        role = _role(method, path)
        if role == "open":
            assert _call(api, method, path, None).status_code == 200
            continue
        own = WORKER_TOKEN if role == "worker" else USER_TOKEN
        foreign = {"user": [WORKER_TOKEN], "worker": [USER_TOKEN], "either": []}[role]
        attempts = [
            _call(api, method, path, None),
            _call(api, method, path, "wrong-" + own),
            _call(api, method, path, own[:-1]),
            _call(api, method, path, own, scheme="Basic"),
            *(_call(api, method, path, t) for t in foreign),
        ]
        for r in attempts:
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.headers["WWW-Authenticate"] == "Bearer"
            # One answer for every refusal: nothing tells a missing token from a wrong one.
            refusal = refusal or r.json()
            assert r.json() == refusal, (method, path)
        for token in [USER_TOKEN, WORKER_TOKEN] if role == "either" else [own]:
            r = _call(api, method, path, token)
            assert r.status_code != 401, (method, path, r.text)


def test_the_token_is_checked_before_the_body_is_read(api: Api) -> None:
    """No token: a 401 even for a body that would be a 422 (bad JSON) or a 413 (too big),
    so nothing is parsed or spooled for someone without a token."""
    broken = httpx.post(
        f"{api.url}/studies", content=b'{"name": ', headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 401, broken.text
    huge = httpx.post(
        f"{api.url}/studies",
        content=b"x" * (3 * 1024 * 1024),
        headers={"Content-Type": "application/json"},
    )
    assert huge.status_code == 401, huge.text
    upload = httpx.post(
        f"{api.url}/jobs/1/model",
        files={"file": ("m.keras", b"PK" * 1000)},
        headers={"Authorization": f"Bearer {USER_TOKEN}"},
    )
    assert upload.status_code == 401, upload.text


def _raw_call(api: Api, method: str, path: str, *tokens: str) -> tuple[int, str]:
    """``method path`` with one Authorization header per token, each on its own line (as
    no HTTP client library would send them); a POST sends a lease's body."""
    lines = "".join(f"Authorization: Bearer {t}\r\n" for t in tokens)
    body = '{"worker": {"id": "two-headers"}}' if method == "POST" else ""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: t\r\n{lines}Connection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with raw_socket(api.url) as sock:
        sock.sendall((head + body).encode())
        status, _, answer = parse_answer(read_to_close(sock))
    return status, answer.decode()


@pytest.mark.parametrize(
    ("method", "path", "good"),
    [
        ("GET", "/studies", USER_TOKEN),
        ("POST", "/trials/lease", WORKER_TOKEN),
        ("GET", "/healthz", USER_TOKEN),
    ],
)
def test_two_authorization_headers_are_refused_whatever_their_values(
    api: Api, method: str, path: str, good: str
) -> None:
    """Which of two headers counts must not depend on the reader: the first decided, so a
    valid one followed by anything passed. Two are a 400 on every route, open ones too."""
    wrong = "wrong-" + good
    status, body = _raw_call(api, method, path, good)
    assert status in (200, 204), body  # one header: the raw request itself is fine
    for pair in [(good, wrong), (wrong, good), (good, good)]:
        status, body = _raw_call(api, method, path, *pair)
        assert status == 400, (pair, body)
        assert "2 Authorization headers: send exactly one" in body, body


def test_the_schema_declares_each_routes_token(api: Api) -> None:
    with api.client() as c:
        schema = c.get("/openapi.json").json()
    assert set(schema["components"]["securitySchemes"]) == {"UserToken", "WorkerToken"}
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            declared = {name for requirement in op.get("security", []) for name in requirement}
            expected = {
                "open": set(),
                "either": {"UserToken", "WorkerToken"},
                "user": {"UserToken"},
                "worker": {"WorkerToken"},
            }[_role(method.upper(), path)]
            assert declared == expected, (method, path, declared)


def test_a_worker_token_cannot_submit_and_a_user_token_cannot_lease(api: Api) -> None:
    study = {"name": "not-yours", "dataset": "digits", "n_trials": 1, "epochs": 1}
    as_worker = {"Authorization": f"Bearer {WORKER_TOKEN}"}
    as_user = {"Authorization": f"Bearer {USER_TOKEN}"}
    assert httpx.post(f"{api.url}/studies", json=study, headers=as_worker).status_code == 401
    lease = {"worker": {"id": "intruder"}}
    assert httpx.post(f"{api.url}/trials/lease", json=lease, headers=as_user).status_code == 401
    assert httpx.post(f"{api.url}/studies", json=study, headers=as_user).status_code == 201
    r = httpx.post(f"{api.url}/trials/lease", json=lease, headers=as_worker)
    assert r.status_code == 200 and r.json()["study_name"] == "not-yours"


@pytest.mark.parametrize(
    ("tokens", "words"),
    [
        ({}, "HPO_API_TOKEN is not set; HPO_WORKER_TOKEN is not set"),
        ({"HPO_API_TOKEN": "short", "HPO_WORKER_TOKEN": WORKER_TOKEN}, "shorter than 16"),
        ({"HPO_API_TOKEN": USER_TOKEN, "HPO_WORKER_TOKEN": USER_TOKEN}, "must differ"),
    ],
)
def test_the_api_refuses_to_start_without_two_good_tokens(
    tmp_path: Path, tokens: dict[str, str], words: str
) -> None:
    env = {k: v for k, v in child_env().items() if not k.endswith("_TOKEN")} | tokens
    env["HPO_DATABASE_URL"] = f"sqlite:///{tmp_path}/hpo.db"
    done = subprocess.run(
        hpo("api", "--port", str(free_port())),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert words in done.stderr and "hpo up" in done.stderr, done.stderr


@pytest.mark.slow  # a real worker process: TensorFlow starts
@pytest.mark.serial
def test_a_worker_with_a_wrong_token_stops_and_says_why(api: Api, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    worker = start_worker(api.url, log, worker_token="not-the-worker-token-at-all")
    assert worker.wait(timeout=60) == 2, log.read_text()
    assert "refused this worker's token" in log.read_text()
