"""`hpo up`, as `make up` runs it: the demo study on digits, 2 local workers, and a best
validation accuracy of at least 0.95 (the issue's promise), then `--exit-when-done`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import optuna
import pytest

from tests.conftest import child_env, free_port, hpo

pytestmark = pytest.mark.slow


def test_up_runs_the_demo_to_a_good_model(tmp_path: Path) -> None:
    done = subprocess.run(
        hpo("up", "--port", str(free_port()), "--exit-when-done"),
        env=child_env(),  # the defaults: ./hpo.db, 2 workers, 20 trials x 20 epochs
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    best = re.search(r"best trial #\d+: val_accuracy = ([0-9.]+)", done.stdout)
    assert best is not None, done.stdout
    assert float(best.group(1)) >= 0.95, done.stdout
    assert "20/20 trials done" in done.stdout
    for name in ("learning_rate", "optimizer", "lr_schedule", "dropout_rate",
                 "kernel_initializer"):
        assert f"  {name} = " in done.stdout
    name = re.search(r"study_name='([^']+)'", done.stdout)
    assert name is not None
    study = optuna.load_study(study_name=name.group(1), storage=f"sqlite:///{tmp_path}/hpo.db")
    assert len(study.trials) == 20
    assert study.best_value == pytest.approx(float(best.group(1)), abs=1e-4)
