"""Issue 3 end to end, with a real API, real worker processes and real Keras training:
pruning, non-finite losses, regression, uploads, the sanity run and the best model."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import keras
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from sklearn.datasets import load_iris

from tests.support import Api, start_worker, stop, wait_for
from workers.data import load

pytestmark = [pytest.mark.slow, pytest.mark.serial]

GOOD = {
    "optimizer": "adam",
    "learning_rate": 0.003,
    "kernel_initializer": "he_normal",
    "lr_schedule": "constant",
}


@contextmanager
def worker(api: Api, tmp_path: Path, **settings: str) -> Iterator[Path]:
    """One `hpo worker` process against ``api``; yields its log file."""
    log = tmp_path / f"worker-{len(list(tmp_path.glob('worker-*')))}.log"
    process = start_worker(api.url, log, **settings)
    try:
        yield log
    finally:
        stop(process)


def _wait_done(
    client: httpx.Client, study_id: int, log: Path, timeout_s: float = 240
) -> dict[str, Any]:
    def done() -> bool:
        study = client.get(f"/studies/{study_id}").json()
        return study["status"] in ("failed", "stopped") or (
            study["status"] == "completed"
            and study["final_model"]["state"] in ("ready", "failed", "none")
        )

    try:
        wait_for(done, timeout_s, "the study and its final model")
    except AssertionError:
        raise AssertionError(log.read_text()[-5000:]) from None
    result: dict[str, Any] = client.get(f"/studies/{study_id}").json()
    return result


def _model(client: httpx.Client, study_id: int, tmp_path: Path) -> keras.Model:
    r = client.get(f"/studies/{study_id}/model")
    assert r.status_code == 200, r.text
    path = tmp_path / "best.keras"
    path.write_bytes(r.content)
    return keras.models.load_model(path)


def test_bad_config_pruned_diverging_one_failed_best_model_back(
    fresh_api: Callable[..., Api], tmp_path: Path
) -> None:
    server = fresh_api()
    good = [{**GOOD, "dropout_rate": d} for d in (0.0, 0.1, 0.2, 0.3, 0.4)]
    bad = {
        "optimizer": "sgd",
        "learning_rate": 0.0001,
        "kernel_initializer": "random_normal",
        "lr_schedule": "constant",
        "dropout_rate": 0.5,
    }
    diverging = {
        "optimizer": "sgd",
        "learning_rate": 10.0,
        "kernel_initializer": "random_normal",
        "lr_schedule": "constant",
        "dropout_rate": 0.0,
    }
    with server.client() as client, worker(server, tmp_path) as log:
        r = client.post(
            "/studies",
            json={
                "name": "pruning",
                "dataset": "digits",
                "n_trials": 7,
                "epochs": 8,
                "seed": 3,
                "search_space": {"learning_rate": {"low": 0.0001, "high": 10.0, "log": True}},
                "enqueue": [*good, bad, diverging],
            },
        )
        assert r.status_code == 201, r.text
        study = _wait_done(client, r.json()["id"], log)
        assert study["status"] == "completed", study
        assert study["sanity_check"] == "passed"
        trials = {t["number"]: t for t in client.get(f"/studies/{study['id']}/trials").json()}
        assert [trials[n]["state"] for n in range(5)] == ["complete"] * 5
        assert trials[5]["state"] == "pruned" and trials[5]["epochs_run"] < 8
        assert trials[6]["state"] == "fail"
        assert trials[6]["reason"] == "non-finite loss at epoch 1"
        assert [f["code"] for f in trials[6]["findings"]] == ["non_finite_loss"]
        assert study["trials"] == {
            "running": 0,
            "complete": 5,
            "pruned": 1,
            "fail": 1,
            "lost": 0,
            "released": 0,
        }
        final = study["final_model"]
        assert final["state"] == "ready" and final["test_metric"] == "test_accuracy"
        assert final["test_value"] > 0.9
        model = _model(client, study["id"], tmp_path)
    # The downloaded model carries its optimizer state and scores as reported.
    assert model.optimizer.iterations.numpy() > 0
    data = load("digits")
    accuracy = float(np.mean(model.predict(data.x_test, verbose=0).argmax(axis=1) == data.y_test))
    assert accuracy == pytest.approx(final["test_value"], abs=1e-6)
    pruned = optuna.load_study(study_name="pruning", storage=server.database_url).trials[5]
    assert pruned.state == TrialState.PRUNED
    # The worker probed the pruned model where it stopped and sent what it found after.
    assert pruned.user_attrs["findings"] == trials[5]["findings"]


def test_regression_study_completes_with_test_mae(
    fresh_api: Callable[..., Api], tmp_path: Path
) -> None:
    server = fresh_api()
    with server.client() as client, worker(server, tmp_path) as log:
        r = client.post(
            "/studies",
            json={
                "name": "diabetes",
                "dataset": "diabetes",
                "n_trials": 3,
                "epochs": 10,
                "sampler": "random",
                "seed": 1,
                "fixed": {"optimizer": "adam", "lr_schedule": "constant"},
            },
        )
        assert r.status_code == 201, r.text
        assert r.json()["metric"] == "val_mae" and r.json()["direction"] == "minimize"
        study = _wait_done(client, r.json()["id"], log)
        assert study["status"] == "completed", study
        assert study["trials"]["complete"] == 3
        final = study["final_model"]
        assert final["state"] == "ready" and final["test_metric"] == "test_mae"
        assert 20 < final["test_value"] < 120  # in the target's units (its spread is ~77)
        model = _model(client, study["id"], tmp_path)
    assert model.output_shape == (None, 1)


def _csv(rows: list[list[Any]], header: list[str]) -> bytes:
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def test_uploaded_csv_trains_and_is_cached_by_hash(
    fresh_api: Callable[..., Api], tmp_path: Path
) -> None:
    server = fresh_api()
    x, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    content = _csv(
        [[*row, name] for row, name in zip(x.tolist(), names, strict=True)],
        ["sl", "sw", "pl", "pw", "species"],
    )
    cache = tmp_path / "cache"
    with server.client() as client, worker(server, tmp_path, cache_dir=str(cache)) as log:
        r = client.post(
            "/datasets",
            data={"name": "my-iris", "label_column": "species"},
            files={"file": ("iris.csv", content, "text/csv")},
        )
        assert r.status_code == 201, r.text
        uploaded = r.json()
        assert uploaded["task"] == "classification" and uploaded["n_classes"] == 3
        r = client.post(
            "/studies",
            json={
                "name": "on-upload",
                "dataset": "my-iris",
                "n_trials": 2,
                "epochs": 5,
                "sampler": "qmc",
                "pruner": "hyperband",
            },
        )
        assert r.status_code == 201, r.text
        study = _wait_done(client, r.json()["id"], log)
        counts = study["trials"]
        assert study["status"] == "completed", study
        assert counts["complete"] >= 1 and counts["complete"] + counts["pruned"] == 2, counts
    assert (cache / f"{uploaded['sha256']}.npz").exists()


def test_a_model_that_cannot_overfit_fails_the_study_before_any_trial(
    fresh_api: Callable[..., Api], tmp_path: Path
) -> None:
    """Broken data: the features carry no information, so nothing can fit the labels."""
    server = fresh_api()
    rng = np.random.default_rng(0)
    out = io.BytesIO()
    np.savez(out, x=np.zeros((60, 5), np.float32), y=rng.permutation(np.arange(60) % 2))
    with server.client() as client, worker(server, tmp_path) as log:
        r = client.post(
            "/datasets", data={"name": "constant"}, files={"file": ("constant.npz", out.getvalue())}
        )
        assert r.status_code == 201, r.text
        r = client.post(
            "/studies", json={"name": "doomed", "dataset": "constant", "n_trials": 20, "epochs": 5}
        )
        study = _wait_done(client, r.json()["id"], log)
    assert study["status"] == "failed"
    assert study["sanity_check"] == "failed"
    assert study["reason"].startswith(
        "sanity check failed: the model could not overfit 32 training rows"
    )
    assert sum(study["trials"].values()) == 0  # no budget spent


def test_missing_keras_data_fails_the_trial_and_warns_the_next_submitter(
    fresh_api: Callable[..., Api], tmp_path: Path
) -> None:
    server = fresh_api()
    empty = tmp_path / "keras"
    empty.mkdir()
    with (
        server.client() as client,
        worker(server, tmp_path, allow_downloads="false", keras_datasets_dir=str(empty)) as log,
    ):
        r = client.post(
            "/studies",
            json={
                "name": "mnist-1",
                "dataset": "mnist",
                "n_trials": 1,
                "epochs": 1,
                "sanity_check": False,
            },
        )
        assert r.status_code == 201 and r.json()["warnings"] == []
        study = _wait_done(client, r.json()["id"], log)
        (trial,) = client.get(f"/studies/{study['id']}/trials").json()
        assert trial["state"] == "fail"
        assert trial["reason"].startswith("dataset unavailable: mnist is not in the Keras cache")
        r = client.post(
            "/studies", json={"name": "mnist-2", "dataset": "mnist", "n_trials": 1, "epochs": 1}
        )
        assert r.status_code == 201
        (warning,) = r.json()["warnings"]
        assert "dataset 'mnist' may be unavailable" in warning and "Keras cache" in warning
        # Its sanity run is released (another worker might have the data) until the
        # attempts run out; then the study fails with the reason, its budget unspent.
        second = _wait_done(client, r.json()["id"], log)
    assert second["status"] == "failed"
    assert "dataset unavailable: mnist is not in the Keras cache" in second["reason"]
    assert sum(second["trials"].values()) == 0


def test_a_seed_makes_sampling_and_training_repeat_with_one_worker(
    fresh_api: Callable[..., Api], tmp_path: Path
) -> None:
    server = fresh_api()
    results = []
    with server.client() as client, worker(server, tmp_path) as log:
        for name in ("seeded-1", "seeded-2"):
            r = client.post(
                "/studies",
                json={
                    "name": name,
                    "dataset": "wine",
                    "n_trials": 3,
                    "epochs": 3,
                    "seed": 11,
                    "sanity_check": False,
                },
            )
            study = _wait_done(client, r.json()["id"], log)
            trials = client.get(f"/studies/{study['id']}/trials").json()
            results.append([(t["params"], t["value"]) for t in trials])
    assert results[0] == results[1]
    assert len({str(params) for params, _ in results[0]}) == 3
