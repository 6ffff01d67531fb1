"""The service's search in the quality benchmark: a real ``hpo api`` and a real worker loop
in the search's process, on a study with the service's defaults (but an ablation's change)
and the budget as its ``epoch_budget``."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import create_study, get_study, in_process_worker, running_api, user_client
from benchmarks.quality_data import Dataset
from benchmarks.quality_methods import Budget

IDLE_LIMIT_S = 600.0
"""A service search whose study is still open after this long without a job fails."""
OVER = ("completed", "stopped", "failed")


def search_service(
    changes: dict[str, Any],
    slug: str,
    seed: int,
    budget: Budget,
    epochs: int,
    dataset: Dataset,
    tmp: Path,
) -> dict[str, Any]:
    """A real ``hpo api`` and a real worker loop in this process. The study has the
    service's defaults but ``changes``, and the epoch budget: the service starts no trial
    once the next one's epochs do not fit and completes the study. The worker's client
    counts the epochs its trials trained (reported, or the ``epochs_run`` of a result)."""
    from service.states import Action
    from workers.client import ServiceClient

    with running_api(tmp / "api") as api:
        if dataset.path is not None:  # the file, as a user uploads it
            form = {"name": dataset.name}
            if dataset.label is not None:
                form["label_column"] = dataset.label
            if dataset.task is not None:
                form["task"] = dataset.task
            with user_client(api) as c:
                response = c.post(
                    "/datasets",
                    data=form,
                    files={"file": (Path(dataset.path).name, Path(dataset.path).read_bytes())},
                )
            if response.status_code != 201:
                raise RuntimeError(f"POST /datasets {response.status_code}: {response.text}")
        trained: dict[int, int] = {}
        lock = threading.Lock()
        study: dict[str, Any] = {}

        def charge(trial_id: int, epochs_run: int) -> None:
            with lock:
                trained[trial_id] = max(trained.get(trial_id, 0), epochs_run)
                budget.used = sum(trained.values())

        def over() -> bool:
            return str(get_study(api, study["id"])["status"]) in OVER

        class BudgetClient(ServiceClient):
            """Counts the epochs trained; gives back the final-model job (scored here, the
            same way for every method); idle only once the study is over (a 204 can also
            mean no suggestion was ready in time)."""

            def lease(self) -> Any:
                deadline = time.monotonic() + IDLE_LIMIT_S
                while True:
                    job = super().lease()
                    if job is not None and job.kind != "trial":
                        self.job_release(job.job_id, reason="benchmark")
                        job = None
                    if job is not None:
                        return job
                    if over():
                        return None
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"study {study['name']} open, no job for a while")
                    time.sleep(0.2)

            def report(
                self, trial_id: int, epoch: int, value: float, metrics: dict[str, float]
            ) -> Action:
                charge(trial_id, epoch)
                return super().report(trial_id, epoch, value, metrics)

            def complete(self, trial_id: int, **kwargs: Any) -> Any:
                charge(trial_id, int(kwargs["epochs_run"]))
                return super().complete(trial_id, **kwargs)

            def fail(self, trial_id: int, **kwargs: Any) -> Any:
                charge(trial_id, int(kwargs["epochs_run"]))
                return super().fail(trial_id, **kwargs)

        worker = in_process_worker(api.url, tmp, client_class=BudgetClient)
        try:
            # Its trainer loads TensorFlow first, as the peers' process has before they
            # start: the API's and the trainer's starts are not the search's.
            worker.trainers.warm()
            worker.trainers.current.poll_ready(timeout_s=300)
            started = time.perf_counter()
            study |= create_study(
                api,
                name=f"quality-{slug}-{seed}",
                dataset=dataset.name,
                n_trials=min(budget.budget, 10_000),  # never the limit: the epochs are
                epochs=epochs,
                epoch_budget=budget.budget,
                seed=seed,
                sanity_check=False,
                **changes,
            )
        except BaseException:
            worker.close()
            raise
        worker.run(exit_when_idle=True)
        wall = time.perf_counter() - started
        final = get_study(api, study["id"])
    if final["status"] != "completed" or final["best"] is None:
        raise RuntimeError(f"study {study['name']} ended without a best trial: {final}")
    if budget.used > budget.budget:
        raise RuntimeError(
            f"study {study['name']} trained {budget.used} epochs, over its budget of "
            f"{budget.budget}"
        )
    counts = final["trials"]
    return {
        "best_val": final["best"]["value"],
        "best_params": final["best"]["params"],
        "trials": counts["complete"] + counts["pruned"] + counts["fail"],
        "pruned": counts["pruned"],
        "wall_s": wall,
        # The service's own account: its charge, and the re-evaluations of its best.
        "epochs_charged": final.get("epochs_charged"),
        "reevaluations": final.get("reevaluations"),
        "best_evaluations": final["best"].get("evaluations"),
    }
