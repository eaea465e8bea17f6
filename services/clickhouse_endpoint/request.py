"""Turning an HTTP request into what a query needs: parameters, settings and a body stream.

ClickHouse mixes several things into the URL query string: transport options (``query_id``,
``session_id``, ``database``...), bound query parameters (``param_x``) and, for everything
else, query settings. The body may be chunked, compressed (``Content-Encoding``) and, for
clickhouse-connect's form encoding, ``multipart/form-data`` carrying the query and params.
"""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import parse_qsl

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


def parse_query_string(query_string: str) -> dict[str, str]:
    """URL parameters; when a name repeats, the last value wins (as in ClickHouse)."""
    return dict(parse_qsl(query_string, keep_blank_values=True))


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

    def _raw_chunks(self) -> Iterator[bytes]:
        if self._chunked:
            while True:
                line = self._rfile.readline(65537)
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
                        trailer = self._rfile.readline(65537)
                        if trailer in (b"\r\n", b"\n", b""):
                            break
                    self.fully_read = True
                    return
                while size > 0:
                    data = self._rfile.read(min(size, _MAX_CHUNK))
                    if not data:
                        raise ClickHouseError(
                            210, "Connection closed in the middle of a chunk", "NETWORK_ERROR"
                        )
                    size -= len(data)
                    yield data
                self._rfile.readline(65537)  # CRLF after the chunk data
        else:
            while self._remaining > 0:
                data = self._rfile.read(min(self._remaining, _MAX_CHUNK))
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

    def read_all(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                raise ClickHouseError(
                    62, f"Max query size exceeded (limit {limit} bytes)", "SYNTAX_ERROR"
                )
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
            form.fields[str(name)] = payload.decode("utf-8", errors="replace")
    return form
