"""Workers the service has seen lately."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from service.api.auth import USER
from service.api.bodies import JsonRoute
from service.api.deps import RuntimeDep
from service.api.schemas import error_responses
from service.domain import workers_seen

router = APIRouter(
    route_class=JsonRoute,
    prefix="/workers",
    tags=["workers"],
    dependencies=[USER],
    responses=error_responses(401, 503),
)


class WorkerOut(BaseModel):
    id: str
    host: str | None
    pid: int | None
    last_seen: datetime
    current: dict[str, Any] | None


@router.get("", response_model=list[WorkerOut])
def list_workers(rt: RuntimeDep) -> list[WorkerOut]:
    """Live workers (seen within two lease lengths): id, host, pid, what they hold, when
    last seen."""
    return [WorkerOut(**w) for w in workers_seen.live(rt)]
