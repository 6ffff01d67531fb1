"""Data set uploads and the study checks that depend on the data, over real HTTP."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import Api


def _upload(client: httpx.Client, name: str, filename: str, content: bytes,
            **form: str) -> httpx.Response:
    return client.post("/datasets", data={"name": name, **form},
                       files={"file": (filename, content)})


def _csv(n: int = 30, *, label: str = "y", bad: dict[int, str] | None = None) -> bytes:
    lines = [f"a,b,{label}"]
    for i in range(n):
        lines.append(f"{i * 0.5},{i % 7},{'yes' if i % 2 else 'no'}")
    for row, line in (bad or {}).items():
        lines[row] = line
    return ("\n".join(lines) + "\n").encode()


def _npz(**arrays: Any) -> bytes:
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def test_csv_upload_is_listed_and_downloadable(client: httpx.Client) -> None:
    r = _upload(client, "yes-no", "data.csv", _csv(), label_column="y")
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["task"] == "classification" and info["n_classes"] == 2
    assert info["n_features"] == 2 and info["n_rows"] == 30 and info["source"] == "upload"
    listed = {d["name"]: d for d in client.get("/datasets").json()}
    assert {"digits", "iris", "wine", "breast_cancer", "diabetes", "mnist", "fashion_mnist",
            "yes-no"} <= set(listed)
    file = client.get("/datasets/yes-no/file")
    assert file.status_code == 200 and file.headers["etag"] == f'"{info["sha256"]}"'
    with np.load(io.BytesIO(file.content)) as npz:
        assert npz["x"].shape == (30, 2) and sorted(set(npz["y"].tolist())) == [0, 1]
    assert _upload(client, "yes-no", "data.csv", _csv(), label_column="y").status_code == 409


def test_npz_images_and_regression_targets(client: httpx.Client) -> None:
    rng = np.random.default_rng(0)
    images = _npz(x=rng.random((40, 6, 6)), y=np.arange(40) % 4)
    r = _upload(client, "tiny-images", "imgs.npz", images)
    assert r.status_code == 201, r.text
    assert r.json()["image_shape"] == [6, 6, 1] and r.json()["n_classes"] == 4
    r = _upload(client, "targets", "reg.npz", _npz(x=rng.random((30, 3)), y=rng.random(30)))
    assert r.status_code == 201 and r.json()["task"] == "regression"


BAD_FILES: list[tuple[str, str, bytes, dict[str, str], str, str]] = [
    # (id, filename, content, form fields, field, words)
    ("not parseable", "x.npz", b"PK\x03\x04garbage", {}, "file", "is not a readable NPZ"),
    ("not parseable csv", "x.csv", b"\xff\xfe\x00bin", {"label_column": "y"}, "file",
     "is not a parseable CSV file"),
    ("label column missing", "x.csv", _csv(), {"label_column": "target"}, "label_column",
     "is not a column of the file (columns: a, b, y)"),
    ("no label column given", "x.csv", _csv(), {}, "label_column", "is required"),
    ("non-numeric features", "x.csv", _csv(bad={3: "1.0,abc,yes"}), {"label_column": "y"},
     "file", "non-numeric feature in column 'b' (line 4)"),
    ("missing values", "x.csv", _csv(bad={4: "1.0,,no"}), {"label_column": "y"}, "file",
     "missing value in column 'b' (line 5)"),
    ("npz missing values", "x.npz", _npz(x=np.array([[1.0], [np.nan]] * 10),
                                         y=np.arange(20) % 2), {}, "file", "missing values"),
    ("too few rows", "x.csv", _csv(8), {"label_column": "y"}, "file",
     "too few rows for a stratified split: class 'no' has 4, each class needs at least 5"),
    ("npz without y", "x.npz", _npz(x=np.zeros((10, 2))), {}, "file",
     "must hold arrays named x and y"),
]


@pytest.mark.parametrize(("case", "filename", "content", "form", "field", "words"), BAD_FILES,
                         ids=[b[0] for b in BAD_FILES])
def test_bad_files_are_422_with_the_reason(
    client: httpx.Client, case: str, filename: str, content: bytes, form: dict[str, str],
    field: str, words: str
) -> None:
    name = "bad-" + case.replace(" ", "-")
    r = _upload(client, name, filename, content, **form)
    assert r.status_code == 422, r.text
    (problem,) = r.json()["detail"]
    assert problem["field"] == field and words in problem["msg"], problem
    assert name not in [d["name"] for d in client.get("/datasets").json()]


def test_over_the_size_limit_is_422(fresh_api: Callable[..., Api]) -> None:
    server = fresh_api(max_upload_bytes="500")
    with server.client() as client:
        r = _upload(client, "big", "big.csv", _csv(100), label_column="y")
    assert r.status_code == 422
    assert "larger than the limit of 500 bytes" in r.json()["message"]


STUDY = {"dataset": "digits", "n_trials": 3, "epochs": 2}


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"dataset": "iris", "model": {"family": "cnn"}}, "model.family",
     "needs image data, but dataset 'iris' is tabular (4 features)"),
    ({"dataset": "iris", "metric": "val_mae"}, "metric",
     "does not fit dataset 'iris', which is classification (allowed: val_accuracy, val_loss)"),
    ({"dataset": "diabetes", "metric": "val_accuracy"}, "metric",
     "which is regression (allowed: val_loss, val_mae)"),
    ({"dataset": "nope"}, "dataset", "must be one of digits, iris"),
    ({"sampler": "grid"}, "search_space.learning_rate", "is continuous, which the grid "
     "sampler cannot enumerate"),
    ({"model": {"family": "cnn"}, "fixed": {"hidden_units": 64}}, "fixed.hidden_units",
     "applies to the model families mlp only, not cnn"),
    ({"search_space": {"learning_rate": {"low": 0.001, "high": 0.01}},
      "enqueue": [{"learning_rate": 0.5}]}, "enqueue.0.learning_rate",
     "must be within the study's range [0.001, 0.01]"),
    ({"enqueue": [{"optimizer": "lion"}]}, "enqueue.0.optimizer", "must be one of 'sgd'"),
    ({"trial_time_limit_s": 0}, "trial_time_limit_s", "greater than 0"),
])
def test_submission_checks_that_need_the_data(client: httpx.Client, body: dict[str, Any],
                                              field: str, words: str) -> None:
    r = client.post("/studies", json={**STUDY, "name": f"chk-{field}", **body})
    assert r.status_code == 422, r.text
    fields = {p["field"]: p["msg"] for p in r.json()["detail"]}
    assert field in fields and words in fields[field], fields


def test_grid_over_a_finite_space_is_accepted(client: httpx.Client) -> None:
    r = client.post("/studies", json={
        **STUDY, "name": "grid-ok", "sampler": "grid",
        "search_space": {"learning_rate": {"low": 0.001, "high": 0.003, "step": 0.001},
                         "optimizer": {"choices": ["adam", "rmsprop"]}},
        "fixed": {"lr_schedule": "constant", "kernel_initializer": "he_normal",
                  "dropout_rate": 0.1}})
    assert r.status_code == 201, r.text


def test_cnn_on_images_is_accepted(client: httpx.Client) -> None:
    r = client.post("/studies", json={**STUDY, "name": "cnn-ok", "model": {"family": "cnn"}})
    assert r.status_code == 201, r.text
    assert "hidden_layers" not in r.json()["fixed"]
