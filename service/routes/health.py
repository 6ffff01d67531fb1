"""Liveness."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from service.routes.deps import RuntimeDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(rt: RuntimeDep) -> dict[str, str]:
    """The service is up and its database answers."""
    with rt.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return {"status": "ok"}
