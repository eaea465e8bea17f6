"""The HTTP protocol itself: curl, headers, status codes, framing and compression by hand."""

from __future__ import annotations

import gzip
import http.client
import json
import re
import socket
import subprocess
from collections.abc import Iterable
from urllib.parse import urlencode

import lz4.frame
import pytest
import zstandard

pytestmark = pytest.mark.integration

AUTH = ["-u", "casestream:s3cret pass"]


def curl(
    endpoint, *args: str, url_params: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    url = f"{endpoint.url}/"
    if url_params:
        url += "?" + urlencode(url_params)
    return subprocess.run(["curl", "-sS", *args, url], capture_output=True, timeout=30, check=False)


def request(
    endpoint,
    params: dict[str, str] | None = None,
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=30)
    try:
        path = "/?" + urlencode(params or {})
        all_headers = {
            "X-ClickHouse-User": "casestream",
            "X-ClickHouse-Key": "s3cret pass",
            **(headers or {}),
        }
        chunked = body is not None and not isinstance(body, bytes)
        conn.request(method, path, body=body, headers=all_headers, encode_chunked=chunked)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def test_curl_select_1(endpoint) -> None:
    result = subprocess.run(
        ["curl", "-sS", f"{endpoint.url}/?query=SELECT%201"],
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert result.stdout == b"1\n"


def test_ping_and_bare_get(endpoint) -> None:
    for path in ("/ping", "/"):
        result = subprocess.run(
            ["curl", "-sS", endpoint.url + path], capture_output=True, timeout=30, check=True
        )
        assert result.stdout == b"Ok.\n"


def test_curl_post_query_and_insert(endpoint, table_name) -> None:
    created = curl(
        endpoint,
        *AUTH,
        "--data-binary",
        f"CREATE TABLE {table_name} (a UInt32, s String) ENGINE = MergeTree ORDER BY a",
    )
    assert created.returncode == 0 and created.stdout == b""
    tsv = curl(
        endpoint,
        *AUTH,
        "--data-binary",
        "1\tone\n2\ttwo words\n",
        url_params={"query": f"INSERT INTO {table_name} FORMAT TabSeparated"},
    )
    assert tsv.stdout == b""
    values = curl(
        endpoint,
        *AUTH,
        "--data-binary",
        f"INSERT INTO {table_name} VALUES (3, 'it''s'), (4, 'x;y')",
    )
    assert values.stdout == b""
    inline = curl(
        endpoint, *AUTH, "--data-binary", f'INSERT INTO {table_name} FORMAT CSV\n5,"five"\n'
    )
    assert inline.stdout == b""
    selected = curl(
        endpoint, *AUTH, "-d", f"SELECT a, s FROM {table_name} ORDER BY a FORMAT JSONEachRow"
    )
    assert [json.loads(line) for line in selected.stdout.splitlines()] == [
        {"a": 1, "s": "one"},
        {"a": 2, "s": "two words"},
        {"a": 3, "s": "it's"},
        {"a": 4, "s": "x;y"},
        {"a": 5, "s": "five"},
    ]


def test_curl_gzip_request_and_compressed_response(endpoint, table_name) -> None:
    assert (
        request(
            endpoint,
            body=f"CREATE TABLE {table_name} (n UInt32) ENGINE = MergeTree ORDER BY n".encode(),
        )[0]
        == 200
    )
    payload = gzip.compress(
        f"INSERT INTO {table_name} FORMAT TSV\n".encode()
        + b"".join(b"%d\n" % i for i in range(1000))
    )
    inserted = subprocess.run(
        [
            "curl",
            "-sS",
            *AUTH,
            "-H",
            "Content-Encoding: gzip",
            "--data-binary",
            "@-",
            f"{endpoint.url}/",
        ],
        input=payload,
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert inserted.stdout == b""
    counted = curl(endpoint, *AUTH, "--compressed", "-d", f"SELECT sum(n) FROM {table_name}")
    assert counted.stdout == b"499500\n"


def test_response_headers(endpoint) -> None:
    status, headers, body = request(
        endpoint, {"query_id": "my-query-1"}, b"SELECT number FROM numbers(3)"
    )
    assert status == 200
    assert body == b"0\n1\n2\n"
    assert headers["X-ClickHouse-Query-Id"] == "my-query-1"
    assert headers["X-ClickHouse-Format"] == "TabSeparated"
    assert headers["X-ClickHouse-Timezone"] == "Etc/UTC"
    assert headers["X-ClickHouse-Server-Display-Name"]
    assert headers["Content-Type"].startswith("text/tab-separated-values")
    summary = json.loads(headers["X-ClickHouse-Summary"])
    assert {
        "read_rows",
        "read_bytes",
        "written_rows",
        "written_bytes",
        "result_rows",
        "elapsed_ns",
    } <= set(summary)

    status, headers, body = request(
        endpoint, {"wait_end_of_query": "1"}, b"SELECT count() FROM numbers(1000)"
    )
    assert body == b"1000\n"
    assert json.loads(headers["X-ClickHouse-Summary"])["read_rows"] == "1000"

    status, headers, body = request(
        endpoint, body=b"CREATE TEMPORARY TABLE IF NOT EXISTS hdr (a UInt8)"
    )
    assert status == 200 and body == b""
    assert "X-ClickHouse-Format" not in headers
    assert headers["X-ClickHouse-Query-Id"]


@pytest.mark.parametrize(
    ("sql", "status", "code", "name"),
    [
        ("SELECT * FROM no_such_table", 404, 60, "UNKNOWN_TABLE"),
        ("SELEC 1", 400, 62, "SYNTAX_ERROR"),
        ("SELECT no_such_function(1)", 404, 46, "UNKNOWN_FUNCTION"),
        ("SELECT throwIf(1, 'custom failure')", 500, 395, "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO"),
        ("SELECT 1; SELECT 2", 400, 62, "SYNTAX_ERROR"),
        ("", 400, 62, "SYNTAX_ERROR"),
    ],
)
def test_error_responses_look_like_clickhouse(
    endpoint, sql: str, status: int, code: int, name: str
) -> None:
    got_status, headers, body = request(endpoint, body=sql.encode())
    assert got_status == status
    assert headers["X-ClickHouse-Exception-Code"] == str(code)
    text = body.decode()
    assert re.match(
        rf"^Code: {code}\. DB::Exception: .+\({name}\) \(version [\d.]+\)\n$", text, re.S
    ), text


def test_default_format_and_format_clause(endpoint) -> None:
    status, headers, body = request(endpoint, {"default_format": "JSONCompact"}, b"SELECT 1 AS x")
    assert headers["X-ClickHouse-Format"] == "JSONCompact"
    assert json.loads(body)["data"] == [[1]]
    status, headers, body = request(endpoint, body=b"SELECT 1 AS x, 'a' AS y FORMAT JSON")
    assert headers["X-ClickHouse-Format"] == "JSON"
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["data"] == [{"x": 1, "y": "a"}]
    status, headers, body = request(
        endpoint, body=b"SELECT number, 'q' FROM numbers(2) FORMAT CSVWithNames"
    )
    assert body == b'"number","\'q\'"\n0,"q"\n1,"q"\n'


def test_query_param_and_body_are_one_text(endpoint) -> None:
    status, _, body = request(endpoint, {"query": "SELECT 1 +"}, b"2")
    assert (status, body) == (200, b"3\n")


def test_chunked_request_body(endpoint, table_name) -> None:
    request(
        endpoint,
        body=f"CREATE TABLE {table_name} (n UInt32) ENGINE = MergeTree ORDER BY n".encode(),
    )
    pieces = [f"INSERT INTO {table_name} FOR".encode(), b"MAT TSV", b"\n1\n2", b"\n3\n", b"4\n"]
    status, _, body = request(endpoint, body=iter(pieces))
    assert (status, body) == (200, b"")
    assert request(
        endpoint, body=f"SELECT groupArray(n) FROM (SELECT n FROM {table_name} ORDER BY n)".encode()
    )[2] == (b"[1,2,3,4]\n")


@pytest.mark.parametrize("encoding", ["lz4", "zstd", "gzip"])
def test_compressed_multi_frame_insert_with_statement_inside_body(
    endpoint, table_name, encoding
) -> None:
    request(
        endpoint,
        body=f"CREATE TABLE {table_name} (n UInt32, s String) ENGINE = MergeTree ORDER BY n".encode(),
    )
    blocks = [f"INSERT INTO {table_name} (n, s) FORMAT TSV\n".encode()]
    blocks += [
        b"".join(b"%d\tblock %d\n" % (i, b) for i in range(b * 100, b * 100 + 100))
        for b in range(10)
    ]
    if encoding == "lz4":
        frames = [lz4.frame.compress(b) for b in blocks]
    elif encoding == "zstd":
        frames = [zstandard.ZstdCompressor().compress(b) for b in blocks]
    else:
        frames = [gzip.compress(b) for b in blocks]
    # Split frames at odd places so frame boundaries and HTTP chunk boundaries disagree.
    joined = b"".join(frames)
    pieces = [joined[i : i + 333] for i in range(0, len(joined), 333)]
    status, _, body = request(endpoint, body=iter(pieces), headers={"Content-Encoding": encoding})
    assert (status, body) == (200, b"")
    _, _, counted = request(
        endpoint, body=f"SELECT count(), sum(n), uniqExact(s) FROM {table_name}".encode()
    )
    assert counted == b"1000\t499500\t10\n"


@pytest.mark.parametrize("encoding", ["lz4", "zstd", "gzip", "deflate"])
def test_response_compression(endpoint, encoding) -> None:
    query = b"SELECT number FROM numbers(100000)"
    expected = b"".join(b"%d\n" % i for i in range(100000))
    for params in (
        {"enable_http_compression": "1"},
        {"enable_http_compression": "1", "wait_end_of_query": "1"},
    ):
        status, headers, body = request(endpoint, params, query, {"Accept-Encoding": encoding})
        assert headers["Content-Encoding"] == encoding
        if encoding == "lz4":
            decoded = lz4.frame.decompress(body)
        elif encoding == "zstd":
            decoded = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        elif encoding == "gzip":
            decoded = gzip.decompress(body)
        else:
            import zlib

            decoded = zlib.decompress(body)
        assert decoded == expected
    _, headers, body = request(
        endpoint, {"enable_http_compression": "0"}, query, {"Accept-Encoding": encoding}
    )
    assert "Content-Encoding" not in headers and body == expected


def test_bad_requests_do_not_kill_the_server(endpoint) -> None:
    with socket.create_connection((endpoint.host, endpoint.port), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01garbage that is not http\r\n\r\n")
        sock.recv(1024)
    with socket.create_connection((endpoint.host, endpoint.port), timeout=10) as sock:
        sock.sendall(
            b"POST /?query=SELECT HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        )
        sock.recv(1024)
    status, headers, body = request(endpoint, body=b"garbage", headers={"Content-Encoding": "lz4"})
    assert status == 500 and headers["X-ClickHouse-Exception-Code"] == "271"
    status, headers, _ = request(endpoint, body=b"SELECT 1", headers={"Content-Encoding": "br"})
    assert headers["X-ClickHouse-Exception-Code"] == "89"
    assert request(endpoint, body=b"SELECT 1")[2] == b"1\n"


def test_client_disconnect_mid_response(endpoint) -> None:
    for _ in range(3):
        with socket.create_connection((endpoint.host, endpoint.port), timeout=10) as sock:
            sock.sendall(
                b"POST /?max_block_size=1000 HTTP/1.1\r\nHost: x\r\nContent-Length: 39\r\n\r\n"
                b"SELECT number FROM numbers(1000000000)"
                b" "
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    status, _, body = request(endpoint, body=b"SELECT 'still alive'")
    assert (status, body) == (200, b"still alive\n")


def test_keep_alive_connection_serves_many_requests(endpoint) -> None:
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=10)
    try:
        for i in range(5):
            conn.request(
                "POST",
                "/",
                body=f"SELECT {i}".encode(),
                headers={"X-ClickHouse-User": "casestream", "X-ClickHouse-Key": "s3cret pass"},
            )
            response = conn.getresponse()
            assert response.read() == f"{i}\n".encode()
        conn.request(
            "POST",
            "/",
            body=b"SELECT * FROM nope",
            headers={"X-ClickHouse-User": "casestream", "X-ClickHouse-Key": "s3cret pass"},
        )
        response = conn.getresponse()
        assert response.status == 404
        response.read()
        conn.request(
            "POST",
            "/",
            body=b"SELECT 'after error'",
            headers={"X-ClickHouse-User": "casestream", "X-ClickHouse-Key": "s3cret pass"},
        )
        assert conn.getresponse().read() == b"after error\n"
    finally:
        conn.close()


def test_timezone_header_follows_the_session(endpoint) -> None:
    session = {"session_id": "tz-session"}
    assert request(endpoint, session, b"SET session_timezone = 'Asia/Tokyo'")[0] == 200
    _, headers, body = request(endpoint, session, b"SELECT toDateTime(0)")
    assert headers["X-ClickHouse-Timezone"] == "Asia/Tokyo"
    assert body == b"1970-01-01 09:00:00\n"
    _, headers, _ = request(endpoint, {"session_timezone": "America/New_York"}, b"SELECT 1")
    assert headers["X-ClickHouse-Timezone"] == "America/New_York"
    _, headers, _ = request(endpoint, body=b"SELECT 1")
    assert headers["X-ClickHouse-Timezone"] == "Etc/UTC"
