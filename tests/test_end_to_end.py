"""The whole path: uvicorn on 127.0.0.1, a real `hpo worker` process, a study submitted over
HTTP, Keras training on digits, the results read back with optuna.load_study."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.support import Api, free_port, start_api, start_worker, stop, wait_for

BRIEF = {"learning_rate", "optimizer", "lr_schedule", "dropout_rate", "kernel_initializer"}

pytestmark = [pytest.mark.slow, pytest.mark.serial]


def test_study_over_http_trained_by_a_worker_read_back_with_optuna(
    fresh_api: Callable[..., Api], tmp_path: Path
) -> None:
    server = fresh_api()
    with server.client() as client:
        r = client.post(
            "/studies",
            json={"name": "e2e", "dataset": "digits", "n_trials": 3, "epochs": 2, "seed": 1},
        )
        assert r.status_code == 201, r.text
        study_id = r.json()["id"]
        log = tmp_path / "worker.log"
        worker = start_worker(server.url, log, "--exit-when-idle")
        try:
            assert worker.wait(timeout=240) == 0, log.read_text()
        finally:
            stop(worker)
        study = client.get(f"/studies/{study_id}").json()
        assert study["status"] == "completed", (study, log.read_text())
        assert (
            study["trials"]["complete"] + study["trials"]["pruned"] + study["trials"]["fail"] == 3
        )
        trials = client.get(f"/studies/{study_id}/trials").json()
        assert all(t["epochs_run"] >= 1 for t in trials)

    loaded = optuna.load_study(study_name="e2e", storage=server.database_url)
    assert len(loaded.trials) == 3
    assert {t.number for t in loaded.trials} == {0, 1, 2}
    for t in loaded.trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED), t
        assert set(t.params) >= BRIEF
        assert ("lr_decay_rate" in t.params) == (t.params["lr_schedule"] == "exponential")
        assert set(t.intermediate_values) <= {1, 2} and 1 in t.intermediate_values
    assert loaded.best_value == study["best"]["value"]
    assert 0.0 <= loaded.best_value <= 1.0


def test_worker_keeps_polling_until_told_to_stop(
    fresh_api: Callable[..., Api], tmp_path: Path
) -> None:
    server = fresh_api()
    log = tmp_path / "worker.log"
    worker = start_worker(server.url, log, poll_interval_s="0.2")
    try:
        with server.client() as client:
            r = client.post(
                "/studies", json={"name": "late", "dataset": "digits", "n_trials": 1, "epochs": 1}
            )
            study_id = r.json()["id"]
            wait_for(
                lambda: client.get(f"/studies/{study_id}").json()["status"] == "completed",
                120,
                "the polling worker to pick up a late study",
            )
        worker.terminate()
        assert worker.wait(timeout=30) == 0, log.read_text()
    finally:
        stop(worker)


def test_worker_outlives_an_unreachable_service(tmp_path: Path) -> None:
    """Started before the service exists, the worker keeps retrying, then does the work."""
    log = tmp_path / "worker.log"
    server_dir = tmp_path / "api"
    server_dir.mkdir()
    port = free_port()  # nothing listens here yet
    worker = start_worker(f"http://127.0.0.1:{port}", log, poll_interval_s="0.5", retry_max_s="1")
    server = None
    try:
        wait_for(
            lambda: "leasing a trial failed" in log.read_text(),
            60,
            "the worker to notice the service is down",
        )
        assert worker.poll() is None, log.read_text()
        server = start_api(server_dir, port=str(port))
        with server.client() as client:
            r = client.post(
                "/studies", json={"name": "later", "dataset": "digits", "n_trials": 1, "epochs": 1}
            )
            wait_for(
                lambda: client.get(f"/studies/{r.json()['id']}").json()["status"] == "completed",
                120,
                "the worker to finish the study",
            )
    finally:
        stop(worker)
        if server is not None:
            stop(server.process)


def test_json_logs_carry_study_and_trial_ids(fresh_api: Callable[..., Api], tmp_path: Path) -> None:
    import json

    server = fresh_api(log_format="json")
    log = tmp_path / "worker.log"
    with server.client() as client:
        r = client.post(
            "/studies",
            json={
                "name": "logged",
                "dataset": "iris",
                "n_trials": 1,
                "epochs": 1,
                "sanity_check": False,
            },
        )
        worker = start_worker(server.url, log, "--exit-when-idle", log_format="json")
        try:
            assert worker.wait(timeout=120) == 0, log.read_text()
        finally:
            stop(worker)
        trial_id = client.get(f"/studies/{r.json()['id']}/trials").json()[0]["trial_id"]
    api_lines = [json.loads(line) for line in server.log.read_text().splitlines() if line]
    assert api_lines and all({"ts", "level", "logger", "msg"} <= set(x) for x in api_lines)
    assert any(x.get("study") == "logged" and x.get("trial") == trial_id for x in api_lines)
    assert any(x["logger"].startswith("uvicorn") for x in api_lines)  # access log too
    worker_lines = [
        json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")
    ]  # (TensorFlow's C++ lines are its own)
    about_trial = [x for x in worker_lines if x.get("trial") == trial_id]
    assert about_trial and all(x["study"] == "logged" for x in about_trial)


def test_sigterm_before_the_trainer_is_ready_gives_the_trial_back_at_once(
    fresh_api: Callable[..., Api], tmp_path: Path
) -> None:
    """Found by the soak: a worker stopped between its lease and its trainer's TensorFlow
    import kept the trial until the import finished (25 s, or a SIGKILL after compose's
    10 s grace, and the trial lost)."""
    server = fresh_api()
    with server.client() as client:
        spec = {"name": "term", "dataset": "digits", "n_trials": 2, "epochs": 2}
        assert client.post("/studies", json={**spec, "sanity_check": False}).status_code == 201
        log = tmp_path / "worker.log"
        worker = start_worker(server.url, log)
        try:
            wait_for(lambda: "leased" in log.read_text(), 60, "the worker to lease a trial")
            assert "ready in" not in log.read_text()  # TensorFlow is still loading
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=20) == 0, log.read_text()
        finally:
            stop(worker)
        (trial,) = client.get("/studies/1/trials").json()
        assert trial["state"] == "released", trial
        assert "its trainer was still starting" in trial["reason"]
