"""The user-facing CLI against a real API and a real worker: submit --wait with progress,
status / trials / best / stop as tables, and errors as one line with exit code 1."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import Api, child_env, free_port, hpo, start_worker, stop

pytestmark = pytest.mark.slow


def _hpo(api_url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        hpo(*args), env=child_env(api_url=api_url), capture_output=True, text=True, timeout=timeout
    )


def test_submit_wait_then_status_trials_best_stop(
    fresh_api: Callable[..., Api], tmp_path: Path
) -> None:
    server = fresh_api()
    spec = tmp_path / "study.yaml"
    spec.write_text(
        "name: cli-iris\ndataset: iris\nn_trials: 3\nepochs: 4\n"
        "fixed:\n  optimizer: adam\n  learning_rate: 0.01\n"
    )
    log = tmp_path / "worker.log"
    worker = start_worker(server.url, log)
    try:
        done = _hpo(server.url, "submit", str(spec), "--wait", timeout=240)
    finally:
        stop(worker)
    assert done.returncode == 0, done.stderr + log.read_text()[-3000:]
    out = done.stdout
    assert "submitted study cli-iris (id 1): 3 trials x 4 epochs on iris" in out
    assert "] 3/3 trials  best val_accuracy" in out and "eta" in out  # the progress bar
    assert "best trial #" in out and "  optimizer = adam" in out
    assert "retrained on train + validation: test_accuracy = " in out

    status = _hpo(server.url, "status")
    assert status.returncode == 0
    header, rule, row = status.stdout.splitlines()[:3]
    assert set(rule) == {"-", " "}
    assert header.split() == ["id", "name", "status", "trials", "dataset", "metric", "best", "test"]
    assert row.split()[:5] == ["1", "cli-iris", "completed", "3/3", "iris"]
    trials = _hpo(server.url, "trials", "cli-iris").stdout.splitlines()
    assert trials[0].split()[:4] == ["#", "state", "value", "epochs"] and len(trials) == 5
    best = _hpo(server.url, "best", "cli-iris").stdout
    assert best.startswith("best trial #") and "learning_rate = 0.01" in best
    assert _hpo(server.url, "stop", "cli-iris").stdout.strip() == "study cli-iris is completed"


def test_errors_are_one_line_and_exit_1(fresh_api: Callable[..., Api], tmp_path: Path) -> None:
    server = fresh_api()
    bad = tmp_path / "bad.json"
    bad.write_text(
        '{"name": "x", "dataset": "digits", "n_trials": 2, "epochs": 1, '
        '"search_space": {"learning_rate": {"low": 0.1, "high": 0.01}}}'
    )
    cases = [
        (("submit", str(bad)), "search_space.learning_rate.low: must be <= high"),
        (("trials", "nope"), "no study named 'nope'"),
        (("submit", str(tmp_path / "missing.yaml")), "cannot read"),
    ]
    for args, words in cases:
        done = _hpo(server.url, *args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    unreachable = _hpo(f"http://127.0.0.1:{free_port()}", "status")
    assert unreachable.returncode == 1
    assert "cannot reach the service" in unreachable.stderr
    assert unreachable.stderr.count("\n") == 1
