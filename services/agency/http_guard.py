"""Transport-level guards of the gateway: body deadline, no secrets in URLs or access logs.

* :class:`BodyDeadlineMiddleware` (pure ASGI): the request body must arrive within a deadline
  counted from the request's headers. uvicorn has none: ``timeout_keep_alive`` only runs
  *between* requests, and every byte received resets it, so a client trickling a body (or one
  that just stops half-way) held a connection and its worker slot for as long as it liked
  (measured: >= 65 s, then we stopped waiting). Past the deadline the answer is 408 with
  ``Connection: close``. A body the app does not read (a 401, a 404) is not waited for: the
  answer then also closes the connection instead of waiting for the rest of it.
* :class:`SecretsInUrlMiddleware`: a query parameter named like a credential (``token``,
  ``access_token``, ...) or holding a gateway token is refused with 400, so a client that
  put its token there learns it at once (and should revoke it: URLs end up in proxy logs).
* :class:`AccessLogRedaction`: a ``logging.Filter`` for ``uvicorn.access`` that keeps only
  the known harmless query parameters (``wait``, ``timeout``, ``strict``) and replaces every
  other value with ``REDACTED``; uvicorn logs the path with its query string, so a token sent
  in the URL was written to the log before this filter.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qsl, quote

_CLOSE = (b"connection", b"close")

#: Query parameters whose values are safe to log and to accept.
LOGGED_PARAMS = frozenset({"wait", "timeout", "strict"})
#: Query parameter names that carry credentials in common APIs (compared lower-case, with
#: "-" read as "_").
CREDENTIAL_PARAMS = frozenset(
    {
        "token",
        "access_token",
        "api_key",
        "apikey",
        "key",
        "auth",
        "authorization",
        "bearer",
        "password",
        "secret",
        "id_token",
        "refresh_token",
        "jwt",
    }
)
TOKEN_PREFIX = "csgw_"


def _json_response(status: int, code: str, message: str) -> tuple[dict, dict]:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            _CLOSE,
        ],
    }
    return start, {"type": "http.response.body", "body": body, "more_body": False}


class BodyTimeout(Exception):
    """The request body did not arrive in time (raised inside the app's ``receive``)."""


def _declares_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return value.strip() not in (b"", b"0")
    return False


class BodyDeadlineMiddleware:
    """Cut a request whose body does not arrive within ``timeout`` seconds (408, close)."""

    def __init__(self, app: Any, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.timeout <= 0:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        body_done = not _declares_body(scope.get("headers", []))
        started = False

        async def guarded_receive() -> dict:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                raise BodyTimeout() from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not body_done:  # do not wait for a body nobody reads
                    headers = [h for h in message.get("headers", []) if h[0] != b"connection"]
                    message = {**message, "headers": [*headers, _CLOSE]}
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except BodyTimeout:
            if started:
                raise
            for message in _json_response(
                408,
                "body_timeout",
                f"the request body did not arrive within {self.timeout:g} seconds; the "
                "connection is closed (send the whole body at once, then wait for the answer)",
            ):
                await send(message)


def credential_param(query_string: bytes) -> str | None:
    """The first query parameter name that carries (or looks like it carries) a credential."""
    if not query_string:
        return None
    text = query_string.decode("latin-1")
    for name, value in parse_qsl(text, keep_blank_values=True):
        if name.lower().replace("-", "_") in CREDENTIAL_PARAMS or TOKEN_PREFIX in value:
            return name
    if TOKEN_PREFIX in text:  # also unparsed forms (no "=")
        return "<query>"
    return None


class SecretsInUrlMiddleware:
    """Refuse (400) requests carrying credentials in the query string."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            name = credential_param(scope.get("query_string", b""))
            if name is not None:
                for message in _json_response(
                    400,
                    "credentials_in_url",
                    f"the query parameter {name[:40]!r} carries a credential: URLs are logged "
                    "and cached by proxies, so tokens are accepted only in the header "
                    "'Authorization: Bearer <token>' (revoke a token that was sent in a URL: "
                    "`casestream tokens revoke <id>`)",
                ):
                    await send(message)
                return
        await self.app(scope, receive, send)


def redact_target(target: str) -> str:
    """``/v1/events?wait=true&token=abc`` → ``/v1/events?wait=true&token=REDACTED``."""
    path, sep, query = target.partition("?")
    if TOKEN_PREFIX in path:
        path = "/REDACTED"
    if not sep:
        return path
    parts = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        safe = name in LOGGED_PARAMS and len(value) <= 16 and value.replace(".", "").isalnum()
        known = name in LOGGED_PARAMS or name in CREDENTIAL_PARAMS
        shown_name = name if known else "REDACTED"  # a bare "?<token>" is a name
        parts.append(f"{shown_name}={quote(value) if safe else 'REDACTED'}")
    if not parts and query:
        parts.append("REDACTED")
    return f"{path}?{'&'.join(parts)}"


class AccessLogRedaction(logging.Filter):
    """Redact query-string values in uvicorn's access log lines (args: client, method, path,
    http version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_target(args[2]), *args[3:])
        return True


def install_access_log_redaction() -> None:
    """Add the filter to ``uvicorn.access`` once (idempotent; after uvicorn's log config)."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, AccessLogRedaction) for f in logger.filters):
        logger.addFilter(AccessLogRedaction())


_HEADER_TIMEOUT_BODY = (
    b'{"error":{"code":"header_timeout","message":"the request headers did not arrive in time; '
    b'the connection is closed"}}'
)
_HEADER_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    + f"content-length: {len(_HEADER_TIMEOUT_BODY)}\r\n\r\n".encode()
    + _HEADER_TIMEOUT_BODY
)


def header_deadline_protocol(timeout: float) -> type:
    """uvicorn's h11 protocol with a deadline for a request's headers.

    uvicorn starts no timer before the first request of a connection, and its keep-alive timer
    is reset by every byte: a client sending half a request line (or a header a byte at a time)
    held the connection forever (measured: still open after 30 s, then we stopped waiting) —
    the slowloris attack, before any ASGI middleware sees a request. Here, whenever the
    connection waits for a new request, the headers must be complete within ``timeout``
    seconds; else the server answers 408 and closes the connection.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_timer: asyncio.TimerHandle | None = None
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self._between_requests():
                self._arm_header_timer()
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm_header_timer(self) -> None:
            self._header_timer = self.loop.call_later(timeout, self._header_deadline)

        def _header_deadline(self) -> None:
            self._header_timer = None
            if self._between_requests() and not self.transport.is_closing():
                self.transport.write(_HEADER_TIMEOUT_RESPONSE)
                self.transport.close()

    return HeaderDeadlineH11Protocol
