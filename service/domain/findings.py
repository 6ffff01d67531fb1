"""What a worker's probe found wrong with a trial (``diagnostics.codes``), as the
service stores it: judged against the study (a plateau counts only far from the best),
with the lease and as the trial's Optuna user attribute ``findings``."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table, bindparam, func, select

from diagnostics.codes import FAR_FROM_BEST, Code
from service.domain.lease_records import Outcome, look
from service.errors import Conflict
from service.states import JobKind, LeaseState
from service.storage import optuna_writes
from service.storage.runtime import Runtime
from service.storage.tables import LeaseRow, StudyRow

_LEASES = cast(Table, LeaseRow.__table__)
_OF_STUDY = (
    _LEASES.c.study_id == bindparam("study_id"),
    _LEASES.c.kind == JobKind.TRIAL,
    _LEASES.c.state == LeaseState.COMPLETE,
)
_BEST_MAX = select(func.max(_LEASES.c.value)).where(*_OF_STUDY)
_BEST_MIN = select(func.min(_LEASES.c.value)).where(*_OF_STUDY)


def judged(
    rt: Runtime, study: StudyRow, value: float | None, findings: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The findings as stored: a stalled loss counts only far from the study's best
    (``diagnostics.codes.FAR_FROM_BEST``); near the top a plateau is convergence. The
    database is read only when there is a plateau to judge."""
    if not any(f["code"] == Code.LOSS_STALLED for f in findings):
        return findings
    with rt.engine.connect() as conn:
        best = conn.scalar(
            _BEST_MAX if study.direction == "maximize" else _BEST_MIN, {"study_id": study.id}
        )
    far = (
        value is not None
        and best is not None
        and abs(best - value) > FAR_FROM_BEST * max(abs(best), 1e-12)
    )
    return [f for f in findings if far or f["code"] != Code.LOSS_STALLED]


def attach_findings(
    rt: Runtime, trial_id: int, worker_id: str, findings: list[dict[str, Any]]
) -> Outcome:
    """A pruned trial's findings, sent after the prune that ended it (the worker probes
    the model where it stopped). Only from the worker that held the trial, once it ended;
    a retry replaces them with the same."""
    with rt.engine.connect() as conn:
        held = look(conn, trial_id, worker_id)
    if held.state not in (LeaseState.PRUNED, LeaseState.COMPLETE, LeaseState.FAIL):
        raise Conflict(
            f"trial {trial_id} is {held.state}: findings come with its result, or after "
            "the service pruned it"
        )
    study = rt.as_created(held.study_id, held.study_created)
    findings = judged(rt, study, held.value, findings)
    with rt.write() as conn:
        conn.execute(_LEASES.update().where(_LEASES.c.id == held.id), {"findings": findings})
        optuna_writes.write_attrs(conn, trial_id, {"findings": findings})
    return Outcome(held.trial_id, held.state, held.value, held.reason)
