"""A study's report (``diagnostics.report``) from its trials and its Optuna study, and
saving it where the Optuna dashboard shows it: the study's note, with PNGs of the
importances and of the best and worst trials' learning curves as study artifacts."""

from __future__ import annotations

import json
import logging
from typing import Any

from diagnostics import report as reporting
from service.domain import studies, winners
from service.errors import Conflict
from service.states import LeaseState, SanityState
from service.storage.runtime import Runtime
from service.storage.tables import LeaseRow, StudyRow

log = logging.getLogger(__name__)

_RESULTS = {LeaseState.COMPLETE: "complete", LeaseState.PRUNED: "pruned", LeaseState.FAIL: "fail"}


def resubmission(row: StudyRow) -> dict[str, Any]:
    """The study as a ``POST /studies`` body, under a new name (``NAME-next``)."""
    spec = row.spec
    body: dict[str, Any] = {
        "name": f"{row.name[:123]}-next",
        "dataset": row.dataset,
        "n_trials": row.n_trials,
        "epochs": row.epochs,
        "search_space": spec["search_space"],
        "fixed": spec.get("fixed") or {},
        "metric": row.metric,
        "direction": row.direction,
        "sampler": spec["sampler"],
        "pruner": spec["pruner"],
        "model": spec["model"],
        "sanity_check": row.sanity_state != SanityState.SKIPPED,
        "tensorboard": bool(spec.get("tensorboard", False)),
        "diagnostics": bool(spec.get("diagnostics", True)),
    }
    if spec.get("seed") is not None:
        body["seed"] = spec["seed"]
    if spec.get("trial_time_limit_s") is not None:
        body["trial_time_limit_s"] = spec["trial_time_limit_s"]
    return body


def _trial(row: LeaseRow, searched: set[str]) -> reporting.Trial:
    return reporting.Trial(
        number=row.trial_number or 0,
        state=_RESULTS[LeaseState(row.state)],
        value=row.value,
        params={k: v for k, v in (row.params or {}).items() if k in searched},
        findings=row.findings or [],
    )


def build(rt: Runtime, study_id: int) -> tuple[StudyRow, dict[str, Any]]:
    row = studies.get(rt, study_id)
    searched = set(row.spec.get("search_space") or {})
    # The search's trials: a re-evaluation repeats one on another fold, so it would count
    # a configuration twice and judge it on other rows.
    trials = [
        _trial(t, searched)
        for t in studies.trials(rt, study_id)
        if t.state in _RESULTS and t.reevaluates is None
    ]
    importance = rt.optuna.importances(row) if row.optuna_study_id is not None else {}
    won = winners.best(rt, row)  # (a re-evaluated study's best mean, not its best trial)
    return row, reporting.build(
        name=row.name,
        spec=row.spec,
        direction=row.direction,
        trials=trials,
        importance=importance,
        resubmit=resubmission(row),
        winner=None if won is None else (won.number, won.value),
    )


def markdown(report: dict[str, Any]) -> str:
    """The report as the dashboard's note shows it."""
    lines = [f"## Report: {report['study']} ({report['trials']} trials)", ""]
    if report["importances"]:
        lines += ["### Parameter importances (fANOVA)", ""]
        lines += [f"- `{k}`: {v:.2f}" for k, v in report["importances"].items()]
        lines.append("")
    lines += ["### Findings", ""]
    by_code = report["findings"]["by_code"]
    lines += [f"- `{k}`: {v} trials" for k, v in by_code.items()] or ["- none"]
    lines += ["", "### Findings by parameter value", ""]
    lines += [f"- {r['text']}" for r in report["findings"]["by_value"][:15]] or ["- none"]
    lines += ["", "### Advice", ""]
    lines += [f"- **{a['action']}**: {a['evidence']}. {a['why']}" for a in report["advice"]] or [
        "- nothing to change"
    ]
    lines += [
        "",
        "### Suggested next spec",
        "",
        "```json",
        json.dumps(report["suggested_spec"], indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def save(rt: Runtime, row: StudyRow, report: dict[str, Any]) -> None:
    """The report as the study's note (above its submitted spec) and its figures as
    study artifacts, for the dashboard."""
    if row.optuna_study_id is None:
        raise Conflict(f"study {row.name!r} is still being created: its report can wait")
    rt.optuna.save_report(row, markdown(report), report)


def save_quietly(rt: Runtime, study_id: int) -> None:
    """``save`` after the best model is in (a background task): the report is derived
    data, so a failure is logged, never raised; ``POST /studies/{id}/report`` redoes it."""
    try:
        row, report = build(rt, study_id)
        save(rt, row, report)
    except Exception:
        log.exception("could not save the report of study %s", study_id)
