"""The HTTP front: ClickHouse's HTTP interface on top of the executor.

Threaded (one thread per connection, HTTP/1.1 keep-alive) because chDB releases the GIL
while it works, so slow queries do not block other clients. Each request is logged as one
line on stderr; passwords and query text are never logged (queries can contain secrets).

Before anything of a request is echoed or logged, its header fields and URL parameters are
checked for control characters (400), and before its body is read the credentials are
checked (and failed logins throttled): an anonymous client can make us read at most
``UNAUTHENTICATED_DRAIN_BYTES`` of body.
"""

from __future__ import annotations

import json
import logging
import secrets
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from email.errors import InvalidHeaderDefect, MissingHeaderBodySeparatorDefect
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from .auth import Credentials, User, UserDirectory, extract_credentials
from .compression import Encoder, choose_response_encoding, make_encoder
from .engine import Engine
from .errors import ClickHouseError
from .executor import Executor, HttpQuery, Reply, content_type_for
from .login_throttle import LoginThrottle, LoginThrottled
from .policy import grants_from_users_file
from .request import (
    MAX_FORM_BYTES,
    RequestBody,
    check_fields,
    check_headers,
    is_true,
    parse_multipart,
    parse_query_string,
    printable,
)
from .sessions import SessionManager

log = logging.getLogger("clickhouse_endpoint")

SHUTDOWN_GRACE_S = 10.0
SESSION_REAP_INTERVAL_S = 5.0
# A client that sends nothing for this long (an idle keep-alive connection, a half-sent body)
# is disconnected, so a few sockets cannot hold threads forever.
SOCKET_TIMEOUT_S = 120.0
# Of a refused request's body, at most this much is read (so the client sees the error
# instead of a broken pipe); beyond it the connection is closed instead.
UNAUTHENTICATED_DRAIN_BYTES = 1 << 20
AUTHENTICATED_DRAIN_BYTES = 64 << 20


class EndpointApp:
    """Everything a request handler needs, plus orderly shutdown of the engine."""

    def __init__(
        self, engine: Engine, users: UserDirectory, throttle: LoginThrottle | None = None
    ) -> None:
        self.engine = engine
        self.users = users
        self.throttle = throttle or LoginThrottle()
        self.sessions = SessionManager(engine)
        self.executor = Executor(engine, self.sessions)
        self.display_name = socket.gethostname()
        self._inflight = 0
        self._idle = threading.Condition()
        self._closing = False

    @contextmanager
    def request_slot(self) -> Iterator[None]:
        with self._idle:
            if self._closing:
                raise ClickHouseError(210, "The endpoint is shutting down", "NETWORK_ERROR")
            self._inflight += 1
        try:
            yield
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def close(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Refuse new queries, let running ones finish, then release chDB and its data dir."""
        deadline = time.monotonic() + grace_s
        with self._idle:
            self._closing = True
            while self._inflight and (remaining := deadline - time.monotonic()) > 0:
                self._idle.wait(remaining)
            if self._inflight:
                log.warning("closing chDB with %d request(s) still running", self._inflight)
        self.sessions.close_all()
        self.engine.close()


class EndpointServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], app: EndpointApp, socket_timeout_s: float = SOCKET_TIMEOUT_S
    ) -> None:
        self.app = app
        self.socket_timeout_s = socket_timeout_s
        super().__init__(address, EndpointHandler)

    def handle_error(self, request, client_address) -> None:
        """A client hanging up between requests is normal (keep-alive pools); not a traceback."""
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


def _malformed_header_block(headers: Message) -> bool:
    """True when the stdlib's header parser met a line it could not take as a header field.

    It then stops, silently, and keeps the rest as a "payload"; multipart defects are ignored
    (the parser expects a multipart body after a multipart Content-Type, which is normal).
    """
    payload = headers.get_payload()
    return (isinstance(payload, str) and payload != "") or any(
        isinstance(defect, MissingHeaderBodySeparatorDefect | InvalidHeaderDefect)
        for defect in headers.defects
    )


class _ClientGone(Exception):
    """The client closed the connection while we were writing the response."""


class EndpointHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the second one waits for
    # the client's delayed ACK and every small response takes ~40 ms longer.
    disable_nagle_algorithm = True
    server_version = "ClickHouse"
    sys_version = ""
    timeout = SOCKET_TIMEOUT_S
    server: EndpointServer
    _response_started = False
    _drain_limit = UNAUTHENTICATED_DRAIN_BYTES

    def setup(self) -> None:
        self.timeout = self.server.socket_timeout_s
        super().setup()

    def send_header(self, keyword: str, value: str) -> None:
        """Last line of defence against response splitting: no control character goes out.

        Everything echoed is checked on the way in; this catches what a future header might
        take from elsewhere (a format name, a time zone from the query text).
        """
        safe = printable(str(value))
        # http.server encodes headers as latin-1; send other text as its UTF-8 bytes, as
        # ClickHouse echoes them, instead of failing on a query_id like "bericht-€".
        safe = safe.encode("utf-8", "replace").decode("latin-1")
        super().send_header(printable(keyword), safe)

    def version_string(self) -> str:
        return "ClickHouse"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence the stdlib access log; ``_log_request`` writes one richer line instead."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        try:
            if _malformed_header_block(self.headers):
                # A line that is no header field (or a bare CR inside one) ends the stdlib's
                # header parsing early: the fields after it, Content-Length included, would be
                # silently dropped and the body read as the next request (request smuggling).
                raise ClickHouseError(36, "Malformed HTTP header block", "BAD_ARGUMENTS")
            check_headers(self.headers.items())
        except ClickHouseError as exc:
            self.close_connection = True  # the framing of what follows is not to be trusted
            self._fail(exc, None, str(uuid.uuid4()))
            self._log_request(
                method, "-", "-", {}, exc.http_status, exc.code, None, time.monotonic()
            )
            return
        if url.path in ("/ping", "/replicas_status"):
            self._send_plain(200, b"Ok.\n")
        elif url.path in ("", "/"):
            self._handle_query(method, url.query)
        else:
            body = f"There is no handle {url.path}\n\nUse / or /ping for health checks.\n"
            self._send_plain(404, body.encode())

    # -- the query path ---------------------------------------------------------------------

    def _handle_query(self, method: str, query_string: str) -> None:
        app = self.server.app
        started = time.monotonic()
        self._response_started = False
        params: dict[str, str] = {}
        query_id = str(uuid.uuid4())
        user_name = "-"
        status, code, reply = 200, 0, None
        body: RequestBody | None = None
        self._drain_limit = UNAUTHENTICATED_DRAIN_BYTES
        try:
            params = parse_query_string(query_string)
            query_id = params.get("query_id") or query_id
            if method == "GET" and "query" not in params:
                # ClickHouse answers a bare GET / as a health check, without authentication.
                self._send_plain(200, b"Ok.\n")
                return
            if method == "POST":
                body = RequestBody(self.rfile, self.headers)
            credentials = extract_credentials(self.headers, params)
            user_name = credentials.user
            user = self._authenticate(credentials)
            self._drain_limit = AUTHENTICATED_DRAIN_BYTES
            query_body, files = body, {}
            content_type = self.headers.get("Content-Type") or ""
            if body is not None and content_type.lower().startswith("multipart/form-data"):
                form = parse_multipart(content_type, body.read_all(MAX_FORM_BYTES))
                check_fields(form.fields.items(), "form field")
                params.update(form.fields)
                query_body, files = None, form.files
            with app.request_slot():
                reply = app.executor.run(HttpQuery(method, params, query_body, files), user)
                try:
                    self._send_reply(reply, params, query_id)
                finally:
                    reply.close()
        except ClickHouseError as exc:
            status, code = exc.http_status, exc.code
            self._fail(exc, body, query_id)
        except _ClientGone:
            status, code = 499, 210
            self.close_connection = True
        except Exception as exc:  # a bug or an engine surprise: report it, keep serving
            log.exception("unexpected error while serving query %s", query_id)
            error = ClickHouseError(1001, f"{type(exc).__name__}: {exc}", "STD_EXCEPTION")
            status, code = error.http_status, error.code
            self._fail(error, body, query_id)
        finally:
            if (
                body is not None
                and not body.fully_read
                and not self.close_connection
                and not body.drain(self._drain_limit)
            ):
                self.close_connection = True
            self._log_request(method, user_name, query_id, params, status, code, reply, started)

    def _authenticate(self, credentials: Credentials) -> User:
        """Check the password unless the address or the user name is locked by the throttle."""
        app = self.server.app
        address = str(self.client_address[0])
        app.throttle.check(address, credentials.user)
        try:
            return app.users.authenticate(credentials)
        except ClickHouseError:
            app.throttle.failed(address, credentials.user)
            raise

    def _fail(self, error: ClickHouseError, body: RequestBody | None, query_id: str) -> None:
        if self._response_started:
            # Headers are out; _send_reply already wrote the error into the stream.
            self.close_connection = True
            return
        # Read what is left of the body first: a client still sending it would otherwise see
        # a broken pipe instead of our error.
        if body is not None and not body.fully_read and not body.drain(self._drain_limit):
            self.close_connection = True
        payload = error.render(self.server.app.engine.info.version).encode(
            "utf-8", "surrogateescape"
        )
        self._headers_buffer = []  # drop any half-built success headers
        try:
            self.send_response(error.http_status)
            self._common_headers(query_id)
            self.send_header("Content-Type", "text/plain; charset=UTF-8")
            self.send_header("X-ClickHouse-Exception-Code", str(error.code))
            if isinstance(error, LoginThrottled):
                self.send_header("Retry-After", str(error.retry_after_s))
            self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True

    def _common_headers(self, query_id: str, timezone: str | None = None) -> None:
        info = self.server.app.engine.info
        self.send_header("X-ClickHouse-Query-Id", query_id)
        self.send_header("X-ClickHouse-Server-Display-Name", self.server.app.display_name)
        self.send_header("X-ClickHouse-Timezone", timezone or info.timezone)
        self.send_header("Keep-Alive", "timeout=10, max=10000")

    def _response_encoder(self, params: dict[str, str]) -> tuple[str | None, Encoder | None]:
        requested = params.get("enable_http_compression")
        enabled = (
            is_true(requested)
            if requested is not None
            else self.server.app.engine.info.http_compression_default
        )
        if not enabled:
            return None, None
        encoding = choose_response_encoding(self.headers.get("Accept-Encoding"))
        return (encoding, make_encoder(encoding)) if encoding else (None, None)

    def _send_reply(self, reply: Reply, params: dict[str, str], query_id: str) -> None:
        encoding, encoder = self._response_encoder(params)
        self.send_response(200)
        self._common_headers(query_id, reply.timezone)
        self.send_header("Content-Type", content_type_for(reply.format))
        if reply.format is not None:
            self.send_header("X-ClickHouse-Format", reply.format)
        if encoding:
            self.send_header("Content-Encoding", encoding)
        if reply.stream is None:
            payload = reply.body
            if encoder is not None:
                payload = encoder.compress(payload) + encoder.finish()
            self.send_header("X-ClickHouse-Summary", json.dumps(reply.outcome.summary()))
            self.send_header("Content-Length", str(len(payload)))
            # Release the session before the client can see the response end, or its next
            # request could find the session still locked.
            reply.close()
            self._end_headers()
            self._write(payload)
            return
        tag = secrets.token_hex(8)
        self.send_header("X-ClickHouse-Summary", json.dumps(reply.outcome.summary()))
        self.send_header("X-ClickHouse-Exception-Tag", tag)
        self.send_header("Transfer-Encoding", "chunked")
        self._end_headers()
        try:
            for chunk in reply.stream:
                self._write_chunk(encoder.compress(chunk) if encoder else chunk)
        except ClickHouseError as exc:
            # Like ClickHouse: the status is already 200, so the error goes into the body,
            # framed with the exception tag, and the stream is cut short.
            message = exc.render(self.server.app.engine.info.version).encode(
                "utf-8", "surrogateescape"
            )
            block = b"__exception__\r\n%s\r\n%s\n%d %s\r\n__exception__\r\n" % (
                tag.encode(),
                message.rstrip(b"\n"),
                len(message.rstrip(b"\n")),
                tag.encode(),
            )
            self._write_chunk(encoder.compress(block) + encoder.finish() if encoder else block)
            raise
        if encoder is not None:
            self._write_chunk(encoder.finish())
        reply.close()
        self._write(b"0\r\n\r\n")

    def _end_headers(self) -> None:
        self._response_started = True
        try:
            self.end_headers()
        except OSError as exc:
            raise _ClientGone() from exc

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
        except OSError as exc:
            raise _ClientGone() from exc

    def _write_chunk(self, data: bytes) -> None:
        if data:
            self._write(b"%x\r\n" % len(data))
            self._write(data)
            self._write(b"\r\n")

    def _send_plain(self, status: int, payload: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=UTF-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True

    def _log_request(
        self,
        method: str,
        user: str,
        query_id: str,
        params: dict[str, str],
        status: int,
        code: int,
        reply: Reply | None,
        started: float,
    ) -> None:
        outcome = reply.outcome if reply is not None else None
        log.info(
            "%s user=%s query_id=%s session=%s kind=%s status=%d code=%d rows=%d written=%d duration_ms=%.1f",
            method,
            printable(user),
            printable(query_id),
            printable(params.get("session_id") or "-"),
            (reply.statement_kind if reply is not None else "") or "-",
            status,
            code,
            outcome.result_rows if outcome else 0,
            outcome.written_rows if outcome else 0,
            (time.monotonic() - started) * 1000,
        )


def _reap_sessions(app: EndpointApp, stop: threading.Event) -> None:
    while not stop.wait(SESSION_REAP_INTERVAL_S):
        try:
            app.sessions.expire_idle()
        except Exception:  # keep the reaper alive whatever one session does
            log.exception("session reaper failed")


def serve(
    host: str,
    port: int,
    data_dir: str,
    users_file: str | None,
    anonymous_default: bool = False,
    socket_timeout_s: float = SOCKET_TIMEOUT_S,
) -> None:
    """Serve the ClickHouse HTTP protocol for ``data_dir`` until SIGTERM/SIGINT.

    Blocks. On a signal it stops accepting, waits (briefly) for running queries, then closes
    chDB so the data directory is flushed and free for the next process. Without a users file
    nobody may log in, unless ``anonymous_default`` asks for a bare server's passwordless,
    writable ``default`` user (development only).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(
            stream=sys.stderr,
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )
    if users_file is not None:
        users = UserDirectory.from_file(users_file)
    elif anonymous_default:
        users = UserDirectory.anonymous_default()
        log.warning("no users file: anyone may log in as the writable user 'default'")
    else:
        raise ValueError(
            "no users file given: pass --users-file FILE, or --anonymous-default to let anyone "
            "in as a writable 'default' user without password (development only)"
        )
    grants = grants_from_users_file(users_file)
    engine = Engine(data_dir)
    app = EndpointApp(engine, users)
    app.executor.grants = grants
    try:
        server = EndpointServer((host, port), app, socket_timeout_s)
    except OSError:
        engine.close()
        raise
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        if not stop.is_set():
            log.info("received %s, shutting down", signal.Signals(signum).name)
            stop.set()
            # shutdown() waits for serve_forever() to return, so it cannot run on this thread.
            threading.Thread(target=server.shutdown, name="endpoint-shutdown", daemon=True).start()

    def reload_users(_signum: int, _frame: object) -> None:
        # `casestream analysts add` rewrites the users file and sends SIGHUP: new analysts log
        # in without a restart (which would drop every session). A file that does not load
        # keeps the users already loaded.
        try:
            fresh = UserDirectory.from_file(users_file)  # type: ignore[arg-type]
            fresh_grants = grants_from_users_file(users_file)
        except ValueError as exc:
            log.error("users file not reloaded, keeping the loaded users: %s", exc)
            return
        # Grants first: a user must never be able to log in before its grants are in place
        # (a user without an entry is ungranted, i.e. reaches every database).
        app.executor.grants = fresh_grants
        app.users = fresh
        log.info("users reloaded: %s", ",".join(fresh.names))

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, request_stop)
        if users_file is not None:
            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload_users)
    reaper = threading.Thread(
        target=_reap_sessions, args=(app, stop), name="session-reaper", daemon=True
    )
    reaper.start()
    bound_host, bound_port = server.server_address[:2]
    log.info(
        "ClickHouse endpoint (chDB %s) listening on http://%s:%s/ data_dir=%s users=%s",
        engine.info.version,
        bound_host,
        bound_port,
        engine.data_dir,
        ",".join(users.names),
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        stop.set()
        server.server_close()
        app.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("ClickHouse endpoint stopped")
