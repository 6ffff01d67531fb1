"""Optuna's tables written with SQLAlchemy Core statements in the service's own
transactions: an epoch's value, and a trial's end as ``Study.tell`` writes it."""

from __future__ import annotations

import functools
import json
import math
from datetime import datetime
from typing import Any, cast

from optuna.storages._rdb import models
from optuna.trial import TrialState
from sqlalchemy import Connection, Table, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite

from service.errors import Conflict
from service.storage.optuna_cache import Ended

# Optuna's tables, written with Core statements in the service's own transactions.
_TRIALS = cast(Table, models.TrialModel.__table__)
_STEPS = models.TrialIntermediateValueModel
_STEPS_T = cast(Table, _STEPS.__table__)
_VALUES = cast(Table, models.TrialValueModel.__table__)
_ATTRS = cast(Table, models.TrialUserAttributeModel.__table__)
_STATE_FOR_UPDATE = (
    select(_TRIALS.c.state).where(_TRIALS.c.trial_id == bindparam("trial_id")).with_for_update()
)
_END = (
    _TRIALS.update()
    .where(_TRIALS.c.trial_id == bindparam("b_trial_id"), _TRIALS.c.state == TrialState.RUNNING)
    .values(
        state=bindparam("new_state", type_=_TRIALS.c.state.type),
        datetime_complete=bindparam(
            "new_datetime_complete", type_=_TRIALS.c.datetime_complete.type
        ),
    )
)
_STEPS_OF = select(
    _STEPS_T.c.step, _STEPS_T.c.intermediate_value, _STEPS_T.c.intermediate_value_type
).where(_STEPS_T.c.trial_id == bindparam("trial_id"))
_VALUE = _VALUES.insert()


@functools.cache
def _upsert_attr(dialect: str) -> Any:
    """A trial's user attribute, inserted or replaced (values with each execution)."""
    upsert = (postgresql if dialect == "postgresql" else sqlite).insert(_ATTRS)
    return upsert.on_conflict_do_update(
        index_elements=["trial_id", "key"], set_={"value_json": upsert.excluded.value_json}
    )


def write_attrs(conn: Connection, trial_id: int, attrs: dict[str, Any]) -> None:
    """User attributes of a trial, finished or not, in the caller's transaction (Optuna's
    own API refuses to change a finished trial; a pruned trial's findings arrive after)."""
    conn.execute(
        _upsert_attr(conn.dialect.name),
        [
            {"trial_id": trial_id, "key": key, "value_json": json.dumps(attr)}
            for key, attr in attrs.items()
        ],
    )


@functools.cache
def _insert_step(dialect: str) -> Any:
    """An epoch's value, inserted unless the epoch has one (built once: building the
    statement cost more than running it); its values come with each execution."""
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(_STEPS_T)
    return insert.on_conflict_do_nothing(index_elements=["trial_id", "step"]).returning(
        _STEPS_T.c.step  # (a row back: inserted; psycopg gives no rowcount here)
    )


_STEP_VALUE = select(_STEPS_T.c.intermediate_value).where(
    _STEPS_T.c.trial_id == bindparam("trial_id"), _STEPS_T.c.step == bindparam("step")
)


def write_step(conn: Connection, trial_id: int, step: int, value: float) -> bool:
    """Store an epoch's value in the caller's transaction (the one that renews the
    lease: a report is one transaction); False when Optuna has already ended the
    trial. An epoch is reported once: a retry with the same value changes nothing, another
    value is refused (Optuna's own ``set_trial_intermediate_value`` would overwrite it).

    Raises:
        Conflict: the epoch was reported before with another value.
    """
    state = conn.scalar(_STATE_FOR_UPDATE, {"trial_id": trial_id})
    if state != TrialState.RUNNING:
        return False
    stored, kind = _STEPS.intermediate_value_to_stored_repr(value)
    inserted = conn.execute(
        _insert_step(conn.dialect.name),
        {
            "trial_id": trial_id,
            "step": step,
            "intermediate_value": stored,
            "intermediate_value_type": kind,
        },
    )
    if inserted.first() is None:
        before = conn.scalar(_STEP_VALUE, {"trial_id": trial_id, "step": step})
        if before != stored:
            raise Conflict(
                f"epoch {step} of trial {trial_id} was reported before, as {before!r}; "
                "an epoch is reported once"
            )
    return True


def end_trial(
    conn: Connection,
    trial_id: int,
    target: TrialState,
    *,
    value: float | None = None,
    attrs: dict[str, Any] | None = None,
) -> Ended | None:
    """End a running trial in the caller's transaction, as ``Study.tell`` would: its
    state and end time, its user attributes, its value (a pruned trial's is its last
    epoch's, when finite). None when Optuna already ended it (another process did):
    nothing is written. Call ``ended`` once the transaction commits.

    Optuna's own ``tell`` reads the trial back and commits attributes, values and
    state in a transaction each (a quarter of a report's time, benchmarks/feeding.py);
    this is one conditional UPDATE and the inserts, all or nothing with the lease.
    """
    if target == TrialState.COMPLETE and (value is None or math.isnan(value)):
        raise ValueError(f"a complete trial needs a value, not {value!r}")
    finished = datetime.now()
    changed = conn.execute(
        _END, {"b_trial_id": trial_id, "new_state": target, "new_datetime_complete": finished}
    )
    if changed.rowcount != 1:
        return None
    steps = conn.execute(_STEPS_OF, {"trial_id": trial_id}).all()
    last = max(steps, default=None, key=lambda row: row.step)
    if target == TrialState.PRUNED:
        value = None
        if last is not None:  # Optuna's rule: the last intermediate value, if finite
            last_value = _STEPS.stored_repr_to_intermediate_value(
                last.intermediate_value, last.intermediate_value_type
            )
            value = None if math.isnan(last_value) else last_value
    if value is not None and target != TrialState.FAIL:
        stored, kind = models.TrialValueModel.value_to_stored_repr(value)
        conn.execute(
            _VALUE, {"trial_id": trial_id, "objective": 0, "value": stored, "value_type": kind}
        )
    else:
        value = None
    if attrs:
        write_attrs(conn, trial_id, attrs)
    return Ended(
        trial_id=trial_id,
        state=target,
        value=value,
        attrs=dict(attrs or {}),
        finished=finished,
        last_step=None if last is None else int(last.step),
        steps=len(steps),
    )
