"""Studies: create, read, list, stop. The Optuna study of the same name is created with it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from search_space import METRICS, SearchSpace, SpaceError
from search_space.catalog import DEFAULT_METRIC, DatasetInfo, metric_fits
from search_space.families import family_names
from search_space.priors import priors_for
from search_space.size import max_param_count
from service.domain import datasets, feeder, winners
from service.errors import Conflict, Invalid, NotFound
from service.states import (
    OPEN_STATUSES,
    FinalState,
    JobKind,
    Pruner,
    Sampler,
    SanityState,
    StudyStatus,
    TrialState,
)
from service.storage.optuna_adapter import DuplicateStudy
from service.storage.optuna_choices import check_samplable, grid_of
from service.storage.runtime import Runtime
from service.storage.tables import LeaseRow, StudyRow, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewStudy:
    """A study as submitted, already checked for types and basic ranges by the HTTP edge;
    ``create`` checks the rest (the space, the data set, the limits)."""

    name: str
    dataset: str
    n_trials: int
    epochs: int
    search_space: dict[str, Any] | None = None
    fixed: dict[str, Any] | None = None
    metric: str | None = None
    direction: str | None = None
    sampler: str = Sampler.TPE
    pruner: str = Pruner.MEDIAN
    seed: int | None = None
    model_family: str = "mlp"
    trial_time_limit_s: float | None = None
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    epoch_budget: int | None = None
    priors: bool = True
    reevaluate_top: int | None = None  # (None: ``winners.plan`` picks)
    reevaluate_repeats: int | None = None
    sanity_check: bool = True
    tensorboard: bool = False
    diagnostics: bool = True


def create(rt: Runtime, body: NewStudy) -> tuple[StudyRow, list[str]]:
    """Validate and record a study, and create its Optuna study. Returns the study and
    warnings for the user (e.g. a worker reported its data set missing).

    Raises:
        SpaceError, Invalid: the spec is invalid (422).
        Conflict: a study of that name exists (409).
    """
    limits = rt.settings
    if body.n_trials > limits.max_trials:
        raise Invalid(
            ("n_trials",), f"must be at most {limits.max_trials} (HPO_MAX_TRIALS)", body.n_trials
        )
    if body.epochs > limits.max_epochs:
        raise Invalid(
            ("epochs",), f"must be at most {limits.max_epochs} (HPO_MAX_EPOCHS)", body.epochs
        )
    info = datasets.resolve(rt, body.dataset)
    if info is None:
        known = ", ".join(d.name for d in datasets.list_all(rt))
        raise Invalid(("dataset",), f"must be one of {known} (or upload it first)", body.dataset)
    family = body.model_family
    if family not in family_names():
        raise Invalid(("model", "family"), f"must be one of {', '.join(family_names())}", family)
    if family == "cnn" and info.image_shape is None:
        raise Invalid(
            ("model", "family"),
            f"needs image data, but dataset {info.name!r} is "
            f"tabular ({info.n_features} features); use mlp",
            family,
        )
    metric = body.metric or DEFAULT_METRIC[info.task]
    if not metric_fits(metric, info.task):
        allowed = [m for m in METRICS if metric_fits(m, info.task)]
        raise Invalid(
            ("metric",),
            f"does not fit dataset {info.name!r}, which is "
            f"{info.task} (allowed: {', '.join(allowed)})",
            metric,
        )
    space = SearchSpace.parse(body.search_space, body.fixed, family=family)
    if body.sampler == Sampler.GRID:
        grid_of(space)
        if body.enqueue:
            raise Invalid(
                ("enqueue",),
                "cannot be combined with the grid sampler, which "
                "already enumerates every point of the space",
                len(body.enqueue),
            )
    check_samplable(space)
    _check_model_size(space, info, limits.max_model_params, body)
    problems = [
        p
        for i, params in enumerate(body.enqueue)
        for p in space.check_params(params, ("enqueue", i))
    ]
    if problems:
        raise SpaceError(problems)
    if body.epoch_budget is not None and body.epoch_budget < body.epochs:
        raise Invalid(
            ("epoch_budget",),
            f"must be at least the epochs of one trial ({body.epochs})",
            body.epoch_budget,
        )
    # The notes' configurations, after the user's own (grid: it enumerates the space).
    priors = [] if not body.priors or body.sampler == Sampler.GRID else priors_for(space)
    priors = [p for p in priors if p not in body.enqueue][
        : max(0, body.n_trials - len(body.enqueue))
    ]
    warnings = []
    if info.source != "sklearn":
        reported = datasets.reported_unavailable(rt, info.name)
        if reported is not None:
            warnings.append(f"dataset {info.name!r} may be unavailable to workers: {reported}")
    direction = body.direction or METRICS[metric][0]
    spec: dict[str, Any] = {
        **space.to_json(),
        "model": {"family": body.model_family},
        "sampler": body.sampler,
        "pruner": body.pruner,
        "seed": body.seed,
        "dataset_info": info.to_json(),
        "trial_time_limit_s": body.trial_time_limit_s,
        "tensorboard": body.tensorboard,
        "diagnostics": body.diagnostics,
        "priors": priors,
    }
    spec["reevaluate_top"], spec["reevaluate_repeats"] = winners.plan(
        body.reevaluate_top,
        body.reevaluate_repeats,
        n_trials=body.n_trials,
        epochs=body.epochs,
        epoch_budget=body.epoch_budget,
    )
    with rt.unit_of_work():
        # The row reserves the name (unique) before Optuna's study exists; if creating the
        # Optuna study fails, the row goes again, so nothing half-made stays behind. A
        # submission cut short in between (the API killed, the database gone) leaves a row
        # without its Optuna study: once abandoned, it is cleared here or by the reaper.
        _clear_if_abandoned(rt, body.name)
        if rt.optuna.has_study(body.name):
            raise Conflict(f"a study named {body.name!r} already exists")
        try:
            with rt.sessions.begin() as s:
                row = StudyRow(
                    name=body.name,
                    status=StudyStatus.QUEUED,
                    dataset=body.dataset,
                    n_trials=body.n_trials,
                    epochs=body.epochs,
                    metric=metric,
                    direction=direction,
                    spec=spec,
                    slots_used=0,
                    epoch_budget=body.epoch_budget,
                    epochs_charged=0,
                    created_at=utcnow(),
                    sanity_state=SanityState.PENDING if body.sanity_check else SanityState.SKIPPED,
                    final_state=FinalState.NONE,
                )
                s.add(row)
        except IntegrityError as exc:
            raise Conflict(f"a study named {body.name!r} already exists") from exc
        try:
            note = {
                "hpo_spec": {
                    **spec,
                    "dataset": body.dataset,
                    "n_trials": body.n_trials,
                    "epochs": body.epochs,
                    "epoch_budget": body.epoch_budget,
                    "metric": metric,
                }
            }
            optuna_id = rt.optuna.create_study(body.name, direction, note, [*body.enqueue, *priors])
        except Exception as exc:
            # Optuna's study (if made) before the row: one that resists deletion keeps
            # its half-made row, for the reaper to clear.
            duplicate = isinstance(exc, DuplicateStudy)  # created by someone else meanwhile
            if duplicate or rt.optuna.delete_study_if_exists(body.name):
                with rt.sessions.begin() as s:
                    s.execute(delete(StudyRow).where(StudyRow.id == row.id))
            if duplicate:
                raise Conflict(f"a study named {body.name!r} already exists") from exc
            raise
        with rt.sessions.begin() as s:
            row = s.get_one(StudyRow, row.id)
            row.optuna_study_id = optuna_id
    log.info(
        "study %s (%s) created: %d trials of %d epochs on %s",
        row.id,
        row.name,
        row.n_trials,
        row.epochs,
        row.dataset,
    )
    return row, warnings


HALF_MADE_AFTER = timedelta(seconds=60)
"""A study row still without its Optuna study this long after it was written is from a
submission cut short, not one under way (creating the Optuna study takes a second)."""


def _clear_if_abandoned(rt: Runtime, name: str) -> None:
    """Clear a half-made study of this name if it was abandoned.

    Raises:
        Conflict: one is being created right now.
    """
    with rt.sessions() as s:
        row = s.scalars(
            select(StudyRow).where(StudyRow.name == name, StudyRow.optuna_study_id.is_(None))
        ).one_or_none()
    if row is None:
        return
    if utcnow() - row.created_at < HALF_MADE_AFTER:
        raise Conflict(f"a study named {name!r} is being created; retry shortly")
    if not _clear(rt, row.id, name):
        raise Conflict(f"a study named {name!r} is being cleared; retry shortly")


def _clear(rt: Runtime, row_id: int, name: str) -> bool:
    """Clear a half-made study's row and its Optuna study, if any; False if Optuna's
    study could not be deleted (the row stays, to be cleared next time)."""
    # Another process (or the reaper and a resubmission here) may clear the same row and
    # make the study anew meanwhile; the Optuna study of that name is then the new one's.
    # Its id is read before the row is seen still half-made: a study made anew needs this
    # row gone first, so the id read is this row's (ids are never reused). No lock is held
    # across Optuna's calls (a feeder writing a trial of the study would wait on it).
    optuna_id = rt.optuna.study_id(name)
    with rt.sessions() as s:
        row = s.get(StudyRow, row_id)
        if row is None or row.optuna_study_id is not None:
            return True
    # Optuna's study first: interrupted here, the row is still there to clear next time.
    if optuna_id is not None and not rt.optuna.delete_study(optuna_id):
        log.warning("study %s (%s) is half-made; its Optuna study resists deletion", row_id, name)
        return False
    with rt.sessions.begin() as s:
        s.execute(delete(StudyRow).where(StudyRow.id == row_id, StudyRow.optuna_study_id.is_(None)))
    log.warning("study %s (%s) was half-made (its submission was cut short): cleared", row_id, name)
    return True


def clear_half_made(rt: Runtime) -> int:
    """The reaper's sweep: clear every abandoned half-made study; how many."""
    with rt.sessions() as s:
        rows = s.execute(
            select(StudyRow.id, StudyRow.name).where(
                StudyRow.optuna_study_id.is_(None),
                StudyRow.created_at < utcnow() - HALF_MADE_AFTER,
            )
        ).all()
    cleared = 0
    for row_id, name in rows:
        with rt.unit_of_work():
            cleared += _clear(rt, row_id, name)
    return cleared


def _check_model_size(space: SearchSpace, info: DatasetInfo, limit: int, body: NewStudy) -> None:
    """Refuse a space whose largest model is over the limit (built-in families; workers
    check custom ones before they train)."""
    largest = max_param_count(
        space,
        n_features=info.n_features,
        n_outputs=int(info.n_classes or 1),
        image_shape=info.image_shape,
    )
    if largest is None or largest <= limit:
        return
    given = {**(body.fixed or {}), **(body.search_space or {})}
    field = next(
        (
            name
            for name in ("hidden_units", "hidden_layers", "batch_norm")
            if name in given and space.can_be_active(name)
        ),
        None,
    )
    if field is None:
        loc: tuple[str, ...] = ("model", "family")
        value: Any = space.family
    else:
        loc = ("search_space" if field in (body.search_space or {}) else "fixed", field)
        value = given[field]
    raise Invalid(
        loc,
        f"makes the largest model on dataset {info.name!r} {largest} "
        f"parameters, more than the limit of {limit} (HPO_MAX_MODEL_PARAMS)",
        value,
    )


def get(rt: Runtime, study_id: int) -> StudyRow:
    with rt.sessions() as s:
        row = s.get(StudyRow, study_id)
    if row is None:
        raise NotFound(f"study {study_id} does not exist")
    return row


def list_all(rt: Runtime, *, name: str | None = None) -> list[StudyRow]:
    """Every study, oldest first (or the one named ``name``, if any)."""
    query = select(StudyRow).order_by(StudyRow.id)
    if name is not None:
        query = query.where(StudyRow.name == name)
    with rt.sessions() as s:
        return list(s.scalars(query).all())


_TRIALS = (LeaseRow.kind == JobKind.TRIAL, LeaseRow.trial_id.is_not(None))
"""Trial leases that became trials (not slots whose Optuna trial was never created)."""


def trial_counts(rt: Runtime) -> dict[str, int]:
    """Trials of every study by state (pending and active count as running)."""
    counts = {str(k): 0 for k in TrialState}
    query = select(LeaseRow.state, func.count()).where(*_TRIALS).group_by(LeaseRow.state)
    with rt.sessions() as s:
        for state, n in s.execute(query):
            counts[TrialState.of(state)] += n
    return counts


def counts_of(rt: Runtime, study_ids: list[int]) -> dict[int, dict[str, int]]:
    """Trials by state of each study in ``study_ids``, in one query."""
    out = {i: {str(k): 0 for k in TrialState} for i in study_ids}
    query = (
        select(LeaseRow.study_id, LeaseRow.state, func.count())
        .where(*_TRIALS, LeaseRow.study_id.in_(study_ids))
        .group_by(LeaseRow.study_id, LeaseRow.state)
    )
    with rt.sessions() as s:
        for study_id, state, n in s.execute(query):
            out[study_id][TrialState.of(state)] += n
    return out


def trials(rt: Runtime, study_id: int) -> list[LeaseRow]:
    get(rt, study_id)
    with rt.sessions() as s:
        return list(
            s.scalars(
                select(LeaseRow)
                .where(
                    LeaseRow.study_id == study_id,
                    *_TRIALS,
                )
                .order_by(LeaseRow.trial_number)
            ).all()
        )


def stop(rt: Runtime, study_id: int) -> StudyRow:
    """Stop handing out the study's trials; running ones are told to stop at their next
    report. Stopping a finished study changes nothing."""
    with rt.unit_of_work(), rt.sessions.begin() as s:
        row = s.get(StudyRow, study_id)
        if row is None:
            raise NotFound(f"study {study_id} does not exist")
        if row.status in OPEN_STATUSES:
            row.status = StudyStatus.STOPPED
            row.finished_at = utcnow()
    feeder.discard(rt, row)  # its suggestions were never handed out: failed, not kept
    return row
