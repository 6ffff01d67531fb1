"""Every state name of the service, in one place. They are ``StrEnum``s: each member *is*
its string, so rows, JSON bodies and Optuna user attributes hold plain text, and code
compares against a member instead of retyping the word."""

from __future__ import annotations

from enum import StrEnum


class StudyStatus(StrEnum):
    """A study's life: queued until its first lease, then running until its budget is
    spent (completed), a user stops it (stopped) or its sanity run fails (failed)."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"


OPEN_STATUSES = (StudyStatus.QUEUED, StudyStatus.RUNNING)
"""Studies that still hand out work."""


class LeaseState(StrEnum):
    """A lease row's state: pending (slot reserved, trial being created), active, then one
    result (complete, pruned, fail) or given back without one (lost, released)."""

    PENDING = "pending"
    ACTIVE = "active"
    COMPLETE = "complete"
    PRUNED = "pruned"
    FAIL = "fail"
    LOST = "lost"
    RELEASED = "released"


LIVE_STATES = (LeaseState.PENDING, LeaseState.ACTIVE)
COUNTED_STATES = (LeaseState.COMPLETE, LeaseState.PRUNED, LeaseState.FAIL)
"""Finished states that count toward a study's ``n_trials``."""


class TrialState(StrEnum):
    """A trial as users see it: a live lease (pending or active) shows as running."""

    RUNNING = "running"
    COMPLETE = "complete"
    PRUNED = "pruned"
    FAIL = "fail"
    LOST = "lost"
    RELEASED = "released"

    @classmethod
    def of(cls, lease: str) -> TrialState:
        return cls.RUNNING if lease in LIVE_STATES else cls(lease)


class JobKind(StrEnum):
    """What a lease hands out: a trial, the sanity run before a study's trials, or the
    final retraining of its best configuration."""

    TRIAL = "trial"
    SANITY = "sanity"
    FINAL = "final"


class SanityState(StrEnum):
    SKIPPED = "skipped"
    PENDING = "pending"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"


class FinalState(StrEnum):
    """The best model retrained after the search (none: no trial completed)."""

    NONE = "none"
    PENDING = "pending"
    RUNNING = "running"
    READY = "ready"
    FAILED = "failed"


class Action(StrEnum):
    """The service's answer to a report or heartbeat."""

    CONTINUE = "continue"
    PRUNE = "prune"
    STOP = "stop"


class Sampler(StrEnum):
    TPE = "tpe"
    RANDOM = "random"
    QMC = "qmc"
    GRID = "grid"


class Pruner(StrEnum):
    MEDIAN = "median"
    HYPERBAND = "hyperband"
    SUCCESSIVE_HALVING = "successive_halving"
    NONE = "none"


def study_is_over(status: str, final: str) -> bool:
    """Whether a study will change no more: stopped, failed, or completed with its final
    model settled."""
    if status in (StudyStatus.STOPPED, StudyStatus.FAILED):
        return True
    return status == StudyStatus.COMPLETED and final in (
        FinalState.READY,
        FinalState.FAILED,
        FinalState.NONE,
    )
