"""Request parsing, credentials and error rendering: the logic that needs no engine."""

from __future__ import annotations

import base64
import io
import json

import lz4.frame
import pytest

from services.clickhouse_endpoint.auth import Credentials, UserDirectory, extract_credentials
from services.clickhouse_endpoint.errors import ClickHouseError
from services.clickhouse_endpoint.executor import read_input, readonly_setting_allowed
from services.clickhouse_endpoint.request import RequestBody, parse_multipart, split_params

pytestmark = pytest.mark.unit


def _body(payload: bytes, chunked: bool = False, encoding: str | None = None) -> RequestBody:
    headers: dict[str, str] = {}
    if encoding:
        headers["Content-Encoding"] = encoding
    if chunked:
        framed = b"".join(
            b"%x\r\n%s\r\n" % (len(payload[i : i + 5]), payload[i : i + 5])
            for i in range(0, len(payload), 5)
        )
        headers["Transfer-Encoding"] = "chunked"
        return RequestBody(io.BytesIO(framed + b"0\r\n\r\n"), headers)
    headers["Content-Length"] = str(len(payload))
    return RequestBody(io.BytesIO(payload), headers)


def test_split_params_separates_settings_binds_and_transport() -> None:
    settings, binds = split_params(
        {
            "query": "SELECT 1",
            "session_id": "s",
            "query_id": "q",
            "database": "db",
            "wait_end_of_query": "1",
            "max_block_size": "10",
            "param_x": "1",
            "param_param_y": "2",
        }
    )
    assert settings == {"max_block_size": "10"}
    assert binds == {"x": "1", "param_y": "2"}


@pytest.mark.parametrize("chunked", [False, True])
def test_read_input_splits_insert_statement_from_data(chunked: bool) -> None:
    payload = "\n /* lead */ INSERT INTO `tåble` (a) FORMAT TSV\n1\n2\n".encode()
    source = read_input(None, _body(payload, chunked))
    assert source.insert is not None
    assert source.insert.statement == "/* lead */ INSERT INTO `tåble` (a)"
    assert source.insert.input_format == "TSV"
    assert b"".join(source.data) == b"1\n2\n"
    assert source.statement.kind == "INSERT"


def test_read_input_joins_query_param_and_body() -> None:
    source = read_input("INSERT INTO t FORMAT Native", _body(b"\n\x01\x02binary"))
    assert source.insert is not None and source.insert.statement == "INSERT INTO t"
    # ClickHouse appends one newline to the query parameter and skips exactly one.
    assert b"".join(source.data) == b"\n\x01\x02binary"
    plain = read_input("SELECT 1 +", _body(b"2"))
    assert plain.insert is None and plain.statement.text == "SELECT 1 +\n2"


def test_read_input_decompresses_multiple_lz4_frames() -> None:
    frames = (
        lz4.frame.compress(b"INSERT INTO t VALUES ")
        + lz4.frame.compress(b"(1),")
        + lz4.frame.compress(b"(2)")
    )
    source = read_input(None, _body(frames, chunked=True, encoding="lz4"))
    assert source.insert is not None and source.insert.input_format == "Values"
    assert b"".join(source.data) == b" (1),(2)"


def test_request_body_tracks_whether_it_was_fully_read() -> None:
    body = _body(b"x" * 100, chunked=True)
    assert not body.fully_read
    assert body.drain()
    assert body.fully_read


def test_parse_multipart_fields_and_files() -> None:
    boundary = "XyZ"
    payload = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="query"\r\n\r\nSELECT {{v:String}}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="param_v"\r\n\r\nh\u00e9llo\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="ext"; filename="ext"\r\n\r\n1\t2\n\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    form = parse_multipart(f"multipart/form-data; boundary={boundary}", payload)
    assert form.fields == {"query": "SELECT {v:String}", "param_v": "h\u00e9llo"}
    assert form.files == {"ext": b"1\t2\n"}


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize(
    ("headers", "params", "expected"),
    [
        ({}, {}, Credentials("default", "")),
        (_basic("u", "p:with:colons"), {}, Credentials("u", "p:with:colons")),
        ({"X-ClickHouse-User": "u", "X-ClickHouse-Key": "k"}, {}, Credentials("u", "k")),
        ({}, {"user": "u", "password": "pw"}, Credentials("u", "pw")),
        ({}, {"user": "u"}, Credentials("u", "")),
    ],
)
def test_extract_credentials(headers, params, expected) -> None:
    assert extract_credentials(headers, params) == expected


def test_extract_credentials_refuses_two_methods_at_once() -> None:
    with pytest.raises(ClickHouseError) as excinfo:
        extract_credentials(_basic("a", "b"), {"user": "a"})
    assert excinfo.value.code == 516


def test_user_directory(tmp_path) -> None:
    path = tmp_path / "users.json"
    path.write_text(
        json.dumps({"users": {"w": {"password": "pw"}, "r": {"password": "x", "readonly": True}}})
    )
    users = UserDirectory.from_file(path)
    assert users.authenticate(Credentials("w", "pw")).readonly is False
    assert users.authenticate(Credentials("r", "x")).readonly is True
    for bad in (Credentials("w", "nope"), Credentials("ghost", "")):
        with pytest.raises(ClickHouseError) as excinfo:
            users.authenticate(bad)
        assert excinfo.value.code == 516
        assert excinfo.value.http_status == 403
    assert "pw" not in repr(users.authenticate(Credentials("w", "pw")))
    assert (
        UserDirectory.anonymous_default().authenticate(Credentials("default", "")).readonly is False
    )
    path.write_text('{"users": {"x": {"password": 1}}}')
    with pytest.raises(ValueError, match="string password"):
        UserDirectory.from_file(path)


def test_error_parsing_and_rendering() -> None:
    engine_error = RuntimeError(
        "Code: 164. DB::Exception: Code: 164. DB::Exception: Cannot modify 'readonly' setting in readonly mode. "
        "(READONLY) (version 26.9.2.1). (READONLY)"
    )
    parsed = ClickHouseError.from_engine(engine_error)
    assert (parsed.code, parsed.name, parsed.http_status) == (164, "READONLY", 500)
    assert parsed.render("1.2").endswith("(READONLY) (version 1.2)\n")

    unknown_table = ClickHouseError.from_engine(
        RuntimeError("Code: 60. DB::Exception: Table x does not exist. (UNKNOWN_TABLE)")
    )
    assert unknown_table.http_status == 404
    assert unknown_table.render("25.8.1.1") == (
        "Code: 60. DB::Exception: Table x does not exist. (UNKNOWN_TABLE) (version 25.8.1.1)\n"
    )
    ours = ClickHouseError(62, "Multi-statements are not allowed")
    assert (
        ours.render("25.8")
        == "Code: 62. DB::Exception: Multi-statements are not allowed. (SYNTAX_ERROR) (version 25.8)\n"
    )
    assert ours.http_status == 400
    no_code = ClickHouseError.from_engine(ValueError("weird"))
    assert no_code.code == 1001


def test_readonly_settings_whitelist() -> None:
    assert readonly_setting_allowed("max_block_size")
    assert readonly_setting_allowed("output_format_json_quote_64bit_integers")
    assert not readonly_setting_allowed("readonly")
    assert not readonly_setting_allowed("allow_ddl")
    assert not readonly_setting_allowed("max_memory_usage_for_user")
