"""The worker's HTTP client against a real (tiny) HTTP server on 127.0.0.1: its bodies, its
retries of 5xx and transport errors, and giving up at once when the worker stops."""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from search_space.catalog import BUILTIN_DATASETS
from service.protocol import Lease, WorkerInfo
from service.states import Action, JobKind
from workers.client import Rejected, ServiceClient, Unauthorized

WORKER = WorkerInfo(id="w-1", host="h", pid=1)


@dataclass
class Script:
    """What the server answers, in order (the last answer repeats), and what it saw."""

    answers: list[tuple[int, Any]] = field(default_factory=list)
    seen: list[tuple[str, str, Any]] = field(default_factory=list)
    on_request: Any = None

    def answer(self) -> tuple[int, Any]:
        return self.answers[min(len(self.seen) - 1, len(self.answers) - 1)]


class _Handler(BaseHTTPRequestHandler):
    script: Script

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.script.seen.append((self.command, self.path, json.loads(raw) if raw else None))
        if self.script.on_request is not None:
            self.script.on_request()
        status, body = self.script.answer()
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()
    handler = type("Handler", (_Handler,), {"script": script})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    finally:
        httpd.shutdown()
        httpd.server_close()


def _client(url: str, stopping: threading.Event | None = None) -> ServiceClient:
    return ServiceClient(url, worker=WORKER, token="t", retry_max_s=60, stopping=stopping)


RESULT = {"trial_id": 3, "state": "complete", "value": 0.9, "reason": None}


def test_a_503_is_retried_until_the_service_answers(
    server: tuple[str, Script], caplog: pytest.LogCaptureFixture
) -> None:
    url, script = server
    script.answers = [(503, {"message": "database is unavailable"}), (200, {"action": "prune"})]
    with caplog.at_level(logging.WARNING, logger="workers.client"):
        action = _client(url).report(3, 1, 0.5, {"loss": 1.0})
    assert action is Action.PRUNE
    assert len(script.seen) == 2
    (record,) = caplog.records
    assert record.getMessage().startswith("POST /trials/3/report: HTTP 503; retrying in ")


def test_a_stopping_worker_makes_one_try_only(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(503, None)]
    stopping = threading.Event()
    stopping.set()
    with pytest.raises(ConnectionError, match=r"^POST /trials/3/complete failed: HTTP 503$"):
        _client(url, stopping).complete(3, value=0.9, epochs_run=2)
    assert len(script.seen) == 1


def test_a_stop_during_the_retries_ends_them(server: tuple[str, Script]) -> None:
    url, script = server
    stopping = threading.Event()
    script.answers = [(503, None)]
    script.on_request = stopping.set  # SIGTERM arrives while the first try is answered
    with pytest.raises(ConnectionError):
        _client(url, stopping).heartbeat(3)
    assert len(script.seen) == 1


def test_an_unreachable_service_gives_up_at_once_when_stopping() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stopping = threading.Event()
    stopping.set()
    with pytest.raises(ConnectionError, match=r"^POST /trials/lease failed: ConnectError"):
        _client(f"http://127.0.0.1:{port}", stopping).lease()


def test_4xx_is_final(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(409, {"message": "the lease expired"})]
    with pytest.raises(Rejected, match="HTTP 409: the lease expired") as info:
        _client(url).release(3, reason="worker stopping")
    assert info.value.status == 409 and len(script.seen) == 1
    script.answers, script.seen = [(401, {"message": "bad token"})], []
    with pytest.raises(Unauthorized):
        _client(url).lease()
    assert len(script.seen) == 1


def test_bodies_are_the_protocol_models(server: tuple[str, Script]) -> None:
    url, script = server
    client = _client(url)
    script.answers = [(200, {"action": "continue"})]
    client.report(3, 2, 0.5, {"loss": 1.0, "val_loss": math.nan, "aux": math.inf})
    script.answers = [(200, RESULT)]
    found = {
        "code": "dead_units",
        "epoch": 1,
        "layer": "relu_0",
        "value": 0.9,
        "threshold": 0.5,
        "message": "m",
    }
    result = client.complete(
        3,
        value=0.9,
        epochs_run=2,
        history={"loss": [1.0, math.nan]},
        train_val_gap=0.1,
        findings=[found, {**found, "code": "sad_units"}],  # the service would refuse it
        diagnostics_s=0.02,
    )
    assert result.state == "complete" and result.value == 0.9
    assert script.seen == [
        # Non-finite metrics are left out: the service answers 422 to a NaN.
        (
            "POST",
            "/trials/3/report",
            {"worker_id": "w-1", "epoch": 2, "value": 0.5, "metrics": {"loss": 1.0}},
        ),
        (
            "POST",
            "/trials/3/complete",
            {
                "worker_id": "w-1",
                "value": 0.9,
                "epochs_run": 2,
                "history": {"loss": [1.0]},
                "train_val_gap": 0.1,
                "findings": [found],
                "diagnostics_s": 0.02,
            },
        ),
    ]


def test_a_lease_is_parsed_into_the_protocol_model(server: tuple[str, Script]) -> None:
    url, script = server
    lease = {
        "kind": "trial",
        "job_id": 5,
        "trial_id": 3,
        "number": 0,
        "study_id": 1,
        "study_name": "s",
        "params": {"learning_rate": 0.01},
        "dataset": BUILTIN_DATASETS["digits"].to_json(),
        "model": {"family": "cnn"},
        "epochs": 2,
        "metric": "val_accuracy",
        "direction": "maximize",
        "seed": 7,
        "lease_seconds": 60.0,
        "trial_time_limit_s": None,
        "tensorboard": False,
        "max_model_params": 1000,
    }
    script.answers = [(200, lease)]
    job = _client(url).lease()
    assert isinstance(job, Lease)
    assert job.kind is JobKind.TRIAL and job.model.family == "cnn"
    assert job.dataset == BUILTIN_DATASETS["digits"]  # a DatasetInfo, image shape a tuple
    assert script.seen == [("POST", "/trials/lease", {"worker": WORKER.model_dump()})]
    script.answers = [(204, None)]
    assert _client(url).lease() is None
