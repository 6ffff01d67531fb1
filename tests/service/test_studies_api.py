"""Studies over HTTP against a real uvicorn, on a SQLite file and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
from sqlalchemy import create_engine, text

from tests.support import REPO, Api, Postgres, start_api, stop, wait_for

GOOD = {
    "name": "good",
    "dataset": "digits",
    "n_trials": 5,
    "epochs": 3,
    "search_space": {
        "learning_rate": {"low": 0.001, "high": 0.01, "log": True},
        "optimizer": {"choices": ["adam", "rmsprop"]},
    },
    "fixed": {"dropout_rate": 0.2},
}


def test_healthz(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_openapi_docs_are_served(client: httpx.Client) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/studies",
        "/studies/{study_id}",
        "/trials/lease",
        "/trials/{trial_id}/report",
        "/trials/{trial_id}/complete",
        "/trials/{trial_id}/fail",
    } <= set(paths)


def test_create_read_and_list(api: Api, client: httpx.Client) -> None:
    r = client.post("/studies", json=GOOD)
    assert r.status_code == 201, r.text
    study = r.json()
    assert study["status"] == "queued"
    assert study["direction"] == "maximize"  # follows from val_accuracy
    assert study["trials"] == {
        "running": 0,
        "complete": 0,
        "pruned": 0,
        "fail": 0,
        "lost": 0,
        "released": 0,
    }
    assert study["best"] is None
    assert study["search_space"]["optimizer"] == {"choices": ["adam", "rmsprop"]}
    assert study["fixed"]["dropout_rate"] == 0.2
    assert client.get(f"/studies/{study['id']}").json()["name"] == "good"
    assert "good" in [s["name"] for s in client.get("/studies").json()]
    assert client.get(f"/studies/{study['id']}/trials").json() == []
    # The Optuna study has the submitted name, in the same database.
    loaded = optuna.load_study(study_name="good", storage=api.database_url)
    assert loaded.direction == optuna.study.StudyDirection.MAXIMIZE


def test_duplicate_name_is_409(client: httpx.Client) -> None:
    assert client.post("/studies", json={**GOOD, "name": "twice"}).status_code == 201
    r = client.post("/studies", json={**GOOD, "name": "twice"})
    assert r.status_code == 409
    assert "twice" in r.json()["message"]


def test_val_loss_is_minimised(client: httpx.Client) -> None:
    r = client.post("/studies", json={**GOOD, "name": "by-loss", "metric": "val_loss"})
    assert r.json()["direction"] == "minimize"


BAD: list[tuple[dict[str, Any], str, str]] = [
    # (changes to a good body, the field, words of the message)
    ({"name": None}, "name", "Field required"),
    ({"name": "has space"}, "name", "should match pattern"),
    ({"n_trials": 0}, "n_trials", "greater than or equal to 1"),
    ({"epochs": 100000}, "epochs", "less than or equal to 1000"),
    ({"dataset": "cifar"}, "dataset", "must be one of digits"),
    ({"metric": "accuracy"}, "metric", "'val_accuracy', 'val_loss' or 'val_mae'"),
    ({"sampler": "cmaes"}, "sampler", "'tpe', 'random', 'qmc' or 'grid'"),
    ({"colour": "blue"}, "colour", "is not an allowed field"),
    (
        {"search_space": {"learn_rate": {"low": 0.1}}},
        "search_space.learn_rate",
        "is not a known parameter",
    ),
    (
        {"search_space": {"learning_rate": {"low": 0.1, "high": 0.01}}},
        "search_space.learning_rate.low",
        "must be <= high",
    ),
    (
        {"search_space": {"optimizer": {"choices": []}}},
        "search_space.optimizer.choices",
        "must be a non-empty list",
    ),
    ({"fixed": {"dropout_rate": 1.5}}, "fixed.dropout_rate", "must be < 1"),
]


@pytest.mark.parametrize(("change", "field", "words"), BAD, ids=[b[1] for b in BAD])
def test_invalid_body_is_422_naming_field_value_and_allowed(
    api: Api, client: httpx.Client, change: dict[str, Any], field: str, words: str
) -> None:
    name = f"bad-{field.replace('.', '-')}"
    body = {**GOOD, "name": name, **change}
    if change.get("name", "") is None:
        del body["name"]
    r = client.post("/studies", json=body)
    assert r.status_code == 422, r.text
    problems = {p["field"]: p for p in r.json()["detail"]}
    assert field in problems, r.json()
    assert words in problems[field]["msg"]
    assert field in r.json()["message"] and words in r.json()["message"]
    if field not in ("name", "colour"):
        # the offending value is echoed back
        assert problems[field]["input"] is not None
    # Nothing half-written stays behind.
    assert name not in [s["name"] for s in client.get("/studies").json()]
    assert name not in [s.study_name for s in optuna.get_all_study_summaries(api.database_url)]


def test_unknown_study_is_404(client: httpx.Client) -> None:
    r = client.get("/studies/9999")
    assert r.status_code == 404
    assert "9999" in r.json()["message"]
    assert client.post("/studies/9999/stop").status_code == 404
    assert client.get("/studies/9999/trials").status_code == 404


def test_stop(client: httpx.Client) -> None:
    study = client.post("/studies", json={**GOOD, "name": "to-stop"}).json()
    stopped = client.post(f"/studies/{study['id']}/stop").json()
    assert stopped["status"] == "stopped"
    assert client.post(f"/studies/{study['id']}/stop").json()["status"] == "stopped"


def test_malformed_bodies_are_422_not_500(client: httpx.Client) -> None:
    r = client.post("/studies", content=b"not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["message"].startswith("body: is not valid JSON")
    r = client.post("/studies", json=[1, 2])
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "body"
    r = client.post("/studies", json={"dataset": "digits", "n_trials": 1, "epochs": 1})
    assert r.json()["message"] == "name: Field required"


def test_ids_out_of_range_are_422_not_500(client: httpx.Client) -> None:
    huge = 10**20
    for r in (
        client.get(f"/studies/{huge}"),
        client.post(f"/studies/{huge}/stop"),
        client.post(f"/trials/{huge}/report", json={"worker_id": "w", "epoch": 1, "value": 0.5}),
        client.post(
            "/trials/1/complete", json={"worker_id": "w", "value": 0.5, "epochs_run": huge}
        ),
    ):
        assert r.status_code == 422, r.text


def test_the_readmes_422_example_is_what_the_service_answers(client: httpx.Client) -> None:
    body = {
        **GOOD,
        "name": "readme-422",
        "search_space": {"learning_rate": {"low": 0, "high": 0.01, "log": True}},
    }
    r = client.post("/studies", json=body)
    assert r.status_code == 422
    readme = (REPO / "README.md").read_text()
    assert f"`{r.json()['message']}`" in readme, r.json()["message"]


def _half_made(engine: Any, name: str, age_s: int) -> None:
    """The state a submission cut short leaves (the API killed, or the database gone,
    between the row and Optuna's study, found by the soak): a row without its Optuna id."""
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE hpo_studies SET optuna_study_id = NULL, created_at = :at WHERE name = :n"),
            {"at": datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=age_s), "n": name},
        )


def test_a_half_made_study_is_cleared_once_abandoned(fresh_api: Callable[..., Api]) -> None:
    server = fresh_api(reap_interval_s="0.2")
    engine = create_engine(server.database_url)
    body = {"dataset": "digits", "n_trials": 2, "epochs": 2, "sanity_check": False}
    try:
        with server.client() as client:
            for name in ("cut-young", "cut-old", "cut-swept"):
                assert client.post("/studies", json={"name": name, **body}).status_code == 201
            _half_made(engine, "cut-young", 0)
            r = client.post("/studies", json={"name": "cut-young", **body})
            assert r.status_code == 409 and "is being created" in r.json()["message"], r.text
            # The submission is retried after it was abandoned: cleared, and made anew.
            _half_made(engine, "cut-old", 120)
            r = client.post("/studies", json={"name": "cut-old", **body})
            assert r.status_code == 201, r.text
            lease = client.post("/trials/lease", json={"worker": {"id": "w"}}).json()
            assert lease["study_name"] in ("cut-old", "cut-swept"), lease
            # Nobody retries: the reaper clears it, Optuna's study with it.
            _half_made(engine, "cut-swept", 120)

            def swept() -> bool:
                names = [s["name"] for s in client.get("/studies").json()]
                return "cut-swept" not in names

            wait_for(swept, 30, "the reaper to clear the half-made study")
            assert "cut-swept" not in optuna.get_all_study_names(server.database_url)
            assert client.post("/studies", json={"name": "cut-swept", **body}).status_code == 201
    finally:
        engine.dispose()


def test_a_study_cleared_by_one_process_can_be_made_again_by_another(
    fresh_api: Callable[..., Api], tmp_path: Path
) -> None:
    # Each process caches Optuna's study names; the other one clearing a half-made study
    # (and making it anew) must not leave this one answering "already exists" from its cache.
    first = fresh_api(reap_interval_s="3600")
    folder = tmp_path / "second"
    folder.mkdir()
    second = start_api(folder, database_url=first.database_url, reap_interval_s="3600")
    engine = create_engine(first.database_url)
    body = {"name": "twice", "dataset": "digits", "n_trials": 2, "epochs": 2}
    try:
        with first.client() as a, second.client() as b:
            assert b.post("/studies", json={**body, "sanity_check": False}).status_code == 201
            _half_made(engine, "twice", 120)
            r = a.post("/studies", json={**body, "sanity_check": False})
            assert r.status_code == 201, r.text
            made = r.json()["id"]
            lease = b.post("/trials/lease", json={"worker": {"id": "w"}}).json()
            assert lease["study_id"] == made, lease
            _half_made(engine, "twice", 120)
            r = b.post("/studies", json={**body, "sanity_check": False})
            assert r.status_code == 201, r.text
            assert optuna.get_all_study_names(first.database_url) == ["twice"]
    finally:
        engine.dispose()
        stop(second.process)


@pytest.mark.slow
def test_a_half_made_study_whose_optuna_study_resists_deletion_stays_to_clear_later(
    postgres: Postgres, tmp_path: Path
) -> None:
    # Optuna's delete_study swallows an integrity error (a trial written into the study
    # while its cascade runs, e.g. a feeder's draw in flight) and rolls back; clearing
    # must check, or the row goes and leaves the name taken by an Optuna study for ever.
    # A row of another table pointing at one of the study's trials makes it resist. (On
    # SQLite, Optuna's connections do not enforce foreign keys: the study always goes.)
    server = start_api(tmp_path, database_url=postgres.new_database(), reap_interval_s="3600")
    engine = create_engine(server.database_url)
    body = {"name": "stuck", "dataset": "digits", "n_trials": 2, "epochs": 2, "sanity_check": False}
    try:
        with server.client() as client:
            assert client.post("/studies", json=body).status_code == 201
            with engine.begin() as conn:
                conn.execute(
                    text("CREATE TABLE pin (trial_id INTEGER REFERENCES trials(trial_id))")
                )
                conn.execute(text("INSERT INTO pin SELECT min(trial_id) FROM trials"))
            _half_made(engine, "stuck", 120)
            r = client.post("/studies", json=body)
            assert r.status_code == 409 and "is being cleared" in r.json()["message"], r.text
            with engine.begin() as conn:
                assert conn.execute(text("SELECT count(*) FROM hpo_studies")).scalar() == 1
                conn.execute(text("DROP TABLE pin"))
            r = client.post("/studies", json=body)
            assert r.status_code == 201, r.text
            assert optuna.get_all_study_names(server.database_url) == ["stuck"]
    finally:
        engine.dispose()
        stop(server.process)
