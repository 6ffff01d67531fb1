"""The worker protocol against a real API, on a SQLite file and on PostgreSQL: lease,
report, complete, fail, release, expiry, pruning, and the exact budget."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import optuna
import psycopg
import pytest
from optuna.trial import TrialState

from tests.support import Api, Postgres, start_api, stop, wait_for

WORKER = {"worker": {"id": "w1", "host": "test", "pid": 1}}


def _study(client: httpx.Client, name: str, **overrides: Any) -> dict[str, Any]:
    body = {
        "name": name,
        "dataset": "digits",
        "n_trials": 3,
        "epochs": 4,
        "sanity_check": False,
        **overrides,
    }
    r = client.post("/studies", json=body)
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


def _lease(client: httpx.Client, worker: str = "w1") -> dict[str, Any] | None:
    r = client.post("/trials/lease", json={"worker": {"id": worker}})
    if r.status_code == 204:
        return None
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def _call(
    client: httpx.Client, trial_id: int, verb: str, worker: str = "w1", **body: Any
) -> httpx.Response:
    return client.post(f"/trials/{trial_id}/{verb}", json={"worker_id": worker, **body})


@pytest.fixture
def server(fresh_api: Callable[..., Api]) -> Api:
    return fresh_api()


def test_lease_report_complete(server: Api) -> None:
    with server.client() as client:
        study = _study(client, "s1", n_trials=1, epochs=2)
        job = _lease(client)
        assert job is not None
        assert job["kind"] == "trial" and job["study_name"] == "s1" and job["epochs"] == 2
        assert job["dataset"]["name"] == "digits" and job["dataset"]["task"] == "classification"
        assert job["model"] == {"family": "mlp"} and job["metric"] == "val_accuracy"
        assert {
            "learning_rate",
            "optimizer",
            "lr_schedule",
            "dropout_rate",
            "kernel_initializer",
        } <= set(job["params"])
        assert client.get(f"/studies/{study['id']}").json()["status"] == "running"
        for epoch, value in ((1, 0.5), (2, 0.7)):
            r = _call(client, job["trial_id"], "report", epoch=epoch, value=value)
            assert r.json() == {"action": "continue"}
        r = _call(client, job["trial_id"], "complete", value=0.7, epochs_run=2)
        assert r.json()["state"] == "complete"
        final = client.get(f"/studies/{study['id']}").json()
        assert final["status"] == "completed"
        assert final["trials"]["complete"] == 1
        assert final["best"] == {
            "trial_id": job["trial_id"],
            "number": 0,
            "value": 0.7,
            "params": job["params"],
            "evaluations": 1,
        }
        (trial,) = client.get(f"/studies/{study['id']}/trials").json()
        assert trial["state"] == "complete" and trial["epochs_run"] == 2
        assert trial["duration_s"] is not None and trial["worker_id"] == "w1"
        # What is left is retraining the best configuration: a final job, then nothing.
        final = _lease(client)
        assert final is not None and final["kind"] == "final" and final["trial_id"] is None
        assert final["params"] == job["params"]
        assert client.get(f"/studies/{study['id']}").json()["final_model"]["state"] == "running"
        assert _lease(client) is None
    frozen = optuna.load_study(study_name="s1", storage=server.database_url).trials[0]
    assert frozen.state == TrialState.COMPLETE and frozen.value == 0.7
    assert frozen.intermediate_values == {1: 0.5, 2: 0.7}
    # Optuna holds the searched values as params, the fixed ones as a user attribute.
    assert {**frozen.user_attrs["fixed_params"], **frozen.params} == job["params"]
    assert frozen.user_attrs["worker_id"] == "w1"


def test_fail_records_the_reason_and_counts(server: Api) -> None:
    with server.client() as client:
        study = _study(client, "s2", n_trials=1)
        job = _lease(client)
        assert job is not None
        r = _call(
            client, job["trial_id"], "fail", reason="non-finite loss at epoch 3", epochs_run=3
        )
        assert r.json()["state"] == "fail"
        final = client.get(f"/studies/{study['id']}").json()
        assert final["status"] == "completed" and final["trials"]["fail"] == 1
        (trial,) = client.get(f"/studies/{study['id']}/trials").json()
        assert trial["reason"] == "non-finite loss at epoch 3"
    frozen = optuna.load_study(study_name="s2", storage=server.database_url).trials[0]
    assert frozen.state == TrialState.FAIL
    assert frozen.user_attrs["fail_reason"] == "non-finite loss at epoch 3"


def test_never_more_leases_than_n_trials(server: Api) -> None:
    with server.client() as client:
        _study(client, "s3", n_trials=4)
        jobs = [_lease(client) for _ in range(6)]
    assert all(j is not None for j in jobs[:4])
    assert jobs[4] is None and jobs[5] is None


def test_concurrent_leases_never_exceed_the_budget(server: Api) -> None:
    with server.client() as client:
        _study(client, "s4", n_trials=5)
    granted: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def grab(i: int) -> None:
        try:
            with server.client() as c:
                for _ in range(3):
                    job = _lease(c, worker=f"w{i}")
                    if job is not None:
                        granted.append(job)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(granted) == 5
    assert len({j["trial_id"] for j in granted}) == 5
    assert sorted(j["number"] for j in granted) == [0, 1, 2, 3, 4]


def test_complete_is_idempotent_and_counted_once(server: Api) -> None:
    with server.client() as client:
        study = _study(client, "s5", n_trials=2)
        job = _lease(client)
        assert job is not None
        first = _call(client, job["trial_id"], "complete", value=0.9, epochs_run=4)
        again = _call(client, job["trial_id"], "complete", value=0.9, epochs_run=4)
        assert first.status_code == again.status_code == 200
        assert first.json() == again.json()
        counts = client.get(f"/studies/{study['id']}").json()["trials"]
        assert counts["complete"] == 1
        # The study still has exactly one more trial to hand out.
        assert _lease(client) is not None and _lease(client) is None


def test_calls_from_another_worker_or_on_unknown_trials_are_refused(server: Api) -> None:
    with server.client() as client:
        _study(client, "s6", n_trials=1)
        job = _lease(client)
        assert job is not None
        r = _call(client, job["trial_id"], "complete", worker="intruder", value=1.0)
        assert r.status_code == 409 and "intruder" in r.json()["message"]
        assert _call(client, 424242, "report", epoch=1, value=0.1).status_code == 404
        r = _call(client, job["trial_id"], "report", epoch=0, value=0.1)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "epoch"
        _call(client, job["trial_id"], "fail", reason="boom")
        r = _call(client, job["trial_id"], "complete", value=1.0)
        assert r.status_code == 409 and "fail" in r.json()["message"]


def test_expired_lease_is_lost_and_its_parameters_run_again(fresh_api: Callable[..., Api]) -> None:
    server = fresh_api(lease_seconds="1", reap_interval_s="0.2")
    with server.client() as client:
        study = _study(client, "s7", n_trials=2)
        first = _lease(client, worker="dies")
        assert first is not None
        wait_for(
            lambda: client.get(f"/studies/{study['id']}").json()["trials"]["lost"] == 1,
            10,
            "the reaper to mark the lease lost",
        )
        assert (
            _call(
                client, first["trial_id"], "report", worker="dies", epoch=1, value=0.5
            ).status_code
            == 409
        )
        again = _lease(client, worker="w2")
        assert again is not None
        assert again["params"] == first["params"]
        assert again["trial_id"] != first["trial_id"]
        other = _lease(client, worker="w2")
        assert other is not None and _lease(client) is None
        for job in (again, other):
            _call(client, job["trial_id"], "complete", worker="w2", value=0.8)
        final = client.get(f"/studies/{study['id']}").json()
        assert final["status"] == "completed"
        assert final["trials"]["complete"] == 2 and final["trials"]["lost"] == 1
    trials = optuna.load_study(study_name="s7", storage=server.database_url).trials
    lost = [t for t in trials if t.state == TrialState.FAIL]
    assert len(lost) == 1 and lost[0].user_attrs["fail_reason"].startswith("lost:")
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


def test_heartbeat_keeps_a_lease_alive(fresh_api: Callable[..., Api]) -> None:
    server = fresh_api(lease_seconds="1", reap_interval_s="0.2")
    with server.client() as client:
        _study(client, "s8", n_trials=1)
        job = _lease(client)
        assert job is not None
        for _ in range(8):
            assert _call(client, job["trial_id"], "heartbeat").json() == {"action": "continue"}
            time.sleep(0.3)
        assert _call(client, job["trial_id"], "complete", value=0.5).status_code == 200


def test_release_runs_the_same_parameters_again(server: Api) -> None:
    with server.client() as client:
        study = _study(client, "s9", n_trials=1)
        job = _lease(client)
        assert job is not None
        r = _call(client, job["trial_id"], "release", reason="SIGTERM")
        assert r.json()["state"] == "released"
        again = _lease(client, worker="w2")
        assert again is not None and again["params"] == job["params"]
        _call(client, again["trial_id"], "complete", worker="w2", value=0.5)
        assert client.get(f"/studies/{study['id']}").json()["status"] == "completed"


def test_median_pruner_prunes_a_bad_trial(server: Api) -> None:
    with server.client() as client:
        study = _study(client, "s10", n_trials=6, epochs=4)
        for _ in range(5):
            job = _lease(client)
            assert job is not None
            for epoch in range(1, 5):
                _call(client, job["trial_id"], "report", epoch=epoch, value=0.9)
            _call(client, job["trial_id"], "complete", value=0.9)
        bad = _lease(client)
        assert bad is not None
        assert _call(client, bad["trial_id"], "report", epoch=1, value=0.1).json() == {
            "action": "continue"
        }  # epoch 1 is warm-up (epochs // 4)
        assert _call(client, bad["trial_id"], "report", epoch=2, value=0.1).json() == {
            "action": "prune"
        }
        final = client.get(f"/studies/{study['id']}").json()
        assert final["trials"]["pruned"] == 1 and final["status"] == "completed"
    frozen = optuna.load_study(study_name="s10", storage=server.database_url).trials[-1]
    assert frozen.state == TrialState.PRUNED


def test_stopped_study_tells_workers_to_stop(server: Api) -> None:
    with server.client() as client:
        study = _study(client, "s11", n_trials=3)
        job = _lease(client)
        assert job is not None
        client.post(f"/studies/{study['id']}/stop")
        assert _call(client, job["trial_id"], "report", epoch=1, value=0.5).json() == {
            "action": "stop"
        }
        assert _call(client, job["trial_id"], "release", reason="study stopped").status_code == 200
        assert _lease(client) is None  # a stopped study hands out nothing, not even reruns


def test_oldest_open_study_is_served_first(server: Api) -> None:
    with server.client() as client:
        _study(client, "older", n_trials=1)
        _study(client, "newer", n_trials=1)
        first, second = _lease(client), _lease(client)
        assert first is not None and second is not None
        assert (first["study_name"], second["study_name"]) == ("older", "newer")


def test_an_integer_log_range_is_leased(server: Api) -> None:
    """A spec accepted at submission must be sampleable at every lease."""
    with server.client() as client:
        _study(
            client,
            "int-log",
            n_trials=2,
            search_space={"hidden_layers": {"low": 1, "high": 4, "log": True}},
        )
        jobs = [_lease(client), _lease(client)]
    assert all(j is not None and 1 <= j["params"]["hidden_layers"] <= 4 for j in jobs)


def test_a_result_optuna_holds_but_the_service_missed_is_recorded_not_lost(
    fresh_api: Callable[..., Api],
) -> None:
    """The service tells Optuna first, then its own table. If it dies in between, the
    reaper must record Optuna's result rather than throw it away as a lost trial."""
    server = fresh_api(lease_seconds="1", reap_interval_s="0.2")
    with server.client() as client:
        study = _study(client, "half-told", n_trials=1)
        job = _lease(client)
        assert job is not None
        # The crash window, reproduced: Optuna has the result, the lease row does not.
        optuna.load_study(study_name="half-told", storage=server.database_url).tell(
            job["number"], 0.875
        )
        wait_for(
            lambda: client.get(f"/studies/{study['id']}").json()["status"] == "completed",
            30,  # (a loaded CI machine took over 10 s)
            "the reaper to settle the lease from Optuna's result",
        )
        final = client.get(f"/studies/{study['id']}").json()
        assert final["trials"]["complete"] == 1 and final["trials"]["lost"] == 0
        assert final["best"]["value"] == 0.875
        after = _lease(client)  # not re-run: the result was kept, the final model is next
        assert after is not None and after["kind"] == "final"


def test_a_release_that_reached_only_optuna_ends_released_and_runs_again(
    fresh_api: Callable[..., Api],
) -> None:
    """A release fails the Optuna trial, then ends the lease. Its API process killed in
    between (the soak's smoke run found it), the reaper must end the lease as Optuna
    says, released with the worker's reason, not lost; and run the parameters again."""
    server = fresh_api(lease_seconds="1", reap_interval_s="0.2")
    storage = optuna.storages.RDBStorage(server.database_url, skip_table_creation=True)
    reason = "released by the worker: the worker is stopping"
    try:
        with server.client() as client:
            study = _study(client, "half-released", n_trials=1, priors=False)
            job = _lease(client)
            assert job is not None
            # The crash window, reproduced: Optuna's trial failed as released, the lease live.
            storage.set_trial_user_attr(job["trial_id"], "fail_reason", reason)
            storage.set_trial_user_attr(job["trial_id"], "hpo_outcome", "released")
            storage.set_trial_state_values(job["trial_id"], TrialState.FAIL)

            def settled() -> bool:
                counts = client.get(f"/studies/{study['id']}").json()["trials"]
                return bool(counts["released"] + counts["lost"])

            wait_for(settled, 30, "the reaper to settle the lease")
            counts = client.get(f"/studies/{study['id']}").json()["trials"]
            assert counts["released"] == 1 and counts["lost"] == 0, counts
            trials = client.get(f"/studies/{study['id']}/trials").json()
            first = next(t for t in trials if t["trial_id"] == job["trial_id"])
            assert first["reason"] == reason, first
            again = _lease(client)
            assert again is not None and again["trial_id"] != job["trial_id"]
            assert again["params"] == job["params"]
    finally:
        storage.engine.dispose()


def test_a_seeded_study_samples_the_same_parameters_again(server: Api) -> None:
    def run(name: str, seed: int) -> list[tuple[dict[str, Any], int]]:
        drawn = []
        with server.client() as client:
            _study(client, name, n_trials=3, seed=seed, priors=False)
            for i in range(3):
                job = _lease(client)
                while job is not None and job["kind"] == "final":  # an earlier study's
                    job = _lease(client)
                assert job is not None and job["study_name"] == name
                drawn.append((job["params"], job["seed"]))
                _call(client, job["trial_id"], "complete", value=0.5 + i / 10)
        return drawn

    first, again, other = run("seeded-a", 7), run("seeded-b", 7), run("seeded-c", 8)
    assert first == again
    assert [p for p, _ in first] != [p for p, _ in other]
    assert len({s for _, s in first}) == 3  # each trial trains with its own seed


# Every sampler with the default pruner, and every pruner with the default sampler.
SAMPLER_PRUNER = [
    *((s, "median") for s in ("tpe", "random", "qmc", "grid")),
    *(("tpe", p) for p in ("hyperband", "successive_halving", "none")),
]


@pytest.mark.parametrize(("sampler", "pruner"), SAMPLER_PRUNER)
def test_every_sampler_and_pruner_drives_a_study(server: Api, sampler: str, pruner: str) -> None:
    finite = {
        "search_space": {
            "learning_rate": {"low": 0.001, "high": 0.004, "step": 0.001},
            "optimizer": {"choices": ["adam", "sgd", "momentum"]},
            "lr_decay_rate": {"low": 0.9, "high": 0.99, "step": 0.09},
        },
        "fixed": {
            "lr_schedule": "exponential",
            "kernel_initializer": "he_normal",
            "dropout_rate": 0.1,
        },
    }
    with server.client() as client:
        study = _study(
            client,
            f"{sampler}-{pruner}",
            n_trials=6,
            epochs=3,
            seed=5,
            sampler=sampler,
            pruner=pruner,
            **finite,
        )
        seen = set()
        for i in range(6):
            job = _lease(client)
            assert job is not None and job["kind"] == "trial"
            params = job["params"]
            assert 0.001 <= params["learning_rate"] <= 0.004
            assert ("momentum" in params) == (params["optimizer"] == "momentum")
            assert 0.9 <= params["lr_decay_rate"] <= 0.999
            seen.add(tuple(sorted(params.items())))
            action = "continue"
            for epoch in range(1, 4):
                action = _call(
                    client, job["trial_id"], "report", epoch=epoch, value=0.5 + i / 20 + epoch / 100
                ).json()["action"]
                if action == "prune":
                    break
            if action != "prune":
                assert _call(client, job["trial_id"], "complete", value=0.6).status_code == 200
        final = client.get(f"/studies/{study['id']}").json()
    assert final["status"] == "completed"
    assert final["trials"]["complete"] + final["trials"]["pruned"] == 6
    if sampler == "grid":
        assert len(seen) == 6  # a grid does not repeat a point while some are left


def test_a_job_no_worker_can_run_fails_after_three_attempts(server: Api) -> None:
    """Workers without the data release the sanity run; after three attempts the study
    fails with the last reason instead of circling forever."""
    with server.client() as client:
        study = _study(client, "no-data", sanity_check=True)
        for attempt in range(3):
            job = _lease(client, worker=f"w{attempt}")
            assert job is not None and job["kind"] == "sanity", job
            r = client.post(
                f"/jobs/{job['job_id']}/release",
                json={"worker_id": f"w{attempt}", "reason": "dataset unavailable: not here"},
            )
            assert r.json()["state"] == "released"
        assert _lease(client) is None
        final = client.get(f"/studies/{study['id']}").json()
    assert final["status"] == "failed" and final["sanity_check"] == "failed"
    assert final["reason"] == (
        "sanity check failed: sanity job did not finish in 3 "
        "attempts; the last: dataset unavailable: not here"
    )
    assert sum(final["trials"].values()) == 0


def test_an_epochs_metrics_are_kept_and_shown_with_the_trial(server: Api) -> None:
    with server.client() as client:
        study = _study(client, "metrics", n_trials=1, epochs=3)
        job = _lease(client)
        assert job is not None
        first = {"loss": 0.9, "accuracy": 0.6, "val_loss": 1.0, "val_accuracy": 0.5}
        assert _call(client, job["trial_id"], "report", epoch=1, value=0.5, metrics=first)
        (trial,) = client.get(f"/studies/{study['id']}/trials").json()
        assert trial["state"] == "running" and trial["metrics"] == first
        # A report without metrics keeps the last ones; a non-finite one is refused.
        assert _call(client, job["trial_id"], "report", epoch=2, value=0.6).status_code == 200
        assert client.get(f"/studies/{study['id']}/trials").json()[0]["metrics"] == first
        r = client.post(
            f"/trials/{job['trial_id']}/report",
            content='{"worker_id": "w1", "epoch": 3, "value": 0.6, "metrics": {"loss": NaN}}',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 422 and "metrics.loss" in r.json()["message"]


def _finding(code: str, **extra: Any) -> dict[str, Any]:
    return {
        "code": code,
        "epoch": 2,
        "layer": None,
        "value": 0.9,
        "threshold": 0.5,
        "message": f"{code} seen",
        **extra,
    }


def test_findings_come_with_a_result_or_after_a_prune_and_a_plateau_counts_far_from_the_best(
    server: Api,
) -> None:
    with server.client() as client:
        study = _study(client, "s-findings", n_trials=8, epochs=4)
        for _ in range(5):  # the pruner's start-up trials, best 0.9
            job = _lease(client)
            assert job is not None and job["diagnostics"] is True
            for epoch in range(1, 5):
                _call(client, job["trial_id"], "report", epoch=epoch, value=0.9)
            r = _call(
                client, job["trial_id"], "complete", value=0.9, findings=[], diagnostics_s=0.01
            )
            assert r.status_code == 200, r.text
        bad = _lease(client)
        assert bad is not None
        early = _call(client, bad["trial_id"], "findings", findings=[_finding("dead_units")])
        assert early.status_code == 409 and "findings come with its result" in early.text
        _call(client, bad["trial_id"], "report", epoch=1, value=0.1)
        assert _call(client, bad["trial_id"], "report", epoch=2, value=0.1).json() == {
            "action": "prune"
        }
        sent = [_finding("dead_units", layer="relu_1"), _finding("loss_stalled")]
        r = _call(client, bad["trial_id"], "findings", findings=sent)
        assert r.status_code == 200 and r.json()["state"] == "pruned", r.text
        assert _call(client, bad["trial_id"], "findings", "w2", findings=sent).status_code == 409
        wrong = _call(client, bad["trial_id"], "findings", findings=[_finding("sad_units")])
        assert wrong.status_code == 422
        assert "findings.0.code" in wrong.text and "vanishing_gradients" in wrong.text

        # A plateau near the best is convergence (dropped); far from it, a finding.
        near, far = _lease(client), _lease(client)
        assert near is not None and far is not None
        stalled = [_finding("loss_stalled")]
        _call(client, near["trial_id"], "complete", value=0.89, findings=stalled)
        _call(client, far["trial_id"], "complete", value=0.5, findings=stalled)
        trials = {t["trial_id"]: t for t in client.get(f"/studies/{study['id']}/trials").json()}
    # The pruned trial's value is 0.1, far from 0.9: its plateau stays too.
    assert [f["code"] for f in trials[bad["trial_id"]]["findings"]] == [
        "dead_units",
        "loss_stalled",
    ]
    assert trials[bad["trial_id"]]["findings"][0]["layer"] == "relu_1"
    assert trials[near["trial_id"]]["findings"] == []
    assert [f["code"] for f in trials[far["trial_id"]]["findings"]] == ["loss_stalled"]
    frozen = optuna.load_study(study_name="s-findings", storage=server.database_url).trials
    by_id = {t._trial_id: t for t in frozen}
    assert by_id[bad["trial_id"]].user_attrs["findings"] == trials[bad["trial_id"]]["findings"]
    assert by_id[near["trial_id"]].user_attrs["findings"] == []
    assert by_id[bad["trial_id"] - 1].user_attrs["diagnostics_s"] == 0.01


def test_a_finding_the_service_would_refuse_never_costs_the_result(server: Api) -> None:
    from service.protocol import WorkerInfo
    from tests.support import WORKER_TOKEN
    from workers.client import ServiceClient

    with server.client() as client:
        _study(client, "s-odd-finding", n_trials=1, epochs=2)
    worker = ServiceClient(
        server.url, worker=WorkerInfo(id="w-odd"), token=WORKER_TOKEN, retry_max_s=10
    )
    try:
        job = worker.lease()
        assert job is not None and job.trial_id is not None
        odd = [
            _finding("sad_units"),
            _finding("dead_units", layer="x" * 500),
            _finding("not_learning"),
        ]
        result = worker.complete(job.trial_id, value=0.5, epochs_run=2, findings=odd)
    finally:
        worker.close()
    assert result.state == "complete"
    with server.client() as client:
        (trial,) = client.get(f"/studies/{job.study_id}/trials").json()
    assert [f["code"] for f in trial["findings"]] == ["not_learning"]


HOLD_STUDY = "SELECT id FROM hpo_studies WHERE id = %s FOR NO KEY UPDATE"
"""The lock the service's own UPDATE of a study's row takes: it blocks those UPDATEs,
not the inserts that reference the row (a suggestion, a lease)."""


@pytest.mark.slow
def test_the_last_two_results_complete_the_study_whichever_is_counted_first(
    postgres: Postgres, tmp_path: Path
) -> None:
    """Two results of a two-trial study arrive together, at two API processes. A result
    takes the study's row last (so the row is held for the fewest statements); the one
    counted second must see the first, or neither completes the study. Holding the row
    here makes both calls queue for it with their results written, every time."""
    server = start_api(tmp_path, database_url=postgres.new_database(), processes=2)
    try:
        with server.client() as client:
            study = _study(client, "last-two", n_trials=2)
            jobs = [_lease(client, worker=w) for w in ("w1", "w2")]
        url = server.database_url.replace("postgresql+psycopg", "postgresql")
        answers: list[int] = []

        def complete(job: dict[str, Any], worker: str) -> None:
            with server.client() as c:
                answers.append(
                    _call(
                        c, job["trial_id"], "complete", worker, value=0.5, epochs_run=4
                    ).status_code
                )

        with (
            psycopg.connect(url, autocommit=False) as holder,
            psycopg.connect(url, autocommit=True) as look,
        ):
            holder.execute(HOLD_STUDY, (study["id"],))
            pairs = zip(jobs, ("w1", "w2"), strict=True)
            calls = [threading.Thread(target=complete, args=pair) for pair in pairs]
            for t in calls:
                t.start()
            waiting = (
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            queued = lambda: look.execute(waiting).fetchone()[0] == 2  # noqa: E731
            wait_for(queued, 30, "both results to queue for the study's row")
            holder.rollback()
        for t in calls:
            t.join()
        assert answers == [200, 200]
        with server.client() as client:
            got = client.get(f"/studies/{study['id']}").json()
        assert got["status"] == "completed", got
        assert got["trials"]["complete"] == 2
    finally:
        stop(server.process)


@pytest.mark.slow
def test_a_claim_that_finds_the_slot_gone_takes_nothing(postgres: Postgres, tmp_path: Path) -> None:
    """A lease takes its suggestion and writes its lease row before it takes the study's
    slot (the row every lease and result locks: it is held from there to the commit).
    When the slot is gone by then (here the study closes while the lease queues for its
    row), the claim is rolled back whole: no lease, and the suggestion is still there."""
    server = start_api(tmp_path, database_url=postgres.new_database())
    try:
        with server.client() as client:
            study = _study(client, "slot-gone", n_trials=3)
        url = server.database_url.replace("postgresql+psycopg", "postgresql")
        ready = "SELECT count(*) FROM hpo_suggestions WHERE study_id = %s"
        answers: list[int] = []

        def lease() -> None:
            with server.client() as c:
                answers.append(c.post("/trials/lease", json={"worker": {"id": "w1"}}).status_code)

        with (
            psycopg.connect(url, autocommit=False) as holder,
            psycopg.connect(url, autocommit=True) as look,
        ):
            # A full buffer (one for the first worker, two ahead): the sampler writes
            # nothing while the row is held, so the lease is the one that waits.
            wait_for(lambda: _one(look, ready, study["id"]) == 3, 30, "3 suggestions")
            suggested = _one(look, ready, study["id"])
            holder.execute(HOLD_STUDY, (study["id"],))
            call = threading.Thread(target=lease)
            call.start()
            waiting = (
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            wait_for(lambda: _one(look, waiting) == 1, 30, "the lease to queue for the row")
            holder.execute(
                "UPDATE hpo_studies SET status = 'stopped' WHERE id = %s", (study["id"],)
            )
            holder.commit()
            call.join()
            assert answers == [204]
            leases = "SELECT count(*) FROM hpo_leases WHERE study_id = %s"
            assert _one(look, leases, study["id"]) == 0
            assert _one(look, ready, study["id"]) == suggested
    finally:
        stop(server.process)


def _one(conn: psycopg.Connection[Any], query: str, *args: Any) -> int:
    row = conn.execute(query, args).fetchone()
    assert row is not None
    return int(row[0])
