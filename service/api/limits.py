"""Request body limits, enforced before a route reads the body.

JSON bodies are small (``HPO_MAX_BODY_BYTES``); an upload may be as large as its own
limit plus the multipart framing. A ``Content-Length`` over the limit is refused before
a byte is read; a body without one is counted as it arrives. Starlette's
``RequestBodyLimitResponder`` does the counting; this middleware only picks the limit by
route and names it in the answer.

A body must also keep coming: a read that gets no byte for ``HPO_BODY_TIMEOUT_S`` is
answered ``408`` and the connection closed (``service.api.connections`` bounds the rest:
headers, and a body left unread by an early answer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import anyio
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import RequestBodyLimitResponder
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPART_SLACK = 1024 * 1024
"""Room for the form fields and multipart boundaries around an uploaded file."""
MAX_MODEL_BYTES = 512 * 1024**2
"""The largest final model a worker may upload: well under PostgreSQL's 1 GB bytea limit."""
SCOPE_KEY = "hpo.body_limit"


@dataclass(frozen=True)
class Limit:
    bytes: int
    what: str
    """Names the limit in the 413 answer (the setting that raises it)."""

    def answer(self) -> JSONResponse:
        return JSONResponse(
            status_code=413,
            content={
                "message": f"the request body is larger than allowed: at most {self.bytes} "
                f"bytes ({self.what})"
            },
        )


class BodyTimedOut(HTTPException):
    """Raised by a read of the body; FastAPI lets an HTTPException through, and the app's
    handler answers it (``Connection: close``: the rest of the body is not waited for)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            status_code=408,
            detail=f"the request body stalled: no byte of it arrived for {seconds:g}s "
            "(HPO_BODY_TIMEOUT_S)",
            headers={"Connection": "close"},
        )


def _timed(receive: Receive, seconds: float) -> Receive:
    """``receive``, raising BodyTimedOut when no part of the body comes for ``seconds``.
    Once the body is complete, a read waits as long as it takes (that is a wait for the
    client to disconnect, during a streamed answer)."""
    complete = False

    async def timed() -> Message:
        nonlocal complete
        if complete:
            return await receive()
        try:
            with anyio.fail_after(seconds):
                message = await receive()
        except TimeoutError:
            raise BodyTimedOut(seconds) from None
        complete = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    return timed


class BodyLimits:
    """Pure ASGI middleware: one limit per request, chosen by method and path, and a
    deadline on each read of the body."""

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int, body_timeout_s: float
    ) -> None:
        self.app = app
        self.body_timeout_s = body_timeout_s
        self.default = Limit(max_body_bytes, "HPO_MAX_BODY_BYTES")
        self.upload = Limit(
            max_upload_bytes + MULTIPART_SLACK,
            f"a data set file of at most HPO_MAX_UPLOAD_BYTES "
            f"({max_upload_bytes}) bytes, plus the form",
        )
        self.model = Limit(
            MAX_MODEL_BYTES + MULTIPART_SLACK,
            f"a model file of at most {MAX_MODEL_BYTES} bytes, plus the form",
        )

    def limit_for(self, method: str, path: str) -> Limit:
        if method == "POST" and path.rstrip("/") == "/datasets":
            return self.upload
        if method == "POST" and re.fullmatch(r"/jobs/[^/]+/model/?", path):
            return self.model
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        scope[SCOPE_KEY] = limit
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit.bytes:
            await limit.answer()(scope, receive, send)  # refused unread
            return
        receive = _timed(receive, self.body_timeout_s)
        await RequestBodyLimitResponder(self.app, limit.bytes)(scope, receive, send)
