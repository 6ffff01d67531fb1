"""The exact inputs a hostile pass over the API found wrong (issue 16), each answered with a
4xx that names the field, nothing stored, and no traceback in the API's log.

Bodies are sent as text (``json.dumps``, which writes a lone surrogate as ``\\ud800``:
valid JSON that decodes to a string no database or JSON answer can encode).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import optuna
import pytest
from sqlalchemy import create_engine, text

from tests.service.test_metrics import _scrape
from tests.support import Api, wait_for

SURROGATE = "\ud800"
STUDY = {"name": "hostile", "dataset": "digits", "n_trials": 3, "epochs": 2, "sanity_check": False}


def _post(client: httpx.Client, path: str, body: Any) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code < 500, r.text
    if r.status_code >= 400:  # an error never gives back more than it was sent (plus words)
        assert len(r.content) <= len(raw) + 1000, len(r.content)
    return r


def _refused(r: httpx.Response, field: str, status: int = 422) -> None:
    assert r.status_code == status, r.text
    assert r.json()["message"].startswith(f"{field}:"), r.json()["message"]


def _studies(client: httpx.Client) -> list[str]:
    return [s["name"] for s in client.get("/studies").json()]


@pytest.fixture
def client(api: Api) -> Iterator[httpx.Client]:
    with api.client() as c:
        yield c
    log = api.log.read_text()
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("name", {"name": SURROGATE}),
        ("dataset", {"dataset": SURROGATE}),
        ("dataset", {"dataset": "digits\x00"}),
        ("fixed.activation", {"fixed": {"activation": SURROGATE}}),
        ("search_space", {"search_space": {SURROGATE: {"low": 0.1, "high": 0.2}}}),
        ("model.family", {"model": {"family": f"mlp{SURROGATE}"}}),
    ],
)
def test_text_that_is_not_text_is_refused_naming_the_field(
    client: httpx.Client, field: str, change: dict[str, Any]
) -> None:
    _refused(_post(client, "/studies", {**STUDY, **change}), field)
    assert "hostile" not in _studies(client)


def test_a_lone_surrogate_in_the_worker_protocol_is_refused(client: httpx.Client) -> None:
    _refused(_post(client, "/trials/lease", {"worker": {"id": SURROGATE}}), "worker.id")
    name = f"surrogate-{time.monotonic_ns()}"
    assert _post(client, "/studies", {**STUDY, "name": name}).status_code == 201
    lease = _post(client, "/trials/lease", {"worker": {"id": "w-s"}}).json()
    trial = lease["trial_id"]
    for verb in ("fail", "release"):
        r = _post(client, f"/trials/{trial}/{verb}", {"worker_id": "w-s", "reason": SURROGATE})
        _refused(r, "reason")
    r = _post(client, f"/trials/{trial}/report", {"worker_id": SURROGATE, "epoch": 1, "value": 1})
    _refused(r, "worker_id")
    r = _post(client, f"/trials/{trial}/release", {"worker_id": "w-s", "reason": "done"})
    assert r.json()["state"] == "released"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_trials", True),
        ("n_trials", "5"),
        ("epochs", 2.5),
        ("seed", "7"),
        ("trial_time_limit_s", False),
        ("sanity_check", 1),
        ("diagnostics", "no"),
    ],
)
def test_numbers_and_flags_take_their_json_type_only(
    client: httpx.Client, field: str, value: Any
) -> None:
    _refused(_post(client, "/studies", {**STUDY, field: value}), field)
    assert "hostile" not in _studies(client)


def test_an_error_is_never_larger_than_its_request(client: httpx.Client) -> None:
    huge = "x" * 1_900_000
    r = _post(client, "/studies", {**STUDY, "dataset": huge})
    _refused(r, "dataset")
    assert len(r.content) < 2000
    assert "(1900000 characters)" in r.json()["detail"][0]["input"]


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"[" * 10_000 + b"]" * 10_000, "nested deeper than"),
        (b'{"name": "\xff\xfe"}', "is not UTF-8"),
        (b'{"n_trials": ' + b"1" * 5000 + b"}", "digits"),
        (b'{"name": ', "Expecting value"),
    ],
)
def test_a_body_that_is_not_json_is_a_422_naming_the_body(
    client: httpx.Client, raw: bytes, why: str
) -> None:
    r = _post(client, "/studies", raw)
    _refused(r, "body")
    assert why in r.json()["message"]


def test_an_epoch_is_reported_once_and_within_the_studys_epochs(
    api: Api, client: httpx.Client
) -> None:
    name = f"epochs-{time.monotonic_ns()}"
    assert _post(client, "/studies", {**STUDY, "name": name}).status_code == 201
    lease = _post(client, "/trials/lease", {"worker": {"id": "w-e"}}).json()
    report = f"/trials/{lease['trial_id']}/report"
    _refused(_post(client, report, {"worker_id": "w-e", "epoch": 50, "value": 0.5}), "epoch")
    for _ in range(2):  # a retry of the same report is answered as the first
        r = _post(client, report, {"worker_id": "w-e", "epoch": 1, "value": 0.5})
        assert r.json() == {"action": "continue"}
    r = _post(client, report, {"worker_id": "w-e", "epoch": 1, "value": 0.9})
    assert r.status_code == 409 and "reported before" in r.json()["message"], r.text
    complete = f"/trials/{lease['trial_id']}/complete"
    r = _post(client, complete, {"worker_id": "w-e", "value": 0.5, "epochs_run": 5000})
    _refused(r, "epochs_run")
    r = _post(client, complete, {"worker_id": "w-e", "value": 0.5, "epochs_run": 2})
    assert r.json()["state"] == "complete"
    # (The oldest open study's trial: on a shared API, maybe another test's re-run.)
    study = optuna.load_study(study_name=lease["study_name"], storage=api.database_url)
    (trial,) = [t for t in study.trials if t.number == lease["number"]]
    assert trial.intermediate_values == {1: 0.5}
    assert trial.user_attrs["epochs_run"] == 2


def test_polling_ids_are_not_workers_and_silent_workers_are_forgotten(
    fresh_api: Callable[..., Api],
) -> None:
    server = fresh_api(lease_seconds="0.5", reap_interval_s="0.2")
    with server.client() as client:
        for i in range(8):  # one token, eight made-up ids, no work for any
            assert (
                _post(client, "/trials/lease", {"worker": {"id": f"ghost-{i}"}}).status_code == 204
            )
        assert client.get("/workers").json() == []
        assert _scrape(client)[("hpo_live_workers", ())] == 0
        assert _post(client, "/studies", STUDY).status_code == 201
        lease = _post(client, "/trials/lease", {"worker": {"id": "real"}}).json()
        assert [w["id"] for w in client.get("/workers").json()] == ["real"]
        assert _scrape(client)[("hpo_live_workers", ())] == 1
        r = _post(client, f"/trials/{lease['trial_id']}/release", {"worker_id": "real"})
        assert r.status_code == 200
    engine = create_engine(server.database_url)
    try:

        def forgotten() -> bool:
            with engine.connect() as conn:
                return conn.scalar(text("SELECT count(*) FROM hpo_workers")) == 0

        wait_for(forgotten, 30, "the silent worker's row to be deleted")  # 20 lease lengths
    finally:
        engine.dispose()
