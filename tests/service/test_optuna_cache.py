"""The service keeps one cache of finished trials per process (``OptunaBridge.storage``):
without it every lease and every epoch report re-read the whole study from the database
(see benchmarks/RESULTS.md, feeding workers). Finished trials never change, so the cache
is safe with several API processes; running trials must still be read every time."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import text

from service.migrate import migrate
from service.optuna_bridge import OptunaBridge
from tests.service.conftest import BACKENDS, _database_url


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = _database_url(request.param, request) or f"sqlite:///{tmp_path / 'cache.db'}"
    migrate(url)
    return url


def _trials(bridge: OptunaBridge) -> list[optuna.trial.FrozenTrial]:
    """The study as one request of the service sees it: loaded anew from the bridge."""
    return optuna.load_study(study_name="cache", storage=bridge.storage).get_trials()


def test_finished_trials_are_read_once_running_ones_every_time(database_url: str) -> None:
    # Two bridges on one database: two API processes.
    mine = OptunaBridge(database_url, busy_timeout_s=10)
    other = OptunaBridge(database_url, busy_timeout_s=10)
    try:
        mine.create_study("cache", "maximize", {}, [])
        here = optuna.load_study(study_name="cache", storage=mine.storage)
        there = optuna.load_study(study_name="cache", storage=other.storage)
        first = here.ask()
        here.tell(first, 0.5)
        assert [t.value for t in _trials(mine)] == [0.5]

        # A trial the other process starts, then finishes, is seen here at each step.
        second = there.ask()
        assert [t.state for t in _trials(mine)] == [TrialState.COMPLETE, TrialState.RUNNING]
        there.tell(second, 0.7)
        assert [(t.state, t.value) for t in _trials(mine)] == [
            (TrialState.COMPLETE, 0.5), (TrialState.COMPLETE, 0.7)]

        # A finished trial is not read again by later requests: a change made behind
        # Optuna's back (which Optuna never makes) stays unseen here, though a fresh
        # reader sees it.
        with mine.rdb.engine.begin() as c:
            c.execute(text("UPDATE trial_values SET value = 0.9 WHERE trial_id = :id"),
                      {"id": first._trial_id})
        assert _trials(mine)[0].value == 0.5
        fresh = optuna.storages.RDBStorage(database_url, skip_table_creation=True)
        try:
            assert fresh.get_trial(first._trial_id).value == 0.9
        finally:
            fresh.engine.dispose()
    finally:
        mine.close()
        other.close()
