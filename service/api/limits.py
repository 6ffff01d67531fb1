"""Request body limits, enforced before a route reads the body.

JSON bodies are small (``HPO_MAX_BODY_BYTES``); an upload may be as large as its own
limit plus the multipart framing. A ``Content-Length`` over the limit is refused before
a byte is read; a body without one is counted as it arrives. Starlette's
``RequestBodyLimitResponder`` does the counting; this middleware only picks the limit by
route and names it in the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.middleware.body_limit import RequestBodyLimitResponder
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

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


class BodyLimits:
    """Pure ASGI middleware: one limit per request, chosen by method and path."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
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
        await RequestBodyLimitResponder(self.app, limit.bytes)(scope, receive, send)
