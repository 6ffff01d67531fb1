"""The Optuna dashboard on the service's database: its own REST API lists a finished study
with every trial, learning curve, user attribute, note and artifact; a headless Chromium
loads the study's page, and the test checks what it shows and keeps a screenshot."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest

from tests.support import Api, running_dashboard, start_worker, stop, wait_for

FIXED = {"optimizer": "adam", "lr_schedule": "constant"}
SEARCHED = {"learning_rate", "dropout_rate", "kernel_initializer"}
"""The study's fixed values, and what it searches (the defaults the fixed ones leave; with a
constant schedule ``lr_decay_rate`` is never used)."""

pytestmark = [pytest.mark.slow, pytest.mark.serial]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, Path, int]]:
    """A study run to the end (sanity run, trials, final model) by a real worker."""
    from tests.support import start_api

    root = tmp_path_factory.mktemp("dash")
    artifacts = root / "artifacts"
    server = start_api(root, artifact_dir=str(artifacts))
    try:
        with server.client() as client:
            r = client.post(
                "/studies",
                json={
                    "name": "shown",
                    "dataset": "digits",
                    "n_trials": 3,
                    "epochs": 3,
                    "fixed": FIXED,
                },
            )
            study_id = r.json()["id"]
            worker = start_worker(server.url, root / "worker.log")
            try:
                wait_for(
                    lambda: (
                        client.get(f"/studies/{study_id}").json()["final_model"]["state"] == "ready"
                    ),
                    180,
                    "the study and its final model",
                )
            finally:
                stop(worker)
        yield server, artifacts, study_id
    finally:
        stop(server.process)


@pytest.fixture(scope="module")
def dashboard(finished: tuple[Api, Path, int]) -> Iterator[str]:
    server, artifacts, _ = finished
    with running_dashboard(server.database_url, artifacts) as url:
        yield url


def _study(dashboard: str) -> tuple[int, dict[str, Any]]:
    def reported() -> bool:  # the report is saved just after the best model arrives
        summaries = httpx.get(f"{dashboard}/api/studies").json()["study_summaries"]
        detail = httpx.get(f"{dashboard}/api/studies/{summaries[0]['study_id']}").json()
        return len(detail["artifacts"]) == 3

    wait_for(reported, 60, "the study's report")
    summaries = httpx.get(f"{dashboard}/api/studies").json()["study_summaries"]
    (summary,) = [s for s in summaries if s["study_name"] == "shown"]
    detail: dict[str, Any] = httpx.get(f"{dashboard}/api/studies/{summary['study_id']}").json()
    return summary["study_id"], detail


def test_dashboard_api_lists_every_trial_with_curves_attrs_note_and_artifacts(
    dashboard: str,
) -> None:
    _, study = _study(dashboard)
    trials = study["trials"]
    assert len(trials) == 3 and {t["state"] for t in trials} <= {"Complete", "Pruned"}
    for t in trials:
        assert [p["step"] for p in t["intermediate_values"]] == [1, 2, 3][
            : len(t["intermediate_values"])
        ] and t["intermediate_values"]
        attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
        assert {"worker_id", "epochs_run"} <= set(attrs)
        assert t["datetime_start"] and t["datetime_complete"]  # the duration
        # What the probe found ([] for nothing; the dashboard shows attributes as text).
        assert isinstance(json.loads(attrs["findings"]), list)
        if t["state"] == "Complete":
            assert "train_val_gap" in attrs and float(attrs["diagnostics_s"]) > 0
            assert [a["filename"] for a in t["artifacts"]] == ["history.json"]
    note = study["note"]["body"]
    assert "Submitted spec" in note and '"dataset": "digits"' in note
    # The report is saved once the best model is in (a background task of that upload).
    assert "## Report: shown (3 trials)" in note and "### Suggested next spec" in note
    assert sorted(a["filename"] for a in study["artifacts"]) == [
        "report-curves.png",
        "report-importances.png",
        "shown-best.keras",
    ]


def test_the_dashboard_speaks_the_study_s_language(
    dashboard: str, finished: tuple[Api, Path, int]
) -> None:
    """The objective is named after the study's metric; a trial's parameters are what the
    study searches, its fixed values a user attribute; importances list searched ones only.
    The service's own trials keep the whole configuration."""
    server, _, service_id = finished
    optuna_id, study = _study(dashboard)
    assert study["objective_names"] == ["val_accuracy"]
    with server.client() as client:
        leased = {
            t["number"]: t["params"] for t in client.get(f"/studies/{service_id}/trials").json()
        }
    assert len(leased) == 3
    for t in study["trials"]:
        params = {p["name"]: p["param_external_value"] for p in t["params"]}
        assert set(params) == SEARCHED
        attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
        fixed = json.loads(attrs["fixed_params"])
        assert FIXED.items() <= fixed.items() and not set(fixed) & SEARCHED
        assert set(leased[t["number"]]) == set(fixed) | SEARCHED
    r = httpx.get(f"{dashboard}/api/studies/{optuna_id}/param_importances")
    assert r.is_success, r.text
    (importances,) = r.json()["param_importances"]
    assert {i["name"] for i in importances} == SEARCHED

    # The same, read with Optuna itself.
    loaded = optuna.load_study(study_name="shown", storage=server.database_url)
    assert loaded.metric_names == ["val_accuracy"]
    for trial in loaded.trials:
        assert set(trial.params) == SEARCHED
        assert {**trial.user_attrs["fixed_params"], **trial.params} == leased[trial.number]
    assert set(optuna.importance.get_param_importances(loaded)) == SEARCHED


def test_a_browser_shows_the_study(dashboard: str, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail(
            "chromium is not installed; `make test` installs it (scripts/ensure-test-tools.sh)"
        )
    study_id, _ = _study(dashboard)
    page = f"{dashboard}/dashboard/studies/{study_id}"
    flags = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,1000",
        "--virtual-time-budget=20000",
    ]
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # What the rendered page shows (after its scripts ran): the study's name and id in the
    # header, the optimisation history, and the importance of the searched parameters.
    for words in (
        f"shown (id={study_id})",
        "History",
        "Hyperparameter Importance",
        "learning_rate",
        "dropout_rate",
    ):
        assert words in dom.stdout, words
    shot = tmp_path / "dashboard.png"
    done = subprocess.run(
        [*flags, f"--screenshot={shot}", page], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    assert shot.stat().st_size > 10_000, "the screenshot is blank"
