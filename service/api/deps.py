"""Dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from service.storage.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    # (async: a plain function would cost every call a hop to the thread pool and back)
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]

DbId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Row id (a 32-bit integer).")]
