"""The methods of the quality benchmark and ``one``: one search and the test score of the
configuration it names, in this process (``benchmarks.quality`` runs each in a process of
its own). The searches: ``benchmarks.quality_service`` (the service and its ablations) and
``benchmarks.quality_peers`` (plain Optuna, KerasTuner).

Every search builds its models with ``workers.training.compiled_model`` from the service's
default space, fits them on the same split with batch size 64 for up to ``epochs`` epochs,
and counts every epoch trained against its budget. Nothing heavy is imported at the top:
TensorFlow loads in ``one``, after it has been told to keep quiet and use one thread.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import pin_tensorflow, quiet_tensorflow
from benchmarks.quality_data import Dataset, Objective
from benchmarks.quality_data import load as load_dataset

if TYPE_CHECKING:
    from service.protocol import Lease
    from workers.data import Split

SERVICE = "service"
ABLATED_PRUNER = "median"
"""The pruner of ``service -pruner``: the service's default with its own pruner off."""
ABLATIONS: dict[str, dict[str, Any]] = {
    "service -priors": {"priors": False},
    "service -reevaluate": {"reevaluate_top": 0},
    "service -pruner": {"pruner": ABLATED_PRUNER},
}
"""The service with one of its improvements off: the study fields that turn it off."""
PEERS = (
    "optuna tpe+median",
    "optuna random",
    "keras-tuner random",
    "keras-tuner hyperband",
    "keras-tuner bayesian",
)
METHODS = [SERVICE, *ABLATIONS, *PEERS]


def service_changes(method: str) -> dict[str, Any] | None:
    """The study fields a service method changes: none for ``service``, an ablation's,
    or a variant's, ``service FIELD=VALUE ...`` (each value JSON where it parses, e.g.
    ``service pruner=successive_halving reevaluate_top=2``), for trying a default before
    changing it; None for a method that is not the service's."""
    if method == SERVICE or method in ABLATIONS:
        return ABLATIONS.get(method, {})
    family, _, fields = method.partition(" ")
    pairs = [field.partition("=") for field in fields.split()]
    if family != SERVICE or not pairs or any(not key or not eq for key, eq, _ in pairs):
        return None
    return {key: _value(value) for key, _, value in pairs}


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


BATCH_SIZE = 64


class Budget:
    """Epochs spent so far by one search, against its budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0

    @property
    def spent(self) -> bool:
        return self.used >= self.budget


def counter(budget: Budget) -> Any:
    """A Keras callback counting each epoch trained and stopping at the budget. (Its state
    lives in the closure: KerasTuner deep-copies the callbacks of every trial.)"""
    import keras

    class CountEpochs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            budget.used += 1
            if budget.spent:
                self.model.stop_training = True

    return CountEpochs()


def assignment(
    params: dict[str, Any], epochs: int, seed: int, data: Split, objective: Objective
) -> Lease:
    """The job a worker would be handed for ``params``: what ``compiled_model`` and
    ``train_final`` take."""
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
        metric=objective.metric,
        direction=objective.direction,
        seed=seed,
        lease_seconds=600,
        trial_time_limit_s=None,
        tensorboard=False,
        max_model_params=10**9,
    )


def tested(
    params: dict[str, Any], epochs: int, seeds: list[int], data: Split, objective: Objective
) -> list[float]:
    """The test scores of ``params`` retrained on train + validation from each of ``seeds``
    (``workers.jobs.train_final``, what the service's final model does)."""
    from workers.jobs import train_final

    return [train_final(assignment(params, epochs, s, data, objective), data)[0] for s in seeds]


def one(
    method: str,
    dataset: Dataset,
    seed: int,
    budget_epochs: int,
    epochs: int,
    tmp: Path,
    *,
    retrains: int = 1,
) -> dict[str, Any]:
    """One search: the method's best, the test scores of that configuration retrained
    ``retrains`` times (``tested``; ``test`` is their mean), the epochs it used and its
    wall time (the search only: not the process start)."""
    quiet_tensorflow()
    pin_tensorflow(1)
    from benchmarks.quality_peers import search_keras_tuner, search_optuna
    from benchmarks.quality_service import search_service
    from benchmarks.quality_summary import retrain_seeds

    data = load_dataset(dataset)
    objective = Objective.of(data.info.task)
    budget = Budget(budget_epochs)
    started = time.perf_counter()
    family, _, variant = method.partition(" ")
    changes = service_changes(method)
    if changes is not None:
        slug = "default" if method == SERVICE else "".join(c for c in variant if c.isalnum())
        found = search_service(changes, slug[:40], seed, budget, epochs, dataset, tmp)
    elif family == "keras-tuner":
        found = search_keras_tuner(variant, seed, budget, epochs, data, objective, tmp)
    elif family == "optuna":
        found = search_optuna(variant, seed, budget, epochs, data, objective)
    else:
        raise ValueError(f"unknown method {method!r}")
    wall = found.pop("wall_s", time.perf_counter() - started)
    tests = tested(found["best_params"], epochs, retrain_seeds(seed, retrains), data, objective)
    return {
        "method": method,
        "dataset": dataset.name,
        "budget": budget_epochs,
        "seed": seed,
        "metric": objective.metric,
        "direction": objective.direction,
        **found,
        "test": statistics.fmean(tests),
        "tests": tests,
        "epochs_used": budget.used,
        "wall_s": round(wall, 2),
    }
