"""Limits that keep a request from exhausting the service or a worker, each answered with a
4xx that names the field, the value and the limit. (They are checked before the database
is touched, so SQLite stands for both backends here.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import start_api, stop

STUDY = {"name": "limits", "dataset": "digits", "n_trials": 4, "epochs": 3}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    server = start_api(
        Path(tmp_path_factory.mktemp("limits")),
        max_trials="50",
        max_epochs="30",
        max_model_params="200000",
        max_body_bytes="4096",
    )
    with server.client() as client:
        yield client
    stop(server.process)


def _problem(r: httpx.Response, status: int = 422) -> dict[str, Any]:
    assert r.status_code == status, r.text
    (problem,) = r.json()["detail"]
    return dict(problem)


def test_study_limits(limited: httpx.Client) -> None:
    post = lambda **change: limited.post("/studies", json={**STUDY, **change})  # noqa: E731
    p = _problem(post(n_trials=51))
    assert p["field"] == "n_trials" and p["input"] == 51 and "at most 50" in p["msg"]
    p = _problem(post(epochs=31))
    assert p["field"] == "epochs" and p["input"] == 31 and "HPO_MAX_EPOCHS" in p["msg"]
    # The schema's own ceilings hold whatever the settings say.
    assert _problem(post(n_trials=10_001))["field"] == "n_trials"
    assert _problem(post(epochs=1_001))["field"] == "epochs"
    for name in ("", "x" * 129, "has space", "../etc", "-leading", "naïve", "a/b"):
        p = _problem(post(name=name))
        assert p["field"] == "name" and p["input"] == name, p
    p = _problem(post(search_space={"batch_size": {"choices": list(range(1, 66))}}))
    assert p["field"] == "search_space.batch_size.choices" and "at most 64" in p["msg"]
    many = {f"p{i}": {"low": 0, "high": 1} for i in range(16)}
    p = _problem(post(search_space=many))
    assert p["field"] == "search_space" and "there are 15" in p["msg"]
    assert post(n_trials=50, epochs=30).status_code == 201
    assert limited.get("/studies").json()[0]["n_trials"] == 50


def test_model_size_is_checked_at_submission(limited: httpx.Client) -> None:
    """digits has 64 features: 2 layers of 512 and 256 units are ~166k parameters, 1024
    units ~600k, over the limit of 200k."""
    ok = {
        **STUDY,
        "name": "small-enough",
        "fixed": {"hidden_layers": 2},
        "search_space": {"hidden_units": {"choices": [64, 512]}},
    }
    assert limited.post("/studies", json=ok).status_code == 201
    big = {**ok, "name": "too-big", "search_space": {"hidden_units": {"choices": [64, 1024]}}}
    p = _problem(limited.post("/studies", json=big))
    assert p["field"] == "search_space.hidden_units", p
    assert "more than the limit of 200000 (HPO_MAX_MODEL_PARAMS)" in p["msg"]
    fixed = {**STUDY, "name": "too-big-fixed", "fixed": {"hidden_units": 2048}}
    assert _problem(limited.post("/studies", json=fixed))["field"] == "fixed.hidden_units"
    names = [s["name"] for s in limited.get("/studies").json()]
    assert "too-big" not in names and "too-big-fixed" not in names


def test_request_body_size(limited: httpx.Client) -> None:
    padded = {
        **STUDY,
        "enqueue": [{"learning_rate": 0.001}] * 100,
        "name": "x" * 100,
        "search_space": {"optimizer": {"choices": ["adam"] * 64}},
    }
    r = limited.post("/studies", json={**padded, "fixed": {"l2": 0.0, "pad": "y" * 5000}})
    assert r.status_code == 413, r.text
    assert "at most 4096 bytes (HPO_MAX_BODY_BYTES)" in r.json()["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"name": "chunked", "dataset": "digits", "n_trials": 1, "epochs": 1, "x": "'
        for _ in range(10):
            yield b"z" * 1000
        yield b'"}'

    r = limited.post("/studies", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert "HPO_MAX_BODY_BYTES" in r.json()["message"]
    assert "chunked" not in [s["name"] for s in limited.get("/studies").json()]
