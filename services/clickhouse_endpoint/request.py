"""Turning an HTTP request into what a query needs: parameters, settings and a body stream.

ClickHouse mixes several things into the URL query string: transport options (``query_id``,
``session_id``, ``database``...), bound query parameters (``param_x``) and, for everything
else, query settings. The body may be chunked, compressed (``Content-Encoding``) and, for
clickhouse-connect's form encoding, ``multipart/form-data`` carrying the query and params.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import BinaryIO
from urllib.parse import parse_qsl

from . import sql
from .compression import Decoder, make_decoder
from .errors import ClickHouseError

# URL parameters ClickHouse's HTTP handler consumes itself; they are never query settings.
TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "user",
        "password",
        "quota_key",
        "database",
        "default_format",
        "session_id",
        "session_timeout",
        "session_check",
        "close_session",
        "query_id",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "role",
        "stacktrace",
        "with_stacktrace",
    }
)

BIND_PREFIX = "param_"
_READ_SIZE = 1 << 16
_MAX_CHUNK = 1 << 20

# ClickHouse's ``max_query_size`` default: the SQL text (the query parameter and the body up to
# an INSERT's inline data) may not be longer. Applied before any lexing, because our Python
# lexer is what an oversized query costs: 300 KB of tokens took 3 s to lex and an INSERT whose
# column list kept growing was re-lexed per 4 KB chunk (512 KB: 98 s), with no credentials.
DEFAULT_MAX_QUERY_SIZE = 262144
# A writable user may raise ``max_query_size`` per request, but not past this (1 MiB of tokens
# lexes in about 4 s).
MAX_QUERY_SIZE_CEILING = 1 << 20
# A multipart/form-data body carries external tables besides the query.
MAX_FORM_BYTES = 64 << 20

# C0 controls and DEL, except tab (which HTTP allows in field values). CR and LF in anything
# echoed into a response header split the response; in anything logged they forge log lines.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL_OR_TAB = re.compile(r"[\x00-\x1f\x7f]")
# Values that are data, never echoed into a header or a log line: SQL text (multi-line) and
# bound query parameters (a string value may hold a newline).
_FREE_TEXT_PARAMS = frozenset({"query"})


def _describe(match: re.Match[str]) -> str:
    return f"control character 0x{ord(match.group()):02x} at position {match.start()}"


def _bad_request(message: str) -> ClickHouseError:
    return ClickHouseError(36, message, "BAD_ARGUMENTS")


def printable(value: str) -> str:
    """``value`` with control characters (tab included) escaped, for a log line or a header."""
    return _CONTROL_OR_TAB.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


def parse_query_string(query_string: str) -> dict[str, str]:
    """URL parameters; when a name repeats, the last value wins (as in ClickHouse).

    Refused (400) when a name, or a value other than SQL text and bound parameters, holds a
    control character: ``query_id=abc%0D%0ASet-Cookie:...`` would otherwise be echoed into
    the ``X-ClickHouse-Query-Id`` header, and a ``session_id`` or ``user`` into the log.
    """
    pairs = parse_qsl(query_string, keep_blank_values=True, errors="surrogateescape")
    check_fields(pairs, "URL parameter")
    return dict(pairs)


def check_fields(pairs: Iterable[tuple[str, str]], what: str) -> None:
    """Refuse names and (non free-text) values holding control characters, naming the field."""
    for name, value in pairs:
        if match := _CONTROL_OR_TAB.search(name):
            raise _bad_request(f"{what} name {printable(name)!r} contains {_describe(match)}")
        if name in _FREE_TEXT_PARAMS or name.startswith(BIND_PREFIX):
            continue
        if match := _CONTROL.search(value):
            raise _bad_request(f"{what} {name!r} contains {_describe(match)}")


def check_headers(headers: Iterable[tuple[str, str]]) -> None:
    """Refuse header fields whose name or value holds a control character (tab allowed in values).

    This also refuses obsolete line folding, whose continuation lines reach us as CR LF inside
    the value (RFC 9112 lets a server answer it with 400).
    """
    framing: dict[str, list[str]] = {"content-length": [], "transfer-encoding": []}
    for name, value in headers:
        if match := _CONTROL_OR_TAB.search(name):
            raise _bad_request(f"HTTP header name {printable(name)!r} contains {_describe(match)}")
        if match := _CONTROL.search(value):
            raise _bad_request(f"HTTP header {name!r} contains {_describe(match)}")
        if name.lower() in framing:
            framing[name.lower()].append(value.strip())
    _check_framing(framing["content-length"], framing["transfer-encoding"])


def _check_framing(lengths: list[str], encodings: list[str]) -> None:
    """One unambiguous body length, or the body's end is a matter of opinion (smuggling).

    Refused: two Content-Length or Transfer-Encoding fields, both at once, a length that is
    not a plain number, and any transfer coding but ``chunked`` (RFC 9112 6.1, 6.3).
    """
    if len(lengths) > 1 or len(encodings) > 1 or (lengths and encodings):
        raise _bad_request(
            "Ambiguous request body length: give exactly one Content-Length or "
            "'Transfer-Encoding: chunked'"
        )
    if lengths and not lengths[0].isdigit():
        raise _bad_request(f"Invalid Content-Length: {printable(lengths[0])!r}")
    if encodings and encodings[0].lower() != "chunked":
        raise _bad_request(
            f"Unsupported Transfer-Encoding {printable(encodings[0])!r}: only 'chunked' is supported"
        )


def query_size_limit(settings: Mapping[str, str], readonly: bool) -> int:
    """The ``max_query_size`` for this request: the URL setting for writable users, capped.

    A read-only user may not change settings (ClickHouse's ``readonly=1``), so the default
    applies to it whatever the URL says; the request is refused for the setting later.
    """
    requested = settings.get("max_query_size")
    if requested is None or readonly:
        return DEFAULT_MAX_QUERY_SIZE
    try:
        value = int(requested.strip())
    except ValueError:
        raise _bad_request(f"Setting max_query_size: {requested!r} is not a number") from None
    if value <= 0:
        raise _bad_request(f"Setting max_query_size must be positive, got {value}")
    return min(value, MAX_QUERY_SIZE_CEILING)


def _query_too_large(limit: int) -> ClickHouseError:
    return ClickHouseError(
        62,
        f"Max query size exceeded (limit {limit} bytes; can be increased with the "
        "`max_query_size` setting)",
        "SYNTAX_ERROR",
    )


def split_params(params: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Separate (settings, bound query parameters) from the transport parameters."""
    settings: dict[str, str] = {}
    binds: dict[str, str] = {}
    for name, value in params.items():
        if name.startswith(BIND_PREFIX):
            binds[name[len(BIND_PREFIX) :]] = value
        elif name not in TRANSPORT_PARAMS:
            settings[name] = value
    return settings, binds


def is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


class RequestBody:
    """The request body as decompressed chunks, read lazily from the socket.

    Handles ``Content-Length`` and ``Transfer-Encoding: chunked`` framing. ``fully_read``
    tells the server whether the connection can be reused for the next keep-alive request.
    """

    def __init__(self, rfile: BinaryIO, headers: Mapping[str, str]) -> None:
        self._rfile = rfile
        self._content_encoding = headers.get("Content-Encoding")
        self._decoder: Decoder | None = None
        transfer_encoding = (headers.get("Transfer-Encoding") or "").lower()
        length_header = headers.get("Content-Length")
        self._chunked = "chunked" in transfer_encoding
        self._remaining = 0
        if not self._chunked and length_header:
            try:
                self._remaining = int(length_header)
            except ValueError:
                raise ClickHouseError(
                    36, f"Invalid Content-Length: {length_header}", "BAD_ARGUMENTS"
                ) from None
        self.fully_read = not self._chunked and self._remaining == 0
        self._raw = self._raw_chunks()
        self._decoded_eof = False

    def _read(self, size: int) -> bytes:
        try:
            return self._rfile.read(size)
        except OSError as exc:  # the socket timeout included: a client that stopped sending
            raise ClickHouseError(
                209, f"Timeout or error while reading the request body: {exc}", "SOCKET_TIMEOUT"
            ) from None

    def _readline(self) -> bytes:
        try:
            return self._rfile.readline(65537)
        except OSError as exc:
            raise ClickHouseError(
                209, f"Timeout or error while reading the request body: {exc}", "SOCKET_TIMEOUT"
            ) from None

    def _raw_chunks(self) -> Iterator[bytes]:
        if self._chunked:
            while True:
                line = self._readline()
                if not line:
                    raise ClickHouseError(
                        210, "Connection closed in the middle of a chunked body", "NETWORK_ERROR"
                    )
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ClickHouseError(
                        36, "Malformed chunk in chunked request body", "BAD_ARGUMENTS"
                    ) from None
                if size == 0:
                    while True:  # trailers, then the blank line
                        trailer = self._readline()
                        if trailer in (b"\r\n", b"\n", b""):
                            break
                    self.fully_read = True
                    return
                while size > 0:
                    data = self._read(min(size, _MAX_CHUNK))
                    if not data:
                        raise ClickHouseError(
                            210, "Connection closed in the middle of a chunk", "NETWORK_ERROR"
                        )
                    size -= len(data)
                    yield data
                self._readline()  # CRLF after the chunk data
        else:
            while self._remaining > 0:
                data = self._read(min(self._remaining, _MAX_CHUNK))
                if not data:
                    raise ClickHouseError(
                        210, "Connection closed before the whole body arrived", "NETWORK_ERROR"
                    )
                self._remaining -= len(data)
                if self._remaining == 0:
                    self.fully_read = True
                yield data

    def read_chunk(self) -> bytes | None:
        """The next non-empty piece of decompressed body, or None at the end."""
        if self._decoded_eof:
            return None
        if self._decoder is None:
            self._decoder = make_decoder(self._content_encoding)
        for raw in self._raw:
            out = self._decoder.decompress(raw)
            if out:
                return out
        self._decoded_eof = True
        tail = self._decoder.finish()
        return tail or None

    def chunks(self) -> Iterator[bytes]:
        while (chunk := self.read_chunk()) is not None:
            yield chunk

    def read_all(self, limit: int, reported_limit: int | None = None) -> bytes:
        """The rest of the body; more than ``limit`` bytes is "Max query size exceeded"."""
        parts: list[bytes] = []
        size = 0
        for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                raise _query_too_large(reported_limit or limit)
            parts.append(chunk)
        return b"".join(parts)

    def drain(self, limit: int = 64 << 20) -> bool:
        """Discard what is left of the body (without decompressing); False if too much remains."""
        discarded = 0
        try:
            for raw in self._raw:
                discarded += len(raw)
                if discarded > limit:
                    return False
        except ClickHouseError:
            return False
        return self.fully_read


@dataclass
class FormData:
    """``multipart/form-data`` parts: plain fields (query, param_x) and uploaded files."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


def parse_multipart(content_type: str, body: bytes) -> FormData:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise ClickHouseError(36, "Malformed multipart/form-data body", "BAD_ARGUMENTS")
    form = FormData()
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        if part.get_filename() is not None:
            form.files[str(name)] = payload
        else:
            form.fields[str(name)] = payload.decode("utf-8", errors="surrogateescape")
    return form


@dataclass
class QueryInput:
    statement: sql.Statement
    insert: sql.InsertSplit | None
    data: Iterator[bytes]


def read_input(
    query_param: str | None, body: RequestBody | None, limit: int = DEFAULT_MAX_QUERY_SIZE
) -> QueryInput:
    """The statement to run and, for an INSERT with inline data, the data stream.

    As in ClickHouse, the ``query`` URL parameter and the body form one text (joined by a
    newline), of which at most ``limit`` bytes (``max_query_size``) may be SQL: the INSERT's
    inline data is not counted. Only as much of the body is buffered as it takes to find where
    the data starts, the rest is streamed into chDB. While looking for it, the buffer at least
    doubles between two lexings, so the text is lexed in time linear in its size (re-lexing on
    every 4 KB chunk made 512 KB of body cost 98 s).
    """
    head = (
        bytearray(query_param.encode("utf-8", "surrogateescape") + b"\n")
        if query_param
        else bytearray()
    )
    if len(head) > limit:
        raise _query_too_large(limit)
    eof = body is None
    target = len(head) + 1
    while True:
        while not eof and len(head) < target:
            chunk = body.read_chunk() if body is not None else None
            if chunk is None:
                eof = True
            else:
                head += chunk
        # ClickHouse parses only the first max_query_size bytes; the statement must end there.
        complete = eof and len(head) <= limit
        split = sql.split_insert(bytes(head[:limit]).decode("latin-1"), complete)
        if split is not sql.NEED_MORE:
            break
        if len(head) >= limit:
            raise _query_too_large(limit)
        target = min(2 * len(head), limit + 1)
    if isinstance(split, sql.InsertSplit):
        # Offsets are byte offsets (the text was decoded as latin-1); re-decode as UTF-8.
        statement_text = (
            bytes(head[: split.statement_end]).decode("utf-8", errors="surrogateescape").strip()
        )
        leading = bytes(head[split.data_offset :])
        rest = body.chunks() if body is not None and not eof else iter(())
        return QueryInput(
            sql.parse_statement(statement_text),
            sql.InsertSplit(
                statement_text, split.input_format, split.data_offset, split.statement_end
            ),
            chain([leading] if leading else [], rest),
        )
    if len(head) > limit:
        raise _query_too_large(limit)
    if not eof and body is not None:
        head += body.read_all(limit - len(head), limit)
    text = bytes(head).decode("utf-8", errors="surrogateescape")
    return QueryInput(sql.parse_statement(text), None, iter(()))
