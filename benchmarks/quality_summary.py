"""The summary of a quality run (``benchmarks.quality``): per data set, budget and method,
mean and sd over the seeds, and the paired count of the seeds on which ``service`` did
strictly better than each other method.

A run's ``test`` is the mean test score of the configuration it names over
``params["retrains"]`` retrainings, each from its own seed (``retrain_seeds``), the same
seeds for every method of a search seed; ``tests`` lists them, the first retrained from
the search's own seed (a run from before retrains has only ``test``: one retraining).
One retraining scores the configuration and one initialisation's luck together; on a
27-row test split a single row decides, and most seeds tie. The mean of several scores
the configuration, which is what a method chooses. The summary keeps both: ``test`` and
``vs_service`` over the mean, ``test_once`` and ``vs_service_once`` over the first
retraining alone.

``service_ahead`` says whether a difference is more than the seeds' noise: the mean over
the paired seeds of how far ``service`` was ahead of the method (its test score minus the
method's, the other way round for a score to minimise: positive is the service better),
with that mean's standard error, and whether a paired t test settles it (two-sided, at
``LEVEL``: with 5 seeds, a lead of 2.78 standard errors). A lead it does not settle is
one this many seeds cannot tell from chance."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from typing import Any

from benchmarks.quality_methods import SERVICE

RETRAIN_SEED_STEP = 1000
"""Retraining ``k`` of search seed ``s`` starts from seed ``s + k * RETRAIN_SEED_STEP``,
so the retrainings of different search seeds (below the step) never share a seed."""

RETRAINS_BEFORE = 1
"""The retrainings of a run from before ``retrains``: one."""

Score = Callable[[dict[str, Any]], float]


def retrain_seeds(seed: int, retrains: int) -> list[int]:
    """The seeds a configuration named by the search of ``seed`` is retrained from."""
    return [seed + k * RETRAIN_SEED_STEP for k in range(retrains)]


def retrainings(run: dict[str, Any]) -> list[float]:
    """A run's test scores, one a retraining (a run from before retrains: its one)."""
    return list(run.get("tests", [run["test"]]))


def once(run: dict[str, Any]) -> float:
    """A run's first retraining (the search's own seed): its only one before retrains."""
    return float(retrainings(run)[0])


def mean(run: dict[str, Any]) -> float:
    return float(run["test"])


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def _paired(
    mine: list[dict[str, Any]], service: list[dict[str, Any]], score: Score
) -> list[tuple[dict[str, Any], float, float]]:
    """Each run of ``service`` whose seed this method also ran, with the service's score
    and the method's on that seed."""
    theirs = {r["seed"]: score(r) for r in mine}
    return [(r, score(r), theirs[r["seed"]]) for r in service if r["seed"] in theirs]


def _wins(
    mine: list[dict[str, Any]], service: list[dict[str, Any]], score: Score = mean
) -> dict[str, int]:
    """On how many seeds ``service`` scored strictly better on test than this method, in
    the task's direction; equal scores are ties (seeds where either has no run are left
    out)."""
    wins = ties = losses = 0
    for r, ours, other in _paired(mine, service, score):
        if ours == other:
            ties += 1
        elif (ours < other) if r["direction"] == "minimize" else (ours > other):
            wins += 1
        else:
            losses += 1
    return {"wins": wins, "ties": ties, "losses": losses, "paired": wins + ties + losses}


LEVEL = 0.05
"""The two-sided significance at which a paired t test settles a lead."""


def critical(pairs: int) -> float:
    """How many standard errors a mean of ``pairs`` paired differences must be from 0 for
    the t test to settle it at ``LEVEL`` (Student's t with ``pairs - 1`` degrees of
    freedom; scipy is imported here, not for every user of the summary)."""
    from scipy.stats import t

    return float(t.ppf(1 - LEVEL / 2, pairs - 1))


def _ahead(mine: list[dict[str, Any]], service: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How far ``service`` was ahead of this method on test, paired by seed: the mean of
    the differences (positive: the service better), its standard error (None below two
    pairs), and whether it is resolved (not zero, and at least ``critical`` standard
    errors; differences all equal and not zero settle it too)."""
    diffs = [
        (other - ours) if r["direction"] == "minimize" else (ours - other)
        for r, ours, other in _paired(mine, service, mean)
    ]
    if not diffs:
        return None
    ahead = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
    resolved = se is not None and ahead != 0 and abs(ahead) >= critical(len(diffs)) * se
    return {"mean": ahead, "se": se, "paired": len(diffs), "resolved": resolved}


def summarise(runs: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per data set, budget and method that has runs: mean ± sd over the seeds,
    and (but for ``service``) the paired wins of ``service`` over the method."""
    rows = []
    names = list(dict.fromkeys(r["dataset"] for r in runs))
    for dataset in names:
        for budget in sorted(params["budgets"]):
            here = [r for r in runs if r["dataset"] == dataset and r["budget"] == budget]
            service = [r for r in here if r["method"] == SERVICE]
            for method in params["methods"]:
                mine = sorted((r for r in here if r["method"] == method), key=lambda r: r["seed"])
                if not mine:
                    continue
                pruned = [r["pruned"] for r in mine if r["pruned"] is not None]
                peer = method != SERVICE
                rows.append(
                    {
                        "method": method,
                        "dataset": dataset,
                        "budget": budget,
                        "metric": mine[0]["metric"],
                        "direction": mine[0]["direction"],
                        "runs": len(mine),
                        "seeds": [r["seed"] for r in mine],
                        "best_val": _stats([r["best_val"] for r in mine]),
                        "test": _stats([mean(r) for r in mine]),
                        "test_once": _stats([once(r) for r in mine]),
                        "epochs_used": _stats([r["epochs_used"] for r in mine]),
                        "trials": _stats([r["trials"] for r in mine]),
                        "pruned": _stats(pruned) if pruned else None,
                        "wall_s": _stats([r["wall_s"] for r in mine]),
                        "vs_service": _wins(mine, service) if peer else None,
                        "vs_service_once": _wins(mine, service, once) if peer else None,
                        "service_ahead": _ahead(mine, service) if peer else None,
                    }
                )
    return rows


def summary_lines(result: dict[str, Any]) -> list[str]:
    """``--summary``: one JSON object a line per method, data set and budget."""
    return [
        json.dumps(
            {
                "method": row["method"],
                "dataset": row["dataset"],
                "budget": row["budget"],
                "seeds": row["runs"],
                "mean_test": row["test"]["mean"],
                "sd_test": row["test"]["sd"],
                "direction": row["direction"],
            }
        )
        for row in result["summary"]
    ]
