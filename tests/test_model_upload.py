"""A final model is accepted only if Keras loads it in safe mode with the shapes the study's
data set needs (``service.domain.model_check``); anything else is a 422 naming the
``file`` field, nothing is stored or served, and the job stays leased to its worker.

Real uvicorn, a real SQLite file, real HTTP; the models are real Keras models saved with
``model.save``. The API loads them in a child process of its own: the API process never
maps TensorFlow, which the tests read from ``/proc``.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest

from search_space.catalog import BUILTIN_DATASETS
from service.domain import model_check
from service.errors import Invalid
from tests.support import Api, start_api, start_worker, stop, wait_for

WORKER = "w1"
IRIS_INPUT = "(None, 4)"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One API for the module; leases that never lapse while a test looks at its job."""
    api = start_api(tmp_path_factory.mktemp("api"), lease_seconds="3600")
    yield api
    stop(api.process)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Real ``.keras`` files for iris (4 features, 3 classes): the right one and wrong ones."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    folder = tmp_path_factory.mktemp("models")

    def saved(name: str, model: keras.Model) -> bytes:
        path = folder / f"{name}.keras"
        model.save(path)
        return path.read_bytes()

    def functional(width: int, units: int, *, last: Any = None) -> keras.Model:
        inputs = keras.Input(shape=(width,), name="features")
        x = keras.layers.Dense(8, activation="relu")(inputs)
        x = keras.layers.Dense(units, name="logits")(x)
        return keras.Model(inputs, last(x) if last else x)

    good = functional(4, 3)
    good.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return {
        "good": saved("good", good),
        "wide_input": saved("wide_input", functional(5, 3)),
        "two_outputs": saved("two_outputs", functional(4, 2)),
        # Its output layer is no Dense: only Keras itself can tell the output shape.
        "two_outputs_hidden": saved(
            "two_outputs_hidden", functional(4, 2, last=keras.layers.Activation("linear"))
        ),
        "lambda": saved("lambda", functional(4, 3, last=keras.layers.Lambda(lambda t: t * 2.0))),
    }


def _lease(client: httpx.Client) -> dict[str, Any]:
    r = client.post("/trials/lease", json={"worker": {"id": WORKER}})
    assert r.status_code == 200, r.text
    job: dict[str, Any] = r.json()
    return job


def _final_job(client: httpx.Client, name: str) -> tuple[int, int]:
    """A completed iris study whose final job is leased to ``WORKER``: (study id, job id)."""
    r = client.post(
        "/studies",
        json={"name": name, "dataset": "iris", "n_trials": 1, "epochs": 1, "sanity_check": False},
    )
    assert r.status_code == 201, r.text
    study_id = r.json()["id"]
    trial = _lease(client)
    assert trial["kind"] == "trial" and trial["study_name"] == name, trial
    r = client.post(
        f"/trials/{trial['trial_id']}/complete",
        json={"worker_id": WORKER, "value": 0.9, "epochs_run": 1},
    )
    assert r.status_code == 200, r.text
    final = _lease(client)
    assert final["kind"] == "final" and final["study_name"] == name, final
    return study_id, final["job_id"]


def _upload(client: httpx.Client, job_id: int, content: bytes) -> httpx.Response:
    return client.post(
        f"/jobs/{job_id}/model",
        data={"worker_id": WORKER, "test_value": "0.9"},
        files={"file": ("best.keras", content, "application/octet-stream")},
        timeout=240,
    )


def _refused(r: httpx.Response, *wanted: str) -> str:
    """A 422 on the ``file`` field whose message says each of ``wanted``; the message."""
    assert r.status_code == 422, r.text
    body = r.json()
    (problem,) = body["detail"]
    assert problem["field"] == "file", body
    for text in wanted:
        assert text in problem["msg"], body
    message: str = body["message"]
    assert message.startswith("file: "), body
    return message


def _best_model_artifacts(server: Api, name: str) -> list[str]:
    study = optuna.load_study(study_name=name, storage=server.database_url)
    metas = optuna.artifacts.get_all_artifact_meta(study)
    return [m.filename for m in metas if m.filename.endswith("-best.keras")]


def _still_with_the_worker(client: httpx.Client, server: Api, study_id: int, job_id: int) -> None:
    """Nothing stored or served; the job is still the worker's, to retry or fail."""
    study = client.get(f"/studies/{study_id}").json()
    assert study["final_model"]["state"] == "running", study
    assert study["final_model"]["test_value"] is None, study
    served = client.get(f"/studies/{study_id}/model")
    assert served.status_code == 404, served.text
    assert _best_model_artifacts(server, study["name"]) == []
    beat = client.post(f"/jobs/{job_id}/heartbeat", json={"worker_id": WORKER})
    assert beat.status_code == 200 and beat.json() == {"action": "continue"}, beat.text
    other = client.post(f"/jobs/{job_id}/heartbeat", json={"worker_id": "w2"})
    assert other.status_code == 409 and f"leased to worker {WORKER!r}" in other.text


def _api_maps_tensorflow(server: Api) -> bool:
    maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    return "tensorflow" in maps or "_pywrap" in maps


def test_six_bytes_that_look_like_a_zip_are_refused_and_the_worker_can_fail_the_job(
    server: Api,
) -> None:
    """The issue's exact input: b"PK\\x03\\x04" and two bytes more."""
    with server.client() as client:
        study_id, job_id = _final_job(client, "six-bytes")
        message = _refused(_upload(client, job_id, b"PK\x03\x04\x00\x00"), "not a zip file")
        assert "is not a .keras archive" in message and "6 bytes" in message
        _still_with_the_worker(client, server, study_id, job_id)
        r = client.post(f"/jobs/{job_id}/fail", json={"worker_id": WORKER, "reason": "refused"})
        assert r.status_code == 200 and r.json()["state"] == "fail", r.text
        study = client.get(f"/studies/{study_id}").json()
        assert study["final_model"]["state"] == "failed", study
        assert client.get(f"/studies/{study_id}/model").status_code == 404


def test_a_zip_without_config_json_is_refused(server: Api) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("metadata.json", '{"keras_version": "3.0.0"}')
        z.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n")
    with server.client() as client:
        study_id, job_id = _final_job(client, "no-config")
        _refused(_upload(client, job_id, archive.getvalue()), "no config.json")
        _still_with_the_worker(client, server, study_id, job_id)


@pytest.mark.slow
def test_a_model_of_the_wrong_input_shape_is_refused_naming_both_shapes(
    server: Api, models: dict[str, bytes]
) -> None:
    with server.client() as client:
        study_id, job_id = _final_job(client, "wide-input")
        _refused(
            _upload(client, job_id, models["wide_input"]),
            "input shape (None, 5)",
            f"the data set 'iris' needs {IRIS_INPUT}",
        )
        _still_with_the_worker(client, server, study_id, job_id)


@pytest.mark.slow
def test_a_model_with_the_wrong_output_units_is_refused(
    server: Api, models: dict[str, bytes]
) -> None:
    with server.client() as client:
        study_id, job_id = _final_job(client, "two-outputs")
        _refused(
            _upload(client, job_id, models["two_outputs"]),
            "output shape (None, 2)",
            "needs (None, 3)",
        )
        # The same, where only Keras can tell: the output layer is no Dense.
        _refused(
            _upload(client, job_id, models["two_outputs_hidden"]),
            "output shape (None, 2)",
            "needs (None, 3)",
        )
        _still_with_the_worker(client, server, study_id, job_id)
    assert not _api_maps_tensorflow(server)


@pytest.mark.slow
def test_a_lambda_layer_is_refused_by_safe_mode(server: Api, models: dict[str, bytes]) -> None:
    with server.client() as client:
        study_id, job_id = _final_job(client, "lambda")
        _refused(
            _upload(client, job_id, models["lambda"]),
            "Keras refused it in safe mode",
            "Lambda",
        )
        _still_with_the_worker(client, server, study_id, job_id)


@pytest.mark.slow
def test_the_right_model_is_accepted_and_served_and_the_api_never_loads_tensorflow(
    server: Api, models: dict[str, bytes]
) -> None:
    with server.client() as client:
        study_id, job_id = _final_job(client, "good")
        started = time.monotonic()
        r = _upload(client, job_id, models["good"])
        took = time.monotonic() - started
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "complete", r.text
        print(f"the check of a good model took {took:.1f}s")  # the durations report shows it
        study = client.get(f"/studies/{study_id}").json()
        assert (
            study["final_model"]["state"] == "ready" and study["final_model"]["test_value"] == 0.9
        )
        served = client.get(f"/studies/{study_id}/model")
        assert served.status_code == 200 and served.content == models["good"]
        assert _best_model_artifacts(server, "good") == ["good-best.keras"]
        # A retry of the accepted upload is answered as before, and changes nothing.
        again = _upload(client, job_id, models["lambda"])
        assert again.status_code == 200 and again.json()["state"] == "complete", again.text
        assert client.get(f"/studies/{study_id}/model").content == models["good"]
    assert not _api_maps_tensorflow(server)


# --- the archive as data: refused in the API process, before any Keras --------------


def _archive(members: dict[str, str | bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


IRIS = BUILTIN_DATASETS["iris"]
SEQUENTIAL = {
    "class_name": "Sequential",
    "config": {
        "layers": [
            {"class_name": "InputLayer", "config": {"batch_shape": [None, 4]}},
            {
                "class_name": "Dense",
                "config": {"units": 3},
                "build_config": {"input_shape": [None, 4]},
            },
        ]
    },
}


@pytest.mark.parametrize(
    ("members", "wanted"),
    [
        ({"config.json": json.dumps(SEQUENTIAL)}, "no metadata.json in it"),
        ({"config.json": "{not json", "metadata.json": "{}"}, "its config.json is not JSON"),
        ({"config.json": "[" * 100_000 + "]" * 100_000, "metadata.json": "{}"}, "not JSON"),
        ({"config.json": "[1, 2]", "metadata.json": "{}"}, "is not a JSON object"),
        ({"config.json": '{"a": 1}', "metadata.json": "{}"}, "is not a Keras model"),
        ({"config.json": b"\xff\xfe", "metadata.json": "{}"}, "is not JSON"),
        ({f"f{i}": "" for i in range(model_check.MAX_MEMBERS + 1)}, "10001 files in it"),
    ],
)
def test_archives_that_are_no_keras_model_are_refused_as_data(
    members: dict[str, str | bytes], wanted: str
) -> None:
    with pytest.raises(Invalid) as refused:
        model_check.check_archive(_archive(members), model_check.Needs(IRIS))
    assert refused.value.loc == ("file",) and wanted in refused.value.msg


def test_a_truncated_model_is_not_a_zip() -> None:
    whole = _archive({"config.json": json.dumps(SEQUENTIAL), "metadata.json": "{}"})
    with pytest.raises(Invalid, match="not a zip file"):
        model_check.check_archive(whole[: len(whole) // 2], model_check.Needs(IRIS))


def test_the_declared_shapes_are_read_from_the_config() -> None:
    """A config that declares the right shapes passes step 1 (Keras judges it next); one
    that declares the wrong ones is refused naming both, for a regression too."""
    right = _archive({"config.json": json.dumps(SEQUENTIAL), "metadata.json": "{}"})
    model_check.check_archive(right, model_check.Needs(IRIS))
    with pytest.raises(Invalid) as refused:
        model_check.check_archive(right, model_check.Needs(BUILTIN_DATASETS["diabetes"]))
    assert refused.value.msg == (
        "input shape (None, 4), the data set 'diabetes' needs (None, 10) "
        "(10 features a row, any batch size)"
    )
    fixed_batch = json.loads(json.dumps(SEQUENTIAL))
    fixed_batch["config"]["layers"][0]["config"]["batch_shape"] = [32, 4]
    with pytest.raises(Invalid, match=r"input shape \(32, 4\)"):
        model_check.check_archive(
            _archive({"config.json": json.dumps(fixed_batch), "metadata.json": "{}"}),
            model_check.Needs(IRIS),
        )


# --- the worker's side: a model the service refuses fails the job, saying why -----------

LAMBDA_FAMILY = """
import keras


def build(params, *, n_features, n_outputs, image_shape, seed):
    inputs = keras.Input(shape=(n_features,), name="features")
    doubled = keras.layers.Lambda(lambda t: t * 2.0, name="doubled")(inputs)
    return keras.Model(inputs, keras.layers.Dense(n_outputs, name="logits")(doubled))
"""


def _install_lambda_family(site: Path) -> str:
    """A family that trains fine but saves a Lambda layer; returns PYTHONPATH."""
    site.mkdir(parents=True)
    (site / "hpo_lambda_family.py").write_text(LAMBDA_FAMILY)
    info = site / "hpo_lambda_family-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hpo-lambda-family\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hpo.models]\nlambdanet = hpo_lambda_family:build\n")
    return str(site)


@pytest.mark.slow
@pytest.mark.serial
def test_a_worker_whose_model_is_refused_fails_the_final_job_with_the_reason(
    fresh_api: Callable[..., Api], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", _install_lambda_family(tmp_path / "site"))
    api = fresh_api()
    with api.client() as client:
        r = client.post(
            "/studies",
            json={
                "name": "lambda-family",
                "dataset": "iris",
                "n_trials": 1,
                "epochs": 2,
                "sanity_check": False,
                "model": {"family": "lambdanet"},
            },
        )
        assert r.status_code == 201, r.text
        study_id = r.json()["id"]
        log = tmp_path / "worker.log"
        worker = start_worker(api.url, log)
        try:

            def over() -> bool:
                state = client.get(f"/studies/{study_id}").json()["final_model"]["state"]
                return bool(state in ("ready", "failed"))

            wait_for(over, 240, "the final model's verdict")
            assert worker.poll() is None, log.read_text()  # it goes on working
        finally:
            stop(worker)
        study = client.get(f"/studies/{study_id}").json()
        assert study["status"] == "completed" and study["trials"]["complete"] == 1, study
        final = study["final_model"]
        assert final["state"] == "failed", (study, log.read_text())
        assert final["reason"].startswith("the service refused the final model: HTTP 422"), final
        assert "Keras refused it in safe mode" in final["reason"], final
        assert client.get(f"/studies/{study_id}/model").status_code == 404
        text = log.read_text()
        assert "Traceback" not in text, text
        # Failed once, not leased again and again.
        assert len(re.findall(r"final job \d+ of lambda-family leased", text)) == 1, text
