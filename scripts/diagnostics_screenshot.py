"""Regenerate docs/diagnostics-note.png and docs/diagnostics-trial.png: a small study
whose bad half vanishes (deep sigmoid with small weights), run by a real worker to its
best model, its report saved, and two pages of the Optuna dashboard shot by headless
Chromium: the study's note (the report) and the trial list (a trial's findings).

    .venv/bin/python scripts/diagnostics_screenshot.py [OUT_DIR]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import running_dashboard, start_api, start_worker, stop, wait_for

GOOD = {"activation": "relu", "kernel_initializer": "he_normal"}
BAD = {"activation": "sigmoid", "kernel_initializer": "truncated_normal"}


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs").resolve()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        artifacts = tmp / "artifacts"
        api = start_api(tmp, artifact_dir=str(artifacts))
        try:
            with api.client() as client:
                lrs = (0.003, 0.01, 0.03)
                r = client.post(
                    "/studies",
                    json={
                        "name": "diagnosed",
                        "dataset": "digits",
                        "n_trials": 6,
                        "epochs": 6,
                        "seed": 1,
                        "pruner": "none",
                        "sanity_check": False,
                        "search_space": {
                            "activation": {"choices": ["relu", "sigmoid"]},
                            "kernel_initializer": {"choices": ["he_normal", "truncated_normal"]},
                            "learning_rate": {"low": 0.003, "high": 0.03, "log": True},
                        },
                        "fixed": {
                            "optimizer": "sgd",
                            "hidden_layers": 4,
                            "dropout_rate": 0.0,
                            "lr_schedule": "constant",
                        },
                        "enqueue": [{**BAD, "learning_rate": lr} for lr in lrs]
                        + [{**GOOD, "learning_rate": lr} for lr in lrs],
                    },
                )
                r.raise_for_status()
                study_id = r.json()["id"]
                worker = start_worker(api.url, tmp / "worker.log")
                try:
                    wait_for(
                        lambda: (
                            client.get(f"/studies/{study_id}").json()["final_model"]["state"]
                            == "ready"
                        ),
                        300,
                        "the best model",
                    )
                finally:
                    stop(worker)
                client.post(f"/studies/{study_id}/report").raise_for_status()
            with running_dashboard(api.database_url, artifacts) as url:
                optuna_id = httpx.get(f"{url}/api/studies").json()["study_summaries"][0]["study_id"]
                chromium = shutil.which("chromium") or "chromium"
                for page, height in (("note", 2000), ("trials", 1400)):
                    subprocess.run(
                        [
                            chromium,
                            "--headless",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--no-first-run",
                            f"--user-data-dir={tmp / 'profile'}",
                            f"--window-size=1400,{height}",
                            "--virtual-time-budget=20000",
                            f"--screenshot={out / f'diagnostics-{page}.png'}",
                            f"{url}/dashboard/studies/{optuna_id}/{page}",
                        ],
                        check=True,
                        capture_output=True,
                        timeout=120,
                    )
        finally:
            stop(api.process)
    print(f"wrote {out}/diagnostics-note.png and diagnostics-trials.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
