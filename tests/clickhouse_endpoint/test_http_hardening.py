"""Attacks on the endpoint's HTTP front, tried on the real endpoint with raw sockets.

Response splitting and log forging through control characters, oversized and slowly growing
bodies sent without (or before) credentials, and the query size limit. Every request is
written byte by byte, so nothing a client library would clean up on the way hides a hole.
"""

from __future__ import annotations

import base64
import contextlib
import re
import socket
from urllib.parse import quote, urlencode

import pytest

pytestmark = pytest.mark.integration

GOOD = "Basic " + base64.b64encode(b"casestream:s3cret pass").decode()
ANALYST = "Basic " + base64.b64encode(b"analyst:look-only").decode()


def exchange(endpoint, head: bytes, body: bytes = b"", timeout: float = 30.0) -> bytes:
    """Send ``head`` (request line and headers, no blank line) and ``body``; the raw response."""
    with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout) as sock:
        sock.sendall(head + b"\r\n" + body)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
            if _complete(response):
                break
        return response


def _complete(response: bytes) -> bool:
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep:
        return False
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if match:
        return len(body) >= int(match.group(1))
    return body.endswith(b"0\r\n\r\n")


def post(target: str, *headers: str, body: bytes = b"SELECT 1") -> tuple[bytes, bytes]:
    lines = [f"POST {target} HTTP/1.1", "Host: x", "Connection: close", *headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n").encode("latin-1"), body


def status_and_headers(response: bytes) -> tuple[int, list[bytes], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return int(lines[0].split()[1]), lines[1:], body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


# -- control characters ---------------------------------------------------------------------


def test_query_id_with_crlf_cannot_inject_a_response_header(endpoint) -> None:
    target = "/?query_id=abc%0D%0ASet-Cookie:%20evil=1"
    for auth in ([], [f"Authorization: {GOOD}"]):  # refused before authentication, and after
        status, headers, body = status_and_headers(exchange(endpoint, *post(target, *auth)))
        assert status == 400
        assert not any(h.lower().startswith(b"set-cookie") for h in headers), headers
        assert b"evil" not in b"\r\n".join(headers)
        assert b"Code: 36." in body and b"URL parameter 'query_id'" in body, body
        assert b"0x0d" in body


@pytest.mark.parametrize(
    "param",
    ["session_id", "database", "default_format", "user", "max_block_size", "quota_key"],
)
def test_control_characters_in_url_parameters_are_refused(endpoint, param) -> None:
    for bad in ("a%0Ab", "a%00b", "a%1Bb", "a%7Fb"):
        target = f"/?{param}={bad}"
        status, _, body = status_and_headers(
            exchange(endpoint, *post(target, f"Authorization: {GOOD}"))
        )
        assert status == 400, (param, bad, body)
        assert f"URL parameter '{param}'".encode() in body


def test_control_character_in_a_url_parameter_name_is_refused(endpoint) -> None:
    status, _, body = status_and_headers(
        exchange(endpoint, *post("/?max_%0Ablock=1", f"Authorization: {GOOD}"))
    )
    assert status == 400 and b"URL parameter name 'max_\\\\x0ablock'" in body, body


def test_newlines_stay_allowed_in_sql_and_bound_parameters(endpoint) -> None:
    # (A bound value is in escaped form: a newline in it is written backslash-n, as ClickHouse
    # wants; the query text itself may hold raw newlines and tabs.)
    target = "/?" + urlencode({"query": "SELECT\n\t{x:String}", "param_x": "two\\nlines"})
    status, _, body = status_and_headers(
        exchange(endpoint, *post(target, f"Authorization: {GOOD}", body=b""))
    )
    assert (status, body) == (200, b"two\\nlines\n")


def test_newline_in_basic_auth_user_cannot_forge_a_log_line(endpoint) -> None:
    forged = "intruder\n2026-01-01 00:00:00 INFO clickhouse_endpoint POST user=casestream forged=1"
    token = base64.b64encode(f"{forged}:x".encode()).decode()
    status, _, body = status_and_headers(
        exchange(endpoint, *post("/", f"Authorization: Basic {token}"))
    )
    assert status == 400 and b"user name contains control character 0x0a" in body, body
    assert "forged=1" not in endpoint.log_text()


def test_control_characters_in_header_values_are_refused(endpoint) -> None:
    for header in (
        "X-ClickHouse-User: casestream\x1b[2J",  # a terminal escape for whoever tails the log
        "X-ClickHouse-Key: s3cret\x00pass",
    ):
        status, _, body = status_and_headers(exchange(endpoint, *post("/", header)))
        assert status == 400, (header, body)
        assert b"HTTP header" in body and b"control character" in body


@pytest.mark.parametrize("line", ["X-Anything: a\rb", "not a header field", ": no name"])
def test_a_broken_header_block_cannot_hide_the_fields_after_it(endpoint, line) -> None:
    """Python's parser stops at a bare CR or a line without colon and drops what follows,
    Content-Length included: the body would become the next request on the connection."""
    body = b"SELECT 1"
    smuggled = b"GET /?query=SELECT+8675309123 HTTP/1.1\r\nHost: x\r\n\r\n"
    head = (
        "POST / HTTP/1.1\r\nHost: x\r\n"
        f"{line}\r\nAuthorization: {GOOD}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((endpoint.host, endpoint.port), timeout=30) as sock:
        sock.sendall(head + body + smuggled)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    status, headers, text = status_and_headers(response)
    assert status == 400 and b"Malformed HTTP header block" in text, text
    assert b"Connection: close" in headers
    assert b"8675309123" not in response


@pytest.mark.parametrize(
    "framing",
    [
        ["Content-Length: 8", "Transfer-Encoding: chunked"],
        ["Content-Length: 8", "Content-Length: 30"],
        ["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"],
        ["Transfer-Encoding: gzip, chunked"],
        ["Transfer-Encoding: xchunked"],
        ["Content-Length: +8"],
        ["Content-Length: -1"],
    ],
)
def test_ambiguous_body_framing_is_refused(endpoint, framing) -> None:
    """Two ways to find where the body ends: a proxy and we could disagree (smuggling)."""
    head = "\r\n".join(
        ["POST / HTTP/1.1", "Host: x", f"Authorization: {GOOD}", *framing, "", ""]
    ).encode()
    smuggled = b"GET /?query=SELECT+8675309123 HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection((endpoint.host, endpoint.port), timeout=30) as sock:
        sock.sendall(head + b"8\r\nSELECT 1\r\n0\r\n\r\n" + smuggled)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    status, headers, text = status_and_headers(response)
    assert status == 400, text
    assert b"Connection: close" in headers
    assert b"8675309123" not in response


def test_folded_header_lines_are_refused(endpoint) -> None:
    status, _, body = status_and_headers(
        exchange(endpoint, *post("/", "X-ClickHouse-User: casestream", " evil"))
    )
    assert status == 400 and b"HTTP header 'X-ClickHouse-User'" in body, body


def test_tab_in_a_header_value_is_still_fine(endpoint) -> None:
    status, _, body = status_and_headers(
        exchange(endpoint, *post("/", f"Authorization: {GOOD}", "User-Agent: curl\t8"))
    )
    assert (status, body) == (200, b"1\n")


def test_control_characters_in_form_fields_are_refused(endpoint) -> None:
    boundary = "XyZ"
    form = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="query"\r\n\r\nSELECT 5\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="session_id"\r\n\r\n'
        "s\nforged=1\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    status, _, body = status_and_headers(
        exchange(
            endpoint,
            *post(
                "/",
                f"Authorization: {GOOD}",
                f"Content-Type: multipart/form-data; boundary={boundary}",
                body=form,
            ),
        )
    )
    assert status == 400 and b"form field 'session_id'" in body, body


def test_an_ordinary_query_id_is_echoed(endpoint) -> None:
    target = "/?" + urlencode({"query_id": "report-2026 Q1/ü"})
    status, headers, _ = status_and_headers(
        exchange(endpoint, *post(target, f"Authorization: {GOOD}"))
    )
    assert status == 200
    assert "X-ClickHouse-Query-Id: report-2026 Q1/ü".encode() in headers


# -- bodies and the query size limit --------------------------------------------------------


def test_unauthenticated_client_cannot_make_the_server_read_a_big_body(endpoint) -> None:
    """Wrong credentials and a 64 MB Content-Length of which 2 MB arrive: answered, closed."""
    bad = "Basic " + base64.b64encode(b"casestream:wrong").decode()
    head = (
        f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: {bad}\r\nContent-Length: {64 << 20}\r\n"
    ).encode()
    with socket.create_connection((endpoint.host, endpoint.port), timeout=30) as sock:
        sock.sendall(head + b"\r\n")
        with contextlib.suppress(OSError):  # the server may close first: that is the point
            sock.sendall(b"SELECT '" + b"x" * (2 << 20))
        response = b""
        while chunk := sock.recv(65536):  # a server still draining 64 MB would time out here
            response += chunk
    status, headers, _ = status_and_headers(response)
    assert status == 403
    assert b"Connection: close" in headers


def _chunked(head: bytes, payload: bytes, size: int = 4096) -> bytes:
    framed = b"".join(
        b"%x\r\n%s\r\n" % (len(payload[i : i + size]), payload[i : i + size])
        for i in range(0, len(payload), size)
    )
    return exchange_body(head, framed + b"0\r\n\r\n")


def exchange_body(head: bytes, body: bytes) -> bytes:
    return head + b"\r\n" + body


def send_chunked(endpoint, auth: str, payload: bytes, target: str = "/") -> tuple[int, bytes]:
    head = (
        f"POST {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: {auth}\r\nTransfer-Encoding: chunked\r\n"
    ).encode()
    raw = _chunked(head, payload)
    with socket.create_connection((endpoint.host, endpoint.port), timeout=120) as sock:
        sock.sendall(raw)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
            if _complete(response):
                break
    status, _, body = status_and_headers(response)
    return status, body


def test_an_insert_statement_growing_past_max_query_size_is_refused(endpoint) -> None:
    """The body that cost 98 s of re-lexing (512 KB in 4 KB chunks) is refused at 256 KiB."""
    payload = b"INSERT INTO t (" + b"a," * (256 * 1024)
    status, body = send_chunked(endpoint, GOOD, payload)
    assert status == 400
    assert b"Max query size exceeded (limit 262144 bytes" in body, body


def test_a_select_longer_than_max_query_size_is_refused_before_lexing(endpoint) -> None:
    payload = b"SELECT " + b"+".join(b"1" for _ in range(150 * 1024))
    status, body = send_chunked(endpoint, ANALYST, payload)
    assert status == 400 and b"Max query size exceeded (limit 262144 bytes" in body, body


def test_a_readonly_user_cannot_raise_max_query_size(endpoint) -> None:
    payload = b"SELECT length('" + b"x" * 300_000 + b"')"
    status, body = send_chunked(endpoint, ANALYST, payload, "/?max_query_size=1000000")
    assert status == 400 and b"Max query size exceeded (limit 262144 bytes" in body, body


def test_a_writable_user_may_raise_max_query_size(endpoint) -> None:
    payload = b"SELECT length('" + b"x" * 300_000 + b"')"
    status, body = send_chunked(endpoint, GOOD, payload, "/?max_query_size=1000000")
    assert (status, body) == (200, b"300000\n")


def test_inline_insert_data_does_not_count_towards_max_query_size(endpoint, table_name) -> None:
    client = endpoint.client()
    client.command(f"CREATE TABLE {table_name} (a UInt32) ENGINE = MergeTree ORDER BY a")
    rows = b"".join(b"%d\n" % i for i in range(200_000))  # ~1.3 MB of data
    assert len(rows) > 1 << 20
    status, body = send_chunked(
        endpoint, GOOD, f"INSERT INTO {table_name} FORMAT TSV\n".encode() + rows
    )
    assert status == 200, body
    assert client.command(f"SELECT count() FROM {table_name}") == 200_000
    client.close()


def test_query_parameter_counts_towards_max_query_size(endpoint) -> None:
    target = "/?" + urlencode({"query": "SELECT 1 -- " + "x" * 40_000})
    # A request line is at most 64 KiB (the stdlib's limit), so lower the limit instead.
    status, body = send_chunked(endpoint, GOOD, b"", target + "&max_query_size=1000")
    assert status == 400 and b"Max query size exceeded (limit 1000 bytes" in body, body


def test_max_query_size_must_be_a_number(endpoint) -> None:
    status, body = send_chunked(endpoint, GOOD, b"SELECT 1", "/?max_query_size=" + quote("1e9"))
    assert status == 400 and b"max_query_size" in body, body
