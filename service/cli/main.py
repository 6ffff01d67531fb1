"""The ``hpo`` command (Typer): the server commands (migrate, api, worker, up) and the
users' commands (submit, status, trials, best, stop, datasets, upload, model)."""

from __future__ import annotations

import sys

import typer

from service import logs
from service.cli import server, user
from service.config import get_settings

app = typer.Typer(
    name="hpo",
    help="A hyperparameter search service for Keras models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold tokens
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _setup() -> None:
    settings = get_settings()
    logs.setup(settings.log_level, settings.log_format)


for _command in (*server.COMMANDS, *user.COMMANDS):
    app.command(_command.__name__)(_command)


def main(argv: list[str] | None = None) -> int:
    """Run ``hpo`` with ``argv`` (default: the process's arguments); returns the exit code
    (1 for a failed command, 2 for a usage error, 130 after Ctrl-C)."""
    try:
        app(args=argv, prog_name="hpo")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
