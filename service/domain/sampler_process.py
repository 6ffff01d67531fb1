"""The process that samples for an API process: a feeder (``feeder``) of its own, so
Optuna's sampler never holds the GIL the API's request threads need."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from typing import Any

from service import logs
from service.config import Settings
from service.domain.feeder import Feeder
from service.storage.runtime import Runtime

log = logging.getLogger(__name__)


def _sample_until_told(settings: Settings, wanted: Any, fed: Any, stop: Any, parent: int) -> None:
    """The sampler process: feed until told to stop, or until the API process that started
    it is gone (a killed API must not leave a sampler renewing its claims)."""
    logs.setup(settings.log_level, settings.log_format)
    rt = Runtime.open(settings)
    rt.wanted, rt.fed_across = wanted, fed
    feeder = Feeder(rt)
    feeder.start()
    try:
        while not stop.wait(0.5) and os.getppid() == parent:
            pass
    finally:
        feeder.stop()
        rt.close()


class SamplerProcess:
    """The process that samples for an API process, so Optuna's sampler (tens of
    milliseconds of CPU a suggestion at thousands of trials) never holds the GIL the
    request threads need. Started, watched and stopped by the API process; restarted if
    it dies."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._ctx = multiprocessing.get_context("spawn")  # no threads or sockets inherited
        rt.wanted = self._ctx.Event()  # a lease wakes the sampler across the process line
        # ... and each suggestion the sampler commits wakes one waiting lease, through
        # this semaphore and the thread that watches it: a lease that waits never polls
        # the database (32 leases looking every 20 ms were most of PostgreSQL's work).
        self._fed = self._ctx.Semaphore(0)
        self._stop = self._ctx.Event()
        self._process: Any = None
        self._watcher = threading.Thread(target=self._wake_leases, name="fed", daemon=True)

    def start(self) -> None:
        self._process = self._ctx.Process(
            target=_sample_until_told,
            args=(self.rt.settings, self.rt.wanted, self._fed, self._stop, os.getpid()),
            name="hpo-sampler",
            daemon=True,
        )
        self._process.start()
        if not self._watcher.is_alive():
            self._watcher.start()

    def _wake_leases(self) -> None:
        while not self._stop.is_set():
            if self._fed.acquire(timeout=0.5):
                self.rt.fed_one()

    def ensure_alive(self) -> None:
        if self._process is not None and not self._process.is_alive():
            log.error("the sampler process exited %s; starting another", self._process.exitcode)
            self.start()

    def stop(self) -> None:
        self._stop.set()
        self.rt.wanted.set()
        if self._process is not None:
            self._process.join(timeout=30)
            if self._process.is_alive():
                self._process.kill()
        if self._watcher.is_alive():
            self._watcher.join(timeout=5)
