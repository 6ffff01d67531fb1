"""Migrations are the only source of the schema, and the API refuses an unmigrated database."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import optuna
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from service.storage.engine import VERSION_TABLE, make_engine, schema_revisions
from service.storage.migrate import migrate
from service.storage.tables import Base
from tests.service.conftest import BACKENDS
from tests.support import Postgres, child_env, hpo


def test_migrate_creates_service_and_optuna_tables_and_is_repeatable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    migrate(url)
    migrate(url)  # a second run changes nothing and does not fail
    engine = make_engine(url)
    tables = set(inspect(engine).get_table_names())
    assert {"hpo_studies", "hpo_leases", VERSION_TABLE} <= tables
    assert {"studies", "trials", "trial_values", "alembic_version"} <= tables  # Optuna's
    current, head = schema_revisions(engine)
    assert current == head
    # Optuna's storage accepts the schema as it is.
    optuna.create_study(study_name="x", storage=url)
    engine.dispose()


def test_orm_models_match_the_migrations(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    migrate(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        diff = [
            d
            for d in compare_metadata(context, Base.metadata)
            if not str(d).count("'studies'") and "hpo_" in str(d)
        ]
    engine.dispose()
    assert diff == []


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    migrate(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    engine.dispose()


def _hpo(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """``hpo ARGS`` in a child process with these HPO_* settings, its output captured."""
    return subprocess.run(
        hpo(*args), env=child_env(**settings), capture_output=True, text=True, timeout=120
    )


def test_api_refuses_an_unmigrated_database_quietly_and_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    done = _hpo("api", "--port", "1", database_url=f"sqlite:///{path}")
    assert done.returncode == 2
    assert "not migrated" in done.stderr and "hpo migrate" in done.stderr
    assert not path.exists(), "a refused start must not leave an empty database behind"
    assert "alembic" not in done.stderr and "INFO" not in done.stderr


def test_api_refuses_a_database_file_without_the_service_tables(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    sqlite3.connect(path).close()  # an existing file, of something else
    done = _hpo("api", "--port", "1", database_url=f"sqlite:///{path}")
    assert done.returncode == 2
    assert "no service tables" in done.stderr and "hpo migrate" in done.stderr
    assert "alembic" not in done.stderr, done.stderr


def test_upgrading_from_0001_keeps_old_studies_leasable(tmp_path: Path) -> None:
    """A study recorded under revision 0001 (no dataset_info, no sanity or final state) is
    leased after `hpo migrate` like a new one."""
    from alembic import command
    from sqlalchemy import text

    from service.storage.engine import alembic_config
    from tests.support import start_api, stop

    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    command.upgrade(alembic_config(url), "0001")
    optuna.create_study(study_name="old", storage=url, direction="maximize")
    engine = make_engine(url)
    spec = (
        '{"search_space": {"learning_rate": {"low": 0.001, "high": 0.01, "log": true}}, '
        '"fixed": {"optimizer": "adam"}, "model": {"family": "mlp"}, "sampler": "tpe", '
        '"pruner": "median", "seed": null}'
    )
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO hpo_studies (name, optuna_study_id, status, dataset, n_trials, "
                "epochs, metric, direction, spec, slots_used, created_at) VALUES ('old', 1, "
                "'queued', 'digits', 2, 3, 'val_accuracy', 'maximize', :spec, 0, "
                "'2026-11-01 00:00:00')"
            ),
            {"spec": spec},
        )
    engine.dispose()
    server = start_api(tmp_path)  # runs `migrate` to head first
    try:
        with server.client() as client:
            # (as a worker does, ask again on a 204: on a loaded machine the sampler
            # process may still be starting when the first lease has waited its 5 s)
            for _ in range(12):
                r = client.post("/trials/lease", json={"worker": {"id": "w"}})
                if r.status_code != 204:
                    break
            assert r.status_code == 200, r.text
            job = r.json()
            assert job["kind"] == "trial" and job["dataset"]["name"] == "digits"
            assert job["params"]["optimizer"] == "adam"
            study = client.get("/studies/1").json()
            assert study["sanity_check"] == "skipped" and study["final_model"]["state"] == "none"
    finally:
        stop(server.process)


def test_migrations_on_postgresql_are_repeatable_and_match_the_models(postgres: Postgres) -> None:
    url = postgres.new_database()
    migrate(url)
    migrate(url)
    engine = make_engine(url)
    try:
        assert schema_revisions(engine)[0] == schema_revisions(engine)[1]
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            diff = [d for d in compare_metadata(context, Base.metadata) if "hpo_" in str(d)]
        assert diff == []
    finally:
        engine.dispose()


def test_migrate_is_quiet_unless_debugging(tmp_path: Path) -> None:
    """Alembic's INFO lines (the DDL dialect it assumes, each revision) show at DEBUG only."""
    for level, expect_alembic in (("INFO", False), ("DEBUG", True)):
        done = _hpo("migrate", database_url=f"sqlite:///{tmp_path / level}.db", log_level=level)
        assert done.returncode == 0, done.stderr
        assert ("alembic" in done.stderr) is expect_alembic, done.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrading_to_0009_keeps_the_fold_of_reevaluations_in_flight(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Revision 0009 puts ``fold`` and ``reevaluates`` on suggestions and leases; the
    re-evaluations queued or running at the upgrade take theirs from Optuna's user
    attributes (else one would train on the fixed split, and its re-run too)."""
    from alembic import command
    from sqlalchemy import text

    from service.storage.engine import alembic_config

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'hpo.db'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    command.upgrade(alembic_config(url), "0008")
    study = optuna.create_study(study_name="old", storage=url, direction="maximize")
    x = optuna.distributions.FloatDistribution(0.0, 1.0)
    for attrs in ({}, {"reevaluates": 0, "fold": 2}):
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": 0.5}, distributions={"x": x}, value=0.9, user_attrs=attrs
            )
        )
    searched, again = (t._trial_id for t in study.trials)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO hpo_studies (id, name, optuna_study_id, status, dataset, n_trials, "
                "epochs, metric, direction, spec, slots_used, created_at) VALUES (1, 'old', 1, "
                "'running', 'digits', 9, 3, 'val_accuracy', 'maximize', '{}', 2, "
                "'2026-12-01 00:00:00')"
            )
        )
        for trial_id, number in ((searched, 0), (again, 1)):
            conn.execute(
                text(
                    "INSERT INTO hpo_leases (study_id, kind, trial_id, trial_number, worker_id, "
                    "state, params, epochs_run, deadline, created_at) VALUES (1, 'trial', :t, "
                    ":n, 'w', 'active', '{}', 0, '2026-12-01 00:00:00', '2026-12-01 00:00:00')"
                ),
                {"t": trial_id, "n": number},
            )
        conn.execute(
            text(
                "INSERT INTO hpo_suggestions (study_id, trial_id, trial_number, params, "
                "priority, created_at) VALUES (1, :t, 1, '{}', 1, '2026-12-01 00:00:00')"
            ),
            {"t": again},
        )
    command.upgrade(alembic_config(url), "head")
    with engine.connect() as conn:
        leases = conn.execute(
            text("SELECT trial_id, fold, reevaluates FROM hpo_leases ORDER BY trial_id")
        ).all()
        suggested = conn.execute(text("SELECT fold, reevaluates FROM hpo_suggestions")).all()
    engine.dispose()
    assert [tuple(r) for r in leases] == [(searched, 0, None), (again, 2, 0)]
    assert [tuple(r) for r in suggested] == [(2, 0)]
