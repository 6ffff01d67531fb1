"""The trainer: the child process in which a worker's trials, sanity runs and final models
train (``python -m workers.trainer --fd N``, started by :mod:`workers.supervisor`).

TensorFlow is imported here and nowhere in the worker's parent process, so a segfault, an
``os.abort()`` in model code or the kernel's OOM killer ends this process only: the parent
sees the socket close, fails the trial with the reason, and starts a fresh trainer.

The conversation is a ``multiprocessing`` connection over an inherited socket, one
message (a tuple) at a time:

- parent -> trainer: ``("trial", lease, tensorboard_dir)``, ``("sanity", lease)``,
  ``("final", lease)``, ``("answer", action)`` (a prune or stop the service asked for
  while the trial trains), ``("exit",)``.
- trainer -> parent: ``("ready", pid)`` once TensorFlow is loaded; during a trial
  ``("started",)`` when ``fit`` begins and ``("epoch", n, value, metrics)`` after each
  epoch (sent without waiting: training goes on while the parent reports); then one
  ``("outcome", fields)``, ``("sanity", passed, detail)``, ``("final", value, content)``
  or ``("job_error", unavailable, message)``.

Data sets are loaded once per trainer (the parent fetched uploaded ones into the cache):
the fixed split of each, and the last re-evaluation fold asked for.
After a result is sent the trainer frees the model, while the parent hands the result back
and leases the next job.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import logging
import os
import signal
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from search_space.catalog import DatasetInfo
from search_space.families import FamilyUnavailable
from service import logs
from service.logs import log_context
from service.protocol import Lease
from service.states import Action, JobKind
from workers.data import DatasetUnavailable, DataSource, Split
from workers.quiet import tensorflow_import

with tensorflow_import():
    from workers.jobs import sanity_check, train_final
    from workers.keras_memory import free_memory
    from workers.training import Outcome, configure_tensorflow, train_trial

log = logging.getLogger(__name__)

ANSWER_POLL_S = 0.05
"""How often, at most, a training trainer looks for the service's answers (between batches)."""

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel kill this process when its parent dies (a SIGKILLed worker
    must not leave a trainer behind)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call
        os._exit(1)


class _Answers:
    """The service's answers to this trial's epoch reports, as the parent passes them on.
    Reporting never waits: a prune or stop takes effect at the next batch boundary after
    it arrives (the service has already judged the epoch it was asked about)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.action: Action | None = None
        self._next_poll = 0.0

    def report(self, epoch: int, value: float, metrics: dict[str, float]) -> str:
        self.conn.send(("epoch", epoch, value, metrics))
        return self.pending() or Action.CONTINUE

    def pending(self) -> Action | None:
        now = time.monotonic()
        if self.action is None and now >= self._next_poll:
            self._next_poll = now + ANSWER_POLL_S
            while self.action is None and self.conn.poll():
                message = self.conn.recv()
                if message[0] == "answer":
                    self.action = Action(message[1])
        return self.action


class Trainer:
    """The trainer's loop: one job at a time until told to exit or the parent is gone."""

    def __init__(self, conn: Connection, source: DataSource, worker_id: str = "") -> None:
        self.conn = conn
        self.worker_id = worker_id
        self.source = source
        self._data: dict[tuple[str, str | None, int], Split] = {}

    def _dataset(self, info: DatasetInfo, fold: int = 0) -> Split:
        """The data set split as the job says, cached: the fixed split of each data set
        (every search trial's), and the last re-evaluation fold (a study's re-evaluation
        goes fold by fold: one more copy at most, not seven)."""
        key = (info.name, info.sha256, fold)
        if key not in self._data:
            if fold:
                self._data = {k: v for k, v in self._data.items() if k[2] == 0}
            self._data[key] = self.source.load(info, fold)
        return self._data[key]

    def serve(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                return  # the worker is gone
            kind = message[0]
            if kind == "exit":
                return
            if kind == "answer":  # for a trial that has ended already
                continue
            job = Lease.model_validate(message[1])
            with log_context(
                study=job.study_name, trial=job.trial_id, job=job.job_id, worker=self.worker_id
            ):
                reply = self._trial(job, message[2]) if kind == "trial" else self._job(job)
                self.conn.send(reply)
                # Free the model while the parent hands the result back and leases again.
                free_memory()

    def _trial(self, job: Lease, tensorboard_dir: str | None) -> tuple[Any, ...]:
        try:
            data = self._dataset(job.dataset, job.fold)
        except DatasetUnavailable as exc:
            outcome = Outcome("fail", reason=str(exc))
        except Exception as exc:  # unreadable data fails the trial, never the worker
            log.exception("loading %s failed", job.dataset.name)
            outcome = Outcome(
                "fail", reason=f"loading the data set failed: {type(exc).__name__}: {exc}"
            )
        else:
            answers = _Answers(self.conn)
            outcome = train_trial(
                job,
                data,
                answers.report,
                answer=answers.pending,
                on_start=lambda: self.conn.send(("started",)),
                tensorboard_dir=Path(tensorboard_dir) if tensorboard_dir else None,
                free_memory=False,
            )
        return ("outcome", dataclasses.asdict(outcome))

    def _job(self, job: Lease) -> tuple[Any, ...]:
        try:
            data = self._dataset(job.dataset)
            if job.kind == JobKind.SANITY:
                passed, detail = sanity_check(job, data)
                return ("sanity", passed, detail)
            value, content = train_final(job, data)
            return ("final", value, content)
        except (DatasetUnavailable, FamilyUnavailable) as exc:  # another worker may have it
            return ("job_error", True, str(exc))
        except Exception as exc:
            log.exception("%s job %s failed", job.kind, job.job_id)
            return ("job_error", False, f"{type(exc).__name__}: {exc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.trainer")
    parser.add_argument("--fd", type=int, required=True, help="The socket to the worker.")
    parser.add_argument("--parent", type=int, required=True, help="The worker's pid.")
    parser.add_argument("--worker-id", default="", help="For the log lines.")
    parser.add_argument("--tf-threads", type=int, default=0)
    parser.add_argument("--keras-dir", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--allow-downloads", action="store_true")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", default="text")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    # Ctrl-C at a terminal reaches the whole process group; the worker decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logs.setup(args.log_level, args.log_format)
    configure_tensorflow(args.tf_threads)
    # Everything loaded so far (TensorFlow's and Keras's modules) lives as long as the
    # process: keep it out of the collections that clear_session runs after each trial.
    gc.collect()
    gc.freeze()
    conn = Connection(args.fd)
    conn.send(("ready", os.getpid()))
    source = DataSource(
        keras_dir=args.keras_dir,
        cache_dir=args.cache_dir,
        allow_downloads=args.allow_downloads,
        fetch=None,  # the worker fetched uploaded sets into the cache before the job
    )
    Trainer(conn, source, args.worker_id).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
