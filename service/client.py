"""The public Python client of the service: typed methods over its HTTP API.

Every answer is parsed into the API's own models (:mod:`service.api.schemas`):
:class:`StudyOut`, :class:`TrialOut`, :class:`DatasetOut`, :class:`BestTrial`. Every
failure is one :class:`ServiceError`, with the API's ``message`` and the HTTP ``status``.
From a notebook::

    from service.client import Client, ServiceError

    with Client() as hpo:  # HPO_API_URL and HPO_API_TOKEN, or Client(url, token)
        study = hpo.submit(
            {
                "name": "digits-lr",
                "dataset": "digits",
                "n_trials": 20,
                "epochs": 10,
                "search_space": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
            },
            wait=True,
            on_progress=lambda s: print(s.trials.complete, "of", s.n_trials),
        )
        print(study.best.value, study.best.params)   # study.best is None if none completed
        for trial in hpo.trials("digits-lr"):
            print(trial.number, trial.state, trial.value, trial.params)
        hpo.download_model("digits-lr", "digits-lr.keras")

A study is named by its id (``int``) or its name (``str``; a name is never read as an id,
even if it is all digits).

Light on purpose: it imports httpx and pydantic, never TensorFlow, Keras or FastAPI.
"""

from __future__ import annotations

import builtins
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import httpx
from pydantic import BaseModel, TypeAdapter

from service.api.schemas import (
    NAME_PATTERN,
    BestTrial,
    DatasetOut,
    ReportOut,
    StudyCreate,
    StudyOut,
    TrialOut,
)
from service.config import get_settings
from service.states import study_is_over

__all__ = ["BestTrial", "Client", "DatasetOut", "ServiceError", "StudyOut", "TrialOut"]

StudyRef = int | str | StudyOut
"""A study: its id, its name, or a :class:`StudyOut` already read."""

_STUDIES = TypeAdapter(list[StudyOut])
_TRIALS = TypeAdapter(list[TrialOut])
_DATASETS = TypeAdapter(list[DatasetOut])


class ServiceError(Exception):
    """Anything that went wrong talking to the service.

    ``status`` is the HTTP status of the answer (``None`` when there was none: the service
    is unreachable, or no token is set); ``message`` is the API's ``message``, or what
    happened. ``str(error)`` adds a hint where one helps, and the status.
    """

    def __init__(self, message: str, status: int | None = None, hint: str | None = None) -> None:
        self.message = message
        self.status = status
        self.hint = hint
        super().__init__(message)

    def __str__(self) -> str:
        text = self.message + (f" ({self.hint})" if self.hint else "")
        return text + (f" (HTTP {self.status})" if self.status is not None else "")


class Client:
    """A connection to the service at ``url`` with the user token ``token``.

    Both default to the settings (``HPO_API_URL``, ``HPO_API_TOKEN``). Raises
    :class:`ServiceError` at once if there is no token. Use it as a context manager, or
    call :meth:`close`.
    """

    def __init__(
        self, url: str | None = None, token: str | None = None, *, timeout_s: float = 30
    ) -> None:
        settings = get_settings() if url is None or token is None else None
        if url is None:
            assert settings is not None
            url = settings.api_url
        if token is None:
            assert settings is not None
            token = settings.api_token.get_secret_value() if settings.api_token else None
        if not token:
            raise ServiceError(
                "HPO_API_TOKEN is not set: the service needs the user token "
                "(`hpo up` prints it when it starts)"
            )
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout_s, headers={"Authorization": f"Bearer {token}"}
        )

    def __repr__(self) -> str:
        return f"Client({self.url!r})"  # never the token

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    # --- studies ----------------------------------------------------------------------

    def submit(
        self,
        spec: Mapping[str, Any] | StudyCreate,
        *,
        wait: bool = False,
        on_progress: Callable[[StudyOut], None] | None = None,
        poll_s: float = 1.0,
        idempotency_key: str | None = None,
    ) -> StudyOut:
        """Submit a study (a spec as in ``POST /studies``, a dict or a ``StudyCreate``).

        Returns the study as created (its ``warnings`` say e.g. that a data set may be
        unavailable), or with ``wait=True`` as it ends (see :meth:`wait`). With an
        ``idempotency_key`` a retried submission gets the first answer instead of a 409.
        """
        body = spec.model_dump(mode="json") if isinstance(spec, BaseModel) else dict(spec)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        study = StudyOut.model_validate(self._json("POST", "/studies", json=body, headers=headers))
        if not wait:
            return study
        return self.wait(study, on_progress=on_progress, poll_s=poll_s)

    def get(self, study: StudyRef) -> StudyOut:
        """A study now: status, trial counts, best trial, final model. By id or by name;
        an unknown one raises :class:`ServiceError` with status 404."""
        if isinstance(study, StudyOut):
            study = study.id
        if isinstance(study, int):
            return StudyOut.model_validate(self._json("GET", f"/studies/{study}"))
        found = []
        if re.fullmatch(NAME_PATTERN, study):  # (no study can have another name)
            found = _STUDIES.validate_python(self._json("GET", "/studies", params={"name": study}))
        if not found:
            raise ServiceError(f"no study named {study!r}", 404)
        return found[0]

    def list(self) -> builtins.list[StudyOut]:
        """Every study, oldest first."""
        return _STUDIES.validate_python(self._json("GET", "/studies"))

    def trials(self, study: StudyRef) -> builtins.list[TrialOut]:
        """A study's trials, each with its whole configuration (``params``), state, value,
        epochs run, duration and failure reason."""
        return _TRIALS.validate_python(self._json("GET", f"/studies/{self._id(study)}/trials"))

    def report(self, study: StudyRef, *, save: bool = False) -> ReportOut:
        """Why trials went wrong and what to change: importances, findings per parameter
        value, advice, and a suggested next spec; ``save`` also writes it to the dashboard."""
        method = "POST" if save else "GET"
        return ReportOut.model_validate(self._json(method, f"/studies/{self._id(study)}/report"))

    def best(self, study: StudyRef) -> BestTrial | None:
        """The best trial so far (number, value, params), or ``None`` if no trial has
        completed. The retrained model's test score is in ``get(study).final_model``."""
        return self.get(study).best

    def stop(self, study: StudyRef) -> StudyOut:
        """Stop a study: no more trials are handed out, running ones stop at their next
        report. Stopping a study that is over changes nothing."""
        return StudyOut.model_validate(self._json("POST", f"/studies/{self._id(study)}/stop"))

    def wait(
        self,
        study: StudyRef,
        on_progress: Callable[[StudyOut], None] | None = None,
        *,
        poll_s: float = 1.0,
    ) -> StudyOut:
        """Poll until the study is over (stopped, failed, or completed with its best model
        retrained or given up on) and return it; ``on_progress`` gets the study at each
        poll, the last one included."""
        study_id = self._id(study)
        while True:
            current = self.get(study_id)
            if on_progress is not None:
                on_progress(current)
            if study_is_over(current.status, current.final_model.state):
                return current
            time.sleep(poll_s)

    def download_model(self, study: StudyRef, path: str | Path) -> Path:
        """Save the study's retrained best model (a ``.keras`` file, optimizer included) at
        ``path``, or inside it under the service's file name if ``path`` is a directory.
        Returns where it was saved. A 404 means there is no model yet (see
        ``get(study).final_model``)."""
        study_id = self._id(study)
        r = self._request("GET", f"/studies/{study_id}/model")
        target = Path(path)
        if target.is_dir():
            match = re.search(r'filename="([^"/\\]+)"', r.headers.get("content-disposition", ""))
            target = target / (match.group(1) if match else f"study-{study_id}-best.keras")
        target.write_bytes(r.content)
        return target

    # --- data sets --------------------------------------------------------------------

    def upload_dataset(
        self,
        name: str,
        data: str | Path | bytes,
        *,
        label_column: str | None = None,
        task: Literal["classification", "regression"] | None = None,
        filename: str | None = None,
        idempotency_key: str | None = None,
    ) -> DatasetOut:
        """Upload a data set: a CSV with a header row (name its ``label_column``) or an NPZ
        with arrays ``x`` and ``y``, as a path or as bytes. ``task`` defaults to what the
        labels look like. A bad file raises :class:`ServiceError` (422) with the reason."""
        if isinstance(data, bytes):
            content = data
            filename = filename or ("data.npz" if data[:2] == b"PK" else "data.csv")
        else:
            try:
                content = Path(data).read_bytes()
            except OSError as exc:
                raise ServiceError(f"cannot read {data}: {exc.strerror}") from exc
            filename = filename or Path(data).name
        form = {"name": name}
        if label_column is not None:
            form["label_column"] = label_column
        if task is not None:
            form["task"] = task
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        answer = self._json(
            "POST",
            "/datasets",
            data=form,
            files={"file": (filename, content, "application/octet-stream")},
            headers=headers,
        )
        return DatasetOut.model_validate(answer)

    def datasets(self) -> builtins.list[DatasetOut]:
        """The built-in data sets and every upload."""
        return _DATASETS.validate_python(self._json("GET", "/datasets"))

    # --- HTTP -------------------------------------------------------------------------

    def _id(self, study: StudyRef) -> int:
        if isinstance(study, StudyOut):
            return study.id
        return study if isinstance(study, int) else self.get(study).id

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self._request(method, path, **kwargs)
        try:
            return r.json()
        except ValueError as exc:
            raise ServiceError(
                f"the service answered {method} {path} with something other than JSON",
                r.status_code,
            ) from exc

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise ServiceError(
                f"the service at {self.url} did not answer within {self.timeout_s:g}s"
            ) from exc
        except httpx.TransportError as exc:
            raise ServiceError(
                f"cannot reach the service at {self.url} ({exc or type(exc).__name__}); "
                "is `hpo api` running, and is HPO_API_URL right?"
            ) from exc
        if r.status_code >= 400:
            raise _error(r)
        return r


def _error(r: httpx.Response) -> ServiceError:
    try:
        body = r.json()
        message = body.get("message") if isinstance(body, dict) else None
    except ValueError:
        message = None
    message = str(message or r.text or r.reason_phrase)
    hint = "is HPO_API_TOKEN the service's user token?" if r.status_code == 401 else None
    return ServiceError(message, r.status_code, hint)
