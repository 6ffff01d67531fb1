"""The ``hpo`` command: migrate, api, worker, up."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable

from service import logs
from service.config import get_settings


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


def cmd_migrate(args: argparse.Namespace) -> int:
    from service.storage.migrate import migrate

    settings = get_settings()
    url = args.database_url or settings.database_url
    _wait_for_database(
        lambda: migrate(url, busy_timeout_s=settings.sqlite_busy_timeout_s), settings.db_wait_s
    )
    print(f"database at {url} is migrated")
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn
    from sqlalchemy.exc import OperationalError

    from service.api.app import create_app
    from service.api.auth import token_problems
    from service.errors import NotMigrated
    from service.storage.engine import is_sqlite
    from service.storage.runtime import Runtime

    settings = get_settings()
    problems = token_problems(settings)
    if problems:
        print(
            f"hpo api: {'; '.join(problems)}. Every route but /healthz needs a token: set "
            "both (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), "
            "or run `hpo up`, which generates them.",
            file=sys.stderr,
        )
        return 2
    if args.processes > 1 and is_sqlite(settings.database_url):
        print(
            "hpo api: --processes > 1 needs PostgreSQL: SQLite allows one writer, and "
            "with SQLite the API must be that one process",
            file=sys.stderr,
        )
        return 2
    try:  # refuse before uvicorn starts, with the fix in the message
        _wait_for_database(lambda: Runtime.open(settings).close(), settings.db_wait_s)
    except NotMigrated as exc:
        print(f"hpo api: {exc}", file=sys.stderr)
        return 2
    except OperationalError as exc:
        print(
            f"hpo api: the database did not answer within {settings.db_wait_s:g}s: {exc.orig}",
            file=sys.stderr,
        )
        return 1
    # In JSON mode uvicorn's loggers go through ours, so every line is one JSON object.
    uvicorn_log_config = None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG
    if args.processes > 1:
        # Each process builds its own app (engine, Optuna storage, reaper) from HPO_*.
        uvicorn.run(
            "service.api.app:create_app",
            factory=True,
            workers=args.processes,
            host=args.host,
            port=args.port,
            log_level=settings.log_level.lower(),
            log_config=uvicorn_log_config,
        )
    else:
        uvicorn.run(
            create_app(settings),
            host=args.host,
            port=args.port,
            log_level=settings.log_level.lower(),
            log_config=uvicorn_log_config,
        )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.config import WorkerSettings
    from workers.loop import Worker

    settings = WorkerSettings()
    if args.api_url:
        settings = settings.model_copy(update={"api_url": args.api_url})
    if args.tf_threads is not None:
        settings = settings.model_copy(update={"tf_threads": args.tf_threads})
    try:
        worker = Worker(settings)
    except ValueError as exc:
        print(f"hpo worker: {exc}", file=sys.stderr)
        return 2
    worker.install_signal_handlers()
    worker.run(max_trials=args.max_trials, exit_when_idle=args.exit_when_idle)
    return worker.exit_code


def cmd_up(args: argparse.Namespace) -> int:
    from service.cli.up import up

    return up(args)


def _client_command(args: argparse.Namespace) -> int:
    from service.cli import client_commands as cli_client

    settings = get_settings()
    url = args.api_url or settings.api_url
    token = settings.api_token.get_secret_value() if settings.api_token else None
    try:
        with cli_client.Service(url, token) as svc:
            if args.command == "submit":
                out = cli_client.submit(svc, args.file, wait=args.wait)
            elif args.command == "status":
                out = cli_client.status(svc, args.name)
            elif args.command == "trials":
                out = cli_client.trials(svc, args.name)
            elif args.command == "best":
                out = cli_client.best(svc, args.name)
            else:
                out = cli_client.stop(svc, args.name)
    except cli_client.CliError as exc:
        print(f"hpo {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if out:
        print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help="create or upgrade the database schema")
    p.add_argument("--database-url", help="default: HPO_DATABASE_URL")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("api", help="serve the HTTP API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="uvicorn worker processes (more than 1 needs PostgreSQL)",
    )
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help="lease and train trials until stopped")
    p.add_argument("--api-url", help="default: HPO_API_URL")
    p.add_argument("--tf-threads", type=int, help="default: HPO_TF_THREADS (0: TF decides)")
    p.add_argument("--max-trials", type=int, help="exit after this many trials")
    p.add_argument(
        "--exit-when-idle",
        action="store_true",
        help="exit when the service has no work instead of polling",
    )
    p.set_defaults(func=cmd_worker)

    for name, text in (
        ("submit", "submit a study spec (YAML or JSON)"),
        ("status", "studies, or one study, as a table"),
        ("trials", "a study's trials as a table"),
        ("best", "a study's best trial and model"),
        ("stop", "stop a study"),
    ):
        p = sub.add_parser(name, help=text)
        if name == "submit":
            p.add_argument("file", help="the study spec, .yaml/.yml or .json")
            p.add_argument(
                "--wait",
                action="store_true",
                help="show progress until the study ends, then its best trial",
            )
        else:
            p.add_argument("name", nargs="?" if name == "status" else None, help="the study's name")
        p.add_argument("--api-url", help="default: HPO_API_URL")
        p.set_defaults(func=_client_command)

    p = sub.add_parser("up", help="the embedded default: migrate, API, local workers, demo")
    p.add_argument(
        "--host", default="127.0.0.1", help="the API's address (the dashboard stays on 127.0.0.1)"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=2, help="local worker processes")
    p.add_argument("--trials", type=int, default=20, help="trials of the demo study")
    p.add_argument("--epochs", type=int, default=20, help="epochs of each demo trial")
    p.add_argument("--no-demo", action="store_true", help="start without the demo study")
    p.add_argument("--dashboard-port", type=int, default=8080, help="port of the Optuna dashboard")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the dashboard")
    p.add_argument(
        "--exit-when-done", action="store_true", help="stop everything once the demo study finishes"
    )
    p.set_defaults(func=cmd_up)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    logs.setup(settings.log_level, settings.log_format)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
