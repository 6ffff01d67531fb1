"""The users' commands: submit, status, trials, report, best, stop, datasets, upload, model. A thin
layer over :class:`service.client.Client` (``HPO_API_URL`` or ``--api-url``, and the user
token ``HPO_API_TOKEN``); what they print comes from :mod:`service.cli.render`.

Any failure is one line on stderr, ``hpo <command>: <message>``, and exit code 1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from service.cli import render
from service.client import Client, ServiceError
from service.states import StudyStatus

ApiUrl = Annotated[str | None, typer.Option("--api-url", help="The service. Default: HPO_API_URL.")]
AsJson = Annotated[
    bool, typer.Option("--json", help="Print the API's JSON instead (for jq and scripts).")
]
StudyName = Annotated[str, typer.Argument(help="The study's name.", show_default=False)]


class Task(StrEnum):
    classification = "classification"
    regression = "regression"


class CliError(Exception):
    """A problem found before the service is asked (a spec file that cannot be read)."""


@contextmanager
def _session(command: str, api_url: str | None) -> Iterator[Client]:
    """A client; any error inside becomes one line on stderr and exit code 1."""
    try:
        with Client(api_url) as client:
            yield client
    except (ServiceError, CliError) as exc:
        render.error(command, exc)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _read_spec(path: str) -> dict[str, Any]:
    kind = "JSON" if path.endswith(".json") else "YAML"
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        spec = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise CliError(f"{path} is not valid {kind}: {exc}") from exc
    if not isinstance(spec, dict):
        raise CliError(f"{path} must hold one study spec (an object), not {type(spec).__name__}")
    return spec


def submit(
    file: Annotated[str, typer.Argument(help="The study spec, .yaml/.yml or .json.")],
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Show progress until the study ends, then its best trial."),
    ] = False,
    api_url: ApiUrl = None,
) -> None:
    """Submit a study spec (YAML or JSON)."""
    out = render.console()
    with _session("submit", api_url) as client:
        spec = _read_spec(file)
        study = client.submit(spec)
        for warning in study.warnings:
            render.console(stderr=True).print(f"warning: {warning}", markup=False)
        out.print(
            f"submitted study {study.name} (id {study.id}): {study.n_trials} trials "
            f"x {study.epochs} epochs on {study.dataset}",
            markup=False,
        )
        if not wait:
            return
        with render.Follow(out) as follow:
            study = client.wait(study, on_progress=follow)
        if study.status == StudyStatus.FAILED:
            raise CliError(f"study {study.name} failed: {study.reason}")
        out.print(render.best_text(study, client.url), markup=False)


def status(
    name: Annotated[
        str | None, typer.Argument(help="One study's name (default: every study).")
    ] = None,
    as_json: AsJson = False,
    api_url: ApiUrl = None,
) -> None:
    """Studies, or one study, as a table."""
    out = render.console()
    with _session("status", api_url) as client:
        studies = [client.get(name)] if name else client.list()
    if as_json:
        render.print_json(out, studies[0] if name else studies)
        return
    render.table(out, *render.study_rows(studies))
    if name and studies[0].reason:
        out.print(f"reason: {studies[0].reason}", markup=False)


def trials(name: StudyName, as_json: AsJson = False, api_url: ApiUrl = None) -> None:
    """A study's trials as a table.

    State, value, epochs, time, every parameter that is searched or varies between the
    trials, and the reason of a failure."""
    out = render.console()
    with _session("trials", api_url) as client:
        study = client.get(name)
        found = client.trials(study)
    if as_json:
        render.print_json(out, found)
        return
    params = render.varying_params(found, study.search_space)
    render.table(out, *render.trial_rows(found, params))


def best(name: StudyName, as_json: AsJson = False, api_url: ApiUrl = None) -> None:
    """A study's best trial and its retrained model's test score.

    With --json: the study's "best" object (null if no trial has completed); `hpo status
    NAME --json` has the rest."""
    out = render.console()
    with _session("best", api_url) as client:
        study = client.get(name)
    if as_json:
        render.print_json(out, study.best)
        return
    out.print(render.best_text(study, client.url), markup=False)


def report(
    name: StudyName,
    as_json: AsJson = False,
    spec_out: Annotated[
        Path | None, typer.Option("--spec-out", help="Write the suggested next spec there (JSON).")
    ] = None,
    save: Annotated[
        bool, typer.Option("--save", help="Also save it as the study's dashboard note.")
    ] = False,
    api_url: ApiUrl = None,
) -> None:
    """Why a study's bad trials were bad, and what to change.

    Parameter importances, the findings counted per parameter value, advice traced to the
    tuning notes, and a suggested next spec (`hpo submit` takes it; see --spec-out)."""
    out = render.console()
    with _session("report", api_url) as client:
        found = client.report(name, save=save)
    if spec_out is not None:
        spec_out.write_text(json.dumps(found.suggested_spec, indent=2) + "\n")
    if as_json:
        render.print_json(out, found)
        return
    out.print(render.report_text(found), markup=False)


def stop(name: StudyName, api_url: ApiUrl = None) -> None:
    """Stop a study: no more trials; running ones stop at their next report."""
    with _session("stop", api_url) as client:
        study = client.stop(name)
    render.console().print(f"study {study.name} is {study.status}", markup=False)


def datasets(as_json: AsJson = False, api_url: ApiUrl = None) -> None:
    """The built-in data sets and the uploads."""
    out = render.console()
    with _session("datasets", api_url) as client:
        found = client.datasets()
    if as_json:
        render.print_json(out, found)
        return
    header = ["name", "task", "rows", "features", "classes", "source", "description"]
    rows = [
        [d.name, d.task, d.n_rows, d.n_features, d.n_classes, d.source, d.description]
        for d in found
    ]
    render.table(out, header, rows)


def upload(
    name: Annotated[str, typer.Argument(help="The data set's name, as studies will use it.")],
    file: Annotated[str, typer.Argument(help="A CSV with a header row, or an NPZ (x, y).")],
    label_column: Annotated[
        str | None, typer.Option("--label-column", help="CSV: the column holding the labels.")
    ] = None,
    task: Annotated[
        Task | None,
        typer.Option(help="Default: integer or text labels classify, fractional ones regress."),
    ] = None,
    api_url: ApiUrl = None,
) -> None:
    """Upload a data set (CSV or NPZ)."""
    with _session("upload", api_url) as client:
        d = client.upload_dataset(
            name, file, label_column=label_column, task=None if task is None else task.value
        )
    classes = f" ({d.n_classes} classes)" if d.n_classes else ""
    render.console().print(
        f"uploaded data set {d.name}: {d.n_rows} rows, {d.n_features} features, {d.task}{classes}",
        markup=False,
    )


def model(
    name: StudyName,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to save it: a file, or a directory (default: here, as NAME-best.keras).",
        ),
    ] = None,
    api_url: ApiUrl = None,
) -> None:
    """Download a study's retrained best model (.keras, optimizer included)."""
    with _session("model", api_url) as client:
        try:
            saved = client.download_model(name, output or Path.cwd())
        except OSError as exc:
            raise CliError(f"cannot save the model: {exc}") from exc
    size = saved.stat().st_size
    render.console().print(
        f"saved the best model of {name} to {saved} ({size:,} bytes)", markup=False
    )


COMMANDS = (submit, status, trials, report, best, stop, datasets, upload, model)
