"""The peers' searches in the quality benchmark, in the search's process: plain Optuna (TPE
with its median pruner, random) and KerasTuner (RandomSearch, Hyperband,
BayesianOptimization), each stopped when its budget of epochs is spent."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.quality_data import Objective
from benchmarks.quality_methods import BATCH_SIZE, Budget, assignment, counter

if TYPE_CHECKING:
    from workers.data import Split


def fit(
    params: dict[str, Any],
    seed: int,
    data: Split,
    epochs: int,
    budget: Budget,
    objective: Objective,
    callbacks: list[Any],
) -> tuple[list[float], bool]:
    """Build and fit one configuration as a trial does: the objective after each epoch
    (in the target's units) and whether the loss stayed finite (a non-finite loss ends
    the fit at that epoch, as it fails a trial of the service)."""
    import keras

    from search_space.keras_builder import schedule_callbacks
    from workers.training import compiled_model

    finite = [True]

    class StopOnNonFinite(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if not math.isfinite(float((logs or {}).get("loss", math.nan))):
                finite[0] = False
                self.model.stop_training = True

    model = compiled_model(assignment(params, epochs, seed, data, objective), data)
    history = model.fit(
        data.x_train,
        data.y_train,
        validation_data=(data.x_val, data.y_val),
        epochs=epochs,
        batch_size=BATCH_SIZE,
        shuffle=True,
        verbose=0,
        callbacks=[
            counter(budget),
            StopOnNonFinite(),
            *callbacks,
            *schedule_callbacks(params),
        ],
    )
    keras.backend.clear_session(free_memory=True)
    values = [data.to_target_units(objective.metric, v) for v in history.history[objective.metric]]
    return values, finite[0] and all(math.isfinite(v) for v in values)


def search_optuna(
    kind: str, seed: int, budget: Budget, epochs: int, data: Split, objective: Objective
) -> dict[str, Any]:
    """Plain Optuna, one ask/tell loop: ``tpe+median`` is ``TPESampler(seed)`` with
    ``MedianPruner()`` (Optuna's defaults) fed each epoch through ``trial.report``;
    ``random`` is ``RandomSampler(seed)`` and no pruner. A trial the budget cuts short is
    told pruned (its last value kept, never the best)."""
    import keras
    import optuna
    from optuna.trial import TrialState

    from search_space import SearchSpace
    from search_space.optuna_space import FIXED_PARAMS_ATTR, suggest

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.parse(None, None)
    tpe = kind == "tpe+median"
    study = optuna.create_study(
        direction="minimize" if objective.minimize else "maximize",
        sampler=optuna.samplers.TPESampler(seed=seed)
        if tpe
        else optuna.samplers.RandomSampler(seed=seed),
        pruner=optuna.pruners.MedianPruner() if tpe else optuna.pruners.NopPruner(),
    )

    class Report(keras.callbacks.Callback):
        """Each epoch's objective to the trial; ends the fit when the pruner says so."""

        def __init__(self, trial: optuna.Trial) -> None:
            super().__init__()
            self.trial = trial
            self.pruned = False

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            value = float((logs or {}).get(objective.metric, float("nan")))
            self.trial.report(data.to_target_units(objective.metric, value), epoch + 1)
            if self.trial.should_prune():
                self.pruned = True
                self.model.stop_training = True

    pruned = cut = 0
    while not budget.spent:
        trial = study.ask()
        params = suggest(trial, space)
        report = Report(trial)
        values, finite = fit(
            params, seed * 10_000 + trial.number, data, epochs, budget, objective, [report]
        )
        if not finite:
            study.tell(trial, state=TrialState.FAIL)
        elif report.pruned:
            study.tell(trial, state=TrialState.PRUNED)
            pruned += 1
        elif len(values) < epochs:  # the budget ran out
            study.tell(trial, state=TrialState.PRUNED)
            cut += 1
        else:
            study.tell(trial, values[-1])
    return {
        "best_val": study.best_value,
        # Optuna's params hold the searched values; the fixed ones are a user attribute.
        "best_params": {**study.best_trial.user_attrs[FIXED_PARAMS_ATTR], **study.best_params},
        "trials": len(study.trials),
        "pruned": pruned,
        "cut": cut,
    }


def _kt_params(hp: Any, space: Any) -> dict[str, Any]:
    """The space's parameters through KerasTuner's define-by-run API (conditions kept: an
    inactive parameter is not asked for)."""
    from search_space import SearchSpace
    from search_space.dimensions import Choices, Fixed, FloatRange, IntRange

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


def search_keras_tuner(
    kind: str,
    seed: int,
    budget: Budget,
    epochs: int,
    data: Split,
    objective: Objective,
    tmp: Path,
) -> dict[str, Any]:
    """KerasTuner's ``RandomSearch``, ``Hyperband`` (max_epochs = ``epochs``, factor 3) or
    ``BayesianOptimization``, stopped when the budget is spent (its oracle then answers
    STOPPED to the next trial it is asked for)."""
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
            job = assignment(params, epochs, seed * 10_000 + built[0], data, objective)
            return compiled_model(job, data)

        def fit(self, hp: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs["callbacks"] = [
                *kwargs.get("callbacks", []),
                *schedule_callbacks(_kt_params(hp, space)),
            ]
            return model.fit(*args, **kwargs)

    def stop_when_spent(tuner: Any) -> None:
        if budget.spent:
            tuner.oracle.max_trials = len(tuner.oracle.trials)

    common: dict[str, Any] = {
        "objective": kt.Objective(objective.metric, "min" if objective.minimize else "max"),
        "seed": seed + 1,  # KerasTuner takes a seed of 0 for none (a random one)
        "directory": str(tmp / "kt"),
        "project_name": kind,
        "overwrite": True,
    }
    base: Any = {
        "random": kt.RandomSearch,
        "hyperband": kt.Hyperband,
        "bayesian": kt.BayesianOptimization,
    }[kind]
    if kind == "hyperband":
        common |= {"max_epochs": epochs, "factor": 3, "hyperband_iterations": 1000}
    else:
        common["max_trials"] = 10_000

    class Tuner(base):
        def pre_create_trial(self) -> None:
            stop_when_spent(self)

    tuner = Tuner(HyperModel(), **common)
    tuner.search(
        data.x_train,
        data.y_train,
        validation_data=(data.x_val, data.y_val),
        epochs=epochs,
        batch_size=BATCH_SIZE,
        shuffle=True,
        verbose=0,
        callbacks=[counter(budget)],
    )
    best = tuner.oracle.get_best_trials(1)[0]
    return {
        "best_val": data.to_target_units(objective.metric, float(best.score)),
        "best_params": _kt_params(best.hyperparameters.copy(), space),
        "trials": len(tuner.oracle.trials),
        "pruned": None,
    }
