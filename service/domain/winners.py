"""A study's winner, and the re-evaluation that makes it more than the luckiest trial.

On a validation split of a few hundred rows the best trial is partly luck: its seed, its
split. So a study keeps the last ``reevaluate_top x reevaluate_repeats`` trials of its
budget (when that is at most a quarter of it) for its best configurations: once the
search's trials are done, the feeder queues each of the top ``reevaluate_top`` again,
``reevaluate_repeats`` times, as Optuna trials with the user attribute ``reevaluates``
(the number of the trial it repeats) and ``fold``: repeat ``r`` trains on fold ``r + 1``
of train + validation (``search_space.splits``), so it is judged mostly on other rows
than the ones that picked it, and on a fresh seed (a trial's seed follows its number).
Every configuration's repeat ``r`` has the same fold: they are compared on the same rows.
``reevaluate_top`` and ``reevaluate_repeats`` are fixed at submission (``plan``).
Re-evaluations are never pruned and are charged to the budget like any trial. The winner
is then the configuration with the best mean over its evaluations; the final model
retrains it (on the fixed split).

Equal values are common on a small validation split (every trial at 1.000 on 27 rows):
they are told apart by the lower validation loss of their last epoch (a margin the
accuracy does not see), then by the earlier trial.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, case, func, select, update

from search_space import Fixed, SearchSpace
from service.states import JobKind, LeaseState
from service.storage.runtime import Runtime
from service.storage.tables import LeaseRow, StudyRow, utcnow

log = logging.getLogger(__name__)

DEFAULT_PLANS = ((2, 2), (3, 1))
"""The default (``reevaluate_top``, ``reevaluate_repeats``): the first that fits a quarter
of the study's budget. The best 2 configurations each on folds 1 and 2 (4 trials, a study
of 16 or more), else the best 3 once each (3 trials, 12 to 15). Measured at a budget of
400 epochs (``benchmarks/pilots``): against the best 3 once each, the best 2 twice named
configurations that tested better on 4 of 5 seeds of ``digits`` and worse on 1 (mean
0.983 against 0.979), and better on 1 of 5 of ``wine`` with 4 ties (0.985 against
0.978); both beat no re-evaluation."""
RESERVE_SHARE = 0.25
"""The re-evaluation takes at most this share of a study's budget, or it is skipped."""

_TRIALS = (LeaseRow.kind == JobKind.TRIAL, LeaseRow.trial_id.is_not(None))
TIE_BREAK = "val_loss"
_LOSS = LeaseRow.metrics[TIE_BREAK].as_float()
"""A trial's last validation loss: after the value, the lower wins (a trial without one
comes after those with one)."""


@dataclass(frozen=True)
class Best:
    """A study's winner: a configuration, its first trial, and its value (the mean of its
    evaluations, more than one once the best were re-evaluated)."""

    trial_id: int
    number: int
    value: float
    params: dict[str, Any]
    evaluations: int = 1


def planned(top: int, repeats: int, *, n_trials: int, epochs: int, epoch_budget: int | None) -> int:
    """How many trials the re-evaluation takes: ``top x repeats``, or 0 when there is
    nothing to compare (``top`` < 2) or that is more than a quarter of the budget."""
    wanted = top * repeats if top >= 2 else 0
    if wanted > RESERVE_SHARE * n_trials:
        return 0
    if epoch_budget is not None and wanted * epochs > RESERVE_SHARE * epoch_budget:
        return 0
    return wanted


def plan(
    top: int | None,
    repeats: int | None,
    *,
    n_trials: int,
    epochs: int,
    epoch_budget: int | None,
) -> tuple[int, int]:
    """The study's (``reevaluate_top``, ``reevaluate_repeats``), fixed at submission: what
    the user gave, the rest from the first of ``DEFAULT_PLANS`` that fits (``planned``);
    when none fits, the first (which ``planned`` turns into no re-evaluation)."""
    plans = [
        (t if top is None else top, r if repeats is None else repeats) for t, r in DEFAULT_PLANS
    ]
    fits = (
        p
        for p in plans
        if planned(*p, n_trials=n_trials, epochs=epochs, epoch_budget=epoch_budget) > 0
    )
    return next(fits, plans[0])


def of_study(study: StudyRow) -> int:
    """The trials the study keeps for its re-evaluation (0 once queued, or without one)."""
    spec = study.spec
    return planned(
        int(spec.get("reevaluate_top", 0)),
        int(spec.get("reevaluate_repeats", 1)),
        n_trials=study.n_trials,
        epochs=study.epochs,
        epoch_budget=study.epoch_budget,
    )


def reserve(study: StudyRow) -> int:
    return 0 if study.reevaluated_at is not None else of_study(study)


def _key(params: dict[str, Any] | None) -> str:
    return json.dumps(params or {}, sort_keys=True)


def queue(rt: Runtime, study: StudyRow) -> int:
    """Queue the study's best configurations again (once: the first caller marks the
    study; a crash after that leaves it without re-evaluation, and its budget to the
    sampler). Returns how many trials were queued."""
    with rt.unit_of_work(), rt.sessions.begin() as s:
        taken = cast(
            CursorResult[Any],
            s.execute(
                update(StudyRow)
                .where(StudyRow.id == study.id, StudyRow.reevaluated_at.is_(None))
                .values(reevaluated_at=utcnow())
            ),
        )
    if taken.rowcount != 1:
        return 0
    spec = study.spec
    top, repeats = int(spec["reevaluate_top"]), int(spec.get("reevaluate_repeats", 1))
    best: dict[str, LeaseRow] = {}
    for row in _completed(rt, study.id, study.direction):
        best.setdefault(_key(row.params), row)
        if len(best) == top:
            break
    if len(best) < 2:
        log.info("study %s: fewer than 2 configurations completed, none re-evaluated", study.name)
        return 0
    space = SearchSpace.parse(spec["search_space"], spec["fixed"], family=spec["model"]["family"])
    searched = {name for name, dim in space.dimensions if not isinstance(dim, Fixed)}
    with rt.unit_of_work():
        # Fold by fold (Optuna hands waiting trials out oldest first): a study stopped
        # part-way has compared its best on the same folds, and a trainer that runs
        # several keeps one fold's split for all of them.
        for repeat in range(repeats):
            for row in best.values():
                params = {k: v for k, v in (row.params or {}).items() if k in searched}
                attrs = {"reevaluates": row.trial_number, "fold": repeat + 1}
                rt.optuna.enqueue(study, params, attrs)
    log.info("study %s: its best %d configurations queued again", study.name, len(best))
    return len(best) * repeats


def _completed(rt: Runtime, study_id: int, direction: str) -> list[LeaseRow]:
    """The study's completed trials, best first (ties: the lower validation loss, then
    the earliest)."""
    score = LeaseRow.value if direction == "minimize" else -LeaseRow.value
    with rt.sessions() as s:
        return list(
            s.scalars(
                select(LeaseRow)
                .where(
                    *_TRIALS, LeaseRow.study_id == study_id, LeaseRow.state == LeaseState.COMPLETE
                )
                .order_by(score, _LOSS.nulls_last(), LeaseRow.trial_number)
            ).all()
        )


def best_of(rt: Runtime, study_ids: list[int]) -> dict[int, Best]:
    """The winner of each study in ``study_ids`` that has a completed trial: the best
    trial (one query for all), or for a re-evaluated study the best mean."""
    score = case((StudyRow.direction == "maximize", -LeaseRow.value), else_=LeaseRow.value)
    rank = (
        func.row_number()
        .over(
            partition_by=LeaseRow.study_id,
            order_by=(score, _LOSS.nulls_last(), LeaseRow.trial_number),
        )
        .label("rank")
    )
    ranked = (
        select(LeaseRow.id, rank)
        .join(StudyRow, StudyRow.id == LeaseRow.study_id)
        .where(*_TRIALS, LeaseRow.study_id.in_(study_ids), LeaseRow.state == LeaseState.COMPLETE)
        .subquery()
    )
    with rt.sessions() as s:
        rows = s.scalars(
            select(LeaseRow).join(ranked, ranked.c.id == LeaseRow.id).where(ranked.c.rank == 1)
        ).all()
        again = s.execute(
            select(StudyRow.id, StudyRow.direction).where(
                StudyRow.id.in_(study_ids), StudyRow.reevaluated_at.is_not(None)
            )
        ).all()
    out = {
        row.study_id: Best(row.trial_id or 0, row.trial_number or 0, row.value, row.params or {})
        for row in rows
        if row.value is not None
    }
    for study_id, direction in again:
        robust = _best_mean(_completed(rt, study_id, direction), direction)
        if robust is not None:
            out[study_id] = robust
    return out


def _best_mean(completed: list[LeaseRow], direction: str) -> Best | None:
    """Of the configurations evaluated more than once, the best mean (ties: the lower mean
    validation loss, then the earliest)."""
    groups: dict[str, list[LeaseRow]] = {}
    for row in completed:
        groups.setdefault(_key(row.params), []).append(row)
    candidates = []
    for rows in groups.values():
        if len(rows) < 2:
            continue
        first = min(rows, key=lambda r: r.trial_number or 0)
        mean = sum(float(r.value or 0.0) for r in rows) / len(rows)
        best = Best(
            first.trial_id or 0, first.trial_number or 0, mean, first.params or {}, len(rows)
        )
        candidates.append((best, _mean_loss(rows)))
    if not candidates:
        return None
    sign = 1.0 if direction == "minimize" else -1.0
    return min(candidates, key=lambda c: (sign * c[0].value, c[1], c[0].number))[0]


def _mean_loss(rows: list[LeaseRow]) -> float:
    """The mean last-epoch validation loss of a configuration's evaluations; infinite when
    one of them has none, so such a configuration comes after those that have them all."""
    losses = [(row.metrics or {}).get(TIE_BREAK) for row in rows]
    numbers = [float(loss) for loss in losses if isinstance(loss, (int, float))]
    return statistics.fmean(numbers) if len(numbers) == len(losses) else math.inf


def best(rt: Runtime, study: StudyRow) -> Best | None:
    return best_of(rt, [study.id]).get(study.id)
