"""Scale-out and faults on PostgreSQL, with real processes: several workers on one study,
a worker killed (SIGKILL) or stopped (SIGTERM) mid-trial, the database and the API
restarting mid-study. Each ends with a completed study and nothing lost."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
from optuna.trial import TrialState

from tests.support import (
    AUTH,
    Api,
    Postgres,
    child_env,
    free_port,
    hpo,
    start_api,
    start_worker,
    stop,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.serial]

# Short enough that a killed worker's trial is reaped within the test, long enough that a
# live worker on a loaded 2-core machine never misses it.
FAST = {"lease_seconds": "6", "reap_interval_s": "0.5"}
SAFE = {"lease_seconds": "30", "reap_interval_s": "0.5"}


@pytest.fixture
def pg_api(postgres: Postgres, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Api]:
    """Two API processes on PostgreSQL; tests that must see a lease expire are marked
    ``short_lease``."""
    lease = FAST if request.node.get_closest_marker("short_lease") else SAFE
    server = start_api(tmp_path, database_url=postgres.new_database(), processes=2, **lease)
    yield server
    stop(server.process)


def _worker(api_url: str, log: Path, **settings: str) -> subprocess.Popen[bytes]:
    return start_worker(api_url, log, **{"retry_max_s": "5", **settings})


def _submit(client: httpx.Client, name: str, **spec: Any) -> int:
    body = {
        "name": name,
        "dataset": "digits",
        "n_trials": 3,
        "epochs": 3,
        "fixed": {"optimizer": "adam", "lr_schedule": "constant"},
        **spec,
    }
    r = client.post("/studies", json=body)
    assert r.status_code == 201, r.text
    study_id: int = r.json()["id"]
    return study_id


def _status(client: httpx.Client, study_id: int) -> dict[str, Any]:
    try:
        study: dict[str, Any] = client.get(f"/studies/{study_id}").json()
    except httpx.TransportError:
        return {"status": "unreachable", "trials": {}}
    return study


def _finished(client: httpx.Client, study_id: int) -> bool:
    study = _status(client, study_id)
    return study["status"] == "completed" and study["final_model"]["state"] in ("ready", "failed")


def _running_trial(client: httpx.Client, study_id: int) -> dict[str, Any] | None:
    try:
        trials = client.get(f"/studies/{study_id}/trials").json()
    except httpx.TransportError:
        return None
    running = [t for t in trials if t["state"] == "running" and t["epochs_run"] >= 1]
    return running[0] if running else None


def _counted(api: Api, name: str, n_trials: int) -> list[optuna.trial.FrozenTrial]:
    """The Optuna study has exactly ``n_trials`` counted results, numbered uniquely."""
    trials = optuna.load_study(study_name=name, storage=api.database_url).trials
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    counted = [
        t
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and "hpo_outcome" not in t.user_attrs)
    ]
    assert len(counted) == n_trials, [(t.number, t.state, t.user_attrs) for t in trials]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    return trials


def test_three_workers_share_one_study_exactly(pg_api: Api, tmp_path: Path) -> None:
    with ExitStack() as stack, pg_api.client() as client:
        study_id = _submit(client, "three", n_trials=9, epochs=2)
        workers = [_worker(pg_api.url, tmp_path / f"w{i}.log") for i in range(3)]
        for w in workers:
            stack.callback(stop, w)
        wait_for(lambda: len(client.get("/workers").json()) == 3, 60, "3 live workers")
        seen = client.get("/workers").json()
        assert {w["pid"] for w in seen} == {w.pid for w in workers}
        wait_for(lambda: _finished(client, study_id), 240, "the study to finish")
        study = client.get(f"/studies/{study_id}").json()
    assert study["trials"]["complete"] + study["trials"]["pruned"] + study["trials"]["fail"] == 9
    assert study["trials"]["lost"] == 0
    _counted(pg_api, "three", 9)


@pytest.mark.short_lease
def test_sigkill_mid_trial_loses_nothing(pg_api: Api, tmp_path: Path) -> None:
    with ExitStack() as stack, pg_api.client() as client:
        study_id = _submit(client, "killed", n_trials=2, epochs=40, sanity_check=False)
        doomed = _worker(pg_api.url, tmp_path / "doomed.log")
        stack.callback(stop, doomed)
        wait_for(lambda: _running_trial(client, study_id) is not None, 90, "a trial to run")
        victim = _running_trial(client, study_id)
        assert victim is not None
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        survivor = _worker(pg_api.url, tmp_path / "survivor.log")
        stack.callback(stop, survivor)
        wait_for(lambda: _finished(client, study_id), 240, "the survivor to finish")
        study = client.get(f"/studies/{study_id}").json()
        trials = client.get(f"/studies/{study_id}/trials").json()
    assert study["trials"]["lost"] == 1
    assert study["trials"]["complete"] + study["trials"]["pruned"] == 2
    lost = next(t for t in trials if t["state"] == "lost")
    assert lost["trial_id"] == victim["trial_id"] and lost["reason"].startswith("lost:")
    # The lost trial's parameters ran again, to a result.
    assert any(
        t["params"] == lost["params"] and t["state"] in ("complete", "pruned") for t in trials
    )
    _counted(pg_api, "killed", 2)


def test_sigterm_releases_the_trial_at_once_and_exits_0(pg_api: Api, tmp_path: Path) -> None:
    with ExitStack() as stack, pg_api.client() as client:
        study_id = _submit(client, "scaled-down", n_trials=2, epochs=200, sanity_check=False)
        leaving = _worker(pg_api.url, tmp_path / "leaving.log")
        stack.callback(stop, leaving)
        wait_for(lambda: _running_trial(client, study_id) is not None, 90, "a trial to run")
        leaving.send_signal(signal.SIGTERM)
        assert leaving.wait(timeout=20) == 0, (tmp_path / "leaving.log").read_text()[-3000:]
        trials = client.get(f"/studies/{study_id}/trials").json()
        (released,) = [t for t in trials if t["state"] == "released"]
        assert released["epochs_run"] < 200
        client.post(f"/studies/{study_id}/stop")  # the point is made; save the epochs
    optuna_trials = optuna.load_study(study_name="scaled-down", storage=pg_api.database_url).trials
    # The released parameters came back as the next suggestion; stopping the study failed
    # it, never handed out, like every unused suggestion.
    reruns = [t for t in optuna_trials if "hpo_reruns_trial" in t.user_attrs]
    assert [{**t.user_attrs["fixed_params"], **t.params} for t in reruns] == [released["params"]]
    assert reruns[0].state == TrialState.FAIL
    assert reruns[0].user_attrs["hpo_outcome"] == "discarded"
    assert TrialState.RUNNING not in {t.state for t in optuna_trials}


def test_database_restart_mid_study(postgres: Postgres, pg_api: Api, tmp_path: Path) -> None:
    with ExitStack() as stack, pg_api.client() as client:
        study_id = _submit(client, "db-restart", n_trials=3, epochs=20)
        w = _worker(pg_api.url, tmp_path / "w.log", retry_max_s="60")
        stack.callback(stop, w)
        wait_for(lambda: _running_trial(client, study_id) is not None, 90, "a trial to run")
        postgres.stop("fast")  # every connection of the API drops
        try:
            r = client.get(f"/studies/{study_id}")
            assert r.status_code == 503 and "database is unavailable" in r.json()["message"]
        finally:
            postgres.start()
        wait_for(lambda: _finished(client, study_id), 240, "the study to finish")
        assert w.poll() is None  # the worker rode it out
        study = client.get(f"/studies/{study_id}").json()
    assert study["trials"]["complete"] + study["trials"]["pruned"] == 3
    _counted(pg_api, "db-restart", 3)


def test_api_restart_mid_study_results_retried_and_counted_once(
    postgres: Postgres, tmp_path: Path
) -> None:
    url = postgres.new_database()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # The outage must be shorter than the lease for the worker's retried result to count
    # (a longer one is the SIGKILL case: the trial is lost and runs again).
    outage_proof = {"lease_seconds": "60", "reap_interval_s": "0.5"}
    first = start_api(tmp_path / "a", database_url=url, **outage_proof)
    port = first.url.rsplit(":", 1)[1]
    with ExitStack() as stack, first.client() as client:
        stack.callback(stop, first.process)
        study_id = _submit(client, "api-restart", n_trials=3, epochs=8, sanity_check=False)
        w = _worker(first.url, tmp_path / "w.log", retry_max_s="60")
        stack.callback(stop, w)
        wait_for(lambda: _running_trial(client, study_id) is not None, 90, "a trial to run")
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
        # The worker finishes its epochs meanwhile and keeps offering the result.
        wait_for(
            lambda: "retrying" in (tmp_path / "w.log").read_text(),
            60,
            "the worker to retry against the dead API",
        )
        second = start_api(tmp_path / "b", database_url=url, port=port, **outage_proof)
        stack.callback(stop, second.process)
        wait_for(lambda: _finished(client, study_id), 240, "the study to finish")
        study = client.get(f"/studies/{study_id}").json()
    assert study["trials"]["complete"] + study["trials"]["pruned"] == 3
    assert study["trials"]["lost"] == 0  # the result came in before the lease expired
    _counted(second, "api-restart", 3)


def test_concurrent_leases_across_api_processes_stay_within_the_budget(
    postgres: Postgres, tmp_path: Path
) -> None:
    server = start_api(tmp_path, database_url=postgres.new_database(), processes=3)
    granted: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def grab(i: int) -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=60, auth=AUTH) as c:
                for _ in range(4):
                    r = c.post("/trials/lease", json={"worker": {"id": f"w{i}"}})
                    assert r.status_code in (200, 204), r.text
                    if r.status_code == 200:
                        granted.append(r.json())
        except BaseException as exc:
            errors.append(exc)

    try:
        with server.client() as client:
            _submit(client, "contended", n_trials=10, sanity_check=False)
        threads = [threading.Thread(target=grab, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stop(server.process)
    assert errors == []
    assert len(granted) == 10
    assert len({g["trial_id"] for g in granted}) == 10
    assert sorted(g["number"] for g in granted) == list(range(10))


def test_api_started_before_its_database_waits_instead_of_crash_looping(
    postgres: Postgres, tmp_path: Path
) -> None:
    url = postgres.new_database()
    from service.storage.migrate import migrate

    migrate(url)
    postgres.stop("fast")
    port = free_port()
    log = tmp_path / "api.log"
    try:
        with log.open("wb") as out:
            api = subprocess.Popen(
                hpo("api", "--host", "127.0.0.1", "--port", str(port)),
                env=child_env(database_url=url),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: "database not reachable" in log.read_text(), 30, "a retry")
        assert api.poll() is None  # still waiting, not exited
    finally:
        postgres.start()
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).is_success
            except httpx.TransportError:
                return False

        wait_for(healthy, 60, "the API to come up once the database is back")
    finally:
        stop(api)
