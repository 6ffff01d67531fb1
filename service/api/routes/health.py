"""Liveness."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from service.api.auth import USER
from service.api.bodies import JsonRoute
from service.api.deps import RuntimeDep
from service.api.schemas import error_responses

router = APIRouter(route_class=JsonRoute, tags=["health"])


@router.get("/healthz", responses=error_responses(503))
def healthz(rt: RuntimeDep) -> dict[str, str]:
    """The service is up and its database answers. Needs no token."""
    with rt.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return {"status": "ok"}


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[USER],
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **error_responses(401, 503)},
)
def metrics(rt: RuntimeDep) -> Response:
    """Prometheus metrics: studies by status, trials by state, live workers, leases handed
    out, lease latency and trial durations."""
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)
