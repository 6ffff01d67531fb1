"""Bearer tokens: ``HPO_API_TOKEN`` for users, ``HPO_WORKER_TOKEN`` for workers.

Every route but ``/healthz`` needs one of them. Users submit, stop and read studies and
data sets; workers lease and report trials. Neither token opens the other's routes, so a
leaked worker host cannot submit or read studies, and a user cannot forge trial results.

Tokens are compared in constant time (their SHA-256 digests, so their length does not
leak either), and every refusal is the same 401, whether the token was missing, wrong or
of the other role. A request with more than one ``Authorization`` header is refused
(``400``) whatever their values: which one counts must not be up to the reader.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.config import Settings
from service.errors import ServiceError

MIN_TOKEN_LENGTH = 16


class Unauthorized(ServiceError):
    status = 401
    headers = {"WWW-Authenticate": "Bearer"}  # noqa: RUF012

    def __init__(self) -> None:
        super().__init__(
            "authentication required: send the header "
            "'Authorization: Bearer <token>' with a valid token"
        )


def generate_token() -> str:
    """A fresh token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def token_problems(settings: Settings) -> list[str]:
    """Why the settings' tokens cannot serve (empty when they can)."""
    problems = []
    tokens = {"HPO_API_TOKEN": settings.api_token, "HPO_WORKER_TOKEN": settings.worker_token}
    for name, secret in tokens.items():
        if secret is None or not secret.get_secret_value():
            problems.append(f"{name} is not set")
        elif len(secret.get_secret_value()) < MIN_TOKEN_LENGTH:
            problems.append(f"{name} is shorter than {MIN_TOKEN_LENGTH} characters")
    values = [s.get_secret_value() for s in tokens.values() if s is not None]
    if len(values) == 2 and values[0] and values[0] == values[1]:
        problems.append(
            "HPO_API_TOKEN and HPO_WORKER_TOKEN are the same; they must differ, "
            "or a worker host could submit and read studies"
        )
    return problems


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _matches(given: HTTPAuthorizationCredentials | None, expected: bytes) -> bool:
    if given is None:
        return False
    return hmac.compare_digest(_digest(given.credentials), expected)


class Tokens:
    """The digests of the two tokens, kept on the app's state."""

    def __init__(self, settings: Settings) -> None:
        problems = token_problems(settings)
        if problems:
            raise ValueError("; ".join(problems))
        assert settings.api_token is not None and settings.worker_token is not None
        self.user = _digest(settings.api_token.get_secret_value())
        self.worker = _digest(settings.worker_token.get_secret_value())

    def allow(self, role: str, given: HTTPAuthorizationCredentials | None) -> bool:
        """Whether ``given`` opens a route of ``role`` (user, worker or either). Both
        tokens are compared whatever the role, so the answer takes as long either way."""
        user, worker = _matches(given, self.user), _matches(given, self.worker)
        return {"user": user, "worker": worker, "either": user or worker}[role]


# Both schemes read the same header; two names document which token a route takes.
_user_scheme = HTTPBearer(
    scheme_name="UserToken",
    auto_error=False,
    description="HPO_API_TOKEN: studies, data sets, reads.",
)
_worker_scheme = HTTPBearer(
    scheme_name="WorkerToken", auto_error=False, description="HPO_WORKER_TOKEN: the trial protocol."
)

Credentials = HTTPAuthorizationCredentials | None


def _tokens(request: Request) -> Tokens:
    tokens: Tokens = request.app.state.tokens
    return tokens


async def _user(request: Request, given: Annotated[Credentials, Depends(_user_scheme)]) -> None:
    if not _tokens(request).allow("user", given):
        raise Unauthorized()


async def _worker(request: Request, given: Annotated[Credentials, Depends(_worker_scheme)]) -> None:
    if not _tokens(request).allow("worker", given):
        raise Unauthorized()


async def _either(
    request: Request,
    given: Annotated[Credentials, Depends(_user_scheme)],
    _also: Annotated[Credentials, Depends(_worker_scheme)],
) -> None:
    if not _tokens(request).allow("either", given):
        raise Unauthorized()


PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
"""Open to anyone: liveness, and the API's description (which opens nothing)."""


def role_of(method: str, path: str) -> str:
    """Who may call ``method path``: open, user, worker or either. The routes declare the
    same through their dependencies (for OpenAPI); tests/test_auth.py checks both."""
    if path in PUBLIC_PATHS:
        return "open"
    if path.startswith(("/trials/", "/jobs/")):
        return "worker"
    if method in ("GET", "HEAD") and path.startswith("/datasets/") and path.endswith("/file"):
        return "either"
    return "user"


class AuthGate:
    """Pure ASGI middleware: refuses a request without the token its route takes before a
    byte of its body is read or parsed, so no one without a token can make the service
    spool an upload or learn how it validates bodies."""

    def __init__(self, app: ASGIApp, tokens: Tokens) -> None:
        self.app = app
        self.tokens = tokens

    def _allowed(self, role: str, header: str) -> bool:
        if role == "open":
            return True
        scheme, _, token = header.partition(" ")
        given = (
            HTTPAuthorizationCredentials(scheme=scheme, credentials=token)
            if scheme.lower() == "bearer" and token
            else None
        )
        return self.tokens.allow(role, given)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).getlist("authorization")
        if len(given) > 1:  # the first or the last? Neither: refused, on every route
            response = JSONResponse(
                status_code=400,
                content={
                    "message": f"the request has {len(given)} Authorization headers: "
                    "send exactly one, 'Authorization: Bearer <token>'"
                },
            )
            await response(scope, receive, send)
            return
        if not self._allowed(role_of(scope["method"], scope["path"]), given[0] if given else ""):
            refusal = Unauthorized()
            response = JSONResponse(
                status_code=refusal.status,
                headers=refusal.headers,
                content={"message": str(refusal)},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


USER = Depends(_user)
"""Routes of users: the user token only."""
WORKER = Depends(_worker)
"""The trial protocol: the worker token only."""
USER_OR_WORKER = Depends(_either)
"""An uploaded data set's file: users may fetch their data back, workers train on it."""
