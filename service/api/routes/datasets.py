"""Data sets: the built-ins, and uploads of the users' own (CSV or NPZ)."""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Response, UploadFile, status

from service.api.auth import USER, USER_OR_WORKER
from service.api.bodies import JsonRoute
from service.api.deps import RuntimeDep
from service.api.idempotency import IdempotencyKey, respond_once
from service.api.schemas import NAME_PATTERN, DatasetOut, error_responses
from service.domain import datasets

router = APIRouter(
    route_class=JsonRoute,
    prefix="/datasets",
    tags=["datasets"],
    responses=error_responses(400, 401, 404, 409, 413, 415, 422, 503),
)


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=DatasetOut, dependencies=[USER]
)
def upload_dataset(
    rt: RuntimeDep,
    name: Annotated[
        str,
        Form(
            pattern=NAME_PATTERN,
            min_length=1,
            max_length=128,
            description="The name studies use as their dataset.",
        ),
    ],
    file: Annotated[
        UploadFile, File(description="CSV with a header row, or NPZ with arrays x and y.")
    ],
    label_column: Annotated[
        str | None, Form(max_length=256, description="CSV: the column holding the labels.")
    ] = None,
    task: Annotated[
        Literal["classification", "regression"] | None,
        Form(description="Default: integer or text labels classify, fractional ones regress."),
    ] = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Upload a data set. 422 naming the reason for a bad file; 413 for one over the limit;
    409 for a taken name. With an ``Idempotency-Key``, a retry gets the first answer."""
    limit = rt.settings.max_upload_bytes
    content = file.file.read(limit + 1)

    def create() -> DatasetOut:
        parsed = datasets.parse_upload(
            filename=file.filename or "",
            content=content,
            label_column=label_column,
            task=task,
            max_bytes=limit,
        )
        return DatasetOut(**datasets.create(rt, name=name, parsed=parsed).to_json())

    request = {
        "name": name,
        "filename": file.filename,
        "label_column": label_column,
        "task": task,
        "sha256": hashlib.sha256(content).hexdigest(),
    }
    return respond_once(
        rt, "POST /datasets", idempotency_key, request, create, status.HTTP_201_CREATED
    )


@router.get("", response_model=list[DatasetOut], dependencies=[USER])
def list_datasets(rt: RuntimeDep) -> list[DatasetOut]:
    """The built-in data sets and every upload."""
    return [DatasetOut(**info.to_json()) for info in datasets.list_all(rt)]


@router.get(
    "/{name}/file",
    response_class=Response,
    dependencies=[USER_OR_WORKER],
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_dataset(name: str, rt: RuntimeDep) -> Response:
    """An uploaded data set as normalised NPZ (x, y); workers cache it by its SHA-256."""
    content, sha256 = datasets.content(rt, name)
    return Response(content, media_type="application/octet-stream", headers={"ETag": f'"{sha256}"'})
