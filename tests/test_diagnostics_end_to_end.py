"""Issue 15 end to end: a real API and worker train a study whose bad half vanishes (deep
sigmoid with small weights); the findings reach the trials' answers, Optuna's user
attributes, ``hpo trials`` and the study's report, whose suggested spec is accepted."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest

from diagnostics.codes import ALARMS
from tests.support import Api, child_env, hpo, start_worker, stop, wait_for

pytestmark = pytest.mark.slow

GOOD = {"activation": "relu", "kernel_initializer": "he_normal"}
BAD = {"activation": "sigmoid", "kernel_initializer": "truncated_normal"}


def _spec(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "dataset": "digits",
        "n_trials": 6,
        "epochs": 5,
        "seed": 1,
        "sampler": "random",
        "pruner": "none",
        "sanity_check": False,
        "search_space": {
            "activation": {"choices": ["relu", "sigmoid"]},
            "kernel_initializer": {"choices": ["he_normal", "truncated_normal"]},
            "learning_rate": {"low": 0.003, "high": 0.03, "log": True},
        },
        "fixed": {"optimizer": "sgd", "hidden_layers": 4, "dropout_rate": 0.0},
        **extra,
    }


def _run(api: Api, tmp_path: Path, body: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    with api.client() as client:
        r = client.post("/studies", json=body)
        assert r.status_code == 201, r.text
        study_id = r.json()["id"]
        worker = start_worker(api.url, tmp_path / f"{body['name']}.log")
        try:
            wait_for(
                lambda: client.get(f"/studies/{study_id}").json()["status"] == "completed",
                240,
                "the study",
            )
        finally:
            stop(worker)
        trials: list[dict[str, Any]] = client.get(f"/studies/{study_id}/trials").json()
    return study_id, trials


def test_findings_reach_the_trials_the_dashboard_the_cli_and_the_report(
    fresh_api: Callable[..., Api], tmp_path: Path
) -> None:
    api = fresh_api()
    lrs = (0.003, 0.01, 0.03)
    body = _spec(
        "diagnosed",
        enqueue=[{**BAD, "learning_rate": lr} for lr in lrs]
        + [{**GOOD, "learning_rate": lr} for lr in lrs],
    )
    study_id, trials = _run(api, tmp_path, body)
    assert [t["state"] for t in trials] == ["complete"] * 6
    codes = [{f["code"] for f in t["findings"]} for t in trials]
    for bad in codes[:3]:
        assert "vanishing_gradients" in bad, codes
    for good in codes[3:]:
        assert not good & ALARMS, codes
    first = trials[0]["findings"][0]
    assert set(first) == {"code", "epoch", "layer", "value", "threshold", "message"}

    # The dashboard reads Optuna's user attributes.
    study = optuna.load_study(study_name="diagnosed", storage=api.database_url)
    attrs = [t.user_attrs for t in sorted(study.trials, key=lambda t: t.number)]
    assert [a["findings"] for a in attrs] == [t["findings"] for t in trials]
    assert all(a["diagnostics_s"] > 0 for a in attrs)

    shown = subprocess.run(
        hpo("trials", "diagnosed"),
        env=child_env(api_url=api.url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    header, *rows = shown.stdout.splitlines()
    assert "findings" in header.split()
    assert "vanishing_gradients" in rows[0] and "vanishing_gradients" not in rows[3]

    with api.client() as client:
        r = client.get(f"/studies/{study_id}/report")
        assert r.status_code == 200, r.text
        report = r.json()
        assert set(report) >= {"importances", "findings", "advice", "suggested_spec"}
        texts = [v["text"] for v in report["findings"]["by_value"]]
        assert "activation=sigmoid: 3 of 3 trials vanishing_gradients" in texts
        actions = [a["action"] for a in report["advice"]]
        assert "drop activation=sigmoid" in actions
        assert "drop kernel_initializer=truncated_normal" in actions
        suggested = report["suggested_spec"]
        assert suggested["fixed"]["activation"] == "relu"
        assert suggested["fixed"]["kernel_initializer"] == "he_normal"
        assert "activation" not in suggested["search_space"]
        r = client.post("/studies", json=suggested)
        assert r.status_code == 201, r.text
        assert r.json()["name"] == "diagnosed-next"
        client.post(f"/studies/{r.json()['id']}/stop")

        saved = client.post(f"/studies/{study_id}/report")
        assert saved.status_code == 200 and saved.json()["advice"] == report["advice"]
    spec_file = tmp_path / "next.json"
    done = subprocess.run(
        hpo("report", "diagnosed", "--spec-out", str(spec_file)),
        env=child_env(api_url=api.url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "drop activation=sigmoid" in done.stdout
    assert json.loads(spec_file.read_text()) == suggested


def test_diagnostics_off_records_no_findings(fresh_api: Callable[..., Api], tmp_path: Path) -> None:
    api = fresh_api()
    body = _spec("quiet", n_trials=1, diagnostics=False, enqueue=[{**BAD, "learning_rate": 0.01}])
    _, trials = _run(api, tmp_path, body)
    assert trials[0]["state"] == "complete" and trials[0]["findings"] == []
    study = optuna.load_study(study_name="quiet", storage=api.database_url)
    assert "findings" not in study.trials[0].user_attrs
