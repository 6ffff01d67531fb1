"""The server commands: migrate, api, worker, up. Each imports what it starts only when it
runs, so ``hpo status`` never loads FastAPI, SQLAlchemy or TensorFlow."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Annotated

import typer

from service.cli import render
from service.config import get_settings

Host = Annotated[str, typer.Option(help="The address to listen on.")]
Port = Annotated[int, typer.Option(help="The port to listen on.")]


def _wait_for_database(connect: Callable[[], None], wait_s: float) -> None:
    """Call ``connect`` until the database answers (a database that is still starting is
    waited for, not a reason to exit and be restarted in a loop)."""
    from sqlalchemy.exc import OperationalError

    deadline = time.monotonic() + wait_s
    delay = 0.5
    while True:
        try:
            connect()
            return
        except OperationalError as exc:
            if time.monotonic() + delay > deadline:
                raise
            logging.getLogger("hpo").warning(
                "database not reachable (%s); retrying in %.1fs", exc.orig, delay
            )
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def migrate(
    database_url: Annotated[
        str | None, typer.Option(help="Default: HPO_DATABASE_URL.", show_default=False)
    ] = None,
) -> None:
    """Create or upgrade the database schema."""
    from service.storage.migrate import migrate as run_migrations

    settings = get_settings()
    url = database_url or settings.database_url
    _wait_for_database(
        lambda: run_migrations(url, busy_timeout_s=settings.sqlite_busy_timeout_s),
        settings.db_wait_s,
    )
    print(f"database at {url} is migrated")


def api(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    processes: Annotated[
        int, typer.Option(help="uvicorn worker processes (more than 1 needs PostgreSQL).")
    ] = 1,
) -> None:
    """Serve the HTTP API."""
    import uvicorn
    from sqlalchemy.exc import OperationalError

    from service.api.app import create_app
    from service.api.auth import token_problems
    from service.api.connections import GuardedHttpProtocol
    from service.errors import NotMigrated
    from service.storage.engine import is_sqlite
    from service.storage.runtime import Runtime

    settings = get_settings()
    problems = token_problems(settings)
    if problems:
        render.error(
            "api",
            f"{'; '.join(problems)}. Every route but /healthz needs a token: set "
            "both (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), "
            "or run `hpo up`, which generates them.",
        )
        raise typer.Exit(2)
    if processes > 1 and is_sqlite(settings.database_url):
        render.error(
            "api",
            "--processes > 1 needs PostgreSQL: SQLite allows one writer, and "
            "with SQLite the API must be that one process",
        )
        raise typer.Exit(2)
    try:  # refuse before uvicorn starts, with the fix in the message
        _wait_for_database(lambda: Runtime.open(settings).close(), settings.db_wait_s)
    except NotMigrated as exc:
        render.error("api", exc)
        raise typer.Exit(2) from None
    except OperationalError as exc:
        render.error(
            "api", f"the database did not answer within {settings.db_wait_s:g}s: {exc.orig}"
        )
        raise typer.Exit(1) from None
    # In JSON mode uvicorn's loggers go through ours, so every line is one JSON object.
    log_config = None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG
    level = settings.log_level.lower()
    # uvicorn's protocol with header and drain deadlines (HPO_HEADER_TIMEOUT_S, ...); a class,
    # so each process of --processes N imports it and reads the settings itself.
    http = GuardedHttpProtocol
    if processes > 1:
        # Each process builds its own app (engine, Optuna storage, reaper) from HPO_*.
        uvicorn.run(
            "service.api.app:create_app",
            factory=True,
            workers=processes,
            host=host,
            port=port,
            log_level=level,
            log_config=log_config,
            http=http,
        )
    else:
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            log_level=level,
            log_config=log_config,
            http=http,
        )


def worker(
    api_url: Annotated[
        str | None, typer.Option(help="The service. Default: HPO_API_URL.", show_default=False)
    ] = None,
    tf_threads: Annotated[
        int | None,
        typer.Option(help="Default: HPO_TF_THREADS (0: TensorFlow decides).", show_default=False),
    ] = None,
    max_trials: Annotated[
        int | None, typer.Option(help="Exit after this many trials.", show_default=False)
    ] = None,
    exit_when_idle: Annotated[
        bool,
        typer.Option(
            "--exit-when-idle", help="Exit when the service has no work instead of polling."
        ),
    ] = False,
) -> None:
    """Lease and train trials until stopped."""
    from workers.config import WorkerSettings
    from workers.loop import Worker

    settings = WorkerSettings()
    if api_url:
        settings = settings.model_copy(update={"api_url": api_url})
    if tf_threads is not None:
        settings = settings.model_copy(update={"tf_threads": tf_threads})
    try:
        w = Worker(settings)
    except ValueError as exc:
        render.error("worker", exc)
        raise typer.Exit(2) from None
    w.install_signal_handlers()
    w.run(max_trials=max_trials, exit_when_idle=exit_when_idle)
    raise typer.Exit(w.exit_code)


def up(
    host: Annotated[
        str, typer.Option(help="The API's address (the dashboard stays on 127.0.0.1).")
    ] = "127.0.0.1",
    port: Port = 8000,
    workers: Annotated[int, typer.Option(help="Local worker processes.")] = 2,
    trials: Annotated[int, typer.Option(help="Trials of the demo study.")] = 20,
    epochs: Annotated[int, typer.Option(help="Epochs of each demo trial.")] = 20,
    no_demo: Annotated[
        bool, typer.Option("--no-demo", help="Start without the demo study.")
    ] = False,
    dashboard_port: Annotated[int, typer.Option(help="Port of the Optuna dashboard.")] = 8080,
    no_dashboard: Annotated[
        bool, typer.Option("--no-dashboard", help="Do not start the dashboard.")
    ] = False,
    exit_when_done: Annotated[
        bool, typer.Option("--exit-when-done", help="Stop everything once the demo study finishes.")
    ] = False,
) -> None:
    """The embedded default: migrate, the API, local workers, the dashboard, a demo study."""
    from service.cli.up import UpOptions, run

    code = run(
        UpOptions(
            host=host,
            port=port,
            workers=workers,
            trials=trials,
            epochs=epochs,
            demo=not no_demo,
            dashboard_port=dashboard_port,
            dashboard=not no_dashboard,
            exit_when_done=exit_when_done,
        )
    )
    raise typer.Exit(code)


COMMANDS = (migrate, api, worker, up)
