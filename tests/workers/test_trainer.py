"""The trainer process (issue 14): trials train in a child of the worker, so a child that
aborts, is killed for its memory, hangs past the time limit or is SIGKILLed (as the OOM
killer does) fails its trial with the reason, and the worker goes on with a fresh child.
Real API, real worker, real TensorFlow; the misbehaving models come from a model family
installed the way a plugin is (an entry point)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import REPO, Api, start_worker, stop, trial_lease, wait_for
from tests.workers.test_training import GOOD
from workers.supervisor import Trainer, TrainerOptions

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
                "trial_time_limit_s": 20,
                "model": {"family": "hostile"},
            },
        )
        assert r.status_code == 201, r.text
        study_id = r.json()["id"]
        worker = start_worker(server.url, log, trainer_max_rss_mb="1500", trainer_grace_s="1")
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
        "trainer killed: the trial ran past its time limit of 20s plus a grace of 1s "
        "(HPO_TRAINER_GRACE_S) during epoch 1"
    )
    assert reasons[3] == (
        "trainer killed by signal 9 (SIGKILL: out of memory?) before training began"
    )
    # One worker throughout: the same process held every lease and is still registered.
    assert [w["pid"] for w in workers] == [worker.pid]
    assert {t["worker_id"] for t in trials} == {workers[0]["id"]}
    assert study["final_model"]["state"] == "ready", log.read_text()[-3000:]


def _options(tmp_path: Path) -> TrainerOptions:
    return TrainerOptions(
        worker_id="test",
        tf_threads=1,
        keras_dir=tmp_path / "keras",
        cache_dir=tmp_path / "cache",
        allow_downloads=False,
        log_level="INFO",
        log_format="text",
    )


def test_a_late_prune_or_stop_ends_training_at_the_next_boundary(tmp_path: Path) -> None:
    """Reports do not wait for the service: the trainer goes on and acts on the answer
    when it arrives. With a service that takes 1 s an answer, a prune answered to epoch 2
    ends a 200-epoch trial a few epochs later (a trainer that waited would stop at
    exactly 2); a stop asked by the worker ends the next trial."""
    trainer = Trainer(_options(tmp_path))
    try:
        assert trainer.poll_ready(timeout_s=120)
        seen: list[int] = []

        def slow_service(epoch: int, value: float, metrics: dict[str, float]) -> str:
            seen.append(epoch)
            time.sleep(1.0)
            return "prune" if epoch == 2 else "continue"

        job = trial_lease(GOOD, epochs=200).model_dump(mode="json")
        kind, fields = trainer.run(("trial", job, None), on_epoch=slow_service)
        assert kind == "outcome" and fields["state"] == "pruned", fields
        assert 2 < fields["epochs_run"] < 100, fields
        assert seen[:2] == [1, 2]

        stop_after = time.monotonic() + 1.0
        kind, fields = trainer.run(
            ("trial", job, None), should_stop=lambda: time.monotonic() > stop_after
        )
        assert fields["state"] == "stopped" and fields["epochs_run"] < 200, fields
        assert trainer.jobs == 2 and trainer.alive()  # the same trainer, warm
    finally:
        trainer.close()
    assert not trainer.alive()


def test_trainers_are_recycled_after_max_trials_and_the_study_completes(
    fresh_api: object, tmp_path: Path
) -> None:
    server: Api = fresh_api()  # type: ignore[operator]
    log = tmp_path / "worker.log"
    with server.client() as client:
        r = client.post(
            "/studies",
            json={
                "name": "recycled",
                "dataset": "iris",
                "n_trials": 6,
                "epochs": 1,
                "sanity_check": False,
                "sampler": "random",
            },
        )
        assert r.status_code == 201, r.text
        study_id = r.json()["id"]
        worker = start_worker(server.url, log, trainer_max_trials="2")
        try:
            wait_for(
                lambda: (
                    client.get(f"/studies/{study_id}").json()["final_model"]["state"]
                    in ("ready", "failed")
                ),
                300,
                "the study and its final model",
            )
        finally:
            stop(worker)
        study = client.get(f"/studies/{study_id}").json()
    assert study["trials"]["complete"] == 6 and study["final_model"]["state"] == "ready", study
    text = log.read_text()
    ready = re.findall(r"trainer (\d+) ready in", text)
    replaced = re.findall(r"replacing trainer (\d+) after (\d+) jobs", text)
    # A successor starts during its predecessor's last job and takes over once it is
    # ready (until then the old one takes more jobs): 7 jobs, at least 2 trainers.
    assert len(set(ready)) == len(ready) >= 2, text[-3000:]
    assert replaced and all(int(jobs) >= 2 for _, jobs in replaced), replaced
    # Every trainer that retired had a successor ready: none died, no trial failed.
    assert "trainer killed" not in text and "trainer exited" not in text
