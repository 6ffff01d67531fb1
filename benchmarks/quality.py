"""Search quality at an equal budget: the service against KerasTuner and Optuna's random
sampler, on ``digits``, each with the same budget of training epochs.

Every method searches the same space (the service's default one: learning rate, optimizer,
learning-rate schedule and its decay rate, dropout, weight init) and builds every model
with the same builder (``workers.training.compiled_model``) on the same split, each trial
training up to ``epochs`` epochs with batch size 64:

- the service: a real ``hpo api`` and a real worker loop, TPE with each of its pruners;
- KerasTuner ``RandomSearch`` and ``Hyperband`` (max_epochs = ``epochs``, factor 3);
- plain Optuna with its ``RandomSampler`` and no pruner.

A method's epochs are counted as they run; when the budget is spent the search stops (the
service's study is stopped through its API; a trial cut short there is given back, not
counted). The best configuration each method names is then retrained on train +
validation and scored once on the test split, by the same code for all
(``workers.jobs.train_final``, what the service's final model does).

Runs go three at a time on the two cores (two at a time left a third of the CPU idle
while runs waited on HTTP, the database and process starts), TensorFlow on one thread
each; so the wall times compare the methods with each other, not with a quiet machine.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    HERE,
    create_study,
    get_study,
    in_process_worker,
    main,
    pin_tensorflow,
    quiet_tensorflow,
    running_api,
    user_client,
)

METHODS = [
    "service tpe+median",
    "service tpe+hyperband",
    "service tpe+successive_halving",
    "keras-tuner random",
    "keras-tuner hyperband",
    "optuna random",
]

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"budget": 4, "epochs": 2, "seeds": [0], "lanes": 2, "methods": METHODS},
    "full": {"budget": 400, "epochs": 20, "seeds": [0, 1, 2], "lanes": 3, "methods": METHODS},
}


class Budget:
    """Epochs spent so far by one search, against its budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0

    @property
    def spent(self) -> bool:
        return self.used >= self.budget


def _counter(budget: Budget) -> Any:
    import keras

    class CountEpochs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            budget.used += 1
            if budget.spent:
                self.model.stop_training = True

    return CountEpochs()


def assignment(params: dict[str, Any], epochs: int, seed: int, data: Any) -> Any:
    from service.protocol import Lease, ModelRef
    from service.states import JobKind

    return Lease(
        kind=JobKind.TRIAL,
        job_id=0,
        trial_id=None,
        number=None,
        study_id=0,
        study_name="quality",
        params=params,
        dataset=data.info,
        model=ModelRef(family="mlp"),
        epochs=epochs,
        metric="val_accuracy",
        direction="maximize",
        seed=seed,
        lease_seconds=600,
        trial_time_limit_s=None,
        tensorboard=False,
        max_model_params=10**9,
    )


def _fit(params: dict[str, Any], seed: int, data: Any, epochs: int, budget: Budget) -> float:
    """Build and fit one configuration as a trial does; its last validation accuracy."""
    import keras

    from search_space.keras_builder import schedule_callbacks
    from workers.training import compiled_model

    model = compiled_model(assignment(params, epochs, seed, data), data)
    history = model.fit(
        data.x_train,
        data.y_train,
        validation_data=(data.x_val, data.y_val),
        epochs=epochs,
        batch_size=64,
        shuffle=True,
        verbose=0,
        callbacks=[_counter(budget), *schedule_callbacks(params)],
    )
    keras.backend.clear_session(free_memory=True)
    return float(history.history["val_accuracy"][-1])


# --- the methods: each returns best_val, best_params, trials (and pruned) ----------------


def _service(
    pruner: str, seed: int, budget: Budget, epochs: int, data: Any, tmp: Path
) -> dict[str, Any]:
    from service.states import Action
    from workers.client import ServiceClient

    with running_api(tmp / "api") as api:
        started = time.perf_counter()  # the API's start is not the search's
        study = create_study(
            api,
            name=f"quality-{pruner}-{seed}",
            dataset="digits",
            n_trials=budget.budget,
            epochs=epochs,
            sampler="tpe",
            pruner=pruner,
            seed=seed,
            sanity_check=False,
        )

        stopped: list[bool] = []

        class BudgetClient(ServiceClient):
            """Counts the epochs reported; stops the study when the budget is spent."""

            def lease(self) -> Any:
                job = super().lease()
                if job is not None and job.kind != "trial":  # no final model here
                    self.job_release(job.job_id, reason="benchmark")
                    return None
                return job

            def report(
                self, trial_id: int, epoch: int, value: float, metrics: dict[str, float]
            ) -> Action:
                action = super().report(trial_id, epoch, value, metrics)
                budget.used += 1
                if budget.spent and not stopped:
                    stopped.append(True)
                    with user_client(api) as c:
                        c.post(f"/studies/{study['id']}/stop").raise_for_status()
                    # A trial whose last epoch this was completes; one cut short goes back.
                    if action == Action.CONTINUE and epoch < epochs:
                        return Action.STOP
                return action

        worker = in_process_worker(api.url, tmp, client_class=BudgetClient)
        worker.run(exit_when_idle=True)
        wall = time.perf_counter() - started
        final = get_study(api, study["id"])
    if final["best"] is None:
        raise RuntimeError(f"study {study['name']} has no best trial: {final}")
    counts = final["trials"]
    return {
        "best_val": final["best"]["value"],
        "best_params": final["best"]["params"],
        "trials": counts["complete"] + counts["pruned"] + counts["fail"],
        "pruned": counts["pruned"],
        "wall_s": wall,
    }


def _kt_params(hp: Any, space: Any) -> dict[str, Any]:
    """The space's parameters through KerasTuner's define-by-run API (conditions kept: an
    inactive parameter is not asked for)."""
    from search_space import SearchSpace
    from search_space.spec import Choices, Fixed, FloatRange, IntRange

    params: dict[str, Any] = {}
    for name, dim in space.dimensions:
        if not SearchSpace.is_active(name, params, space.family):
            continue
        if isinstance(dim, Fixed):
            params[name] = dim.value
        elif isinstance(dim, Choices):
            params[name] = hp.Choice(name, list(dim.choices))
        elif isinstance(dim, IntRange):
            params[name] = hp.Int(
                name, dim.low, dim.high, step=dim.step, sampling="log" if dim.log else "linear"
            )
        elif isinstance(dim, FloatRange):
            params[name] = hp.Float(
                name, dim.low, dim.high, step=dim.step, sampling="log" if dim.log else "linear"
            )
    return params


def _keras_tuner(
    kind: str, seed: int, budget: Budget, epochs: int, data: Any, tmp: Path
) -> dict[str, Any]:
    import keras_tuner as kt

    from search_space import SearchSpace
    from search_space.keras_builder import schedule_callbacks
    from workers.training import compiled_model

    space = SearchSpace.parse(None, None)
    built = [0]

    class HyperModel(kt.HyperModel):
        def build(self, hp: Any) -> Any:
            built[0] += 1
            params = _kt_params(hp, space)
            return compiled_model(assignment(params, epochs, seed * 10_000 + built[0], data), data)

        def fit(self, hp: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs["callbacks"] = [
                *kwargs.get("callbacks", []),
                *schedule_callbacks(_kt_params(hp, space)),
            ]
            return model.fit(*args, **kwargs)

    def stop_when_spent(tuner: Any) -> None:
        if budget.spent:  # the oracle then answers STOPPED to its next create_trial
            tuner.oracle.max_trials = len(tuner.oracle.trials)

    common = {
        "objective": kt.Objective("val_accuracy", "max"),
        "seed": seed,
        "directory": str(tmp / "kt"),
        "project_name": kind,
        "overwrite": True,
    }
    tuner: Any
    if kind == "random":

        class Random(kt.RandomSearch):
            def pre_create_trial(self) -> None:
                stop_when_spent(self)

        tuner = Random(HyperModel(), max_trials=10_000, **common)
    else:

        class Band(kt.Hyperband):
            def pre_create_trial(self) -> None:
                stop_when_spent(self)

        tuner = Band(HyperModel(), max_epochs=epochs, factor=3, hyperband_iterations=1000, **common)
    tuner.search(
        data.x_train,
        data.y_train,
        validation_data=(data.x_val, data.y_val),
        epochs=epochs,
        batch_size=64,
        shuffle=True,
        verbose=0,
        callbacks=[_counter(budget)],
    )
    best = tuner.oracle.get_best_trials(1)[0]
    return {
        "best_val": float(best.score),
        "best_params": _kt_params(best.hyperparameters.copy(), space),
        "trials": len(tuner.oracle.trials),
        "pruned": None,
    }


def _optuna_random(seed: int, budget: Budget, epochs: int, data: Any) -> dict[str, Any]:
    import optuna

    from search_space import SearchSpace
    from search_space.optuna_space import suggest

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.parse(None, None)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed)
    )
    while not budget.spent:
        trial = study.ask()
        params = suggest(trial, space)
        study.tell(trial, _fit(params, seed * 10_000 + trial.number, data, epochs, budget))
    return {
        "best_val": study.best_value,
        # Optuna's params hold the searched values; the fixed ones are a user attribute.
        "best_params": {**study.best_trial.user_attrs["fixed_params"], **study.best_params},
        "trials": len(study.trials),
        "pruned": None,
    }


def one(method: str, seed: int, budget_epochs: int, epochs: int, tmp: Path) -> dict[str, Any]:
    """One search: the method's best, the test accuracy of that configuration retrained,
    the epochs it used and its wall time (the search only: not the process start)."""
    quiet_tensorflow()
    pin_tensorflow(1)
    from workers.data import load
    from workers.jobs import train_final

    data = load("digits")
    budget = Budget(budget_epochs)
    started = time.perf_counter()
    family, _, variant = method.partition(" ")
    if family == "service":
        found = _service(variant.removeprefix("tpe+"), seed, budget, epochs, data, tmp)
    elif family == "keras-tuner":
        found = _keras_tuner(variant, seed, budget, epochs, data, tmp)
    else:
        found = _optuna_random(seed, budget, epochs, data)
    wall = found.pop("wall_s", time.perf_counter() - started)
    test, _ = train_final(assignment(found["best_params"], epochs, seed, data), data)
    return {
        "method": method,
        "seed": seed,
        **found,
        "test_accuracy": test,
        "epochs_used": budget.used,
        "wall_s": round(wall, 2),
    }


def _summary(runs: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    def stats(values: list[float]) -> dict[str, float]:
        return {
            "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        }

    rows = []
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        rows.append(
            {
                "method": method,
                "runs": len(mine),
                "best_val": stats([r["best_val"] for r in mine]),
                "test_accuracy": stats([r["test_accuracy"] for r in mine]),
                "epochs_used": stats([r["epochs_used"] for r in mine]),
                "trials": stats([r["trials"] for r in mine]),
                "wall_s": stats([r["wall_s"] for r in mine]),
            }
        )
    return rows


def run(size: str, params: dict[str, Any], tmp: Path) -> dict[str, Any]:
    jobs = [(m, s) for s in params["seeds"] for m in params["methods"]]
    pending = list(enumerate(jobs))
    running: list[tuple[subprocess.Popen[bytes], Path, Path, str]] = []
    runs: list[dict[str, Any]] = []
    while pending or running:
        while pending and len(running) < params["lanes"]:
            i, (method, seed) = pending.pop(0)
            folder = tmp / f"run{i}"
            folder.mkdir()
            out, log = folder / "result.json", folder / "log.txt"
            with log.open("wb") as sink:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.quality",
                        "one",
                        method,
                        str(seed),
                        str(params["budget"]),
                        str(params["epochs"]),
                        str(folder),
                    ],
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    cwd=HERE.parent,
                )
            running.append((proc, out, log, f"{method} seed {seed}"))
        time.sleep(0.5)
        for entry in list(running):
            proc, out, log, what = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            if proc.returncode != 0:
                raise RuntimeError(f"{what} exited {proc.returncode}:\n{log.read_text()[-4000:]}")
            result = json.loads(out.read_text())
            runs.append(result)
            print(
                f"  {what}: val {result['best_val']:.4f} test "
                f"{result['test_accuracy']:.4f} epochs {result['epochs_used']} "
                f"trials {result['trials']} in {result['wall_s']} s",
                flush=True,
            )
    return {"runs": runs, "summary": _summary(runs, params["methods"])}


def _one_main(argv: list[str]) -> int:
    method, seed, budget, epochs, folder = argv
    result = one(method, int(seed), int(budget), int(epochs), Path(folder))
    (Path(folder) / "result.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["one"]:
        raise SystemExit(_one_main(sys.argv[2:]))
    raise SystemExit(main("quality", SIZES, run))
