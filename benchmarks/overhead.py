"""Overhead: a trial inside the service against a bare ``model.fit`` of the same model.

A real ``hpo api`` (SQLite) hands the configurations out as enqueued trials of one study;
a real worker loop in this process trains them, and the time from the lease request to
the answer of ``complete`` is the trial's service time. Right after each trial, the same
process builds and fits the leased model again with nothing around it: same parameters,
seed, data, epochs, batch size and schedule (pairs back to back, so a shared machine's
drift touches both sides alike). Both are warm: a first pair is thrown away, so neither
pays for TensorFlow's start or the data set's first load.

The service time is split into the lease call, the epoch reports, the ``complete`` call
(which stores the trial's history as an artifact) and the rest. The worker trains in its
trainer process and sends the epoch reports while the trainer trains on, so the reports'
time runs beside the trial, not in it; the trainer frees the model after sending its
result, while the worker completes and leases the next trial. The trainer also moves the
objects of its start (TensorFlow's modules) out of the garbage collector's reach
(``gc.freeze``), which a bare script does not: its collections during ``fit`` are
cheaper, and a trial can take less than the bare fit.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    create_study,
    default_space_configs,
    in_process_worker,
    main,
    pin_tensorflow,
    quiet_tensorflow,
    running_api,
)

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"configs": 2, "epochs": 2},
    "full": {"configs": 8, "epochs": 20},
}


def _timed_client() -> type:
    from service.protocol import TrialResult
    from service.states import Action
    from workers.client import ServiceClient

    class TimedClient(ServiceClient):
        """Times each trial from its lease request to the answer of ``complete``."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.jobs: list[Any] = []
            self.started: dict[int, float] = {}
            self.seconds: dict[int, float] = {}
            self.report_s: dict[int, float] = {}
            self.lease_s: dict[int, float] = {}
            self.complete_s: dict[int, float] = {}
            self.probe_s: dict[int, float] = {}

        def lease(self) -> Any:
            t0 = time.perf_counter()
            job = super().lease()
            if job is not None and job.trial_id is not None:
                self.started[job.trial_id] = t0
                self.lease_s[job.trial_id] = time.perf_counter() - t0
                self.jobs.append(job)
            return job

        def report(
            self, trial_id: int, epoch: int, value: float, metrics: dict[str, float]
        ) -> Action:
            t0 = time.perf_counter()
            action = super().report(trial_id, epoch, value, metrics)
            self.report_s[trial_id] = self.report_s.get(trial_id, 0.0) + time.perf_counter() - t0
            return action

        def complete(self, trial_id: int, **kwargs: Any) -> TrialResult:
            self.probe_s[trial_id] = kwargs.get("diagnostics_s") or 0.0
            t0 = time.perf_counter()
            answer = super().complete(trial_id, **kwargs)
            self.complete_s[trial_id] = time.perf_counter() - t0
            self.seconds[trial_id] = time.perf_counter() - self.started[trial_id]
            return answer

    return TimedClient


def bare_fit(job: Any, data: Any) -> tuple[float, float]:
    """Build, compile and fit the trial's model with nothing around it: (total s, fit s)."""
    from search_space.keras_builder import schedule_callbacks
    from workers.keras_memory import free_memory
    from workers.training import compiled_model

    t0 = time.perf_counter()
    model = compiled_model(job, data)
    t1 = time.perf_counter()
    model.fit(
        data.x_train,
        data.y_train,
        validation_data=(data.x_val, data.y_val),
        epochs=job.epochs,
        batch_size=int(job.params.get("batch_size", 64)),
        shuffle=True,
        verbose=0,
        callbacks=schedule_callbacks(job.params),
    )
    t2 = time.perf_counter()
    free_memory()
    return t2 - t0, t2 - t1


def run(size: str, params: dict[str, Any], tmp: Path) -> dict[str, Any]:
    quiet_tensorflow()
    pin_tensorflow(1)
    from workers.data import load

    n, epochs = params["configs"], params["epochs"]
    configs = default_space_configs(n + 1, seed=7)  # the first one warms up
    data = load("digits")
    with running_api(tmp / "api") as api:
        study = create_study(
            api,
            name="overhead",
            dataset="digits",
            n_trials=n + 1,
            epochs=epochs,
            sampler="random",
            pruner="none",
            seed=7,
            sanity_check=False,
            enqueue=configs,
        )
        worker = in_process_worker(api.url, tmp, client_class=_timed_client())
        client = worker.client
        bare: dict[int, tuple[float, float]] = {}
        try:
            # One trial in the service, then the same model bare, and so on: pairs run
            # back to back, so the machine's drift over the run touches both sides alike.
            for _ in range(n + 1):
                worker.run(max_trials=1, exit_when_idle=True, keep_trainer=True)
                job = client.jobs[-1]
                bare[job.trial_id] = bare_fit(job, data)
        finally:
            worker.close()
    if len(client.seconds) != n + 1:
        raise RuntimeError(
            f"{len(client.seconds)} of {n + 1} trials completed (study {study['name']})"
        )
    jobs = client.jobs[1:]  # the first pair warmed the trainer and the bare path up
    rows = []
    for job in jobs:
        total, fit = bare[job.trial_id]
        service = client.seconds[job.trial_id]
        rows.append(
            {
                "trial": job.number,
                "params": job.params,
                "epochs": epochs,
                "bare_s": round(total, 4),
                "bare_fit_only_s": round(fit, 4),
                "service_s": round(service, 4),
                "lease_s": round(client.lease_s[job.trial_id], 4),
                "reporting_s": round(client.report_s.get(job.trial_id, 0.0), 4),
                "complete_s": round(client.complete_s[job.trial_id], 4),
                "probe_s": round(client.probe_s[job.trial_id], 4),
                "probe_share": round(client.probe_s[job.trial_id] / fit, 4),
                "overhead_s": round(service - total, 4),
                "ratio": round(service / total, 4),
            }
        )
    ratios = [r["ratio"] for r in rows]
    per_epoch_ms = [1000 * (r["service_s"] - r["bare_s"]) / epochs for r in rows]
    return {
        "rows": rows,
        "summary": {
            "median_ratio": round(statistics.median(ratios), 4),
            "max_ratio": round(max(ratios), 4),
            "median_overhead_s": round(statistics.median(r["overhead_s"] for r in rows), 4),
            "median_overhead_per_epoch_ms": round(statistics.median(per_epoch_ms), 2),
            "median_report_ms": round(
                statistics.median(1000 * r["reporting_s"] / epochs for r in rows), 2
            ),
            "median_lease_ms": round(statistics.median(1000 * r["lease_s"] for r in rows), 2),
            "median_complete_ms": round(statistics.median(1000 * r["complete_s"] for r in rows), 2),
            # The probe (diagnostics) as a share of the bare fit's training time.
            "median_probe_share": round(statistics.median(r["probe_share"] for r in rows), 4),
            "max_probe_share": round(max(r["probe_share"] for r in rows), 4),
        },
    }


if __name__ == "__main__":
    raise SystemExit(main("overhead", SIZES, run))
