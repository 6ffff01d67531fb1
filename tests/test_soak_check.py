"""The soak's checker (``benchmarks.soak_check``) on a real study: a real API on a SQLite
file, the worker protocol over HTTP (complete, report, release, fail, a lease left to
expire), then the checker on a copy of the database: nothing to say about the run as it
happened, and each rule named, with its study and trial, once the copy is tampered with
in SQL (or told of a complete that was never acknowledged as recorded)."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.soak_check import Ack, Status, Violation, check, figures, read
from tests.support import start_api, stop, wait_for

WORKER = "checker-w1"
N_TRIALS = 5


@dataclass
class Run:
    db: Path
    """A standalone copy of the database once the study completed."""
    study: str
    acks: list[Ack]
    statuses: list[Status]
    completed: int
    released: int
    rerun_of_released: int
    lost: int
    failed: int


class _Worker:
    """The protocol over HTTP, recording every answer and every acknowledged complete."""

    def __init__(self, client: httpx.Client) -> None:
        self.c = client
        self.acks: list[Ack] = []
        self.statuses: list[Status] = []

    def post(self, call: str, path: str, body: dict[str, Any], trial: int | None) -> httpx.Response:
        r = self.c.post(path, json=body)
        self.statuses.append(Status(call, r.status_code, trial, r.text[:200]))
        return r

    def lease(self) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = self.post("lease", "/trials/lease", {"worker": {"id": WORKER}}, None)
            if r.status_code == 200:
                job: dict[str, Any] = r.json()
                assert job["kind"] == "trial"
                return job
            assert r.status_code == 204, r.text
        raise AssertionError("no trial to lease")

    def trial(self, job: dict[str, Any], verb: str, **body: Any) -> None:
        trial_id = job["trial_id"]
        r = self.post(
            "report", f"/trials/{trial_id}/report", self._body(epoch=1, value=0.5), trial_id
        )
        assert r.json() == {"action": "continue"}, r.text
        r = self.post(verb, f"/trials/{trial_id}/{verb}", self._body(**body), trial_id)
        assert r.status_code == 200, r.text
        if verb == "complete":
            self.acks.append(Ack(trial_id, job["study_name"], job["params"], body["value"]))

    def _body(self, **fields: Any) -> dict[str, Any]:
        return {"worker_id": WORKER, **fields}


def _trials(c: httpx.Client, study_id: int) -> dict[int, dict[str, Any]]:
    return {t["trial_id"]: t for t in c.get(f"/studies/{study_id}/trials").json()}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("soak-check")
    api = start_api(tmp, lease_seconds="4", reap_interval_s="0.2")
    try:
        with api.client() as c:
            body = {
                "name": "checked",
                "dataset": "digits",
                "n_trials": N_TRIALS,
                "epochs": 2,
                "sanity_check": False,
                "pruner": "none",
            }
            r = c.post("/studies", json=body)
            assert r.status_code == 201, r.text
            study_id = r.json()["id"]
            w = _Worker(c)
            first = w.lease()
            w.trial(first, "complete", value=0.61, epochs_run=2)
            released = w.lease()
            w.trial(released, "release", reason="the checker's test")
            rerun = w.lease()  # a released trial's parameters come back first
            assert rerun["params"] == released["params"]
            w.trial(rerun, "complete", value=0.62, epochs_run=2)
            failed = w.lease()
            w.trial(failed, "fail", reason="the checker's test", epochs_run=1)
            lost = w.lease()  # and left to expire
            wait_for(
                lambda: _trials(c, study_id)[lost["trial_id"]]["state"] == "lost", 30, "a loss"
            )
            for value in (0.63, 0.64):
                w.trial(w.lease(), "complete", value=value, epochs_run=2)
            assert c.get(f"/studies/{study_id}").json()["status"] == "completed"
        db = tmp / "pristine.db"
        with sqlite3.connect(tmp / "hpo.db") as live, sqlite3.connect(db) as copy:
            live.backup(copy)  # consistent, WAL included, while the API runs
    finally:
        stop(api.process)
    yield Run(
        db,
        "checked",
        w.acks,
        w.statuses,
        first["trial_id"],
        released["trial_id"],
        rerun["trial_id"],
        lost["trial_id"],
        failed["trial_id"],
    )


@pytest.fixture
def db(run: Run, tmp_path: Path) -> Path:
    """A copy of the run's database for one test to tamper with."""
    path = tmp_path / "tampered.db"
    shutil.copy(run.db, path)
    return path


def _sql(db: Path, *statements: str, **params: Any) -> None:
    with sqlite3.connect(db) as conn:
        for statement in statements:
            assert conn.execute(statement, params).rowcount >= 1, statement
    conn.close()


def _check(db: Path, run: Run, acks: list[Ack] | None = None, **extra: Any) -> list[Violation]:
    return check(f"sqlite:///{db}", run.acks if acks is None else acks, **extra)


def _named(found: list[Violation], rule: str, trial: int | None = None) -> list[Violation]:
    hits = [v for v in found if v.rule == rule and (trial is None or v.trial_id == trial)]
    assert hits, f"{rule} (trial {trial}) not named in {[str(v) for v in found]}"
    assert all(v.study == "checked" for v in hits if v.rule != "no_5xx")
    return hits


def test_the_run_as_it_happened_breaks_no_rule(run: Run, db: Path) -> None:
    assert _check(db, run, statuses=run.statuses) == []
    # It saw what the run did: every kind of ending, and a re-run of each trial given back.
    facts = figures(read(f"sqlite:///{db}"))
    assert facts["trials_counted"] == N_TRIALS and facts["studies_completed"] == 1
    assert facts["leases_released"] == 1 and facts["leases_lost"] == 1
    assert facts["leases_fail"] == 1 and facts["reruns"] == 2
    assert len(run.acks) == 4 and {s.status for s in run.statuses} <= {200, 204}


def test_a_result_missing_is_named(run: Run, db: Path) -> None:
    _sql(db, "UPDATE hpo_studies SET n_trials = n_trials + 1")
    hits = _named(_check(db, run), "n_trials_counted")
    assert any(f"counts {N_TRIALS} results of n_trials {N_TRIALS + 1}" in v.detail for v in hits)


def test_a_half_made_study_is_named(run: Run, db: Path) -> None:
    _sql(db, "UPDATE hpo_studies SET optuna_study_id = NULL")
    hits = _named(_check(db, run), "n_trials_counted")
    assert any("no Optuna study id" in v.detail for v in hits)


def test_a_result_lost_from_the_service_is_named(run: Run, db: Path) -> None:
    _sql(db, "DELETE FROM hpo_leases WHERE trial_id = :t", t=run.failed)
    found = _check(db, run)
    _named(found, "n_trials_counted")
    _named(found, "counted_once", run.failed)  # Optuna still counts it


def test_a_trial_and_its_rerun_both_counted_is_named(run: Run, db: Path) -> None:
    # The released trial's result "adopted" while its re-run counted too.
    _sql(
        db,
        "UPDATE hpo_leases SET state = 'complete', value = 0.5 WHERE trial_id = :t",
        "UPDATE trials SET state = 'COMPLETE' WHERE trial_id = :t",
        "DELETE FROM trial_user_attributes WHERE trial_id = :t AND key = 'hpo_outcome'",
        "INSERT INTO trial_values (trial_id, objective, value, value_type) "
        "VALUES (:t, 0, 0.5, 'FINITE')",
        t=run.released,
    )
    found = _check(db, run)
    hits = _named(found, "counted_once", run.rerun_of_released)
    assert "counted twice" in hits[0].detail


def test_the_two_views_disagreeing_is_named(run: Run, db: Path) -> None:
    _sql(db, "UPDATE trials SET state = 'PRUNED' WHERE trial_id = :t", t=run.completed)
    _named(_check(db, run, acks=[]), "counted_once", run.completed)


@pytest.mark.parametrize("where", ["optuna", "service"])
def test_an_acknowledged_complete_changed_is_named(run: Run, db: Path, where: str) -> None:
    if where == "optuna":
        _sql(
            db, "UPDATE trial_values SET value = value - 0.25 WHERE trial_id = :t", t=run.completed
        )
    else:
        _sql(db, "UPDATE hpo_leases SET value = value - 0.25 WHERE trial_id = :t", t=run.completed)
    _named(_check(db, run), "ack_kept", run.completed)


def test_an_acknowledged_complete_never_recorded_is_named(run: Run, db: Path) -> None:
    lost = next(a for a in run.acks if a.trial_id == run.completed)
    fake = Ack(run.failed, run.study, lost.params, 0.7)  # "acknowledged", yet failed
    hits = _named(_check(db, run, acks=[*run.acks, fake]), "ack_kept", run.failed)
    assert any("the service holds fail" in v.detail for v in hits)
    assert any("Optuna holds FAIL" in v.detail for v in hits)


@pytest.mark.parametrize("how", ["other params", "no rerun"])
def test_a_lease_given_back_and_not_rerun_alike_is_named(run: Run, db: Path, how: str) -> None:
    if how == "other params":
        _sql(
            db,
            "UPDATE trial_params SET param_value = param_value * 0.5 "
            "WHERE trial_id = :t AND param_name = 'learning_rate'",
            t=run.rerun_of_released,
        )
    else:
        _sql(
            db,
            "DELETE FROM trial_user_attributes WHERE key = 'hpo_reruns_trial' AND trial_id = :t",
            t=run.rerun_of_released,
        )
    hits = _named(_check(db, run), "rerun_same_params", run.released)
    assert ("not {" in hits[0].detail) == (how == "other params"), hits[0].detail


def test_a_lease_left_live_is_named(run: Run, db: Path) -> None:
    _sql(
        db,
        "INSERT INTO hpo_leases (study_id, kind, worker_id, state, epochs_run, deadline, "
        "created_at) SELECT id, 'final', 'ghost', 'active', 0, created_at, created_at "
        "FROM hpo_studies",
    )
    hits = _named(_check(db, run), "no_live_lease")
    assert "final lease" in hits[0].detail and "ghost" in hits[0].detail


def test_a_trial_left_running_in_optuna_is_named(run: Run, db: Path) -> None:
    _sql(db, "UPDATE trials SET state = 'RUNNING' WHERE trial_id = :t", t=run.lost)
    _named(_check(db, run), "no_live_lease", run.lost)


def test_a_server_error_but_503_is_named(run: Run, db: Path) -> None:
    outage = Status("report", 503, run.completed, "the database is unavailable")
    assert _check(db, run, statuses=[*run.statuses, outage]) == []
    error = Status("report", 500, run.completed, "Internal Server Error")
    hits = _named(_check(db, run, statuses=[*run.statuses, error]), "no_5xx", run.completed)
    assert "report answered 500" in hits[0].detail
