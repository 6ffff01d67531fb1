"""The FastAPI application: routes, error mapping, and the lease reaper."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from optuna.exceptions import StorageInternalError
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from search_space import SpaceError
from service import logs
from service.api.auth import AuthGate, Tokens
from service.api.limits import SCOPE_KEY, BodyLimits
from service.api.metrics import Metrics
from service.api.routes import datasets, health, jobs, studies, trials, workers
from service.config import Settings, get_settings
from service.domain import studies as study_rows
from service.domain import workers_seen
from service.domain.feeder import Feeder
from service.domain.reports import reap_expired
from service.domain.sampler_process import SamplerProcess
from service.errors import Invalid, ServiceError
from service.storage.runtime import Runtime

log = logging.getLogger(__name__)


ECHO_CHARS = 200
"""How much of a value an error gives back: an answer is never larger than its request."""


def _text(s: str, limit: int = ECHO_CHARS) -> str:
    """``s`` as an answer can carry it: unencodable characters escaped, long text cut."""
    s = s.encode("utf-8", "backslashreplace").decode("utf-8")
    return s if len(s) <= limit else f"{s[:limit]}... ({len(s)} characters)"


def _echo(value: Any) -> Any:
    """A value given in a request, as it can go back in a JSON answer, shortened."""
    if isinstance(value, bytes):
        return _text(value[: ECHO_CHARS + 1].decode("utf-8", "replace"))
    if isinstance(value, str):
        return _text(value)
    try:
        text = json.dumps(value, allow_nan=False)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # a lone surrogate in a key
    except (TypeError, ValueError):  # NaN, a set, an object: its text
        return _text(repr(value))
    return value if len(text) <= ECHO_CHARS else _text(text)


def _problem(loc: tuple[Any, ...] | list[Any], msg: str, value: Any) -> dict[str, Any]:
    parts = [p if isinstance(p, int) else _text(str(p), 64) for p in loc]
    return {
        "loc": parts,
        "field": ".".join(str(p) for p in parts),
        "msg": _text(msg, 4 * ECHO_CHARS),
        "input": _echo(value),
    }


def _unprocessable(problems: list[dict[str, Any]]) -> JSONResponse:
    message = "; ".join(
        f"{p['field']}: {p['msg']}"
        + (
            ""
            if p.pop("_missing", False)
            else f" (got {json.dumps(p['input'], ensure_ascii=False)})"
        )
        for p in problems
    )
    return JSONResponse(status_code=422, content={"message": message, "detail": problems})


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            kind = err.get("type")
            loc = [p for p in err["loc"] if p != "body"] or ["body"]
            msg, value = err["msg"], err.get("input")
            if isinstance(value, bytes) and loc == ["body"]:
                # A JSON route sent a body of another Content-Type: FastAPI left it unparsed.
                return JSONResponse(
                    status_code=415,
                    content={
                        "message": "the body must be JSON: send it with the header "
                        "'Content-Type: application/json'"
                    },
                )
            if kind == "extra_forbidden":
                msg = "is not an allowed field"
            elif kind == "json_invalid":
                loc, msg, value = ["body"], f"is not valid JSON ({err['ctx']['error']})", None
            problem = _problem(loc, msg, value)
            if kind in ("missing", "json_invalid"):
                problem["input"] = None
                problem["_missing"] = True  # nothing was given to echo back
            problems.append(problem)
        return _unprocessable(problems)

    @app.exception_handler(SpaceError)
    async def _space(_req: Request, exc: SpaceError) -> JSONResponse:
        return _unprocessable([_problem(p.loc, p.msg, p.input) for p in exc.problems])

    @app.exception_handler(Invalid)
    async def _invalid(_req: Request, exc: Invalid) -> JSONResponse:
        response = _unprocessable([_problem(exc.loc, exc.msg, exc.value)])
        response.status_code = exc.status  # 422, or 413 for a file over its limit
        return response

    @app.exception_handler(DataError)
    async def _unstorable(_req: Request, exc: DataError) -> JSONResponse:
        # The database refused a value the request carried (e.g. a NUL byte in a text).
        first = str(exc.orig).splitlines()[0] if exc.orig else "invalid value"
        return _unprocessable(
            [_problem(["body"], f"holds a value the database cannot store: {first}", None)]
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(PoolTimeout)
    @app.exception_handler(StorageInternalError)
    async def _database_down(_req: Request, exc: Exception) -> JSONResponse:
        lost = OperationalError | InterfaceError | PoolTimeout
        cause = exc if isinstance(exc, lost) else exc.__cause__
        if not isinstance(cause, lost):
            raise exc  # not a lost connection: a bug, answered as 500
        log.warning("database unavailable: %s", cause)
        return JSONResponse(
            status_code=503,
            headers={"Retry-After": "2"},
            content={"message": "the database is unavailable; retry shortly"},
        )

    @app.exception_handler(ServiceError)
    async def _service(_req: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status,
            content={"message": str(exc)},
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own answers (404 for an unknown path, 405, 413 from the body limit)
        # in the same shape as ours.
        if exc.status_code == 413 and SCOPE_KEY in req.scope:  # a body without a length
            return req.scope[SCOPE_KEY].answer()
        return JSONResponse(
            status_code=exc.status_code, content={"message": str(exc.detail)}, headers=exc.headers
        )


SWITCH_INTERVAL_S = 0.0005
"""How long a thread may keep the GIL while another waits (Python's default: 5 ms). A
call holding the SQLite write lock releases the GIL at each query; at 5 ms each time,
the threads parsing other requests stretched its hold, and every call behind it, tenfold
(measured with 32 simulated workers: report p95 in seconds)."""

THREADS = 200
"""Requests served at once by one API process (sync routes run in threads)."""


def _reaper(rt: Runtime, stop: threading.Event) -> None:
    while not stop.wait(rt.settings.reap_interval_s):
        try:
            reap_expired(rt)
            workers_seen.forget_stale(rt)
            study_rows.clear_half_made(rt)
        except Exception:  # keep reaping; the next round retries
            log.exception("reaping expired leases failed")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API. Opening the database (and refusing an unmigrated one) happens at start-up.

    Raises:
        ValueError: the tokens are missing, too short or the same (``hpo api`` says so
            before it gets here).
    """
    settings = settings or get_settings()
    tokens = Tokens(settings)
    if not logging.getLogger().handlers:  # a uvicorn child process of `--processes N`
        logs.setup(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = Runtime.open(settings)
        rt.metrics = Metrics(rt)
        app.state.runtime = rt
        # Sync routes run in anyio's thread pool; a lease may wait there for a suggestion
        # (up to HPO_LEASE_WAIT_S), so the pool is larger than anyio's default of 40.
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        stop = threading.Event()
        reaper = threading.Thread(target=_reaper, args=(rt, stop), name="reaper", daemon=True)
        reaper.start()
        # Sampling runs in a process of its own; this process's thread refreshes the
        # cache its pruners read (and restarts the sampler process if it died).
        sampler = SamplerProcess(rt)
        sampler.start()
        refresher = Feeder(rt, samples=False, watch=sampler.ensure_alive)
        refresher.start()
        try:
            yield
        finally:
            stop.set()
            refresher.stop()
            sampler.stop()
            reaper.join(timeout=10)
            rt.close()

    app = FastAPI(
        title="hpo-service",
        summary="Hyperparameter search for Keras models: studies over HTTP, trials leased "
        "to workers, Optuna underneath.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.tokens = tokens
    app.add_middleware(
        BodyLimits,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        body_timeout_s=settings.body_timeout_s,
    )
    app.add_middleware(AuthGate, tokens=tokens)  # (added last: runs first)
    _install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(studies.router)
    app.include_router(trials.router)
    app.include_router(jobs.router)
    app.include_router(datasets.router)
    app.include_router(workers.router)
    return app
