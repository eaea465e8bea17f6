"""Authentication, read-only users and statements that must never run."""

from __future__ import annotations

import base64
import http.client
from urllib.parse import urlencode

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from services.clickhouse_endpoint.errors import http_status_for

from .conftest import USERS

pytestmark = pytest.mark.integration


def raw(
    endpoint,
    sql: str,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
):
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=30)
    try:
        path = "/?" + urlencode(params or {})
        conn.request(
            method, path, body=sql.encode() if method == "POST" else None, headers=headers or {}
        )
        response = conn.getresponse()
        return response.status, response.headers, response.read().decode()
    finally:
        conn.close()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_every_credential_style_is_accepted(endpoint) -> None:
    assert (
        raw(
            endpoint, "SELECT currentUser() IS NOT NULL", headers=basic("casestream", "s3cret pass")
        )[2]
        == "1\n"
    )
    headers = {"X-ClickHouse-User": "casestream", "X-ClickHouse-Key": "s3cret pass"}
    assert raw(endpoint, "SELECT 2", headers=headers)[2] == "2\n"
    assert (
        raw(endpoint, "SELECT 3", params={"user": "casestream", "password": "s3cret pass"})[2]
        == "3\n"
    )
    # No credentials at all means user "default" (empty password in this users file).
    assert raw(endpoint, "SELECT 4")[2] == "4\n"


@pytest.mark.parametrize(
    "headers",
    [
        basic("casestream", "wrong"),
        basic("nobody", ""),
        {"X-ClickHouse-User": "analyst", "X-ClickHouse-Key": "s3cret pass"},
        {"Authorization": "Bearer some-token"},
    ],
)
def test_wrong_credentials_get_authentication_failed(endpoint, headers) -> None:
    status, response_headers, body = raw(endpoint, "SELECT 1", headers=headers)
    assert status == 403  # what ClickHouse sends for AUTHENTICATION_FAILED
    assert response_headers["X-ClickHouse-Exception-Code"] == "516"
    assert body.startswith("Code: 516. DB::Exception: ")
    assert "(AUTHENTICATION_FAILED)" in body


def test_mixing_credential_styles_is_refused(endpoint) -> None:
    status, headers, _ = raw(
        endpoint,
        "SELECT 1",
        params={"user": "casestream", "password": "s3cret pass"},
        headers=basic("casestream", "s3cret pass"),
    )
    assert headers["X-ClickHouse-Exception-Code"] == "516"


def test_clickhouse_connect_wrong_password_raises_516(endpoint) -> None:
    with pytest.raises(DatabaseError) as excinfo:
        clickhouse_connect.get_client(
            host=endpoint.host, port=endpoint.port, username="casestream", password="nope"
        )
    assert excinfo.value.code == 516
    assert "AUTHENTICATION_FAILED" in str(excinfo.value)


def test_passwords_are_never_logged(endpoint) -> None:
    raw(endpoint, "SELECT 1", headers=basic("casestream", "wrong-password-xyz"))
    raw(endpoint, "SELECT 1", params={"user": "casestream", "password": "s3cret pass"})
    log = endpoint.log_text()
    assert "user=casestream" in log
    for spec in USERS["users"].values():
        if spec["password"]:
            assert spec["password"] not in log
    assert "wrong-password-xyz" not in log


@pytest.fixture(scope="module")
def shared_table(endpoint) -> str:
    client = endpoint.client()
    client.command("CREATE TABLE IF NOT EXISTS ro_target (a UInt8) ENGINE = MergeTree ORDER BY a")
    client.command("INSERT INTO ro_target VALUES (1), (2)")
    return "ro_target"


@pytest.fixture
def analyst(endpoint):
    client = endpoint.client(username="analyst", password="look-only")
    yield client
    client.close()


def test_readonly_user_can_read_and_sees_readonly_settings(analyst, shared_table) -> None:
    assert analyst.command(f"SELECT sum(a) FROM {shared_table}") == 3
    assert analyst.query(f"SELECT a FROM {shared_table} ORDER BY a").result_rows == [(1,), (2,)]
    assert analyst.query_df(f"SELECT a FROM {shared_table} ORDER BY a")["a"].tolist() == [1, 2]
    with analyst.query_rows_stream(f"SELECT a FROM {shared_table} ORDER BY a") as stream:
        assert list(stream) == [(1,), (2,)]
    assert analyst.command("SHOW TABLES LIKE 'ro_target'") == "ro_target"
    assert analyst.command(f"EXISTS TABLE {shared_table}") == 1
    assert analyst.command(
        "SELECT value, readonly FROM system.settings WHERE name = 'readonly'"
    ) == ["1", "1"]
    # clickhouse-connect saw every setting as read-only and so sends none of its defaults.
    assert analyst.get_client_setting("date_time_input_format") is None


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO ro_target VALUES (9)",
        "INSERT INTO ro_target SELECT 9",
        "CREATE TABLE ro_new (a UInt8) ENGINE = Memory",
        "CREATE TEMPORARY TABLE ro_tmp (a UInt8)",
        "DROP TABLE ro_target",
        "ALTER TABLE ro_target DELETE WHERE 1",
        "TRUNCATE TABLE ro_target",
        "RENAME TABLE ro_target TO ro_renamed",
        "OPTIMIZE TABLE ro_target FINAL",
        "SYSTEM FLUSH LOGS",
        "KILL QUERY WHERE 1",
        "DETACH TABLE ro_target",
        "ATTACH TABLE ro_target",
        "GRANT SELECT ON *.* TO analyst",
        "SET max_memory_usage_for_user = 1",
        "SET readonly = 0",
        "SELECT 1 SETTINGS readonly = 0",
        "SELECT 1 INTO OUTFILE '/tmp/ro_out.txt'",
        "INSERT INTO FUNCTION file('/tmp/ro_file.csv', 'CSV', 'a UInt8') SELECT 1",
        "/* SELECT */ DROP TABLE ro_target",
        "-- SELECT 1\nDROP TABLE ro_target",
        "WITH 1 AS x SELECT x; DROP TABLE ro_target",
        "SELECT 1; DROP TABLE ro_target",
    ],
)
def test_readonly_user_cannot_write(endpoint, analyst, shared_table, statement) -> None:
    headers = {"X-ClickHouse-User": "analyst", "X-ClickHouse-Key": "look-only"}
    status, response_headers, body = raw(endpoint, statement, headers=headers)
    # Several statements in one request are a syntax error (62) before anything else; any single
    # statement that writes or changes a setting is READONLY (164); writing a file is refused to
    # every user by the query policy (ACCESS_DENIED, 497).
    code = 62 if "; " in statement else 497 if "OUTFILE" in statement else 164
    assert (status, response_headers["X-ClickHouse-Exception-Code"]) == (
        http_status_for(code),
        str(code),
    ), body
    assert body.startswith(f"Code: {code}. DB::Exception: "), body
    with pytest.raises(DatabaseError):
        analyst.command(statement)
    assert endpoint.client().command(f"SELECT count() FROM {shared_table}") == 2


def test_readonly_user_cannot_insert_data(analyst, shared_table) -> None:
    with pytest.raises(DatabaseError) as excinfo:
        analyst.insert(shared_table, [[5]], column_names=["a"], column_type_names=["UInt8"])
    assert "Code: 164" in str(excinfo.value)


def test_readonly_user_can_change_harmless_settings_in_session(endpoint) -> None:
    headers = {"X-ClickHouse-User": "analyst", "X-ClickHouse-Key": "look-only"}
    session = {"session_id": "analyst-session"}
    assert raw(endpoint, "SET max_block_size = 321", params=session, headers=headers)[0] == 200
    assert (
        raw(endpoint, "SELECT getSetting('max_block_size')", params=session, headers=headers)[2]
        == "321\n"
    )
    assert raw(endpoint, "SELECT getSetting('max_block_size')", headers=headers)[2] != "321\n"
    assert (
        raw(
            endpoint,
            "SELECT getSetting('max_block_size')",
            params={"max_block_size": "55"},
            headers=headers,
        )[2]
        == "55\n"
    )
    status, response_headers, _ = raw(
        endpoint, "SELECT 1", params={"max_memory_usage_for_user": "1"}, headers=headers
    )
    assert response_headers["X-ClickHouse-Exception-Code"] == "164"


def test_get_implies_readonly(endpoint, shared_table) -> None:
    params = {
        "query": "CREATE TABLE via_get (a UInt8) ENGINE = Memory",
        "user": "casestream",
        "password": "s3cret pass",
    }
    status, headers, body = raw(endpoint, "", params=params, method="GET")
    assert headers["X-ClickHouse-Exception-Code"] == "164"
    assert "method GET implies readonly" in body
    params["query"] = f"SELECT count() FROM {shared_table}"
    assert raw(endpoint, "", params=params, method="GET")[2] == "2\n"


@pytest.mark.parametrize(
    "statement", ["SYSTEM SHUTDOWN", "system kill", "/* hi */ SYSTEM  SHUTDOWN;"]
)
def test_statements_that_kill_the_host_are_refused_for_everyone(endpoint, statement) -> None:
    client = endpoint.client()
    with pytest.raises(DatabaseError) as excinfo:
        client.command(statement)
    assert excinfo.value.code == 497
    assert client.command("SELECT 'alive'") == "alive"


def test_writable_user_can_ask_for_a_readonly_request(endpoint) -> None:
    headers = {"X-ClickHouse-User": "casestream", "X-ClickHouse-Key": "s3cret pass"}
    for params in ({"readonly": "1"}, {"readonly": "1", "session_id": "rw-session"}):
        status, response_headers, _ = raw(
            endpoint, "CREATE TABLE never_made (a UInt8) ENGINE = Memory", params, headers
        )
        assert response_headers["X-ClickHouse-Exception-Code"] == "164"
        assert raw(endpoint, "SELECT 1", params, headers)[2] == "1\n"
    # The session's own connection was not left read-only.
    status, _, body = raw(
        endpoint,
        "CREATE TEMPORARY TABLE made_later (a UInt8)",
        {"session_id": "rw-session"},
        headers,
    )
    assert status == 200, body
