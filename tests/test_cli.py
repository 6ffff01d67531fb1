"""The `hpo` CLI as users run it, against a real API (and, for submit --wait, a real worker):
plain text without a terminal, --json for scripts, the parameters that vary as columns, and
every failure as one line with exit code 1."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.cli.render import trial_rows
from service.client import TrialOut
from tests.support import Api, child_env, free_port, hpo, start_worker, stop

ANSI = re.compile(r"\x1b\[")


def _env(api_url: str, **extra: str) -> dict[str, str]:
    env = child_env(api_url=api_url, **extra)
    for forcing in ("FORCE_COLOR", "TTY_COMPATIBLE", "CLICOLOR_FORCE"):
        env.pop(forcing, None)  # what a pipe gets: no terminal
    return env


def _hpo(api_url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        hpo(*args), env=_env(api_url), capture_output=True, text=True, timeout=timeout
    )
    assert not ANSI.search(done.stdout + done.stderr), (args, done.stdout, done.stderr)
    return done


def _json(api_url: str, *args: str) -> Any:
    done = _hpo(api_url, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
@pytest.mark.serial
def test_submit_wait_then_status_trials_best_model_stop(
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
    progress = [line for line in out.splitlines() if line.startswith("cli-iris: ")]
    assert progress and "3/3 trials done" in progress[-1] and "eta" in progress[-1]
    counts = [int(line.split(" ")[1].split("/")[0]) for line in progress]
    assert counts == sorted(counts)  # a line when the count changes, no redraw
    assert "best trial #" in out and "  optimizer = adam" in out
    assert "retrained on train + validation: test_accuracy = " in out
    assert "hpo model cli-iris" in out

    status = _hpo(server.url, "status")
    assert status.returncode == 0
    header, row = status.stdout.splitlines()
    assert header.split() == ["id", "name", "status", "trials", "dataset", "metric", "best", "test"]
    assert row.split()[:5] == ["1", "cli-iris", "completed", "3/3", "iris"]
    (listed,) = _json(server.url, "status")
    assert listed == _json(server.url, "status", "cli-iris")
    assert listed["final_model"]["state"] == "ready"

    trials = _hpo(server.url, "trials", "cli-iris").stdout.splitlines()
    assert trials[0].split()[:5] == ["#", "state", "value", "epochs", "time"] and len(trials) == 4
    assert "optimizer" not in trials[0] and "batch_size" not in trials[0]  # fixed: no column
    best = _hpo(server.url, "best", "cli-iris").stdout
    assert best.startswith("best trial #") and "learning_rate = 0.01" in best
    assert _json(server.url, "best", "cli-iris") == listed["best"]

    saved = _hpo(server.url, "model", "cli-iris", "--output", str(tmp_path))
    assert saved.returncode == 0, saved.stderr
    model = tmp_path / "cli-iris-best.keras"
    assert model.stat().st_size > 1000 and str(model) in saved.stdout
    assert _hpo(server.url, "stop", "cli-iris").stdout.strip() == "study cli-iris is completed"


def test_trials_show_every_parameter_that_varies(fresh_api: Callable[..., Api]) -> None:
    server = fresh_api()
    with server.client() as client:
        r = client.post(
            "/studies",
            json={
                "name": "cli-decay",
                "dataset": "digits",
                "n_trials": 4,
                "epochs": 2,
                "sanity_check": False,
                "search_space": {"lr_decay_rate": {"low": 0.9, "high": 0.99}},
                "fixed": {"lr_schedule": "exponential", "learning_rate": 0.01},
            },
        )
        assert r.status_code == 201, r.text
        for _ in range(3):
            assert client.post("/trials/lease", json={"worker": {"id": "w1"}}).status_code == 200
    done = _hpo(server.url, "trials", "cli-decay")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    columns = header.split()
    assert columns[:5] == ["#", "state", "value", "epochs", "time"] and columns[-1] == "reason"
    assert "lr_decay_rate" in columns
    assert "learning_rate" not in columns and "batch_size" not in columns  # the same in all
    trials = _json(server.url, "trials", "cli-decay")
    assert len(rows) == len(trials) == 3
    at = columns.index("lr_decay_rate")
    for row, trial in zip(rows, trials, strict=True):
        assert row.split()[1] == "running"
        assert float(row.split()[at]) == pytest.approx(trial["params"]["lr_decay_rate"], rel=1e-3)


def test_json_output_parses_and_tables_are_plain(api: Api) -> None:
    datasets = _json(api.url, "datasets")
    assert {"digits", "iris"} <= {d["name"] for d in datasets}
    assert {"name", "task", "n_features", "source"} <= set(datasets[0])
    table = _hpo(api.url, "datasets").stdout.splitlines()
    assert table[0].split()[:3] == ["name", "task", "rows"]
    assert any(line.split()[:2] == ["digits", "classification"] for line in table[1:])
    studies = _json(api.url, "status")
    assert isinstance(studies, list) and all("final_model" in s for s in studies)


def test_errors_are_one_line_and_exit_1(api: Api, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        '{"name": "x", "dataset": "digits", "n_trials": 2, "epochs": 1, '
        '"search_space": {"learning_rate": {"low": 0.1, "high": 0.01}}}'
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    cases = [
        (("submit", str(bad)), "hpo submit: search_space.learning_rate.low: must be <= high"),
        (("submit", str(broken)), "is not valid YAML"),
        (("submit", str(tmp_path / "missing.yaml")), "hpo submit: cannot read"),
        (("trials", "nope"), "hpo trials: no study named 'nope' (HTTP 404)"),
        (("best", "nope", "--json"), "hpo best: no study named 'nope'"),
        (("model", "nope"), "hpo model: no study named 'nope'"),
        (("upload", "u1", str(tmp_path / "missing.csv")), "hpo upload: cannot read"),
    ]
    for args, words in cases:
        done = _hpo(api.url, *args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and done.stdout == ""
    unreachable = _hpo(f"http://127.0.0.1:{free_port()}", "status")
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("hpo status: cannot reach the service")
    assert unreachable.stderr.count("\n") == 1
    env = {k: v for k, v in _env(api.url).items() if k != "HPO_API_TOKEN"}
    no_token = subprocess.run(
        hpo("status"), env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert no_token.returncode == 1 and no_token.stderr.count("\n") == 1
    assert "hpo status: HPO_API_TOKEN is not set" in no_token.stderr
    refused = subprocess.run(
        hpo("status"),
        env=_env(api.url, api_token="not-the-user-token-at-all"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1
    assert "is HPO_API_TOKEN the service's user token?" in refused.stderr


def test_ctrl_c_while_waiting_exits_130(api: Api, tmp_path: Path) -> None:
    spec = tmp_path / "wait.json"
    spec.write_text('{"name": "cli-waiting", "dataset": "digits", "n_trials": 1, "epochs": 1}')
    waiting = subprocess.Popen(
        hpo("submit", str(spec), "--wait"),
        # On a hang, SIGABRT makes faulthandler print where every thread is.
        env={**_env(api.url), "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert waiting.stdout is not None and waiting.stderr is not None
    try:
        assert waiting.stdout.readline().startswith("submitted study cli-waiting")
        assert waiting.stdout.readline().startswith("cli-waiting: 0/1 trials done")
        waiting.send_signal(signal.SIGINT)
        try:
            code = waiting.wait(timeout=30)
        except subprocess.TimeoutExpired:
            waiting.send_signal(signal.SIGABRT)
            waiting.wait(timeout=10)
            pytest.fail(f"no exit 30 s after Ctrl-C; its stacks:\n{waiting.stderr.read()}")
        assert code == 130
        assert "Traceback" not in waiting.stderr.read()
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
        waiting.stdout.close()
        if waiting.stderr is not None:
            waiting.stderr.close()


def test_trials_say_which_trial_a_reevaluation_repeats_and_on_which_fold() -> None:
    """``hpo trials`` grows a ``repeats`` column once a study has re-evaluations."""

    def trial(number: int, **again: Any) -> TrialOut:
        return TrialOut.model_validate(
            {
                "trial_id": number + 1,
                "number": number,
                "state": "complete",
                "params": {"dropout_rate": 0.2},
                "value": 0.9,
                "reason": None,
                "epochs_run": 3,
                "worker_id": "w1",
                "started_at": "2026-12-04T00:00:00Z",
                "finished_at": None,
                "duration_s": None,
                **again,
            }
        )

    searched = [trial(0), trial(1)]
    header, _rows = trial_rows(searched, ["dropout_rate"])
    assert "repeats" not in header
    header, rows = trial_rows([*searched, trial(2, reevaluates=1, fold=2)], ["dropout_rate"])
    at = header.index("repeats")
    assert [row[at] for row in rows] == [None, None, "#1/fold2"]  # (one word: awk splits)
    assert header[at + 1] == "dropout_rate" and rows[2][at + 1] == 0.2
