"""Clients that send slowly, or half, or nothing, against a real `hpo api` over raw sockets:
each is answered or cut off within its deadline (small ones here, with generous slack),
and a client that sends its request at once is still served while others hold
connections. (service/api/connections.py, and the body deadline in service/api/limits.py)"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    USER_TOKEN,
    Api,
    Postgres,
    parse_answer,
    raw_socket,
    read_to_close,
    start_api,
    stop,
)

TIMEOUT_S = 1.0
"""The header and body deadlines of the `quick` API."""
SLACK_S = 10.0
"""How much later than its deadline a cut may come on a loaded machine."""
HALF_HEADER = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: "


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    server = start_api(
        Path(tmp_path_factory.mktemp("quick")),
        header_timeout_s=str(TIMEOUT_S),
        body_timeout_s=str(TIMEOUT_S),
    )
    yield server
    stop(server.process)


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """At most 4 incomplete requests, and a header deadline far beyond the test."""
    server = start_api(
        Path(tmp_path_factory.mktemp("bounded")),
        max_incomplete_requests="4",
        header_timeout_s="300",
    )
    yield server
    stop(server.process)


def _message(body: bytes) -> str:
    return str(json.loads(body)["message"])


def _trickle_until_closed(sock: socket.socket, first: bytes = b"") -> tuple[bytes, float]:
    """Send a byte every 0.2 s until the server closes; what it sent, and how long it took."""
    start = time.monotonic()
    received = first
    sock.settimeout(0.2)
    while time.monotonic() - start < TIMEOUT_S + SLACK_S:
        try:
            sock.sendall(b"x")
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
        if not chunk:
            break
        received += chunk
    else:
        raise AssertionError(f"the server still held the connection after {SLACK_S}s")
    return received, time.monotonic() - start


def _read_one_answer(sock: socket.socket) -> bytes:
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += sock.recv(65536)
    _, headers, body = parse_answer(raw)
    while len(body) < int(headers["content-length"]):
        more = sock.recv(65536)
        body += more
        raw += more
    return raw


def test_half_a_header_is_answered_408_and_closed(quick: Api) -> None:
    with raw_socket(quick.url, timeout_s=TIMEOUT_S + SLACK_S) as sock:
        start = time.monotonic()
        sock.sendall(HALF_HEADER)
        raw = read_to_close(sock)
        waited = time.monotonic() - start
    status, headers, body = parse_answer(raw)
    assert status == 408, raw
    assert headers["connection"] == "close"
    assert "did not arrive within 1s (HPO_HEADER_TIMEOUT_S)" in _message(body)
    assert TIMEOUT_S / 2 < waited < TIMEOUT_S + SLACK_S, waited


def test_a_connection_that_sends_nothing_is_closed(quick: Api) -> None:
    with raw_socket(quick.url, timeout_s=TIMEOUT_S + SLACK_S) as sock:
        assert read_to_close(sock) == b""  # nothing was asked: nothing is answered


def test_a_header_sent_a_byte_at_a_time_is_cut_at_the_deadline(quick: Api) -> None:
    """The deadline is for the whole header, not between bytes."""
    with raw_socket(quick.url) as sock:
        sock.sendall(HALF_HEADER)
        raw, waited = _trickle_until_closed(sock)
    assert parse_answer(raw)[0] == 408, raw
    assert waited < TIMEOUT_S + SLACK_S


def test_the_next_request_on_a_kept_alive_connection_has_a_deadline_too(quick: Api) -> None:
    with raw_socket(quick.url, timeout_s=TIMEOUT_S + SLACK_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        assert parse_answer(_read_one_answer(sock))[0] == 200
        sock.sendall(HALF_HEADER)
        raw = read_to_close(sock)
    assert parse_answer(raw)[0] == 408, raw


def test_headers_over_the_size_limit_are_refused(quick: Api) -> None:
    with raw_socket(quick.url) as sock:
        sock.sendall(HALF_HEADER + b"a" * (64 * 1024))
        raw = read_to_close(sock)
    status, _, body = parse_answer(raw)
    assert status == 431, raw
    assert "over 65536 bytes" in _message(body)


def test_a_body_that_stalls_is_answered_408(quick: Api) -> None:
    body = json.dumps({"name": "stalled", "dataset": "digits", "n_trials": 1, "epochs": 1})
    head = (
        "POST /studies HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {USER_TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with raw_socket(quick.url, timeout_s=TIMEOUT_S + SLACK_S) as sock:
        start = time.monotonic()
        sock.sendall(head.encode() + body[:20].encode())
        raw = read_to_close(sock)  # the answer, then the server closes
        waited = time.monotonic() - start
    status, headers, answer = parse_answer(raw)
    assert status == 408, raw
    assert headers["connection"] == "close"
    assert "no byte of it arrived for 1s (HPO_BODY_TIMEOUT_S)" in _message(answer)
    assert TIMEOUT_S / 2 < waited < TIMEOUT_S + SLACK_S, waited
    with quick.client() as client:
        assert client.get("/studies").json() == []


@pytest.mark.parametrize(
    ("authorization", "length", "status"),
    [
        ("", 100_000, 401),  # no token: refused before the body is read
        (f"Authorization: Bearer {USER_TOKEN}\r\n", 10 * 1024**2, 413),  # over the limit
    ],
)
def test_the_body_of_a_refused_request_is_not_waited_for(
    quick: Api, authorization: str, length: int, status: int
) -> None:
    """Answered at once, unread; then the rest of the body, sent a byte at a time, holds the
    connection no longer than the body deadline."""
    head = (
        f"POST /studies HTTP/1.1\r\nHost: test\r\n{authorization}"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    with raw_socket(quick.url) as sock:
        sock.sendall(head.encode() + b'{"name": ')
        answer = _read_one_answer(sock)
        assert parse_answer(answer)[0] == status, answer
        rest, waited = _trickle_until_closed(sock)
    assert rest == b""  # closed without another answer
    assert waited < TIMEOUT_S + SLACK_S


def test_incomplete_requests_beyond_the_bound_close_the_oldest(bounded: Api) -> None:
    """4 connections hold half a header each; a complete request is still served (the
    oldest incomplete one makes room), and each connection beyond 4 closes the oldest."""
    holders = [raw_socket(bounded.url) for _ in range(4)]
    later: list[socket.socket] = []
    try:
        for sock in holders:
            sock.sendall(HALF_HEADER)
        time.sleep(0.5)  # (so the server has read them: one that sent nothing is not answered)
        with bounded.client() as client:
            assert client.get("/healthz").status_code == 200
        later = [raw_socket(bounded.url) for _ in range(4)]  # the first fills the 4th place
        for sock in later:
            sock.sendall(HALF_HEADER)
        for sock in holders:  # the first made room for the request, the others for `later`
            raw = read_to_close(sock)
            if raw:  # (closed unanswered if the server had not read its half header yet)
                status, _, body = parse_answer(raw)
                assert status == 503, raw
                assert "more than 4 requests are arriving at once" in _message(body)
                assert "HPO_MAX_INCOMPLETE_REQUESTS" in _message(body)
        for sock in later:  # within the bound: still waiting for the rest of their headers
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in holders + later:
            sock.close()


@pytest.mark.slow  # PostgreSQL
def test_every_process_of_processes_n_has_the_deadline(postgres: Postgres, tmp_path: Path) -> None:
    """`--processes 2` builds the app in uvicorn's child processes (the factory path); each
    uses the same protocol and reads the same settings."""
    server = start_api(
        tmp_path,
        database_url=postgres.new_database(),
        processes=2,
        header_timeout_s=str(TIMEOUT_S),
    )
    try:
        socks = [raw_socket(server.url, timeout_s=TIMEOUT_S + SLACK_S) for _ in range(6)]
        for sock in socks:
            sock.sendall(HALF_HEADER)
        for sock in socks:
            with sock:
                assert parse_answer(read_to_close(sock))[0] == 408
    finally:
        stop(server.process)
