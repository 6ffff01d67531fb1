"""Deadlines on reading a request that uvicorn does not have, as a small subclass of its
HTTP protocol (httptools, what ``http="auto"`` picks), passed to ``uvicorn.run`` as
``http=``; each process of ``--processes N`` builds its own from the ``HPO_*`` settings.

uvicorn closes an idle kept-alive connection (``timeout_keep_alive``, 5 s), but a client
that connects and sends half a request header, or nothing, is held forever, and so is one
that got an early answer (a 401, a 413 from the Content-Length) and then trickles the rest
of the body. uvicorn's ``limit_concurrency`` does not help: it counts such connections and
answers 503 to the complete requests instead. This class adds:

- **header deadline**: the request line and headers must arrive within
  ``HPO_HEADER_TIMEOUT_S`` of the connection opening, or of the first byte of the next
  request on a kept-alive connection. Else ``408`` and the connection is closed (closed
  without an answer if nothing was sent). A total deadline, not an idle one, so sending a
  byte now and then does not extend it.
- **header size**: more than ``MAX_HEADER_BYTES`` before the headers end: ``431``, closed
  (httptools buffers a header of any size).
- **incomplete requests**: at most ``HPO_MAX_INCOMPLETE_REQUESTS`` connections of a process
  may be waiting for their headers. A new one beyond that closes the oldest (``503``), so a
  client that sends its request at once is still served while others hold connections.
- **drain deadline**: after an answer sent before the body was read, the rest of the body
  is discarded for at most ``HPO_BODY_TIMEOUT_S``, then the connection is closed.

The deadline on a body a route reads is ``service.api.limits`` (same setting).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.config import get_settings

MAX_HEADER_BYTES = 64 * 1024
"""The most a request line and headers may take (nginx allows 32 KiB, h11 16 KiB)."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """One connection: uvicorn's protocol, plus the deadlines above."""

    awaiting: ClassVar[dict[GuardedHttpProtocol, None]] = {}
    """This process's connections waiting for a request's headers, oldest first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.header_timeout_s = settings.header_timeout_s
        self.body_timeout_s = settings.body_timeout_s
        self.max_incomplete = settings.max_incomplete_requests
        self.deadline: asyncio.TimerHandle | None = None
        self.header_bytes = 0
        self.body_done = True

    # -- the states: waiting for headers, reading the body, draining it after an answer

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self not in self.awaiting:  # the next request of a kept-alive connection
            self._await_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self in self.awaiting and not self.transport.is_closing():
            # (may count the tail of a previous request's body: a bound, not a meter)
            self.header_bytes += len(data)
            if self.header_bytes > MAX_HEADER_BYTES:
                self._give_up(431, f"the request's headers are over {MAX_HEADER_BYTES} bytes")

    def on_headers_complete(self) -> None:
        self._stop_waiting()
        self.body_done = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.body_done = True
        self._cancel()
        drained = self.cycle is not None and self.cycle.response_complete
        super().on_message_complete()
        if drained and self.timeout_keep_alive_task is None and not self.transport.is_closing():
            # uvicorn armed its keep-alive timer with the answer; the body's rest disarmed it.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.body_done and self.cycle.response_complete and not self.transport.is_closing():
            self._arm(self.body_timeout_s, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    # -- helpers

    def _await_headers(self) -> None:
        while len(self.awaiting) >= self.max_incomplete:
            oldest = next(iter(self.awaiting))
            oldest._give_up(
                503,
                f"more than {self.max_incomplete} requests are arriving at once "
                "(HPO_MAX_INCOMPLETE_REQUESTS); this one had waited longest for its headers",
            )
        self.awaiting[self] = None
        self.header_bytes = 0
        self._arm(self.header_timeout_s, self._headers_late)

    def _headers_late(self) -> None:
        self._give_up(
            408,
            f"the request's headers did not arrive within {self.header_timeout_s:g}s "
            "(HPO_HEADER_TIMEOUT_S)",
        )

    def _give_up(self, status: int, message: str) -> None:
        """Close the connection: with an answer if a request was begun and no other
        answer is being written."""
        self._stop_waiting()
        answer = self.cycle is None or self.cycle.response_complete
        if self.header_bytes and answer and not self.transport.is_closing():
            body = json.dumps({"message": message}).encode()
            head = [STATUS_LINE[status]]
            head += [b"%s: %s\r\n" % pair for pair in self.server_state.default_headers]
            head.append(b"content-type: application/json\r\n")
            head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
            self.transport.write(b"".join(head) + body)
            client = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
            self.logger.info("%s%d, connection closed: %s", client, status, message)
        self.transport.close()

    def _stop_waiting(self) -> None:
        self.awaiting.pop(self, None)
        self._cancel()

    def _arm(self, seconds: float, then: Callable[[], object]) -> None:
        self._cancel()
        self.deadline = self.loop.call_later(seconds, then)

    def _cancel(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
