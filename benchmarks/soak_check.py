"""The soak's checker: reads a service database (its tables and Optuna's) after a run, with
what the workers were told, and names every broken rule. Reading only; no service code runs.

How the service counts (``service.domain.lease_records``, ``reports``, ``leases``): every
trial a worker leases is a row of ``hpo_leases`` (kind ``trial``) tied to one Optuna trial
by ``trial_id``. Its result is counted when the row ends ``complete``, ``pruned`` or
``fail`` (``COUNTED_STATES``), and Optuna's trial ends COMPLETE, PRUNED or FAIL in the same
transaction. A lease that ends ``lost`` (reaped) or ``released`` counts nothing: its Optuna
trial is FAIL with the user attribute ``hpo_outcome`` (lost / released), and its parameters
come back as a new Optuna trial with ``hpo_reruns_trial`` set to the old trial's id
(re-runs made but not needed, or left when a study stops, end FAIL with ``hpo_outcome``
``discarded``). A study's ``slots_used`` is its live leases plus its counted results.

The rules, for every study (``RULES``):

- ``n_trials_counted``: exactly ``n_trials`` counted results, by the service and by Optuna
  (the trials counted there: COMPLETE, PRUNED, or FAIL without ``hpo_outcome``); a study
  with all its results is ``completed``; ``slots_used`` is live plus counted.
- ``counted_once``: no trial counted twice: Optuna's trial numbers are unique, every
  counted lease is counted by Optuna in the same state and every trial Optuna counts has a
  counted lease, a lost or released lease is failed in Optuna with that outcome (not
  counted), and no counted trial has a counted re-run.
- ``ack_kept``: every ``complete`` a worker was answered 2xx for is in the service and in
  Optuna as COMPLETE, with the acknowledged value and parameters, in the same study.
- ``rerun_same_params``: every lost or released lease (of a study not stopped) was run
  again exactly once, with the same parameters (the re-run's Optuna trial and its lease).
- ``no_live_lease``: no lease (trial, sanity or final) still pending or active, and in a
  study that is over, no RUNNING Optuna trial and no suggestion left.
- ``no_5xx``: no answer of 500 or above but 503 (the database away) in the workers' log.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Table, create_engine, select

from service.states import COUNTED_STATES, LIVE_STATES, OPEN_STATUSES, JobKind, StudyStatus
from service.storage.tables import LeaseRow, StudyRow, SuggestionRow

RULES = (
    "n_trials_counted",
    "counted_once",
    "ack_kept",
    "rerun_same_params",
    "no_live_lease",
    "no_5xx",
)
_OPTUNA_STATE = {
    "complete": TrialState.COMPLETE,
    "pruned": TrialState.PRUNED,
    "fail": TrialState.FAIL,
}
_GIVEN_BACK = ("lost", "released")


@dataclass(frozen=True)
class Ack:
    """A ``complete`` the service answered 2xx: the trial, its study, what was sent."""

    trial_id: int
    study: str
    params: dict[str, Any]
    value: float


@dataclass(frozen=True)
class Status:
    """One answer a worker got (``status`` 0: no answer, the connection failed)."""

    call: str
    status: int
    trial_id: int | None = None
    detail: str = ""
    at: float = 0.0
    """When (Unix time), where known."""


@dataclass(frozen=True)
class Violation:
    rule: str
    study: str | None
    trial_id: int | None
    detail: str

    def __str__(self) -> str:
        where = f"study {self.study}" if self.study else "the run"
        if self.trial_id is not None:
            where += f", trial {self.trial_id}"
        return f"[{self.rule}] {where}: {self.detail}"


@dataclass
class StudyView:
    """One study as the database holds it: the service's row, its leases, Optuna's trials."""

    id: int
    name: str
    status: str
    n_trials: int
    slots_used: int
    optuna_id: int | None = None
    leases: list[dict[str, Any]] = field(default_factory=list)
    trials: dict[int, FrozenTrial] = field(default_factory=dict)
    suggestions: int = 0


@dataclass
class Snapshot:
    studies: list[StudyView]
    live_jobs: list[dict[str, Any]]
    """Leases of any kind still pending or active."""


def read(database_url: str) -> Snapshot:
    """Everything the rules look at, read once."""
    engine = create_engine(database_url)
    leases = cast(Table, LeaseRow.__table__)
    studies_t = cast(Table, StudyRow.__table__)
    suggestions = cast(Table, SuggestionRow.__table__)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(studies_t).order_by(studies_t.c.id)).mappings().all()
            all_leases = [
                dict(r) for r in conn.execute(select(leases).order_by(leases.c.id)).mappings()
            ]
            waiting = conn.execute(select(suggestions.c.study_id)).scalars().all()
    finally:
        engine.dispose()
    storage = optuna.storages.RDBStorage(
        database_url, skip_compatibility_check=True, skip_table_creation=True
    )
    try:
        optuna_ids = {s.study_name: s._study_id for s in storage.get_all_studies()}
        views = []
        for r in rows:
            view = StudyView(
                r["id"],
                r["name"],
                r["status"],
                r["n_trials"],
                r["slots_used"],
                r["optuna_study_id"],
            )
            view.leases = [
                x for x in all_leases if x["study_id"] == r["id"] and x["kind"] == JobKind.TRIAL
            ]
            view.suggestions = sum(1 for s in waiting if s == r["id"])
            if r["name"] in optuna_ids:
                trials = storage.get_all_trials(optuna_ids[r["name"]], deepcopy=False)
                view.trials = {t._trial_id: t for t in trials}
            views.append(view)
    finally:
        storage.engine.dispose()
    live = [x for x in all_leases if x["state"] in LIVE_STATES]
    return Snapshot(views, live)


def _optuna_counted(t: FrozenTrial) -> bool:
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        t.state == TrialState.FAIL and "hpo_outcome" not in t.user_attrs
    )


def _params(t: FrozenTrial) -> dict[str, Any]:
    """A trial's whole configuration as its lease carries it (fixed values included)."""
    return {**t.user_attrs.get("fixed_params", {}), **t.params}


def _same(a: Any, b: Any) -> bool:
    return a == b or json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _close(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _held(t: FrozenTrial) -> str:
    return f"{t.state.name} {t.user_attrs.get('hpo_outcome', '')}".rstrip()


class _Rules:
    """The rules applied to one snapshot; ``found`` collects what they find."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.found: list[Violation] = []
        self.leases = {
            x["trial_id"]: x for v in snap.studies for x in v.leases if x["trial_id"] is not None
        }

    def bad(self, rule: str, study: str | None, trial_id: int | None, detail: str) -> None:
        self.found.append(Violation(rule, study, trial_id, detail))

    def counted(self, v: StudyView) -> None:
        counted = [x for x in v.leases if x["state"] in COUNTED_STATES]
        live = [x for x in v.leases if x["state"] in LIVE_STATES]
        by_optuna = [t for t in v.trials.values() if _optuna_counted(t)]
        rule = "n_trials_counted"
        if len(counted) != v.n_trials:
            self.bad(
                rule,
                v.name,
                None,
                f"the service counts {len(counted)} results of "
                f"n_trials {v.n_trials} (the study is {v.status})",
            )
        if v.optuna_id is None:  # half made: never handed out
            self.bad(rule, v.name, None, "its row has no Optuna study id: it cannot run")
        if len(by_optuna) != v.n_trials:
            self.bad(rule, v.name, None, f"Optuna counts {len(by_optuna)} of {v.n_trials}")
        if len(counted) >= v.n_trials and v.status != StudyStatus.COMPLETED:
            self.bad(rule, v.name, None, f"all {len(counted)} results in, yet {v.status}")
        if v.slots_used != len(counted) + len(live):
            self.bad(
                rule,
                v.name,
                None,
                f"slots_used {v.slots_used}, not {len(counted)} counted + {len(live)} live",
            )

    def counted_once(self, v: StudyView) -> None:
        def bad(trial_id: int | None, detail: str) -> None:
            self.bad("counted_once", v.name, trial_id, detail)

        numbers = [t.number for t in v.trials.values()]
        for n in sorted({n for n in numbers if numbers.count(n) > 1}):
            bad(None, f"Optuna trial number {n} is used {numbers.count(n)} times")
        mine = {x["trial_id"]: x for x in v.leases if x["trial_id"] is not None}
        for trial_id, lease in mine.items():
            t, state = v.trials.get(trial_id), lease["state"]
            if t is None:
                bad(trial_id, f"lease {lease['id']} ({state}) has no Optuna trial in the study")
            elif state in COUNTED_STATES and not (
                t.state == _OPTUNA_STATE[state] and _optuna_counted(t)
            ):
                bad(trial_id, f"the service counts it {state}, Optuna holds {_held(t)}")
            elif state in _GIVEN_BACK and (
                t.state != TrialState.FAIL or t.user_attrs.get("hpo_outcome") != state
            ):
                bad(trial_id, f"the lease is {state}, Optuna holds {_held(t)}")
        for trial_id, t in v.trials.items():
            if not _optuna_counted(t):
                continue
            mine_ = mine.get(trial_id)
            if mine_ is None or mine_["state"] not in COUNTED_STATES:
                held = mine_["state"] if mine_ else "missing"
                bad(trial_id, f"Optuna counts it {t.state.name}, its lease is {held}")
            original = t.user_attrs.get("hpo_reruns_trial")
            first, first_lease = v.trials.get(original or -1), mine.get(original or -1, {})
            if (first is not None and _optuna_counted(first)) or (
                first_lease.get("state") in COUNTED_STATES
            ):
                bad(
                    trial_id,
                    f"counted, and so is trial {original}, of which it is the re-run: "
                    "one trial counted twice",
                )

    def acks(self, name: str, acks: list[Ack]) -> None:
        v = next((s for s in self.snap.studies if s.name == name), None)
        for ack in acks:

            def bad(detail: str, ack: Ack = ack) -> None:
                self.bad("ack_kept", name, ack.trial_id, f"acknowledged {ack.value}: {detail}")

            lease = self.leases.get(ack.trial_id)
            t = None if v is None else v.trials.get(ack.trial_id)
            if v is None or lease is None or lease["study_id"] != v.id:
                bad("no lease of the trial in the study")
            elif lease["state"] != "complete" or not _close(lease["value"], ack.value):
                bad(f"the service holds {lease['state']} ({lease['value']})")
            elif not _same(lease["params"], ack.params):
                bad(f"sent for params {ack.params}, the lease holds {lease['params']}")
            if t is None:
                bad("not an Optuna trial of the study")
            elif t.state != TrialState.COMPLETE or not _close(t.value, ack.value):
                bad(f"Optuna holds {_held(t)} ({t.value})")

    def reruns(self, v: StudyView) -> None:
        if v.status == StudyStatus.STOPPED:
            return  # a stop discards what would have run again
        again: dict[int, list[FrozenTrial]] = defaultdict(list)
        for t in v.trials.values():
            if (
                "hpo_reruns_trial" in t.user_attrs
                and t.user_attrs.get("hpo_outcome") != "discarded"
            ):
                again[int(t.user_attrs["hpo_reruns_trial"])].append(t)
        for lease in v.leases:
            trial_id = lease["trial_id"]
            if lease["state"] not in _GIVEN_BACK or trial_id is None:
                continue

            def bad(detail: str, trial_id: int = trial_id) -> None:
                self.bad("rerun_same_params", v.name, trial_id, detail)

            if len(again[trial_id]) != 1:
                bad(f"{lease['state']}, and run again {len(again[trial_id])} times, not once")
                continue
            rerun = again[trial_id][0]
            if not _same(_params(rerun), lease["params"]):
                bad(
                    f"re-run as trial {rerun._trial_id} with {_params(rerun)}, "
                    f"not {lease['params']}"
                )
            second = self.leases.get(rerun._trial_id)
            if second is not None and not _same(second["params"], lease["params"]):
                bad(
                    f"re-run {rerun._trial_id} leased with {second['params']}, "
                    f"not {lease['params']}"
                )
            if second is None and v.status not in OPEN_STATUSES:
                bad(f"its re-run, trial {rerun._trial_id}, was never handed out ({_held(rerun)})")

    def live(self, v: StudyView) -> None:
        if v.status in OPEN_STATUSES:
            return
        for t in v.trials.values():
            if t.state in (TrialState.RUNNING, TrialState.WAITING):
                self.bad(
                    "no_live_lease",
                    v.name,
                    t._trial_id,
                    f"{t.state.name} in Optuna, in a {v.status} study",
                )
        if v.suggestions:
            self.bad(
                "no_live_lease",
                v.name,
                None,
                f"{v.suggestions} suggestions left in a {v.status} study",
            )


def violations(
    snap: Snapshot, acks: Iterable[Ack] = (), statuses: Iterable[Status] = ()
) -> list[Violation]:
    """Every broken rule in ``snap``, given the acknowledged completes and the answers the
    workers got."""
    rules = _Rules(snap)
    names = {v.id: v.name for v in snap.studies}
    for job in snap.live_jobs:
        rules.bad(
            "no_live_lease",
            names.get(job["study_id"]),
            job["trial_id"],
            f"{job['kind']} lease {job['id']} of {job['worker_id']} still {job['state']}",
        )
    for v in snap.studies:
        rules.counted(v)
        rules.counted_once(v)
        rules.reruns(v)
        rules.live(v)
    by_study: dict[str, list[Ack]] = defaultdict(list)
    for ack in acks:
        by_study[ack.study].append(ack)
    for name, of_study in by_study.items():
        rules.acks(name, of_study)
    for s in statuses:
        if s.status >= 500 and s.status != 503:
            rules.bad("no_5xx", None, s.trial_id, f"{s.call} answered {s.status}: {s.detail[:500]}")
    return rules.found


def check(
    database_url: str, acks: Iterable[Ack] = (), statuses: Iterable[Status] = ()
) -> list[Violation]:
    """``violations`` of the database at ``database_url``."""
    return violations(read(database_url), acks, statuses)


def figures(snap: Snapshot) -> dict[str, int]:
    """What the run left: studies, trials by lease state, re-runs."""
    states: dict[str, int] = defaultdict(int)
    for v in snap.studies:
        for x in v.leases:
            states[x["state"]] += 1
    trials = [t for v in snap.studies for t in v.trials.values()]
    return {
        "studies": len(snap.studies),
        "studies_completed": sum(v.status == StudyStatus.COMPLETED for v in snap.studies),
        "trials_counted": sum(states[s] for s in COUNTED_STATES),
        "trials_leased": sum(states.values()),
        **{f"leases_{s}": n for s, n in sorted(states.items())},
        "reruns": sum(
            "hpo_reruns_trial" in t.user_attrs and t.user_attrs.get("hpo_outcome") != "discarded"
            for t in trials
        ),
    }
