"""The trainer process (issue 14): trials train in a child of the worker, so a child that
aborts, is killed for its memory, hangs past the time limit or is SIGKILLed (as the OOM
killer does) fails its trial with the reason, and the worker goes on with a fresh child.
Real API, real worker, real TensorFlow; the misbehaving models come from a model family
installed the way a plugin is (an entry point)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, Api, start_worker, stop, wait_for

pytestmark = [pytest.mark.slow]

HOSTILE = '''
import os, signal, time
from pathlib import Path

import keras
import numpy as np

PLAN = os.environ["HOSTILE_PLAN"].split(",")
COUNTER = Path(os.environ["HOSTILE_COUNTER"])


class Nap(keras.layers.Layer):
    """Sleeps when the training step is traced: inside epoch 1."""

    def call(self, x, training=None):
        if training:
            time.sleep(3600)
        return x


def build(params, *, n_features, n_outputs, image_shape, seed):
    done = int(COUNTER.read_text()) if COUNTER.exists() else 0
    COUNTER.write_text(str(done + 1))
    what = PLAN[done] if done < len(PLAN) else "ok"
    inputs = keras.Input((n_features,))
    if what == "abort":
        os.abort()
    if what == "sigkill":  # what the kernel's OOM killer does
        os.kill(os.getpid(), signal.SIGKILL)
    if what == "hog":
        hoard = []
        while True:
            hoard.append(np.ones(2**21))  # 16 MiB, touched
            time.sleep(0.005)
    hidden = Nap()(inputs) if what == "sleep" else inputs
    return keras.Model(inputs, keras.layers.Dense(n_outputs)(hidden))
'''


def _install(site: Path) -> str:
    """The module and an entry point for it (family ``hostile``); returns PYTHONPATH."""
    site.mkdir(parents=True)
    (site / "hostile_models.py").write_text(HOSTILE)
    info = site / "hostile_models-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hostile-models\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hpo.models]\nhostile = hostile_models:build\n")
    return os.pathsep.join([str(site), str(REPO)])


def test_the_worker_parent_never_loads_tensorflow() -> None:
    code = (
        "import sys, workers.loop, workers.supervisor\n"
        "loaded = [m for m in ('tensorflow', 'keras', 'numpy') if m in sys.modules]\n"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


def test_a_dying_trainer_fails_its_trial_not_the_worker(
    fresh_api: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", _install(tmp_path / "site"))
    monkeypatch.setenv("HOSTILE_PLAN", "abort,hog,sleep,sigkill")
    monkeypatch.setenv("HOSTILE_COUNTER", str(tmp_path / "built"))
    server: Api = fresh_api()  # type: ignore[operator]
    log = tmp_path / "worker.log"
    with server.client() as client:
        r = client.post(
            "/studies",
            json={
                "name": "hostile",
                "dataset": "iris",
                "n_trials": 5,
                "epochs": 2,
                "seed": 1,
                "sanity_check": False,
                "trial_time_limit_s": 8,
                "model": {"family": "hostile"},
            },
        )
        assert r.status_code == 201, r.text
        study_id = r.json()["id"]
        worker = start_worker(
            server.url, log, trainer_max_rss_mb="1500", trainer_grace_s="1"
        )
        try:

            def done() -> bool:
                study = client.get(f"/studies/{study_id}").json()
                assert worker.poll() is None, log.read_text()[-3000:]
                return bool(study["final_model"]["state"] in ("ready", "failed"))

            wait_for(done, 300, "the study and its final model")
            workers = client.get("/workers").json()
        finally:
            stop(worker)
        study = client.get(f"/studies/{study_id}").json()
        trials = sorted(client.get(f"/studies/{study_id}/trials").json(), key=lambda t: t["number"])
    assert study["status"] == "completed", study
    assert [t["state"] for t in trials] == ["fail"] * 4 + ["complete"], trials
    reasons = [t["reason"] for t in trials[:4]]
    assert reasons[0] == "trainer killed by signal 6 (SIGABRT: aborted) before training began"
    assert reasons[1].startswith("trainer killed: its resident memory reached ")
    assert reasons[1].endswith("over 2 x HPO_TRAINER_MAX_RSS_MB (1,500 MiB) before training began")
    assert reasons[2] == (
        "trainer killed: the trial ran past its time limit of 8s plus a grace of 1s "
        "(HPO_TRAINER_GRACE_S) during epoch 1"
    )
    assert reasons[3] == (
        "trainer killed by signal 9 (SIGKILL: out of memory?) before training began"
    )
    # One worker throughout: the same process held every lease and is still registered.
    assert [w["pid"] for w in workers] == [worker.pid]
    assert {t["worker_id"] for t in trials} == {workers[0]["id"]}
    assert study["final_model"]["state"] == "ready", log.read_text()[-3000:]
