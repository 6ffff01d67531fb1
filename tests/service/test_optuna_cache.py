"""What the service keeps of Optuna per process, and why it stays right with several API
processes on one database (see benchmarks/RESULTS.md, feeding workers):

- one cache of the trials (``OptunaAdapter.storage``), read from the database only by
  the feeder's refresh: without it every lease and every epoch report re-read the whole
  study. Finished trials never change; new and running ones arrive with each refresh.
- one sampler per unseeded study; a seeded study's draw must stay the same whichever
  process serves the lease, so it gets a sampler seeded from the trial count each time."""

from __future__ import annotations

import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import text

from search_space import SearchSpace
from service.storage.migrate import migrate
from service.storage.optuna_adapter import OptunaAdapter
from service.storage.tables import StudyRow
from tests.service.conftest import BACKENDS, _database_url


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = _database_url(request.param, request) or f"sqlite:///{tmp_path / 'cache.db'}"
    migrate(url)
    return url


def _trials(bridge: OptunaAdapter) -> list[optuna.trial.FrozenTrial]:
    """The study as one request of the service sees it: loaded anew from the bridge."""
    return optuna.load_study(study_name="cache", storage=bridge.storage).get_trials()


def test_the_request_path_reads_memory_and_a_refresh_reads_new_and_running_trials(
    database_url: str,
) -> None:
    # Two bridges on one database: two API processes.
    mine = OptunaAdapter(database_url, busy_timeout_s=10)
    other = OptunaAdapter(database_url, busy_timeout_s=10)
    try:
        mine.create_study("cache", "maximize", {}, [])
        study_id = mine.storage.get_study_id_from_name("cache")
        here = optuna.load_study(study_name="cache", storage=mine.storage)
        there = optuna.load_study(study_name="cache", storage=other.storage)
        first = here.ask()
        here.tell(first, 0.5)
        mine.storage.refresh(study_id)
        assert [t.value for t in _trials(mine)] == [0.5]

        # A trial the other process starts, then finishes, is seen here after a refresh
        # (the feeder's, a few times a second), not before: reads between are memory.
        second = there.ask()
        assert [t.state for t in _trials(mine)] == [TrialState.COMPLETE]
        mine.storage.refresh(study_id)
        assert [t.state for t in _trials(mine)] == [TrialState.COMPLETE, TrialState.RUNNING]
        there.tell(second, 0.7)
        assert [t.state for t in _trials(mine)] == [TrialState.COMPLETE, TrialState.RUNNING]
        mine.storage.refresh(study_id)
        assert [(t.state, t.value) for t in _trials(mine)] == [
            (TrialState.COMPLETE, 0.5),
            (TrialState.COMPLETE, 0.7),
        ]

        # A finished trial is not read again by later requests: a change made behind
        # Optuna's back (which Optuna never makes) stays unseen here, though a fresh
        # reader sees it.
        with mine.rdb.engine.begin() as c:
            c.execute(
                text("UPDATE trial_values SET value = 0.9 WHERE trial_id = :id"),
                {"id": first._trial_id},
            )
        mine.storage.refresh(study_id)
        assert _trials(mine)[0].value == 0.5
        fresh = optuna.storages.RDBStorage(database_url, skip_table_creation=True)
        try:
            assert fresh.get_trial(first._trial_id).value == 0.9
        finally:
            fresh.engine.dispose()
    finally:
        mine.close()
        other.close()


def _row(bridge: OptunaAdapter, name: str, seed: int | None) -> StudyRow:
    spec = {
        "sampler": "tpe",
        "pruner": "median",
        "seed": seed,
        "search_space": {},
        "fixed": {},
        "model": {"family": "mlp"},
    }
    optuna_id = bridge.create_study(name, "maximize", {}, [])
    return StudyRow(id=1, name=name, optuna_study_id=optuna_id, epochs=3, spec=spec)


def _draw(bridges: list[OptunaAdapter], row: StudyRow, n: int) -> list[dict[str, object]]:
    """``n`` trials asked in turn of ``bridges`` (API processes), each told a value."""
    drawn = []
    for i in range(n):
        bridge = bridges[i % len(bridges)]
        bridge.refresh(row)  # (the feeder refreshes before it samples)
        trial_id, _number, params = bridge.draw(row, writing=nullcontext)[:3]
        bridge.finish(row, trial_id, "complete", value=float(i % 5) / 5)
        drawn.append(params)
    return drawn


def test_a_seeded_draw_is_the_same_whichever_process_serves_it(database_url: str) -> None:
    bridges = [OptunaAdapter(database_url, busy_timeout_s=10) for _ in range(3)]
    try:
        one = _draw(bridges[:1], _row(bridges[0], "one-process", 11), 14)
        two = _draw(bridges[1:], _row(bridges[1], "two-processes", 11), 14)
        assert one == two  # past TPE's 10 random start-up trials too
        # An unseeded study keeps its sampler (and TPE its search space) between leases.
        unseeded = _row(bridges[0], "unseeded", None)
        _draw(bridges[:1], unseeded, 2)
        space, study_id = SearchSpace.parse({}, {}), unseeded.optuna_study_id or 0
        assert bridges[0]._sampler(unseeded, study_id, space) is bridges[0]._sampler(
            unseeded, study_id, space
        )
    finally:
        for bridge in bridges:
            bridge.close()


@pytest.mark.parametrize("pruner", ["median", "successive_halving", "hyperband"])
def test_the_pruner_decides_from_the_cache_as_optuna_does_on_the_same_history(
    database_url: str, pruner: str
) -> None:
    """Reports read no finished trial from the database, yet each decision is Optuna's own
    on the same history: the trials this process ends enter the cache at once."""
    import random

    from service.storage.optuna_choices import make_pruner

    epochs = 8
    bridge = OptunaAdapter(database_url, busy_timeout_s=10)
    try:
        row = _row(bridge, "same-history", None)
        row.spec["pruner"] = pruner
        row.epochs = epochs
        reference = optuna.create_study(
            study_name="same-history", direction="maximize", pruner=make_pruner(pruner, epochs)
        )
        rng = random.Random(7)
        decisions: list[tuple[bool, bool]] = []
        for _ in range(14):
            trial_id, _number, _params = bridge.draw(row, writing=nullcontext)[:3]
            ref = reference.ask()
            quality = rng.random()
            pruned = False
            for epoch in range(1, epochs + 1):
                value = quality * epoch / epochs + rng.random() * 0.05
                with bridge.rdb.engine.begin() as conn:
                    assert bridge.write_step(conn, trial_id, epoch, value)
                ours = bridge.judge(row, trial_id, epoch, value)
                ref.report(value, epoch)
                theirs = ref.should_prune()
                decisions.append((ours, theirs))
                if theirs:
                    pruned = True
                    break
            # Ended as the service ends them: in a transaction, then into the cache.
            with bridge.rdb.engine.begin() as conn:
                end = bridge.end_trial(
                    conn, trial_id, "pruned" if pruned else "complete", value=value
                )
            assert end is not None
            bridge.ended(row, end)
            if pruned:
                reference.tell(ref, state=TrialState.PRUNED)
            else:
                reference.tell(ref, value)
        assert [ours for ours, _ in decisions] == [theirs for _, theirs in decisions]
        assert any(theirs for _, theirs in decisions)  # the history made it prune
    finally:
        bridge.close()


@pytest.mark.parametrize("state", ["complete", "pruned", "fail"])
def test_a_trial_ended_in_one_transaction_reads_back_as_optunas_tell_ends_it(
    database_url: str, state: str
) -> None:
    """``end_trial`` writes what ``Study.tell`` writes (state, value, a pruned trial's last
    epoch's value, attributes, end time); the cache's copy equals the database's; a
    second end of the same trial writes nothing."""
    bridge = OptunaAdapter(database_url, busy_timeout_s=10)
    try:
        row = _row(bridge, "ended", None)
        ours_id = bridge.draw(row, writing=nullcontext)[0]
        theirs_id = bridge.draw(row, writing=nullcontext)[0]
        steps = {1: 0.25, 3: 0.5, 2: float("nan")} if state == "pruned" else {1: 0.25}
        with bridge.rdb.engine.begin() as conn:
            for trial_id in (ours_id, theirs_id):
                for step, value in steps.items():
                    assert bridge.write_step(conn, trial_id, step, value)
        attrs = {"worker_id": "w", "epochs_run": 3}
        with bridge.rdb.engine.begin() as conn:
            end = bridge.end_trial(conn, ours_id, state, value=0.75, attrs=attrs)
        assert end is not None
        bridge.ended(row, end)
        with bridge.rdb.engine.begin() as conn:  # already ended: nothing more is written
            assert bridge.end_trial(conn, ours_id, "complete", value=0.1) is None

        reader = optuna.storages.RDBStorage(database_url, skip_table_creation=True)
        try:
            study = optuna.load_study(study_name="ended", storage=reader)
            for key, attr in attrs.items():
                reader.set_trial_user_attr(theirs_id, key, attr)
            number = reader.get_trial_number_from_id(theirs_id)
            if state == "complete":
                study.tell(number, 0.75)
            else:
                study.tell(number, state=bridge_states[state])
            ours, theirs = reader.get_trial(ours_id), reader.get_trial(theirs_id)
        finally:
            reader.engine.dispose()
        for field in ("state", "values", "user_attrs", "intermediate_values"):
            a, b = getattr(ours, field), getattr(theirs, field)
            if field == "user_attrs":  # (the two draws' fixed values differ)
                a, b = ({k: v for k, v in x.items() if k != "fixed_params"} for x in (a, b))
            assert repr(a) == repr(b), field  # (repr: nan == nan)
        assert ours.datetime_complete is not None
        if state == "pruned":
            assert ours.value == 0.5  # the last epoch's value (by step), as Optuna keeps it
        cached = bridge.storage.get_trial(ours_id)
        for field in ("state", "values", "user_attrs", "datetime_complete", "number"):
            assert repr(getattr(cached, field)) == repr(getattr(ours, field)), field
    finally:
        bridge.close()


bridge_states = {"pruned": TrialState.PRUNED, "fail": TrialState.FAIL}


def test_a_trial_written_in_one_go_reads_back_as_optunas_own_template_writes_it(
    database_url: str,
) -> None:
    bridge = OptunaAdapter(database_url, busy_timeout_s=10)
    try:
        row = _row(bridge, "one-go", None)
        study_id = row.optuna_study_id or 0
        trial_id, number, params = bridge.draw(row, writing=nullcontext)[:3]
        ours = optuna.storages.RDBStorage(database_url, skip_table_creation=True)
        try:
            frozen = ours.get_trial(trial_id)
            # The same template through Optuna's own (slower) path.
            theirs_id = ours._create_new_trial(study_id, frozen)._trial_id
            theirs = ours.get_trial(theirs_id)
        finally:
            ours.engine.dispose()
        assert frozen.state == TrialState.RUNNING and frozen.number == number == 0
        assert theirs.number == 1
        for field in ("params", "distributions", "user_attrs", "system_attrs", "state"):
            assert getattr(frozen, field) == getattr(theirs, field), field
        assert {**frozen.user_attrs["fixed_params"], **frozen.params} == params
        assert frozen.datetime_start is not None
    finally:
        bridge.close()


class _CountingStorage(optuna.storages.RDBStorage):
    """Optuna's own storage on the test's database, counting its reads of whole trials."""

    reads: list[int]

    def _get_trials(self, *args: Any, **kwargs: Any) -> list[optuna.trial.FrozenTrial]:
        found = super()._get_trials(*args, **kwargs)
        self.reads.append(len(found))
        return found


def test_a_cold_cache_reads_a_big_study_once_however_many_requests_ask_at_once(
    database_url: str,
) -> None:
    """An API process that starts on a big study, with workers' reports arriving before
    its first read of the study is done, reads it once: the others wait for that read
    (each reading it for itself took a 5,000-trial benchmark's reports to minutes)."""
    from service.storage.optuna_cache import ServiceCache

    writer = optuna.create_study(study_name="cold", storage=database_url, direction="maximize")
    distribution = optuna.distributions.FloatDistribution(0.0, 1.0)
    writer.add_trials(
        [
            optuna.trial.create_trial(
                params={"x": i / 300}, distributions={"x": distribution}, value=i / 300
            )
            for i in range(300)
        ]
    )
    backend = _CountingStorage(database_url, skip_table_creation=True)
    backend.reads = []
    cache = ServiceCache(backend)
    try:
        study_id = cache.get_study_id_from_name("cold")
        start = threading.Barrier(8)
        seen: list[int] = []

        def ask() -> None:
            start.wait()
            seen.append(len(cache.get_all_trials(study_id, deepcopy=False)))

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert seen == [300] * 8
        assert backend.reads == [300]  # one read of the whole study, by one thread
    finally:
        backend.engine.dispose()


def test_a_refresh_that_read_a_trial_running_never_brings_it_back_after_it_ended(
    database_url: str,
) -> None:
    # The race a CI run once hit: the feeder's refresh reads a trial while it runs, the
    # trial's ``complete`` ends it (cached finished at once), then the refresh stores what
    # it read. The pruner then counted one completed trial fewer, and did not prune.
    bridge = OptunaAdapter(database_url, busy_timeout_s=10)
    try:
        bridge.create_study("cache", "maximize", {}, [])
        study_id = bridge.storage.get_study_id_from_name("cache")
        study = optuna.load_study(study_name="cache", storage=bridge.storage)
        trial = study.ask()
        bridge.storage.refresh(study_id)
        read_while_running = bridge.storage._backend.get_trial(trial._trial_id)
        study.tell(trial, 0.9)
        bridge.storage.read_trial(study_id, trial._trial_id)  # as the service's end does
        assert [t.state for t in _trials(bridge)] == [TrialState.COMPLETE]
        with bridge.storage._lock:  # the refresh, storing what it read before the end
            bridge.storage._add_trials_to_cache(study_id, [read_while_running])
        assert [t.state for t in _trials(bridge)] == [TrialState.COMPLETE]
        bridge.storage.refresh(study_id)
        assert [(t.state, t.value) for t in _trials(bridge)] == [(TrialState.COMPLETE, 0.9)]
    finally:
        bridge.close()
