"""Search quality at an equal budget of epochs: the service against Optuna and KerasTuner.

python -m benchmarks.quality [--size smoke|full] [--dataset NAME|FILE [--label COLUMN]
    [--task classification|regression]] [--budget EPOCHS] [--seeds N|A-B]
    [--methods M1,M2,...] [--summary]

Every method searches the same space (the service's default one,
``SearchSpace.parse(None, None)``) and builds every model with the same builder
(``workers.training.compiled_model``) on the same split (``workers.data``), each trial
training up to ``epochs`` epochs with batch size 64; every epoch trained counts against
the search's budget of epochs:

- ``service``: a real ``hpo api`` and a real worker loop (``benchmarks.quality_methods``),
  a study with the service's defaults and ``epoch_budget``: the service itself starts no
  trial whose epochs no longer fit and completes the study; its ``best`` is the winner.
  The worker's client counts the epochs its trials trained (never more than the budget).
- ``service -priors``, ``service -reevaluate``, ``service -pruner``: the same with one of
  the service's improvements off (``"priors": false``, ``"reevaluate_top": 0``, the plain
  ``median`` pruner); and, given to ``--methods`` only, ``service FIELD=VALUE ...``: the
  service with those study fields (to try a default before making it one).
- ``optuna tpe+median``: plain Optuna in the search's process, ``TPESampler(seed)`` and
  ``MedianPruner()`` with Optuna's defaults, ``trial.report`` after every epoch and
  ``trial.should_prune()`` from a Keras callback; ``optuna random``: ``RandomSampler``, no
  pruner.
- ``keras-tuner random``, ``keras-tuner hyperband`` (max_epochs = ``epochs``, factor 3),
  ``keras-tuner bayesian``: KerasTuner's ``RandomSearch``, ``Hyperband`` and
  ``BayesianOptimization``.

The peers stop when their budget is spent (the trial running then is cut short: Optuna
tells it pruned, KerasTuner scores what it trained); the service only starts a trial that
fits, so it may leave up to ``epochs - 1`` epochs unused (the *epochs used* column). The
objective is the data set's default: validation accuracy, maximised, for classification;
validation MAE (in the target's units), minimised, for regression. The best configuration
each method names is then retrained on train + validation and scored on the test split,
by the same code for all (``workers.jobs.train_final``, what the service's final model
does): test accuracy, or test MAE. It is retrained ``retrains`` times (5 in the full run),
from the seeds ``benchmarks.quality_summary.retrain_seeds`` gives, the same for every
method of a search seed, and its test score is their mean: one retraining would score one
initialisation's luck with the configuration (``benchmarks.quality_summary`` says more).

Each search runs in a process of its own, three at a time on the two cores (two at a time
left a third of the CPU idle while runs waited on HTTP, the database and process starts),
TensorFlow on one thread each; so the wall times compare the methods with each other, not
with a quiet machine. The summary gives, per data set, budget and method, mean and sd over
the seeds, and for every method but ``service`` the paired count of the seeds on which
``service`` scored strictly better on test (ties apart): over the mean of the retrainings,
and over the first alone.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import quality_data
from benchmarks.common import HERE, main
from benchmarks.quality_methods import (
    ABLATED_PRUNER,
    ABLATIONS,
    METHODS,
    PEERS,
    SERVICE,
    service_changes,
)
from benchmarks.quality_summary import RETRAIN_SEED_STEP, summarise, summary_lines
from service.errors import ServiceError

__all__ = [
    "ABLATED_PRUNER",
    "ABLATIONS",
    "METHODS",
    "PEERS",
    "SERVICE",
    "SIZES",
    "summarise",
]

FULL_DATASETS = ["digits", "wine", "breast_cancer", "diabetes"]
SIZES: dict[str, dict[str, Any]] = {
    "smoke": {
        "datasets": ["wine"],
        "budgets": [4],
        "epochs": 2,
        "seeds": [0],
        "lanes": 3,
        "retrains": 2,
        "methods": METHODS,
    },
    "full": {
        "datasets": FULL_DATASETS,
        "budgets": [100, 400],
        "epochs": 20,
        "seeds": [0, 1, 2, 3, 4],
        "lanes": 3,
        "retrains": 5,
        "methods": METHODS,
    },
}


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _budgets(text: str) -> list[int]:
    try:
        budgets = [int(part) for part in _list(text)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number of epochs: {text!r}") from exc
    if not budgets or min(budgets) < 1:
        raise argparse.ArgumentTypeError(f"budgets are positive numbers of epochs: {text!r}")
    return budgets


def _seeds(text: str) -> int | list[int]:
    """``N`` (seeds 0 to N - 1) or ``A-B`` (A to B: a pilot's seeds, apart from the full
    run's, to choose a default on before the full run confirms it)."""
    first, dash, last = text.partition("-")
    try:
        low, high = (int(first), int(last)) if dash else (0, int(text) - 1)
        if high >= RETRAIN_SEED_STEP:  # (and no list of a billion seeds is made)
            raise argparse.ArgumentTypeError(
                f"seeds below {RETRAIN_SEED_STEP} (their retrainings' seeds are s + k * "
                f"{RETRAIN_SEED_STEP}), not {text!r}"
            )
        seeds = list(range(low, high + 1)) if dash else int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"a number of seeds or a range A-B: {text!r}") from exc
    if dash and not seeds:
        raise argparse.ArgumentTypeError(f"an empty range of seeds: {text!r}")
    return seeds


def _task(text: str) -> str:
    if text not in ("classification", "regression"):
        raise argparse.ArgumentTypeError(f"classification or regression, not {text!r}")
    return text


def _methods(text: str) -> list[str]:
    methods = _list(text)
    unknown = [m for m in methods if m not in METHODS and service_changes(m) is None]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {unknown or text!r}; the methods: {', '.join(METHODS)}, or "
            "'service FIELD=VALUE ...' (the service with those study fields)"
        )
    variants = [m for m in methods if m not in METHODS]
    return [m for m in METHODS if m in methods] + variants  # in the benchmark's order


OPTIONS: dict[str, tuple[Any, str]] = {
    "dataset": (
        _list,
        f"a built-in data set ({', '.join(quality_data.BUILTIN)}) or a CSV (with --label) "
        "or NPZ file; comma-separated for several",
    ),
    "label": (str, "the label column of a CSV data set"),
    "task": (
        _task,
        "classification or regression, for a file (else, as the service decides: "
        "whole-number or text labels classify, fractional ones regress)",
    ),
    "budget": (_budgets, "the epochs each search may train; comma-separated for several"),
    "seeds": (_seeds, "how many seeds, 0 to N - 1, or a range A-B (for a pilot)"),
    "methods": (_methods, f"a comma-separated subset of: {', '.join(METHODS)}"),
    "epochs": (int, "the epochs of a trial at most"),
    "lanes": (int, "how many searches run at once"),
    "retrains": (int, "how many times each named configuration is retrained and tested"),
    "summary": (bool, "print, last, one JSON line per method, data set and budget"),
}


def prepare(params: dict[str, Any]) -> dict[str, Any]:
    """The run's parameters from the size's and the flags' (``--dataset`` and
    ``--budget`` replace the lists, ``--seeds N`` is seeds 0 to N - 1, ``A-B`` a range);
    each data set is checked here, before any search starts."""
    p = dict(params)
    if "dataset" in p:
        p["datasets"] = p.pop("dataset")
    if "budget" in p:
        p["budgets"] = p.pop("budget")
    if isinstance(p["seeds"], int):
        p["seeds"] = list(range(p["seeds"]))
    p["summary"] = bool(p.get("summary"))
    problems = []
    if not p["seeds"]:
        problems.append("--seeds must be at least 1")
    if p["retrains"] < 1:
        problems.append(f"--retrains must be at least 1, not {p['retrains']}")
    if min(p["budgets"]) < p["epochs"]:
        problems.append(f"a budget ({min(p['budgets'])}) below one trial's {p['epochs']} epochs")
    for spec in p["datasets"]:
        try:
            quality_data.task(quality_data.resolve(spec, p.get("label"), p.get("task")))
        except (ValueError, OSError, ServiceError) as exc:  # a file the service would refuse
            problems.append(str(exc))
    if problems:
        raise SystemExit("benchmarks.quality: " + "; ".join(problems))
    return p


def _progress(done: int, total: int, r: dict[str, Any]) -> str:
    pruned = f", {r['pruned']} pruned" if r.get("pruned") else ""
    return (
        f"  [{done}/{total}] {r['dataset']} budget {r['budget']} seed {r['seed']} "
        f"{r['method']}: val {r['best_val']:.4f} test {r['test']:.4f} "
        f"({r['metric'].removeprefix('val_')}), {r['epochs_used']} epochs, "
        f"{r['trials']} trials{pruned}, {r['wall_s']} s"
    )


def run(size: str, params: dict[str, Any], tmp: Path) -> dict[str, Any]:
    datasets = [
        quality_data.resolve(spec, params.get("label"), params.get("task"))
        for spec in params["datasets"]
    ]
    jobs = [
        {
            "method": m,
            "dataset": d.to_json(),
            "seed": s,
            "budget": b,
            "epochs": params["epochs"],
            "retrains": params["retrains"],
        }
        for b in sorted(params["budgets"], reverse=True)  # the longest first
        for d in datasets
        for s in params["seeds"]
        for m in params["methods"]
    ]
    pending = list(enumerate(jobs))
    running: list[tuple[subprocess.Popen[bytes], Path, dict[str, Any]]] = []
    runs: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    try:
        while pending or running:
            while pending and len(running) < params["lanes"]:
                i, job = pending.pop(0)
                folder = tmp / f"run{i}"
                folder.mkdir()
                (folder / "job.json").write_text(json.dumps(job))
                with (folder / "log.txt").open("wb") as sink:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "benchmarks.quality", "one", str(folder)],
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                        cwd=HERE.parent,
                    )
                running.append((proc, folder, job))
            time.sleep(0.5)
            for entry in list(running):
                proc, folder, job = entry
                if proc.poll() is None:
                    continue
                running.remove(entry)
                done = len(runs) + len(failed) + 1
                if proc.returncode != 0:  # recorded; the others go on
                    what = {**job, "dataset": job["dataset"]["name"]}
                    tail = (folder / "log.txt").read_text(errors="replace")[-4000:]
                    failed.append({**what, "returncode": proc.returncode, "log": tail})
                    print(f"  [{done}/{len(jobs)}] FAILED {what}:\n{tail}", flush=True)
                    continue
                result = json.loads((folder / "result.json").read_text())
                runs.append(result)
                print(_progress(done, len(jobs), result), flush=True)
    finally:
        for proc, _, _ in running:  # interrupted: the searches this run started
            proc.kill()
            proc.wait()
    described = [
        {
            **d.to_json(),
            "task": (task := quality_data.task(d)),
            "metric": quality_data.Objective.of(task).metric,
            "direction": quality_data.Objective.of(task).direction,
        }
        for d in datasets
    ]
    return {
        "datasets": described,
        "runs": runs,
        "failed": failed,
        "summary": summarise(runs, params),
    }


def verdict(result: dict[str, Any]) -> str | None:
    failed = result["failed"]
    if failed:
        return f"{len(failed)} search(es) failed: " + "; ".join(
            f"{f['method']} on {f['dataset']} budget {f['budget']} seed {f['seed']}" for f in failed
        )
    return None


def after(document: dict[str, Any]) -> None:
    if document["params"].get("summary"):
        for line in summary_lines(document["result"]):
            print(line, flush=True)


def _one_main(folder: Path) -> int:
    from benchmarks.quality_methods import one

    job = json.loads((folder / "job.json").read_text())
    result = one(
        job["method"],
        quality_data.Dataset(**job["dataset"]),
        job["seed"],
        job["budget"],
        job["epochs"],
        folder,
        retrains=job["retrains"],
    )
    if not all(math.isfinite(v) for v in (result["best_val"], *result["tests"])):
        raise ArithmeticError(f"a non-finite score: {result}")
    (folder / "result.json").write_text(json.dumps(result, indent=2))
    return 0


def cli(argv: list[str] | None = None) -> int:
    return main(
        "quality",
        SIZES,
        run,
        argv,
        options=OPTIONS,
        verdict=verdict,
        prepare=prepare,
        after=after,
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["one"]:
        raise SystemExit(_one_main(Path(sys.argv[2])))
    raise SystemExit(cli())
