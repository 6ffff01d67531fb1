"""Arbitrary Unicode in every string field of every JSON request body, over real HTTP to a
real uvicorn on a real SQLite file: lone surrogates (``"\\ud800"``), NUL and other control
characters, any code point, and very long strings.

The fields are found by walking the OpenAPI schema the service serves: every string (an
enum's too) in every JSON request body, nested objects and lists included, and the keys of
its free-form objects (``search_space``, ``metrics``, ``history``, ...); beside them, the
string fields of the study spec that the schema leaves free (``fixed.activation``, a
choice of a searched parameter, an enqueued value). Each request is a valid one (a
baseline, for a trial or job leased for the purpose, so the value reaches the code that
stores it) with one field replaced by such a string, sent as ``json.dumps`` writes it
(a surrogate escaped as ``\\ud800``: valid JSON text). Whatever the string:

- the answer is not a 5xx;
- a 4xx names the field in its ``message`` (but 404 and 409, which are about the trial or
  job in the path, or a taken name, not about the value);
- the answer is never larger than the request plus a small constant (an error echoes a
  value shortened, not whole);
- the API logs no traceback.

``HPO_FUZZ_EXAMPLES`` (25) sets the generated strings per field, beside the explicit ones.
"""

from __future__ import annotations

import copy
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from diagnostics.codes import Code
from service.api.app import create_app
from service.config import Settings
from tests.support import AUTH, USER_TOKEN, WORKER_TOKEN, Api, start_api, stop

FUZZ_EXAMPLES = int(os.environ.get("HPO_FUZZ_EXAMPLES", "25"))
SLACK = 4096
"""Bytes an answer may have beyond its request's (a created study's answer is ~2 kB)."""
WORKER = "unicode-fuzz"


class Key:
    """A path segment meaning the key of an object, not a value in it."""

    def __repr__(self) -> str:
        return "<key>"


KEY = Key()
Segment = str | int | Key
FieldPath = tuple[Segment, ...]


def _schema() -> dict[str, Any]:
    app = create_app(
        Settings(api_token=SecretStr(USER_TOKEN), worker_token=SecretStr(WORKER_TOKEN))
    )
    return app.openapi()


SCHEMA = _schema()


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = SCHEMA["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def string_fields(node: dict[str, Any], path: FieldPath = ()) -> list[FieldPath]:
    """Every path to a string in a body of this schema: properties, list items (the
    first), and the keys of objects that take any keys."""
    node = _resolve(node)
    found: list[FieldPath] = []
    for alternative in node.get("anyOf", []) + node.get("oneOf", []) + node.get("allOf", []):
        found += [p for p in string_fields(alternative, path) if p not in found]
    if node.get("type") == "string" and path not in found:
        found.append(path)
    for name, sub in node.get("properties", {}).items():
        found += string_fields(sub, (*path, name))
    if "items" in node:
        found += string_fields(node["items"], (*path, 0))
    extra = node.get("additionalProperties")
    if node.get("type") == "object" and extra is not False and "properties" not in node:
        found.append((*path, KEY))
        if isinstance(extra, dict):
            found += string_fields(extra, (*path, "*"))
    return found


def _json_operations() -> dict[str, dict[str, Any]]:
    """The JSON request body of each operation that takes one, by label."""
    out = {}
    for route, item in SCHEMA["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                out[f"{method.upper()} {route}"] = content["application/json"]["schema"]
    return out


JSON_OPERATIONS = _json_operations()

FINDING = {
    "code": next(iter(Code)).value,
    "epoch": 1,
    "layer": "dense",
    "value": 1.0,
    "threshold": 0.5,
    "message": "a finding",
}
HISTORY = {"loss": [0.5], "val_accuracy": [0.5]}


def _baseline(label: str) -> dict[str, Any]:
    """A valid body for the operation (``WORKER`` holds the lease in the path)."""
    call = label.rsplit("/", 1)[-1]
    if label == "POST /studies":
        return {
            "name": f"u-{uuid.uuid4().hex[:12]}",
            "dataset": "digits",
            "n_trials": 2,
            "epochs": 1,
            "search_space": {
                "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
                "optimizer": {"choices": ["adam", "sgd"]},
            },
            "fixed": {"activation": "relu"},
            "metric": "val_accuracy",
            "direction": "maximize",
            "sampler": "random",
            "pruner": "median",
            "model": {"family": "mlp"},
            "enqueue": [{"optimizer": "adam"}],
            "sanity_check": False,
        }
    if label == "POST /trials/lease":
        return {"worker": {"id": f"{WORKER}-lessee", "host": "fuzz-host", "pid": 1}}
    body: dict[str, Any] = {"worker_id": WORKER}
    if label.startswith("POST /jobs/"):
        jobs = {"sanity": {"passed": True, "detail": "it overfits"}, "heartbeat": {}}
        return {**body, **jobs.get(call, {"reason": "cannot run it"})}
    extra: dict[str, dict[str, Any]] = {
        "report": {"epoch": 1, "value": 0.5, "metrics": {"loss": 0.5}},
        "complete": {
            "value": 0.5,
            "epochs_run": 1,
            "history": HISTORY,
            "train_val_gap": 0.0,
            "findings": [FINDING],
            "diagnostics_s": 0.1,
        },
        "fail": {"reason": "it failed", "epochs_run": 1, "history": HISTORY, "findings": [FINDING]},
        "findings": {"findings": [FINDING]},
        "release": {"reason": "stopping"},
    }
    return {**body, **extra.get(call, {})}


FREE_FIELDS: dict[str, list[FieldPath]] = {
    "POST /studies": [
        ("fixed", "activation"),
        ("fixed", KEY),
        ("search_space", "optimizer", "choices", 0),
        ("search_space", "learning_rate", KEY),
        ("enqueue", 0, "optimizer"),
        ("enqueue", 0, KEY),
    ]
}
"""String fields of the spec inside objects the schema leaves free."""


def _cases() -> list[tuple[str, FieldPath]]:
    cases = []
    for label, body_schema in JSON_OPERATIONS.items():
        paths = string_fields(body_schema) + FREE_FIELDS.get(label, [])
        cases += [(label, path) for path in dict.fromkeys(paths) if "*" not in path]
    return cases


CASES = _cases()


def _dotted(path: FieldPath) -> str:
    """The field as the service names it: the path, dotted; a key by its object."""
    named = path[: path.index(KEY)] if KEY in path else path
    return ".".join(str(p) for p in named)


def _get(body: Any, path: FieldPath) -> Any:
    for part in path:
        body = next(iter(body)) if isinstance(part, Key) else body[part]
    return body


def replaced(body: dict[str, Any], path: FieldPath, text: str) -> dict[str, Any]:
    """``body`` with the string at ``path`` (or the first key there) replaced by ``text``."""
    out = copy.deepcopy(body)
    parent = _get(out, path[:-1])
    last = path[-1]
    if isinstance(last, Key):
        first = next(iter(parent))
        value = parent.pop(first)
        parent[text] = value
    else:
        parent[last] = text
    return out


# Any code point (lone surrogates, NUL and other controls included), a few at a time or
# many: a unit repeated up to 5,000 times, beyond every length limit; the explicit
# examples add a megabyte of each.
ANY_CHAR = st.characters(exclude_categories=())
HOSTILE = st.one_of(
    st.text(ANY_CHAR, max_size=40),
    st.text(st.characters(categories=["Cs", "Cc"]), min_size=1, max_size=8),
    st.builds(
        lambda unit, n: unit * n, st.text(ANY_CHAR, min_size=1, max_size=4), st.integers(1, 5_000)
    ),
)


class Leases:
    """Trials and jobs held by ``WORKER`` for the calls that need one, fresh ones after
    a call that may have ended them."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.client = api.client()
        self.fresh = httpx.Client(  # a connection for each request: a reset is that request's
            base_url=api.url,
            timeout=30,
            auth=AUTH,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        self.held: dict[str, int] = {}
        self._create(n_trials=10_000, sanity_check=False)  # the oldest: trials come from it

    def _create(self, **spec: Any) -> None:
        body = {"name": f"u-{uuid.uuid4().hex[:12]}", "dataset": "digits", "epochs": 1}
        r = self.client.post("/studies", json={**body, "sampler": "random", **spec})
        assert r.status_code == 201, r.text

    def _lease(self, kind: str) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = self.client.post("/trials/lease", json={"worker": {"id": WORKER}})
            assert r.status_code in (200, 204), r.text
            if r.status_code == 200 and r.json()["kind"] == kind:
                lease = r.json()
                return int(lease["trial_id"] if kind == "trial" else lease["job_id"])
            if r.status_code == 204:
                time.sleep(0.1)
        raise AssertionError(f"no {kind} leased in 60 s")

    def path_for(self, label: str) -> str:
        route = label.split(" ", 1)[1]
        if "{trial_id}" in route:
            if "trial" not in self.held:
                self.held["trial"] = self._lease("trial")
            return route.replace("{trial_id}", str(self.held["trial"]))
        if "{job_id}" in route:
            if "job" not in self.held:
                self._create(n_trials=2, sanity_check=True)  # its sanity run comes first
                self.held["job"] = self._lease("sanity")
            return route.replace("{job_id}", str(self.held["job"]))
        return route

    def answered(self, label: str, status: int) -> None:
        """After a 2xx, the trial or job may be over: lease another next time."""
        if 200 <= status < 300 and not label.endswith("/heartbeat"):
            self.held.pop("trial" if "{trial_id}" in label else "job", None)


@pytest.fixture(scope="module")
def leases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Leases]:
    server = start_api(
        Path(tmp_path_factory.mktemp("unicode")),
        lease_seconds="3600",
        suggestions_ahead="100",  # a trial ready for each lease: one per valid request
    )
    held = Leases(server)
    yield held
    held.client.close()
    held.fresh.close()
    stop(server.process)


class LogReader:
    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def new(self) -> str:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        return data.decode("utf-8", "replace")


@pytest.fixture(scope="module")
def log(leases: Leases) -> LogReader:
    return LogReader(leases.api.log)


def test_every_string_field_is_in_its_baseline() -> None:
    """The walk found string fields everywhere, and each baseline has every one (so each
    case replaces a value that is there)."""
    labels = {label for label, _ in CASES}
    assert labels == set(JSON_OPERATIONS) and len(labels) >= 12
    for label, path in CASES:
        assert isinstance(_get(_baseline(label), path), str), (label, path)


def _case_id(label: str, path: FieldPath) -> str:
    return f"{label} {'.'.join('<key>' if p is KEY else str(p) for p in path)}"


@pytest.mark.parametrize(("label", "path"), CASES, ids=[_case_id(*c) for c in CASES])
def test_any_unicode_in_a_string_field(
    leases: Leases, log: LogReader, label: str, path: FieldPath
) -> None:
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(text=HOSTILE)
    @example(text="\ud800")
    @example(text="a\udfffb\ud800")
    @example(text="\x00")
    @example(text="")
    @example(text="\ud800" * 50_000)
    @example(text="é" * 200_000)
    def one(text: str) -> None:
        body = json.dumps(replaced(_baseline(label), path, text))  # ensure_ascii: \ud800
        route = leases.path_for(label)
        r = leases.fresh.post(route, content=body, headers={"Content-Type": "application/json"})
        leases.answered(label, r.status_code)
        shown = f"POST {route} {_dotted(path)}={text[:40]!r} ({len(text)} chars)"
        assert r.status_code < 500, f"{shown} -> {r.status_code}: {r.text[:500]}"
        assert len(r.content) <= len(body) + SLACK, (
            f"{shown} -> {r.status_code}: {len(r.content):,} bytes for {len(body):,}"
        )
        if 400 <= r.status_code < 500 and r.status_code not in (404, 409):
            answer = r.json()
            assert _dotted(path) in answer["message"], f"{shown} -> {r.status_code}: {r.text[:500]}"
            for problem in answer.get("detail") or []:  # the rest of the body was valid
                assert problem["field"].startswith(_dotted(path)), f"{shown}: {problem}"

    log.new()  # what came before is another field's
    one()
    time.sleep(0.3)  # a traceback is logged after its answer is sent
    tail = log.new()
    assert "Traceback" not in tail, f"{label} {_dotted(path)}: the API logged {tail[-3000:]}"
