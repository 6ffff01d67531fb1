"""The worker's HTTP client for the trial protocol (``POST /trials/...``, ``/jobs/...``).

Bodies are the models of :mod:`service.protocol`, the same ones the API parses and
answers with, so a field renamed on one side fails the other's type check. This module
imports neither TensorFlow nor Keras: the client works without them.

Every call is retried with exponential backoff and jitter (tenacity) while the service is
unreachable or answers 500/502/503/504, for up to ``retry_max_s``: the service's calls are
idempotent, so a retried ``complete`` counts once. A stopping worker makes one try only.
A 4xx is final and raised as ``Rejected`` (``Unauthorized`` for 401).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_before_delay,
    stop_when_event_set,
    wait_exponential,
    wait_random,
)

from diagnostics.codes import Code
from service.protocol import (
    MAX_TEXT,
    ActionOut,
    CompleteIn,
    FailIn,
    Finding,
    FindingsIn,
    JobFailIn,
    JobResult,
    Lease,
    LeaseRequest,
    ReleaseIn,
    ReportIn,
    SanityIn,
    TrialResult,
    WorkerCall,
    WorkerInfo,
    finite,
    finite_history,
)
from service.states import Action

log = logging.getLogger(__name__)


def _valid(findings: list[dict[str, Any]] | None) -> list[Finding]:
    """The findings the service will take; one it would refuse is logged and left out, so
    it never costs the trial's result."""
    out = []
    for f in findings or ():
        try:
            out.append(Finding.model_validate(f))
        except ValidationError as exc:
            log.warning("leaving out a finding the service would refuse (%s): %s", exc, f)
    return out[: len(Code) * 2]


RETRY_STATUS = frozenset({500, 502, 503, 504})
FIRST_WAIT_S = 0.5
"""The first wait between tries; it doubles (plus up to ``JITTER_S``) up to ``MAX_WAIT_S``."""
MAX_WAIT_S = 15.0
JITTER_S = 0.5
UPLOAD_READ_S = 240.0
"""How long a final model's upload waits for the answer: the service loads the model with
Keras first (up to its LOAD_WAIT_S for a turn plus LOAD_TIMEOUT_S: 180 s)."""


class Rejected(RuntimeError):
    """The service refused a call (4xx); retrying would not help."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"HTTP {status}: {message}")


class Unauthorized(Rejected):
    """The service refused the worker token (401): misconfigured, so the worker stops."""


class _Retryable(Exception):
    """A try that may succeed later: the service unreachable, or a 500/502/503/504."""


def _log_retry(state: RetryCallState) -> None:
    method, path = state.args[0], state.args[1]
    problem = state.outcome.exception() if state.outcome else None
    delay = state.next_action.sleep if state.next_action else 0.0
    log.warning("%s %s: %s; retrying in %.1fs", method, path, problem, delay)


class ServiceClient:
    """Calls of one worker; ``worker`` identifies it in every request."""

    def __init__(
        self,
        base_url: str,
        *,
        worker: WorkerInfo,
        token: str,
        timeout_s: float = 30.0,
        retry_max_s: float = 300.0,
        stopping: threading.Event | None = None,
    ) -> None:
        self.worker = worker
        self.retry_max_s = retry_max_s
        # A stopping worker (SIGTERM) makes one more try of each call, not retry_max_s of
        # them: it must exit within its grace period.
        self.stopping = stopping or threading.Event()
        # The service checks a final model (Keras, in a child it starts) before answering.
        self._upload_timeout = httpx.Timeout(timeout_s, read=max(timeout_s, UPLOAD_READ_S))
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=timeout_s,
            headers={"Authorization": f"Bearer {token}"},
        )

    def close(self) -> None:
        self._http.close()

    def _try(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code in RETRY_STATUS:
            raise _Retryable(f"HTTP {response.status_code}")
        return response

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        retrying = Retrying(
            retry=retry_if_exception_type(_Retryable),
            # Give up before a wait would end past retry_max_s, or at once when stopping.
            stop=stop_before_delay(self.retry_max_s) | stop_when_event_set(self.stopping),
            wait=wait_exponential(multiplier=FIRST_WAIT_S, max=MAX_WAIT_S)
            + wait_random(0, JITTER_S),
            sleep=self._wait,
            before_sleep=_log_retry,
            reraise=True,
        )
        try:
            response: httpx.Response = retrying(self._try, method, path, **kwargs)
        except _Retryable as exc:
            raise ConnectionError(f"{method} {path} failed: {exc}") from None
        if response.status_code >= 400:
            try:
                body = response.json()
                message = str(body.get("message") or body) if isinstance(body, dict) else str(body)
            except ValueError:
                message = response.text
            if response.status_code == 401:
                raise Unauthorized(401, message)
            raise Rejected(response.status_code, message)
        return response

    def _wait(self, seconds: float) -> None:
        """Sleep between tries; a stop (SIGTERM) ends the wait at once."""
        self.stopping.wait(seconds)

    def _post(self, path: str, body: BaseModel) -> httpx.Response:
        return self._request("POST", path, json=body.model_dump(mode="json"))

    def _call(self) -> WorkerCall:
        return WorkerCall(worker_id=self.worker.id)

    def lease(self) -> Lease | None:
        """A job to run (a trial, a sanity run, a final model), or None when there is none."""
        response = self._post("/trials/lease", LeaseRequest(worker=self.worker))
        if response.status_code == 204:
            return None
        return Lease.model_validate(response.json())

    def _trial(self, trial_id: int, verb: str, body: BaseModel) -> TrialResult:
        return TrialResult.model_validate(self._post(f"/trials/{trial_id}/{verb}", body).json())

    def _action(self, path: str, body: BaseModel) -> Action:
        return ActionOut.model_validate(self._post(path, body).json()).action

    def report(self, trial_id: int, epoch: int, value: float, metrics: dict[str, float]) -> Action:
        """Send one epoch's metrics (non-finite ones left out: JSON has no NaN); returns
        the service's action: continue, prune or stop."""
        body = ReportIn(worker_id=self.worker.id, epoch=epoch, value=value, metrics=finite(metrics))
        return self._action(f"/trials/{trial_id}/report", body)

    def heartbeat(self, trial_id: int) -> Action:
        return self._action(f"/trials/{trial_id}/heartbeat", self._call())

    def complete(
        self,
        trial_id: int,
        *,
        value: float,
        epochs_run: int,
        history: dict[str, list[float]] | None = None,
        train_val_gap: float | None = None,
        findings: list[dict[str, Any]] | None = None,
        diagnostics_s: float | None = None,
    ) -> TrialResult:
        body = CompleteIn(
            worker_id=self.worker.id,
            value=value,
            epochs_run=epochs_run,
            history=finite_history(history),
            train_val_gap=train_val_gap,
            findings=_valid(findings),
            diagnostics_s=diagnostics_s,
        )
        return self._trial(trial_id, "complete", body)

    def fail(
        self,
        trial_id: int,
        *,
        reason: str,
        epochs_run: int,
        history: dict[str, list[float]] | None = None,
        findings: list[dict[str, Any]] | None = None,
        diagnostics_s: float | None = None,
    ) -> TrialResult:
        body = FailIn(
            worker_id=self.worker.id,
            reason=reason[:MAX_TEXT],
            epochs_run=epochs_run,
            history=finite_history(history),
            findings=_valid(findings),
            diagnostics_s=diagnostics_s,
        )
        return self._trial(trial_id, "fail", body)

    def findings(self, trial_id: int, findings: list[dict[str, Any]]) -> TrialResult:
        """A pruned trial's findings (the prune was its result)."""
        body = FindingsIn(worker_id=self.worker.id, findings=_valid(findings))
        return self._trial(trial_id, "findings", body)

    def release(self, trial_id: int, *, reason: str) -> TrialResult:
        body = ReleaseIn(worker_id=self.worker.id, reason=reason[:MAX_TEXT])
        return self._trial(trial_id, "release", body)

    def fetch_dataset(self, name: str) -> bytes:
        """An uploaded data set's normalised NPZ."""
        return self._request("GET", f"/datasets/{name}/file").content

    def _job(self, job_id: int, verb: str, body: BaseModel) -> JobResult:
        return JobResult.model_validate(self._post(f"/jobs/{job_id}/{verb}", body).json())

    def job_heartbeat(self, job_id: int) -> Action:
        return self._action(f"/jobs/{job_id}/heartbeat", self._call())

    def sanity(self, job_id: int, *, passed: bool, detail: str) -> JobResult:
        body = SanityIn(worker_id=self.worker.id, passed=passed, detail=detail[:MAX_TEXT])
        return self._job(job_id, "sanity", body)

    def job_fail(self, job_id: int, *, reason: str) -> JobResult:
        return self._job(job_id, "fail", self._job_reason(reason))

    def job_release(self, job_id: int, *, reason: str) -> JobResult:
        return self._job(job_id, "release", self._job_reason(reason))

    def _job_reason(self, reason: str) -> JobFailIn:
        return JobFailIn(worker_id=self.worker.id, reason=reason[:MAX_TEXT] or "unknown")

    def upload_model(self, job_id: int, *, test_value: float, content: bytes) -> JobResult:
        """Upload the final model. The service loads it with Keras before it answers (a
        few seconds, up to two minutes), so this call waits longer than the others. A
        model it refuses is a ``Rejected`` with status 422."""
        response = self._request(
            "POST",
            f"/jobs/{job_id}/model",
            data={"worker_id": self.worker.id, "test_value": repr(test_value)},
            files={"file": ("best.keras", content, "application/octet-stream")},
            timeout=self._upload_timeout,
        )
        return JobResult.model_validate(response.json())
