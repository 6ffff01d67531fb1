"""The worker's side of its trainer processes (:mod:`workers.trainer`): starting them,
talking to them, watching them, and replacing them.

This module imports neither TensorFlow nor Keras: the worker's parent process stays light,
and nothing that happens inside TensorFlow can take it down.

- **Recycling.** A trainer is replaced after ``max_trials`` jobs, or once its resident
  memory passes ``max_rss_mb`` after a job. Its successor starts while the last job trains
  (when the count says the next job is its last, or the memory passes 90% of the limit),
  so no job waits for TensorFlow's import; until the successor is ready the old trainer
  takes the next job too.
- **Death.** When a trainer dies (a signal, the OOM killer, ``os.abort()``, a non-zero
  exit) its job ends with :class:`TrainerDied`, whose message says what happened and when
  (``trainer killed by signal 9 (SIGKILL: out of memory?) during epoch 3``). The parent
  also kills a trainer that runs past the job's time limit plus ``grace_s``, or whose
  memory passes twice ``max_rss_mb`` while it trains.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

POLL_S = 0.1
"""How often the worker checks a training trainer's memory, clock and liveness."""
SPARE_AT = 0.9
"""A successor starts once the trainer's memory passes this share of ``max_rss_mb``."""
KILL_AT = 2.0
"""A trainer whose memory passes this multiple of ``max_rss_mb`` during a job is killed."""
EXIT_WAIT_S = 10.0
"""How long a retiring trainer gets to exit before it is killed."""

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_MIB = 2**20


class Interrupted(RuntimeError):
    """The worker is stopping while its job waited for a trainer to start."""


class TrainerDied(RuntimeError):
    """The trainer ended (or was ended) before it answered; the message says why.
    ``starting``: it died before it was ready, which says nothing about the job."""

    def __init__(self, message: str, *, starting: bool = False) -> None:
        super().__init__(message)
        self.starting = starting


@dataclass
class TrainerOptions:
    """What every trainer of one worker is started with."""

    worker_id: str
    tf_threads: int
    keras_dir: Path
    cache_dir: Path
    allow_downloads: bool
    log_level: str
    log_format: str
    device: str | None = None
    """``CUDA_VISIBLE_DEVICES`` for the trainer (one GPU per worker); None or empty: inherit."""

    def command(self, fd: int) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "workers.trainer",
            f"--fd={fd}",
            f"--parent={os.getpid()}",
            f"--worker-id={self.worker_id}",
            f"--tf-threads={self.tf_threads}",
            f"--keras-dir={self.keras_dir}",
            f"--cache-dir={self.cache_dir}",
            f"--log-level={self.log_level}",
            f"--log-format={self.log_format}",
        ]
        return [*args, "--allow-downloads"] if self.allow_downloads else args

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.device:  # empty (compose's default): inherit
            env["CUDA_VISIBLE_DEVICES"] = self.device
        return env


def _signal_text(number: int) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
    hint = {
        signal.SIGKILL: ": out of memory?",
        signal.SIGABRT: ": aborted",
        signal.SIGSEGV: ": segmentation fault",
    }.get(signal.Signals(number), "")
    return f"signal {number} ({name}{hint})"


class Trainer:
    """One trainer process and the worker's end of its socket."""

    def __init__(self, options: TrainerOptions) -> None:
        ours, theirs = socket.socketpair()
        self.conn = Connection(ours.detach())
        with theirs:
            self.process = subprocess.Popen(
                options.command(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                env=options.environment(),
                # Its own process group: Ctrl-C at a terminal is the worker's to handle.
                process_group=0,
            )
        self.jobs = 0
        self.ready = False
        self.started = time.monotonic()
        self._killed_because: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_mib(self) -> float | None:
        """Resident memory now (Linux), or None where it cannot be read."""
        try:
            with open(f"/proc/{self.pid}/statm") as f:
                return int(f.read().split()[1]) * _PAGE / _MIB
        except (OSError, IndexError, ValueError):
            return None

    def poll_ready(self, timeout_s: float = 0.0) -> bool:
        """Has it loaded TensorFlow? Waits up to ``timeout_s`` for it to say so.

        Raises:
            TrainerDied: it ended before it was ready.
        """
        deadline = time.monotonic() + timeout_s
        while not self.ready:
            try:
                if not self.conn.poll(max(0.0, min(POLL_S, deadline - time.monotonic()))):
                    if time.monotonic() >= deadline:
                        return False
                    continue
                message = self.conn.recv()
            except (EOFError, OSError):
                raise TrainerDied(self._death("while starting"), starting=True) from None
            if message[0] == "ready":
                self.ready = True
                log.info("trainer %s ready in %.1fs", self.pid, time.monotonic() - self.started)
        return True

    def kill(self, because: str) -> None:
        self._killed_because = because
        if self.alive():
            self.process.kill()

    def _death(self, when: str) -> str:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # it closed the socket but lives on: end it
            self.process.kill()
            code = self.process.wait()
        self.conn.close()
        if self._killed_because is not None:
            return f"trainer killed: {self._killed_because} {when}"
        if code < 0:
            return f"trainer killed by {_signal_text(-code)} {when}"
        return f"trainer exited with code {code} {when}"

    def run(
        self,
        request: tuple[Any, ...],
        *,
        on_epoch: Callable[[int, float, dict[str, float]], str | None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        time_limit_s: float | None = None,
        grace_s: float = 0.0,
        max_rss_mib: float | None = None,
    ) -> tuple[Any, ...]:
        """Send one job and wait for its result, passing epoch reports to ``on_epoch``
        (whose prune or stop is sent back) while watching the trainer.

        Raises:
            TrainerDied: it died or was killed before it answered.
        """
        self.jobs += 1
        began = time.monotonic()
        epochs, training, answered = 0, False, False
        try:
            self.conn.send(request)
        except OSError:
            raise TrainerDied(self._death("before the job started")) from None
        while True:
            when = f"during epoch {epochs + 1}" if training else "before training began"
            try:
                ready = self.conn.poll(POLL_S)
                message = self.conn.recv() if ready else None
            except (EOFError, OSError):
                raise TrainerDied(self._death(when)) from None
            if message is None:
                elapsed = time.monotonic() - began
                rss = self.rss_mib()
                if time_limit_s is not None and elapsed > time_limit_s + grace_s:
                    self.kill(
                        f"the trial ran past its time limit of {time_limit_s:g}s plus a grace "
                        f"of {grace_s:g}s (HPO_TRAINER_GRACE_S)"
                    )
                elif max_rss_mib is not None and rss is not None and rss > KILL_AT * max_rss_mib:
                    self.kill(
                        f"its resident memory reached {rss:,.0f} MiB, over {KILL_AT:g} x "
                        f"HPO_TRAINER_MAX_RSS_MB ({max_rss_mib:,.0f} MiB)"
                    )
                elif not answered and should_stop():
                    answered = self._answer("stop")
                continue
            kind = message[0]
            if kind == "started":
                training = True
            elif kind == "epoch":
                epochs = message[1]
                action = None if answered or on_epoch is None else on_epoch(*message[1:])
                if action is not None and action != "continue":
                    answered = self._answer(action)
            else:
                return message

    def _answer(self, action: str) -> bool:
        with contextlib.suppress(OSError):  # it died; the next poll says how
            self.conn.send(("answer", action))
        return True

    def close(self) -> None:
        """Ask it to exit; kill it if it does not (or has not started: nothing to lose)."""
        if self.alive() and not self.ready:
            self.process.kill()
            self.process.wait()
        elif self.alive():
            try:
                self.conn.send(("exit",))
                self.process.wait(timeout=EXIT_WAIT_S)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.conn.close()


class Trainers:
    """A worker's current trainer and, when it is about to retire, its successor."""

    def __init__(
        self,
        start: Callable[[], Trainer],
        *,
        max_trials: int,
        max_rss_mb: float | None,
        stopping: threading.Event | None = None,
    ) -> None:
        self._start = start
        self.stopping = stopping or threading.Event()
        """Set when the worker stops: a job waiting for its trainer to start gives up."""
        self.max_trials = max_trials
        self.max_rss_mb = max_rss_mb
        self.current: Trainer | None = None
        self.spare: Trainer | None = None
        self.started = 0
        """Trainers started so far (a test reads it)."""

    def _new(self) -> Trainer:
        self.started += 1
        return self._start()

    def warm(self) -> None:
        """Start the first trainer now (TensorFlow imports while the worker leases)."""
        if self.current is None:
            self.current = self._new()

    def _over(self, trainer: Trainer, *, jobs_ahead: int = 0, share: float = 1.0) -> bool:
        """Has it run ``max_trials`` jobs (counting ``jobs_ahead``), or passed ``share`` of
        ``max_rss_mb``? (1.0 and 0: it retires; 1 and ``SPARE_AT``: a successor starts.)"""
        rss = trainer.rss_mib()
        return trainer.jobs + jobs_ahead >= self.max_trials or (
            self.max_rss_mb is not None and rss is not None and rss >= share * self.max_rss_mb
        )

    def _spare_ready(self) -> bool:
        if self.spare is None:
            return False
        try:
            return self.spare.poll_ready()
        except TrainerDied as exc:
            log.warning("the next trainer died before it was needed: %s", exc)
            self.spare = None
            return False

    def take(self) -> Trainer:
        """The trainer for the next job, ready (this waits only for a first trainer, or
        after one died).

        Raises:
            TrainerDied: a freshly started trainer died before it was ready.
        """
        current = self.current
        if current is not None and not current.alive():
            current.conn.close()
            current = None
        if current is not None and self._over(current) and self._spare_ready():
            log.info(
                "replacing trainer %s after %d jobs (%.0f MiB)",
                current.pid,
                current.jobs,
                current.rss_mib() or 0,
            )
            current.close()
            current = None
        if current is None:
            current, self.spare = self.spare or self._new(), None
        self.current = current
        try:
            while not current.poll_ready(timeout_s=POLL_S):
                if self.stopping.is_set():  # (the job goes back at once, not in 10 s)
                    raise Interrupted("the worker is stopping; its trainer was still starting")
        except TrainerDied:
            self.current = None
            raise
        if self.spare is None and self._over(current, jobs_ahead=1, share=SPARE_AT):
            self.spare = self._new()
        return current

    def lost(self, trainer: Trainer) -> None:
        """It died with its job: the next job gets another."""
        if self.current is trainer:
            self.current = None

    def close(self) -> None:
        for trainer in (self.current, self.spare):
            if trainer is not None:
                trainer.close()
        self.current = self.spare = None
