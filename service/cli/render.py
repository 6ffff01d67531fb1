"""What the CLI shows: the progress of a study, its best trial, and tables, through Rich.

On a terminal: colours, a live progress bar, Rich tables. Anywhere else (a pipe,
a file, a CI log): plain text, no colours, no redraw, lines never wrapped, and progress as
one line each time the number of finished trials changes. ``hpo submit --wait`` and
``hpo up`` both follow a study with :class:`Follow` and end with :func:`best_text`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from pydantic import BaseModel
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from service.api.schemas import ReportOut, StudyOut, TrialOut
from service.states import FinalState, SanityState, StudyStatus

STATUS_STYLE = {
    "completed": "green",
    "complete": "green",
    "running": "yellow",
    "queued": "cyan",
    "pruned": "magenta",
    "stopped": "magenta",
    "failed": "red",
    "fail": "red",
    "lost": "red",
}


def console(stderr: bool = False) -> Console:
    """Rich's console on stdout (or stderr): live and coloured on a terminal; otherwise
    plain, and wide enough that no line is ever wrapped."""
    found = Console(stderr=stderr, highlight=False)
    if found.is_terminal:
        return found
    return Console(stderr=stderr, highlight=False, no_color=True, width=100_000, soft_wrap=True)


def error(command: str, message: object) -> None:
    """``hpo <command>: <message>`` as one line on stderr."""
    text = " ".join(str(message).split())
    line = Text(f"hpo {command}: ", style="bold red")
    line.append(text)
    console(stderr=True).print(line, soft_wrap=True)


def print_json(out: Console, value: BaseModel | Sequence[BaseModel] | None) -> None:
    """The API's JSON, indented (no colours, so ``jq`` reads it)."""
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    elif value is None:
        data = None
    else:
        data = [v.model_dump(mode="json") for v in value]
    out.file.write(json.dumps(data, indent=2) + "\n")
    out.file.flush()


def fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def done(study: StudyOut) -> int:
    """Trials with a result: they count toward ``n_trials``."""
    return study.trials.complete + study.trials.pruned + study.trials.fail


def _best_value(study: StudyOut) -> str:
    return f"best {study.metric} {study.best.value:.4f}" if study.best else "no result yet"


def _stage(study: StudyOut) -> str:
    final = study.final_model.state
    if study.status == StudyStatus.COMPLETED and final in (FinalState.PENDING, FinalState.RUNNING):
        return "retraining the best model"
    if study.status == StudyStatus.QUEUED and study.sanity_check in (
        SanityState.PENDING,
        SanityState.RUNNING,
    ):
        return "sanity run"
    return ""


def progress_text(study: StudyOut, elapsed: float) -> str:
    """``demo: 5/20 trials done (complete 4, pruned 1, failed 0, running 2), best val_accuracy
    0.9700, elapsed 0:35, eta 1:45``, then the stage (the sanity run, the retraining)."""
    t, n, total = study.trials, done(study), study.n_trials
    eta = "-" if n == 0 else clock(elapsed / n * max(total - n, 0))
    stage = _stage(study)
    return (
        f"{study.name}: {n}/{total} trials done (complete {t.complete}, pruned {t.pruned}, "
        f"failed {t.fail}, running {t.running}), {_best_value(study)}, "
        f"elapsed {clock(elapsed)}, eta {eta}" + (f"; {stage}" if stage else "")
    )


class Follow:
    """The ``on_progress`` of :meth:`service.client.Client.wait`: a live Rich progress bar
    on a terminal, otherwise a line whenever the number of finished trials (or the stage)
    changes. Use it as a context manager around the wait."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self.started = time.monotonic()
        self._last: tuple[Any, ...] | None = None
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        if out.is_terminal:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=30),
                MofNCompleteColumn(),
                TextColumn("trials  {task.fields[best]}  {task.fields[counts]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=out,
            )

    def __enter__(self) -> Follow:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, study: StudyOut) -> None:
        if self._bar is None:
            key = (done(study), study.status, study.final_model.state, _stage(study))
            if key != self._last:
                self._last = key
                self.out.print(progress_text(study, time.monotonic() - self.started), markup=False)
            return
        t = study.trials
        stage = _stage(study)
        best = _best_value(study)
        counts = f"(running {t.running}, pruned {t.pruned}, failed {t.fail})" + (
            f"  {stage}" if stage else ""
        )
        if self._task is None:
            self._task = self._bar.add_task(
                study.name, total=study.n_trials, best=best, counts=counts
            )
        self._bar.update(self._task, completed=done(study), best=best, counts=counts)


def best_text(study: StudyOut, url: str | None = None) -> str:
    """The best trial, its parameters, and the retrained model: the end of
    ``hpo submit --wait``, ``hpo best`` and ``hpo up``."""
    best = study.best
    if best is None:
        return f"study {study.name} is {study.status} with no completed trial"
    # (re-evaluated: the mean of the configuration's trials, first one's number)
    mean = f" (the mean of {best.evaluations} evaluations)" if best.evaluations > 1 else ""
    lines = [f"best trial #{best.number} of {study.name}: {study.metric} = {best.value:.4f}{mean}"]
    lines += [f"  {k} = {v}" for k, v in best.params.items()]
    final = study.final_model
    if final.state == FinalState.READY and final.test_value is not None:
        where = f"{url.rstrip('/') if url else ''}/studies/{study.id}/model"
        lines.append(
            f"retrained on train + validation: {final.test_metric} = {final.test_value:.4f}; "
            f"download it with `hpo model {study.name}` (GET {where})"
        )
    elif final.state == FinalState.FAILED:
        lines.append(f"the best model could not be retrained: {final.reason or 'no reason given'}")
    elif final.state != FinalState.NONE:
        lines.append(f"best model: {final.state}")
    return "\n".join(lines)


def table(out: Console, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A table: Rich's on a terminal; elsewhere plain columns, a header line then a line a
    row, never wrapped, blank cells as ``-`` (so ``awk`` can split them). A column named
    ``status`` or ``state`` is coloured on a terminal."""
    tty = out.is_terminal
    t = Table(
        box=box.SIMPLE_HEAD if tty else None,
        show_edge=False,
        pad_edge=False,
        header_style="bold" if tty else "",
    )
    for name in header:
        t.add_column(name, no_wrap=not tty or name not in ("reason", "description"))
    coloured = {i for i, name in enumerate(header) if name in ("status", "state")}
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            text = " ".join(fmt(value).split()) or "-"
            cells.append(Text(text, style=STATUS_STYLE.get(text, "") if i in coloured else ""))
        t.add_row(*cells)
    if tty:
        out.print(t)
        return
    with out.capture() as captured:
        out.print(t)
    lines = [line.rstrip() for line in captured.get().splitlines()]
    out.file.write("\n".join(line for line in lines if line) + "\n")
    out.file.flush()


def varying_params(trials: Sequence[TrialOut], searched: Iterable[str] = ()) -> list[str]:
    """The parameters worth a column: the searched ones and any other that differs between
    trials (or is missing from some: ``lr_decay_rate`` exists only with an exponential
    schedule). In the order the trials hold them."""
    keys: dict[str, None] = {}
    for trial in trials:
        keys.update(dict.fromkeys(trial.params))
    searched = set(searched)
    missing = object()
    out = []
    for key in keys:
        values = {repr(t.params.get(key, missing)) for t in trials}
        if key in searched or len(values) > 1:
            out.append(key)
    return out


def _repeats(trial: TrialOut) -> str | None:
    return None if trial.reevaluates is None else f"#{trial.reevaluates}/fold{trial.fold}"


def trial_rows(
    trials: Sequence[TrialOut], params: Sequence[str]
) -> tuple[list[str], list[list[object]]]:
    """The header and rows of ``hpo trials``; a column ``repeats`` once the study has
    re-evaluated its best (the trial each re-evaluation repeats, and its fold)."""
    again = any(t.reevaluates is not None for t in trials)
    header = ["#", "state", "value", "epochs", "time", *(["repeats"] if again else [])]
    header += [*params, "findings", "reason"]
    rows = [
        [
            t.number,
            t.state,
            t.value,
            t.epochs_run,
            None if t.duration_s is None else f"{t.duration_s:.1f}s",
            *([_repeats(t)] if again else []),
            *(t.params.get(p) for p in params),
            ",".join(f.code for f in t.findings) or None,
            t.reason,
        ]
        for t in trials
    ]
    return header, rows


def report_text(report: ReportOut) -> str:
    """``hpo report``: importances, findings, advice and the suggested spec, as text."""
    lines = [f"{report.study}: {report.trials} trials with a result"]
    if report.best is not None:
        lines.append(f"best: trial {report.best['number']}, {report.best['value']:.4g}")
    lines.append("")
    lines.append("importance (fANOVA):")
    items = sorted(report.importances.items(), key=lambda kv: -kv[1])
    lines += [f"  {k:<20} {v:5.2f} {'#' * round(40 * v)}" for k, v in items] or [
        "  (too few trials)"
    ]
    lines.append("")
    lines.append("findings:")
    lines += [
        f"  {k}: {v} trial{'s' if v != 1 else ''}" for k, v in report.findings.by_code.items()
    ] or ["  none"]
    telling = [r for r in report.findings.by_value if r.count > 1][:10]
    lines += [f"  {r.text}" for r in telling]
    lines.append("")
    lines.append("advice:")
    lines += [f"  - {a.action}: {a.evidence}. {a.why}" for a in report.advice] or ["  none"]
    lines.append("")
    lines.append(
        "suggested next spec (hpo report NAME --spec-out next.json; hpo submit next.json):"
    )
    lines.append(json.dumps(report.suggested_spec, indent=2))
    return "\n".join(lines)


def study_rows(studies: Sequence[StudyOut]) -> tuple[list[str], list[list[object]]]:
    """The header and rows of ``hpo status``."""
    header = ["id", "name", "status", "trials", "dataset", "metric", "best", "test"]
    rows: list[list[object]] = [
        [
            s.id,
            s.name,
            s.status,
            f"{done(s)}/{s.n_trials}",
            s.dataset,
            s.metric,
            s.best.value if s.best else None,
            s.final_model.test_value,
        ]
        for s in studies
    ]
    return header, rows
