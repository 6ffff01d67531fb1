"""A custom model family, registered through the `hpo.models` entry-point group by the
example package in examples/custom_model, trained end to end: the API learns the family's
name from the package's metadata, a worker imports and builds it."""

from __future__ import annotations

import io
import os
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support import REPO, Api, start_worker, stop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.serial]

EXAMPLE = REPO / "examples" / "custom_model"


def _install_example(site: Path) -> str:
    """Make the example importable with its entry points, as `pip install` would: a
    .dist-info with the entry_points.txt its pyproject.toml declares. Returns PYTHONPATH."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    info = site / f"hpo_example_models-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = [f"{name} = {target}" for name, target in project["entry-points"]["hpo.models"].items()]
    (info / "entry_points.txt").write_text("[hpo.models]\n" + "\n".join(lines) + "\n")
    return os.pathsep.join([str(site), str(EXAMPLE / "src")])


def _submit(client: httpx.Client, name: str, family: str) -> httpx.Response:
    return client.post(
        "/studies",
        json={
            "name": name,
            "dataset": "digits",
            "n_trials": 2,
            "epochs": 3,
            "seed": 3,
            "model": {"family": family},
        },
    )


def test_unregistered_family_is_refused(client: httpx.Client) -> None:
    r = _submit(client, "no-plugin", "linear")
    assert r.status_code == 422, r.text
    (problem,) = r.json()["detail"]
    assert problem["field"] == "model.family" and problem["input"] == "linear"
    assert "must be one of mlp, cnn" in problem["msg"]


def test_registered_family_trains_end_to_end(
    fresh_api: Callable[..., Api], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", _install_example(tmp_path / "site"))
    server = fresh_api()
    with server.client() as client:
        r = _submit(client, "typo", "lineaar")
        assert r.status_code == 422 and "mlp, cnn, linear" in r.json()["message"], r.text
        r = _submit(client, "plugin", "linear")
        assert r.status_code == 201, r.text
        study_id = r.json()["id"]
        log = tmp_path / "worker.log"
        worker = start_worker(server.url, log)
        try:

            def done() -> bool:
                study = client.get(f"/studies/{study_id}").json()
                return bool(
                    study["final_model"]["state"] in ("ready", "failed")
                    or study["status"] == "failed"
                )

            wait_for(done, 180, "the study and its final model")
        finally:
            stop(worker)
        study = client.get(f"/studies/{study_id}").json()
        assert study["status"] == "completed" and study["sanity_check"] == "passed", study
        assert study["trials"]["complete"] + study["trials"]["pruned"] == 2, study
        assert study["final_model"]["state"] == "ready", (study, log.read_text())
        model = client.get(f"/studies/{study_id}/model")
    with zipfile.ZipFile(io.BytesIO(model.content)) as archive:
        config = archive.read("config.json").decode()
    # The example's one dense layer, not the mlp's hidden layers.
    assert '"name": "linear"' in config and '"logits"' in config
    assert "dense_0" not in config
