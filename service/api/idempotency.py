"""``Idempotency-Key`` on ``POST /studies`` and ``POST /datasets``: a client that retries a
request whose answer it never saw (a timeout, a dropped connection) gets the first answer
again instead of a 409 for a name it took itself, or a second copy.

The key is claimed in the database before the request is processed (one row per route and
key, unique), and the answer is stored with it. A repeat with the same request gets the
stored answer; a repeat while the first is still being processed gets a 409 (retry); the
same key with a different request is a 422. A request that fails gives its key back, so a
retry runs it again. A claim whose request died with its process is taken over after
``ABANDONED_AFTER``. Keys are kept: a key names one request for good.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any, cast

from fastapi import Header
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.exc import IntegrityError

from service.errors import Conflict, Invalid
from service.storage.runtime import Runtime
from service.storage.tables import IdempotencyRow, utcnow

log = logging.getLogger(__name__)

ABANDONED_AFTER = timedelta(minutes=5)
"""A claim still without an answer after this long belongs to a request that died."""

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Any unique string (a UUID, say; printable ASCII, no spaces, at most 255). "
        "Retrying with the same key returns the first answer instead of acting twice.",
    ),
]


def fingerprint(request: Any) -> str:
    """A digest of what a request asks for, to tell a retry from a different request."""
    text = json.dumps(jsonable_encoder(request), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _claim(rt: Runtime, route: str, key: str, digest: str) -> IdempotencyRow | None:
    """Claim ``key``; None when claimed, else the row of the earlier request.

    Raises:
        Invalid: the key was used for a different request.
        Conflict: the earlier request is still being processed.
    """
    now = utcnow()
    try:
        with rt.sessions.begin() as s:
            s.add(IdempotencyRow(route=route, key=key, fingerprint=digest, created_at=now))
        return None
    except IntegrityError:
        pass
    with rt.sessions.begin() as s:
        row = s.scalars(
            select(IdempotencyRow).where(IdempotencyRow.route == route, IdempotencyRow.key == key)
        ).one_or_none()
        if row is None:  # the earlier request failed and gave the key back just now
            raise Conflict("a request with this Idempotency-Key was just being processed; retry")
        if row.fingerprint != digest:
            raise Invalid(
                ("Idempotency-Key",),
                f"was already used for a different {route} "
                "request; use a new key for a new request",
                key,
            )
        if row.status_code is not None:
            return row
        if now - row.created_at < ABANDONED_AFTER:
            raise Conflict(
                "a request with this Idempotency-Key is still being processed; retry shortly"
            )
        # Abandoned: take it over, unless another retry just did.
        taken = cast(
            CursorResult[Any],
            s.execute(
                update(IdempotencyRow)
                .where(
                    IdempotencyRow.id == row.id,
                    IdempotencyRow.status_code.is_(None),
                    IdempotencyRow.created_at == row.created_at,
                )
                .values(created_at=now)
            ),
        )
        if taken.rowcount != 1:
            raise Conflict("a request with this Idempotency-Key is being retried; retry shortly")
    return None


def respond_once(
    rt: Runtime,
    route: str,
    key: str | None,
    request: Any,
    produce: Callable[[], BaseModel],
    status_code: int,
) -> JSONResponse:
    """``produce()``'s answer; with a key, the stored answer of the first request with it.

    ``request`` is what the request asks for (its fingerprint tells retries apart).
    """
    if key is None:
        return JSONResponse(jsonable_encoder(produce()), status_code=status_code)
    with rt.unit_of_work():
        earlier = _claim(rt, route, key, fingerprint(request))
    if earlier is not None:
        return JSONResponse(
            earlier.response,
            status_code=earlier.status_code or status_code,
            headers={"Idempotent-Replayed": "true"},
        )
    mine = (IdempotencyRow.route == route, IdempotencyRow.key == key)
    try:
        body = jsonable_encoder(produce())
    except BaseException:
        try:  # give the key back, so a retry runs the request again
            with rt.unit_of_work(), rt.sessions.begin() as s:
                s.execute(delete(IdempotencyRow).where(*mine, IdempotencyRow.status_code.is_(None)))
        except Exception:  # (the database may be why it failed): taken over later
            log.warning("could not release Idempotency-Key %r of %s", key, route, exc_info=True)
        raise
    with rt.unit_of_work(), rt.sessions.begin() as s:
        s.execute(
            update(IdempotencyRow).where(*mine).values(status_code=status_code, response=body)
        )
    return JSONResponse(body, status_code=status_code)
