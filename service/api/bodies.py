"""JSON request bodies read strictly, before any route sees them.

Starlette's ``Request.json()`` is ``json.loads``: it takes a lone UTF-16 surrogate
(``"\\ud800"``) as text, which no database and no JSON answer can encode (a 500 once it
reached SQLite or the error handler); it raises a ``RecursionError`` on deeply nested
arrays and a ``UnicodeDecodeError`` on bytes that are not UTF-8, both of which FastAPI
answers with a generic 400. Here every body is decoded as strict UTF-8, parsed to at most
:data:`MAX_DEPTH` levels, and every string in it, keys included, must be text a database
stores: no lone surrogate, no NUL. Anything else is a 422 naming the body or the field.

Routers use it as ``APIRouter(route_class=JsonRoute)``, FastAPI's documented way to give
routes a request class of their own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

MAX_DEPTH = 64
"""The deepest nesting a body may have: a study spec needs four levels."""


class _BodyError(Exception):
    """A body that parsed but holds something no field may: ``loc`` says where."""

    def __init__(self, loc: list[str | int], msg: str, value: Any) -> None:
        super().__init__(msg)
        self.loc, self.msg, self.value = loc, msg, value


def _text_problem(s: str) -> str | None:
    if "\x00" in s:
        return "holds a NUL character (\\u0000), which a database cannot store"
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = s[exc.start].encode("utf-16", "surrogatepass")[2:][::-1].hex()
        return f"holds a lone UTF-16 surrogate (\\u{bad}), which is not text"
    return None


def _check(value: Any, loc: list[str | int], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _BodyError([], f"is nested deeper than {MAX_DEPTH} levels", None)
    if isinstance(value, str):
        problem = _text_problem(value)
        if problem:
            raise _BodyError(loc, problem, value)
    elif isinstance(value, dict):
        for key, item in value.items():
            problem = _text_problem(key)
            if problem:
                raise _BodyError(loc, f"has a key that {problem}", key)
            _check(item, [*loc, key], depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check(item, [*loc, i], depth + 1)


def parse(raw: bytes) -> Any:
    """The body's JSON value.

    Raises:
        json.JSONDecodeError: not UTF-8, not JSON, or nested too deeply.
        _BodyError: a string in it that is not storable text.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError(
            f"byte {exc.start} is not UTF-8 (0x{raw[exc.start]:02x})", "", 0
        ) from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError(f"nested deeper than {MAX_DEPTH} levels", "", 0) from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise json.JSONDecodeError(str(exc).split(";")[0], "", 0) from None
    _check(value, [], 0)
    return value


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse(await self.body())
        return self._json


def _as_validation_error(exc: Exception) -> RequestValidationError | None:
    """FastAPI wraps what ``json()`` raises: a JSONDecodeError in a RequestValidationError
    (kept as is), anything else in a 400 HTTPException; the cause tells them apart."""
    cause = exc.__cause__
    if isinstance(cause, _BodyError):
        return RequestValidationError(
            [
                {
                    "type": "string_unicode",
                    "loc": ("body", *cause.loc),
                    "msg": cause.msg,
                    "input": cause.value,
                }
            ]
        )
    return None


class JsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def strict(request: Request) -> Response:
            try:
                return await handle(StrictJsonRequest(request.scope, request.receive))
            except Exception as exc:
                better = _as_validation_error(exc)
                if better is None:
                    raise
                raise better from None

        return strict
