"""The worker's HTTP client for the trial protocol (``POST /trials/...``).

Every call is retried with exponential backoff while the service is unreachable or answers
5xx, for up to ``retry_max_s``: the service's calls are idempotent, so a retried
``complete`` counts once. A 4xx is final and raised as ``Rejected``.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from typing import Any

import httpx

from workers.training import Assignment

log = logging.getLogger(__name__)

RETRY_STATUS = {500, 502, 503, 504}


def _finite(history: dict[str, list[float]] | None) -> dict[str, list[float]] | None:
    """JSON has no NaN: a diverged epoch's values are left out of the history."""
    if not history:
        return None
    return {k: [v for v in vs if math.isfinite(v)] for k, vs in history.items()}


class Rejected(RuntimeError):
    """The service refused a call (4xx); retrying would not help."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"HTTP {status}: {message}")


class Unauthorized(Rejected):
    """The service refused the worker token (401): misconfigured, so the worker stops."""


class ServiceClient:
    """Calls of one worker; ``worker`` identifies it in every request."""

    def __init__(
        self,
        base_url: str,
        *,
        worker: dict[str, Any],
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
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=timeout_s,
            headers={"Authorization": f"Bearer {token}"},
        )

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        deadline = time.monotonic() + self.retry_max_s
        delay = 0.5
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
                if response.status_code not in RETRY_STATUS:
                    break
                problem = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if time.monotonic() + delay > deadline or self.stopping.is_set():
                raise ConnectionError(f"{method} {path} failed: {problem}")
            log.warning("%s %s: %s; retrying in %.1fs", method, path, problem, delay)
            self.stopping.wait(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 15.0)
        if response.status_code >= 400:
            try:
                message = str(response.json().get("message") or response.json())
            except ValueError:
                message = response.text
            if response.status_code == 401:
                raise Unauthorized(401, message)
            raise Rejected(response.status_code, message)
        return response

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self._request("POST", path, json=body)

    def lease(self) -> Assignment | None:
        """A trial to train, or None when the service has no work."""
        response = self._post("/trials/lease", {"worker": self.worker})
        if response.status_code == 204:
            return None
        return Assignment.from_json(response.json())

    def _trial_call(self, trial_id: int, verb: str, **fields: Any) -> dict[str, Any]:
        body = {"worker_id": self.worker["id"], **fields}
        result: dict[str, Any] = self._post(f"/trials/{trial_id}/{verb}", body).json()
        return result

    def report(self, trial_id: int, epoch: int, value: float, metrics: dict[str, float]) -> str:
        """Send one epoch's metrics; returns the service's action: continue, prune or stop."""
        body = self._trial_call(trial_id, "report", epoch=epoch, value=value, metrics=metrics)
        return str(body["action"])

    def heartbeat(self, trial_id: int) -> str:
        return str(self._trial_call(trial_id, "heartbeat")["action"])

    def complete(
        self,
        trial_id: int,
        *,
        value: float,
        epochs_run: int,
        history: dict[str, list[float]] | None = None,
        train_val_gap: float | None = None,
    ) -> dict[str, Any]:
        return self._trial_call(
            trial_id,
            "complete",
            value=value,
            epochs_run=epochs_run,
            history=_finite(history),
            train_val_gap=train_val_gap,
        )

    def fail(
        self,
        trial_id: int,
        *,
        reason: str,
        epochs_run: int,
        history: dict[str, list[float]] | None = None,
    ) -> dict[str, Any]:
        return self._trial_call(
            trial_id, "fail", reason=reason, epochs_run=epochs_run, history=_finite(history)
        )

    def release(self, trial_id: int, *, reason: str) -> dict[str, Any]:
        return self._trial_call(trial_id, "release", reason=reason)

    def fetch_dataset(self, name: str) -> bytes:
        """An uploaded data set's normalised NPZ."""
        return self._request("GET", f"/datasets/{name}/file").content

    def _job_call(self, job_id: int, verb: str, **fields: Any) -> dict[str, Any]:
        body = {"worker_id": self.worker["id"], **fields}
        result: dict[str, Any] = self._post(f"/jobs/{job_id}/{verb}", body).json()
        return result

    def job_heartbeat(self, job_id: int) -> str:
        return str(self._job_call(job_id, "heartbeat")["action"])

    def sanity(self, job_id: int, *, passed: bool, detail: str) -> dict[str, Any]:
        return self._job_call(job_id, "sanity", passed=passed, detail=detail[:4000])

    def job_fail(self, job_id: int, *, reason: str) -> dict[str, Any]:
        return self._job_call(job_id, "fail", reason=reason[:4000])

    def job_release(self, job_id: int, *, reason: str) -> dict[str, Any]:
        return self._job_call(job_id, "release", reason=reason[:4000])

    def upload_model(self, job_id: int, *, test_value: float, content: bytes) -> dict[str, Any]:
        result: dict[str, Any] = self._request(
            "POST",
            f"/jobs/{job_id}/model",
            data={"worker_id": self.worker["id"], "test_value": repr(test_value)},
            files={"file": ("best.keras", content, "application/octet-stream")},
        ).json()
        return result
