"""The public Python client (service.client.Client) against a real API: studies by id and by
name, trials, stop, uploads, and every failure as one ServiceError. No training here: the
trials are leased with the worker token (tests/service/test_leases.py does the same);
Client.wait and download_model after a real training run are in tests/test_cli.py."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.schemas import DatasetOut, StudyOut, TrialOut
from service.client import Client, ServiceError
from tests.support import REPO, USER_TOKEN, Api, free_port

IRIS_LIKE = "a,b,label\n" + "".join(f"{i},{i % 7},{'xy'[i % 2]}\n" for i in range(40))


def _spec(name: str, **overrides: Any) -> dict[str, Any]:
    return {"name": name, "dataset": "digits", "n_trials": 2, "epochs": 1, **overrides}


@pytest.fixture
def hpo(api: Api) -> Iterator[Client]:
    with Client(api.url, USER_TOKEN) as client:
        yield client


def test_submit_then_get_by_id_and_by_name_and_list(hpo: Client) -> None:
    study = hpo.submit(_spec("c-one", seed=3))
    assert isinstance(study, StudyOut)
    assert (study.name, study.status, study.n_trials, study.seed) == ("c-one", "queued", 2, 3)
    assert hpo.get(study.id) == hpo.get("c-one") == hpo.get(study)
    assert "c-one" in [s.name for s in hpo.list()]
    assert hpo.best("c-one") is None
    assert hpo.trials("c-one") == []


def test_an_idempotency_key_makes_a_retry_get_the_first_answer(hpo: Client) -> None:
    key = str(uuid.uuid4())
    first = hpo.submit(_spec("c-idem"), idempotency_key=key)
    assert hpo.submit(_spec("c-idem"), idempotency_key=key).id == first.id
    with pytest.raises(ServiceError) as taken:
        hpo.submit(_spec("c-idem"))
    assert taken.value.status == 409


def test_stop_then_wait_returns_at_once(hpo: Client) -> None:
    hpo.submit(_spec("c-stop"))
    stopped = hpo.stop("c-stop")
    assert stopped.status == "stopped"
    seen: list[StudyOut] = []
    assert hpo.wait("c-stop", on_progress=seen.append, poll_s=0.01).status == "stopped"
    assert [s.status for s in seen] == ["stopped"]
    assert hpo.submit(_spec("c-stop2"), wait=False).status == "queued"


def test_unknown_studies_are_404_with_the_apis_message(hpo: Client) -> None:
    with pytest.raises(ServiceError) as by_name:
        hpo.get("no-such-study")
    assert by_name.value.status == 404 and by_name.value.message == "no study named 'no-such-study'"
    with pytest.raises(ServiceError) as by_id:
        hpo.trials(999_999)
    assert by_id.value.status == 404 and "999999" in by_id.value.message
    assert str(by_id.value).endswith("(HTTP 404)")
    with pytest.raises(ServiceError) as no_model:
        hpo.download_model(hpo.submit(_spec("c-nomodel")), "x.keras")
    assert no_model.value.status == 404 and "has no model yet" in no_model.value.message


def test_an_invalid_spec_is_422_naming_the_field(hpo: Client) -> None:
    bad = _spec("c-bad", search_space={"learning_rate": {"low": 0.1, "high": 0.01}})
    with pytest.raises(ServiceError) as caught:
        hpo.submit(bad)
    assert caught.value.status == 422
    assert "search_space.learning_rate.low: must be <= high" in caught.value.message
    with pytest.raises(ServiceError) as bad_name:  # no study can have this name
        hpo.get("not a name")
    assert bad_name.value.status == 404 and "no study named 'not a name'" in str(bad_name.value)


def test_upload_from_a_path_and_from_bytes_then_list(hpo: Client, tmp_path: Path) -> None:
    csv = tmp_path / "two.csv"
    csv.write_text(IRIS_LIKE)
    d = hpo.upload_dataset("c-upload", csv, label_column="label")
    assert isinstance(d, DatasetOut)
    assert (d.name, d.task, d.n_rows, d.n_features, d.n_classes) == (
        "c-upload",
        "classification",
        40,
        2,
        2,
    )
    r = hpo.upload_dataset(
        "c-upload-reg",
        IRIS_LIKE.replace(",x\n", ",0.5\n").replace(",y\n", ",1.5\n").encode(),
        label_column="label",
        task="regression",
    )
    assert r.task == "regression" and r.n_classes is None
    names = {d.name for d in hpo.datasets()}
    assert {"digits", "iris", "c-upload", "c-upload-reg"} <= names
    with pytest.raises(ServiceError) as bad:
        hpo.upload_dataset("c-upload-bad", csv, label_column="nope")
    assert bad.value.status == 422 and "label_column" in bad.value.message
    with pytest.raises(ServiceError) as missing:
        hpo.upload_dataset("c-upload-missing", tmp_path / "missing.csv")
    assert missing.value.status is None and "cannot read" in missing.value.message


def test_trials_carry_every_parameter(fresh_api: Callable[..., Api]) -> None:
    server = fresh_api()
    with Client(server.url, USER_TOKEN) as hpo, server.client() as worker:
        study = hpo.submit(_spec("c-trials", n_trials=3, sanity_check=False))
        for _ in range(2):
            assert worker.post("/trials/lease", json={"worker": {"id": "w1"}}).status_code == 200
        trials = hpo.trials(study.id)
        assert [t.number for t in trials] == [0, 1]
        assert all(isinstance(t, TrialOut) and t.state == "running" for t in trials)
        assert all({"learning_rate", "optimizer", "batch_size"} <= set(t.params) for t in trials)
        assert hpo.get("c-trials").trials.running == 2
        assert hpo.stop("c-trials").status == "stopped"


def test_an_unreachable_service_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, USER_TOKEN, timeout_s=5) as hpo, pytest.raises(ServiceError) as caught:
        hpo.list()
    assert caught.value.status is None
    assert str(caught.value).startswith(f"cannot reach the service at {url}")
    assert "HPO_API_URL" in str(caught.value)


def test_a_missing_or_refused_token_says_so(api: Api) -> None:
    with pytest.raises(ServiceError) as missing:
        Client(api.url, "")
    assert "HPO_API_TOKEN is not set" in str(missing.value) and missing.value.status is None
    with Client(api.url, "not-the-user-token-at-all") as hpo, pytest.raises(ServiceError) as no:
        hpo.list()
    assert no.value.status == 401
    assert "is HPO_API_TOKEN the service's user token?" in str(no.value)
    assert "not-the-user-token" not in repr(hpo)


def test_importing_the_client_loads_no_tensorflow_keras_or_fastapi() -> None:
    code = (
        "import sys, service.client; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'tensorflow', 'keras', 'fastapi', 'starlette', 'sqlalchemy', 'optuna'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_answers_parse_with_the_apis_models(api: Api) -> None:
    """The client's models are the API's: what it returns equals the raw JSON."""
    with Client(api.url, USER_TOKEN) as hpo:
        study = hpo.submit(_spec("c-raw"))
    raw = httpx.get(
        f"{api.url}/studies/{study.id}", headers={"Authorization": f"Bearer {USER_TOKEN}"}
    ).json()
    assert study.model_dump(mode="json") | {"warnings": raw["warnings"]} == raw
