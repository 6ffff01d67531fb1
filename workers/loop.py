"""The worker's pull loop: lease, train, report, hand back the result, repeat.

This is the worker's parent process: HTTP, heartbeats and retries. It never imports
TensorFlow; jobs train in a trainer process (:mod:`workers.supervisor`,
:mod:`workers.trainer`), so a trainer that crashes, is killed or hangs fails its trial and
the worker goes on with a fresh one."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from types import FrameType
from typing import Any

from pydantic import ValidationError

from search_space.catalog import DatasetInfo
from service import logs
from service.logs import log_context
from service.protocol import Lease, WorkerInfo
from service.states import Action, JobKind
from workers.client import Rejected, ServiceClient, Unauthorized
from workers.config import WorkerSettings
from workers.outcome import Outcome
from workers.supervisor import Interrupted, Trainer, TrainerDied, TrainerOptions, Trainers
from workers.uploads import DatasetUnavailable, cached_upload

log = logging.getLogger(__name__)

MAX_FAILED_STARTS = 3
"""Trainers in a row that die before they are ready, after which the worker exits (3)."""


class _Heartbeat:
    """Renews the lease between epoch reports, so a long epoch is not taken for a dead
    worker; it also passes on a stop the service asks for."""

    def __init__(self, beat: Callable[[], str], interval_s: float) -> None:
        self.beat = beat
        self.interval_s = interval_s
        self.stop_requested = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                if self.beat() == Action.STOP:
                    self.stop_requested = True
            except Exception:  # a missed heartbeat is not fatal; the next report renews
                log.warning("heartbeat failed", exc_info=True)


class Worker:
    """One worker process's loop. ``stop()`` (SIGTERM, SIGINT) ends it after the current
    epoch, releasing the trial so it runs again elsewhere with the same parameters."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        host = socket.gethostname()
        self.identity = WorkerInfo(
            id=f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}", host=host, pid=os.getpid()
        )
        self._stopping = threading.Event()
        if settings.worker_token is None or not settings.worker_token.get_secret_value():
            raise ValueError(
                "HPO_WORKER_TOKEN is not set: the service needs the worker "
                "token on every call of the trial protocol"
            )
        self.exit_code = 0
        self._failed_starts = 0
        self.client = ServiceClient(
            settings.api_url,
            worker=self.identity,
            token=settings.worker_token.get_secret_value(),
            timeout_s=settings.request_timeout_s,
            retry_max_s=settings.retry_max_s,
            stopping=self._stopping,
        )
        self.trainers = Trainers(
            lambda: Trainer(self._trainer_options()),
            max_trials=settings.trainer_max_trials,
            max_rss_mb=settings.trainer_max_rss_mb or None,
            stopping=self._stopping,
        )

    def _trainer_options(self) -> TrainerOptions:
        s = self.settings
        level, fmt = logs.configured()
        return TrainerOptions(
            worker_id=self.identity.id,
            tf_threads=s.tf_threads,
            keras_dir=s.keras_datasets_dir,
            cache_dir=s.cache_dir,
            allow_downloads=s.allow_downloads,
            log_level=level,
            log_format=fmt,
            device=s.device,
        )

    def stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        log.info("worker %s stopping (signal %s)", self.identity.id, signum)
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(
        self,
        *,
        max_trials: int | None = None,
        exit_when_idle: bool = False,
        keep_trainer: bool = False,
    ) -> int:
        """Work until stopped (or after ``max_trials``, or when idle with ``exit_when_idle``).
        Returns the number of trials this worker finished. ``keep_trainer`` leaves the
        trainer warm for another ``run`` (then ``close()`` when done)."""
        self.trainers.warm()  # TensorFlow loads in the trainer while the worker leases
        done = 0
        log.info("worker %s pulling from %s", self.identity.id, self.settings.api_url)
        try:
            while not self._stopping.is_set() and (max_trials is None or done < max_trials):
                try:
                    job = self.client.lease()
                except Unauthorized:
                    log.error(
                        "the service at %s refused this worker's token: is "
                        "HPO_WORKER_TOKEN the service's worker token?",
                        self.settings.api_url,
                    )
                    self.exit_code = 2
                    break
                except (Rejected, ConnectionError) as exc:
                    # The service is down or refuses us for now: wait, then ask again.
                    log.error("leasing a trial failed: %s", exc)
                    self._stopping.wait(self.settings.poll_interval_s)
                    continue
                if job is None:
                    if exit_when_idle:
                        break
                    self._stopping.wait(self.settings.poll_interval_s)
                    continue
                self._run_one(job)
                done += 1
        finally:
            if not keep_trainer:
                self.close()
        return done

    def close(self) -> None:
        """End the trainer and the HTTP client (``run`` does unless ``keep_trainer``)."""
        self.client.close()
        self.trainers.close()

    def _prefetch(self, info: DatasetInfo) -> None:
        """An uploaded data set into the cache, for the trainer to read (the others are
        the trainer's to load)."""
        if info.source == "upload":
            cached_upload(self.settings.cache_dir, info, self.client.fetch_dataset)

    def _run_one(self, job: Lease) -> None:
        with log_context(
            study=job.study_name, trial=job.trial_id, job=job.job_id, worker=self.identity.id
        ):
            if job.kind == JobKind.TRIAL:
                self._run_trial(job)
            else:
                self._run_job(job)

    def _run_trial(self, job: Lease) -> None:
        assert job.trial_id is not None
        trial_id = job.trial_id
        log.info(
            "trial %s (#%s of %s) leased: %s", trial_id, job.number, job.study_name, job.params
        )
        started = time.monotonic()
        # The lease is renewed from now on: loading the data can take a while.
        beat = _Heartbeat(lambda: self.client.heartbeat(trial_id), max(job.lease_seconds / 3, 0.5))
        with beat:
            try:
                self._prefetch(job.dataset)
            except DatasetUnavailable as exc:
                outcome = Outcome("fail", reason=str(exc))
            else:
                outcome = self._train(job, beat)
        log.info(
            "trial %s ended %s after %d epochs in %.1fs (value %s, reason %s)",
            trial_id,
            outcome.state,
            outcome.epochs_run,
            time.monotonic() - started,
            outcome.value,
            outcome.reason,
        )
        self._hand_back(job, outcome)

    def _train(self, job: Lease, beat: _Heartbeat) -> Outcome:
        """Train the trial in the trainer, passing its epoch reports on as they come."""
        trial_id = job.trial_id
        assert trial_id is not None
        answers: list[Action] = []
        reported = [0]

        def report(epoch: int, value: float, metrics: dict[str, float]) -> str | None:
            reported[0] = epoch
            try:
                action = self.client.report(trial_id, epoch, value, metrics)
            except Rejected as exc:  # the lease is gone: stop training for nothing
                log.warning("report of epoch %d refused, stopping the trial: %s", epoch, exc)
                return Action.STOP
            except ConnectionError as exc:  # the result is held and retried at the end
                log.error("report of epoch %d not delivered: %s", epoch, exc)
                return None
            answers.append(action)
            return action

        tensorboard_dir = (
            self.settings.artifact_dir / "tensorboard" / job.study_name / f"trial-{job.number:04d}"
        )
        trainer: Trainer | None = None
        try:
            trainer = self.trainers.take()
            _, fields = trainer.run(
                ("trial", job.model_dump(mode="json"), str(tensorboard_dir)),
                on_epoch=report,
                should_stop=lambda: self._stopping.is_set() or beat.stop_requested,
                time_limit_s=job.trial_time_limit_s,
                grace_s=self.settings.trainer_grace_s,
                max_rss_mib=self.settings.trainer_max_rss_mb or None,
            )
        except Interrupted as exc:  # SIGTERM while TensorFlow loaded: the trial goes back
            return Outcome("stopped", reason=str(exc))
        except TrainerDied as exc:
            if trainer is not None:
                self.trainers.lost(trainer)
            log.error("trial %s: %s", trial_id, exc)
            if exc.starting:  # this host cannot train: give the trial to another worker
                self._trainer_would_not_start(exc)
                return Outcome("stopped", reason=f"this worker's trainer cannot start: {exc}")
            if self._stopping.is_set():  # the host is going down, not the trial
                return Outcome("stopped", reason=f"worker stopping ({exc})")
            return Outcome("fail", reason=str(exc), epochs_run=reported[0])
        self._failed_starts = 0
        outcome = Outcome(**fields)
        if Action.PRUNE in answers and outcome.state != "pruned":
            # The service pruned it at the epoch it judged; the trainer heard it later.
            outcome = Outcome("pruned", epochs_run=reported[0], history=outcome.history)
        return outcome

    def _run_job(self, job: Lease) -> None:
        """A sanity run or a final model; any failure is reported, never raised."""
        log.info("%s job %s of %s leased", job.kind, job.job_id, job.study_name)
        try:
            with _Heartbeat(
                lambda: self.client.job_heartbeat(job.job_id), max(job.lease_seconds / 3, 0.5)
            ):
                self._prefetch(job.dataset)
                trainer = self.trainers.take()
                try:
                    reply = trainer.run((job.kind.value, job.model_dump(mode="json")))
                except TrainerDied:
                    self.trainers.lost(trainer)
                    raise
                # Still renewing: the service checks a final model before it answers.
                self._send_job_result(job, reply)
        except (Rejected, ConnectionError) as exc:
            log.error(
                "%s job %s: the service did not take the result: %s", job.kind, job.job_id, exc
            )
        except (DatasetUnavailable, Interrupted) as exc:  # another worker may run it
            self._job_release(job, str(exc))
        except TrainerDied as exc:
            if exc.starting:
                self._trainer_would_not_start(exc)
                self._job_release(job, f"this worker's trainer cannot start: {exc}")
            else:
                self._job_fail(job, str(exc))

    def _send_job_result(self, job: Lease, reply: tuple[Any, ...]) -> None:
        if reply[0] == "sanity":
            _, passed, detail = reply
            log.info("sanity run of %s: %s", job.study_name, detail)
            self.client.sanity(job.job_id, passed=passed, detail=detail)
        elif reply[0] == "final":
            _, value, content = reply
            log.info(
                "final model of %s: test %s = %s",
                job.study_name,
                job.metric.removeprefix("val_"),
                value,
            )
            try:
                self.client.upload_model(job.job_id, test_value=value, content=content)
            except Rejected as exc:
                if exc.status != 422:
                    raise
                # The same configuration would build the same model: retraining it here
                # or elsewhere would be refused again, so the job fails, saying why.
                self._job_fail(job, f"the service refused the final model: {exc}")
        else:
            _, unavailable, message = reply
            (self._job_release if unavailable else self._job_fail)(job, message)

    def _trainer_would_not_start(self, exc: TrainerDied) -> None:
        """A trainer that dies before TensorFlow is loaded is this host's problem (a broken
        install, no memory): the job goes back, and after a few in a row the worker stops
        instead of taking work it cannot do."""
        self._failed_starts += 1
        if self._failed_starts >= MAX_FAILED_STARTS:
            log.error(
                "stopping: %d trainers in a row died before they were ready (%s); the "
                "trainer's output above says why",
                self._failed_starts,
                exc,
            )
            self.exit_code = 3
            self._stopping.set()
        else:
            self._stopping.wait(self.settings.poll_interval_s)

    def _job_release(self, job: Lease, reason: str) -> None:
        log.error("%s job %s: %s", job.kind, job.job_id, reason)
        try:
            self.client.job_release(job.job_id, reason=reason)
        except (Rejected, ConnectionError):
            log.exception("could not release job %s", job.job_id)

    def _job_fail(self, job: Lease, reason: str) -> None:
        log.error("%s job %s failed: %s", job.kind, job.job_id, reason)
        try:
            self.client.job_fail(job.job_id, reason=reason)
        except (Rejected, ConnectionError):
            log.exception("could not report the failure of job %s", job.job_id)

    def _hand_back(self, job: Lease, outcome: Outcome) -> None:
        """Tell the service how the trial ended (pruned trials were already ended by it).
        A result is retried until the service takes it, unless the worker is stopping."""
        assert job.trial_id is not None
        while True:
            try:
                if outcome.state == "complete":
                    assert outcome.value is not None
                    self.client.complete(
                        job.trial_id,
                        value=outcome.value,
                        epochs_run=outcome.epochs_run,
                        history=outcome.history,
                        train_val_gap=outcome.train_val_gap,
                        findings=outcome.findings,
                        diagnostics_s=outcome.diagnostics_s if job.diagnostics else None,
                    )
                elif outcome.state == "fail":
                    self.client.fail(
                        job.trial_id,
                        reason=outcome.reason or "unknown",
                        epochs_run=outcome.epochs_run,
                        history=outcome.history,
                        findings=outcome.findings,
                        diagnostics_s=outcome.diagnostics_s if job.diagnostics else None,
                    )
                elif outcome.state == "pruned" and job.diagnostics:
                    self.client.findings(job.trial_id, outcome.findings)
                elif outcome.state == "stopped":
                    self.client.release(job.trial_id, reason=outcome.reason or "worker stopping")
                return
            except (Rejected, ValidationError) as exc:  # a body the service would refuse
                log.warning("service refused the result of trial %s: %s", job.trial_id, exc)
                return
            except ConnectionError as exc:
                if self._stopping.is_set():
                    log.error(
                        "giving up on the result of trial %s (%s): %s",
                        job.trial_id,
                        outcome.state,
                        exc,
                    )
                    return
                log.error(
                    "the service is unreachable; still holding the result of trial %s: %s",
                    job.trial_id,
                    exc,
                )
