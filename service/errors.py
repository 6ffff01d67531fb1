"""Domain errors. The HTTP layer (``service.api.app``) maps them to status codes; nothing
below it imports FastAPI."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of the errors the API answers with a 4xx."""

    status = 400


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class Invalid(ServiceError):
    """A request value is not allowed: names the field, the value and what is allowed."""

    status = 422

    def __init__(self, loc: tuple[str | int, ...], msg: str, value: Any) -> None:
        self.loc = loc
        self.msg = msg
        self.value = value
        super().__init__(f"{'.'.join(map(str, loc))} {msg}, got {value!r}")


class TooLarge(Invalid):
    """A value (an uploaded file) is over its size limit."""

    status = 413


class NotMigrated(RuntimeError):
    """The database lacks the service's tables or has an older revision of them."""
