"""Idempotency-Key on POST /studies and POST /datasets, on SQLite and PostgreSQL: a
retried request gets the first answer and acts once."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.support import Api


def _study(name: str, **overrides: Any) -> dict[str, Any]:
    return {"name": name, "dataset": "digits", "n_trials": 4, "epochs": 2, **overrides}


def _key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def _named(client: httpx.Client, name: str) -> list[dict[str, Any]]:
    return [s for s in client.get("/studies").json() if s["name"] == name]


def test_a_repeated_key_creates_one_study_and_returns_the_first_answer(
    client: httpx.Client,
) -> None:
    key = _key()
    first = client.post("/studies", json=_study("idem-1"), headers=key)
    assert first.status_code == 201, first.text
    again = client.post("/studies", json=_study("idem-1"), headers=key)
    assert again.status_code == 201, again.text
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(_named(client, "idem-1")) == 1
    # Without a key, the same request is a second attempt at a taken name.
    assert client.post("/studies", json=_study("idem-1")).status_code == 409


def test_concurrent_retries_with_one_key_create_one_study(api: Api) -> None:
    key = _key()

    def submit(_: int) -> httpx.Response:
        with api.client() as c:
            return c.post("/studies", json=_study("idem-race"), headers=key)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(submit, range(8)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {201, 409}, [r.text for r in answers]
    assert 201 in codes
    created = {r.json()["id"] for r in answers if r.status_code == 201}
    assert len(created) == 1
    with api.client() as c:
        assert len(_named(c, "idem-race")) == 1
        late = c.post("/studies", json=_study("idem-race"), headers=key)
        assert late.status_code == 201 and late.json()["id"] in created


def test_a_key_reused_for_a_different_request_is_refused(client: httpx.Client) -> None:
    key = _key()
    assert client.post("/studies", json=_study("idem-2"), headers=key).status_code == 201
    r = client.post("/studies", json=_study("idem-3"), headers=key)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["field"] == "Idempotency-Key"
    assert "different POST /studies request" in r.json()["message"]
    assert _named(client, "idem-3") == []


def test_a_failed_request_gives_its_key_back(client: httpx.Client) -> None:
    key = _key()
    r = client.post("/studies", json=_study("idem-4", dataset="nope"), headers=key)
    assert r.status_code == 422
    # The key holds no answer: the corrected request runs, under the same key.
    r = client.post("/studies", json=_study("idem-4"), headers=key)
    assert r.status_code == 201, r.text


def test_malformed_keys_are_422(client: httpx.Client) -> None:
    for bad in ("has space", "x" * 256):
        r = client.post("/studies", json=_study("idem-5"), headers={"Idempotency-Key": bad})
        assert r.status_code == 422, r.text
        assert "idempotency-key" in r.json()["message"].lower()
    assert _named(client, "idem-5") == []


def test_a_repeated_upload_key_stores_one_data_set(client: httpx.Client) -> None:
    key = _key()
    rows = "a,b,y\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(60))

    def upload() -> httpx.Response:
        return client.post(
            "/datasets",
            data={"name": "idem-data", "label_column": "y"},
            files={"file": ("d.csv", rows.encode())},
            headers=key,
        )

    first, again = upload(), upload()
    assert first.status_code == again.status_code == 201, (first.text, again.text)
    assert again.json() == first.json()
    names = [d["name"] for d in client.get("/datasets").json()]
    assert names.count("idem-data") == 1
