"""Attacks on the endpoint's query policy, against a real endpoint process.

The users file is the stack's shape: a read-write platform user, a read-only analyst granted
the platform's database only, and an anonymous read-only ``default`` with no password.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from .conftest import Endpoint

pytestmark = pytest.mark.integration

PLATFORM_DB = "platform"
USERS = {
    "users": {
        "casestream": {"password": "rw pass", "readonly": False},
        "analyst": {"password": "look", "readonly": True, "databases": [PLATFORM_DB]},
        "analyst2": {"password": "look2", "readonly": True, "databases": [PLATFORM_DB]},
        "default": {"password": "", "readonly": True, "databases": [PLATFORM_DB]},
    }
}
RW = ("casestream", "rw pass")
ANALYST = ("analyst", "look")
ANALYST2 = ("analyst2", "look2")
ANONYMOUS = None


@pytest.fixture(scope="module")
def ep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    tmp = tmp_path_factory.mktemp("ch-policy")
    users_file = tmp / "users.json"
    users_file.write_text(json.dumps(USERS))
    os.chmod(users_file, 0o600)
    endpoint = Endpoint(tmp / "data", users_file, tmp / "endpoint.log").start()
    try:
        setup = [
            f"CREATE DATABASE IF NOT EXISTS {PLATFORM_DB}",
            "CREATE DATABASE IF NOT EXISTS secret",
            f"CREATE TABLE IF NOT EXISTS {PLATFORM_DB}.cases (id UInt32, name String) "
            "ENGINE = MergeTree ORDER BY id",
            f"INSERT INTO {PLATFORM_DB}.cases VALUES (1, 'a'), (2, 'b')",
            "CREATE TABLE IF NOT EXISTS secret.keys (k String) ENGINE = MergeTree ORDER BY k",
            "INSERT INTO secret.keys VALUES ('top-secret')",
        ]
        for statement in setup:
            status, _, body = query(endpoint, statement, RW)
            assert status == 200, body
        yield endpoint
    finally:
        code = endpoint.stop()
        assert code == 0, endpoint.log_text()
        assert "Traceback" not in endpoint.log_text()


def query(
    endpoint: Endpoint,
    sql: str,
    who: tuple[str, str] | None,
    params: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, dict[str, str], str]:
    headers = {}
    if who is not None:
        token = base64.b64encode(f"{who[0]}:{who[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout)
    try:
        conn.request("POST", "/?" + urlencode(params or {}), body=sql.encode(), headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.headers), response.read().decode(errors="replace")
    finally:
        conn.close()


def refused(endpoint: Endpoint, sql: str, who, code: int, params=None) -> str:
    status, headers, body = query(endpoint, sql, who, params)
    assert status != 200, f"{sql!r} as {who and who[0]} was not refused: {body[:300]}"
    assert headers.get("X-ClickHouse-Exception-Code") == str(code), body
    return body


EVERYONE = [RW, ANALYST, ANONYMOUS]
WHO_IDS = ["rw", "analyst", "anonymous"]


@pytest.mark.parametrize("who", EVERYONE, ids=WHO_IDS)
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT file('/etc/passwd')",
        "SELECT `file`('/etc/passwd')",
        "SELECT FILE ( '/proc/self/cmdline' )",
        "SELECT arrayMap(x -> file(x), ['/etc/passwd'])",
        "SELECT * FROM file('/etc/passwd', 'LineAsString')",
        "SELECT * FROM url('http://127.0.0.1:1/', 'LineAsString')",
        "SELECT * FROM s3('http://127.0.0.1:1/b/k', 'CSV')",
        "SELECT * FROM remote('127.0.0.1:9000', system.one)",
        "SELECT * FROM mysql('127.0.0.1:3306', 'd', 't', 'u', 'p')",
        "SELECT * FROM postgresql('127.0.0.1:5432', 'd', 't', 'u', 'p')",
        "SELECT * FROM executable('id', 'TSV', 'x String')",
        "SELECT * FROM python('x')",
        "SELECT * FROM filesystem('/')",
        "SELECT * FROM hdfs('hdfs://127.0.0.1:1/x', 'TSV')",
        "SELECT * FROM (SELECT * FROM view(SELECT * FROM file('/etc/passwd', 'LineAsString')))",
        "SELECT getServerSetting('path')",
        "SELECT dictGet('d', 'a', 1)",
        "SELECT 1 INTO OUTFILE 'x.tsv'",
    ],
)
def test_nothing_reaches_files_network_or_processes(ep, sql, who) -> None:
    body = refused(ep, sql, who, 497)
    assert "root:" not in body


def test_writer_cannot_create_io_engines_or_dictionaries(ep) -> None:
    for sql in [
        "CREATE TABLE io_file (s String) ENGINE = File(LineAsString, '/etc/passwd')",
        "CREATE TABLE io_url (s String) ENGINE = URL('http://127.0.0.1:1/', LineAsString)",
        "CREATE TABLE io_exec (s String) ENGINE = Executable('id', TSV)",
        "CREATE DATABASE io_fs ENGINE = Filesystem('/')",
        "CREATE DICTIONARY io_dict (k UInt64, v String) PRIMARY KEY k "
        "SOURCE(FILE(path '/etc/passwd' format 'TSV')) LAYOUT(FLAT()) LIFETIME(0)",
        "INSERT INTO FUNCTION file('/tmp/io_out.tsv', 'TSV', 'a UInt8') SELECT 1",
        "INSERT INTO platform.cases FROM INFILE '/etc/passwd' FORMAT TSV",
        "BACKUP DATABASE platform TO File('/tmp/io_backup')",
        "CREATE TABLE io_disk (a UInt8) ENGINE = MergeTree ORDER BY a "
        "SETTINGS disk = disk(type = local, path = '/tmp/io_disk/')",
    ]:
        refused(ep, sql, RW, 497)
    status, _, body = query(ep, "EXISTS TABLE io_file", RW)
    assert body == "0\n"


@pytest.mark.parametrize("who", EVERYONE, ids=WHO_IDS)
@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("SELECT 1 FORMAT Protobuf", {"output_format_schema": "/tmp/pwned.proto"}),
        ("SELECT 1 FORMAT Template", {"format_template_resultset": "/etc/passwd"}),
        ("SELECT 1", {"format_schema": "/etc/passwd:Message"}),
        ("SELECT 1", {"input_format_record_errors_file_path": "/tmp/errors"}),
        ("SELECT 1", {"schema_inference_hints": "a UInt8"}),
        ("SELECT 1 SETTINGS output_format_schema = '/tmp/pwned.proto'", {}),
        ("SET format_template_row = '/etc/passwd'", {"session_id": "policy-set"}),
    ],
)
def test_file_naming_settings_are_refused(ep, sql, params, who, tmp_path) -> None:
    status, headers, body = query(ep, sql, who, params)
    assert status != 200, body
    assert headers["X-ClickHouse-Exception-Code"] in ("497", "164"), body
    assert "root:" not in body
    assert not Path("/tmp/pwned.proto").exists()


def test_protobuf_and_capnproto_formats_are_refused(ep) -> None:
    for fmt in ("Protobuf", "ProtobufSingle", "CapnProto", "TemplateIgnoreSpaces"):
        refused(ep, f"SELECT 1 FORMAT {fmt}", RW, 497)
        refused(ep, "SELECT 1", RW, 497, {"default_format": fmt})
    refused(ep, "INSERT INTO platform.cases FORMAT Protobuf\n\x00", RW, 497)


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("SELECT 1", {"output_format_json_named_tuples_as_objects": "0"}),
        ("SELECT 1", {"allow_experimental_analyzer": "0"}),
        ("SELECT 1 SETTINGS max_threads = 1, allow_experimental_analyzer = 0", {}),
        ("SELECT 1", {"readonly": "0"}),
    ],
)
def test_readonly_user_changes_only_allowed_settings(ep, sql, params) -> None:
    refused(ep, sql, ANALYST, 164, params)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("max_execution_time", "0"),
        ("max_execution_time", "100000"),
        ("max_memory_usage", "0"),
        ("max_memory_usage", str(1 << 40)),
        ("max_result_rows", "0"),
        ("max_result_bytes", str(1 << 40)),
    ],
)
def test_limits_cannot_be_raised(ep, setting, value) -> None:
    refused(ep, "SELECT 1", ANALYST, 452, {setting: value})
    refused(ep, f"SELECT 1 SETTINGS {setting} = {value}", ANALYST, 452)
    refused(ep, f"SET {setting} = {value}", ANALYST, 452, {"session_id": "raise"})
    refused(ep, "SELECT 1", RW, 452, {"max_execution_time": "0"})


def test_limits_apply_and_can_be_lowered(ep) -> None:
    status, _, body = query(ep, "SELECT getSetting('max_execution_time')", ANALYST)
    assert body == "60\n"
    status, _, body = query(ep, "SELECT getSetting('max_memory_usage') > 0", ANALYST)
    assert body == "1\n"
    status, _, body = query(ep, "SELECT getSetting('max_result_rows')", ANALYST)
    assert body == "10000000\n"
    # Lowering is allowed and takes effect.
    body = refused(
        ep, "SELECT count() FROM numbers(1e12)", ANALYST, 159, {"max_execution_time": "1"}
    )
    assert "TIMEOUT_EXCEEDED" in body
    body = refused(
        ep,
        "SELECT length(groupArray(number)) FROM numbers(2e8)",
        ANALYST,
        241,
        {"max_memory_usage": "100000000"},
    )
    assert "MEMORY_LIMIT_EXCEEDED" in body
    refused(ep, "SELECT number FROM numbers(100)", ANALYST, 396, {"max_result_rows": "10"})


def test_analyst_reads_only_the_platform_database(ep) -> None:
    status, _, body = query(ep, "SELECT count() FROM cases", ANALYST)
    assert (status, body) == (200, "2\n")
    status, _, body = query(ep, f"SELECT count() FROM {PLATFORM_DB}.cases", ANALYST)
    assert (status, body) == (200, "2\n")
    for sql in [
        "SELECT * FROM secret.keys",
        "SELECT * FROM `secret`.`keys`",
        "SELECT * FROM platform.cases WHERE id IN (SELECT length(k) FROM secret.keys)",
        "SELECT * FROM default.t",
        "SELECT * FROM information_schema.tables",
        "SHOW TABLES FROM secret",
        "DESCRIBE TABLE secret.keys",
        "USE secret",
        "SELECT * FROM system.users",
        "SELECT * FROM system.query_log",
        "SELECT * FROM system.disks",
        "SELECT * FROM merge('secret', '.*')",
    ]:
        body = refused(ep, sql, ANALYST, 497)
        assert "top-secret" not in body
    refused(ep, "SELECT 1", ANALYST, 497, {"database": "secret"})
    refused(ep, "SELECT 1", ANONYMOUS, 497, {"database": "secret"})
    # system tables listing objects are filtered to the granted database.
    status, _, body = query(ep, "SELECT DISTINCT database FROM system.tables", ANALYST)
    assert body == f"{PLATFORM_DB}\n"
    status, _, body = query(ep, "SELECT name FROM system.databases", ANALYST)
    assert body == f"{PLATFORM_DB}\n"
    status, _, body = query(ep, "SHOW DATABASES", ANALYST)
    assert (status, body) == (200, f"{PLATFORM_DB}\n")
    # The writer still reaches every database.
    assert query(ep, "SELECT k FROM secret.keys", RW)[2] == "top-secret\n"


def test_clickhouse_connect_works_for_the_analyst(ep) -> None:
    client = ep.client(username="analyst", password="look")
    try:
        assert client.query("SELECT id, name FROM cases ORDER BY id").result_rows == [
            (1, "a"),
            (2, "b"),
        ]
        assert client.query_df("SELECT id FROM cases ORDER BY id")["id"].tolist() == [1, 2]
        assert client.command("SELECT currentDatabase()") == PLATFORM_DB
        with pytest.raises(DatabaseError):
            client.query("SELECT * FROM secret.keys")
    finally:
        client.close()
    client = ep.client(username="analyst", password="look", database=PLATFORM_DB)
    try:
        assert client.command("SELECT count() FROM cases") == 2
    finally:
        client.close()


def _slow_query_in_background(ep, who, query_id: str, marker: str) -> dict[str, object]:
    outcome: dict[str, object] = {}

    def run() -> None:
        # A raw socket: the cancelled stream ends without a final chunk, as in ClickHouse.
        params = {"query_id": query_id, "max_block_size": "10", "max_execution_time": "30"}
        sql = f"SELECT '{marker}', number FROM numbers(1e12) WHERE sleepEachRow(0.001) = 0"
        token = base64.b64encode(f"{who[0]}:{who[1]}".encode()).decode()
        request = (
            f"POST /?{urlencode(params)} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n"
            f"Content-Length: {len(sql)}\r\nConnection: close\r\n\r\n{sql}"
        )
        with socket.create_connection((ep.host, ep.port), timeout=120) as sock:
            sock.sendall(request.encode())
            received = bytearray()
            while chunk := sock.recv(65536):
                received += chunk
        outcome["result"] = received.decode(errors="replace")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    outcome["thread"] = thread
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = query(ep, "SELECT query_id FROM system.processes", who)[2]
        if query_id in body:
            return outcome
        time.sleep(0.1)
    raise AssertionError(f"{query_id} never showed up in system.processes: {body}")


def test_processes_and_errors_show_only_ones_own_queries(ep) -> None:
    outcome = _slow_query_in_background(ep, ANALYST, "analyst-slow-1", "Suspect Name")
    try:
        own = query(ep, "SELECT user, query FROM system.processes", ANALYST)[2]
        assert "Suspect Name" in own and own.startswith("analyst\t")
        for who in (ANALYST2, RW, ANONYMOUS):
            seen = query(ep, "SELECT user, query_id, query FROM system.processes", who)[2]
            assert "Suspect Name" not in seen and "analyst-slow-1" not in seen, seen
        # KILL QUERY reaches only one's own queries.
        status, _, body = query(ep, "KILL QUERY WHERE query_id = 'analyst-slow-1'", ANALYST2)
        assert (status, body) == (200, "")
        status, _, body = query(ep, "KILL QUERY WHERE query_id = 'analyst-slow-1' SYNC", ANALYST)
        assert status == 200 and "analyst-slow-1" in body, body
        outcome["thread"].join(60)
        assert not outcome["thread"].is_alive()
        body = str(outcome["result"])
        assert "QUERY_WAS_CANCELLED" in body, body[-300:]
    finally:
        outcome["thread"].join(60)
    # Errors: another user's failing query (a suspect's name in a literal) stays its own.
    query(ep, "SELECT throwIf(1, 'Suspect Othername')", ANALYST2)
    assert "Othername" not in query(ep, "SELECT * FROM system.errors", ANALYST)[2]
    assert "Othername" not in query(ep, "SELECT * FROM system.errors", RW)[2]
    assert "Othername" in query(ep, "SELECT last_error_message FROM system.errors", ANALYST2)[2]


def test_kill_query_of_others_or_all_is_refused(ep) -> None:
    refused(ep, "KILL QUERY WHERE 1", ANALYST, 164)
    refused(ep, "KILL QUERY WHERE user = 'analyst'", RW, 497)


def test_databases_hidden_in_arguments_and_parameters_are_refused(ep) -> None:
    for sql, params in [
        ("SELECT * FROM loop(secret, keys) LIMIT 1", {}),
        ("SELECT * FROM {db:Identifier}.keys", {"param_db": "secret"}),
        ("SELECT * FROM {t:Identifier}", {"param_t": "secret.keys"}),
        ("SELECT * FROM {t:Identifier}", {"param_t": "system.users"}),
        ("SHOW COLUMNS FROM keys FROM secret", {}),
    ]:
        body = refused(ep, sql, ANALYST, 497, params)
        assert "top-secret" not in body
    status, _, body = query(ep, "SELECT count() FROM {t:Identifier}", ANALYST, {"param_t": "cases"})
    assert (status, body) == (200, "2\n")
    status, _, body = query(ep, "SHOW COLUMNS FROM cases", ANALYST)
    assert status == 200 and "name" in body, body


@pytest.mark.parametrize("who", [RW, ANALYST], ids=["rw", "analyst"])
def test_system_cannot_become_the_current_database(ep, who) -> None:
    # Unqualified names there would reach system.processes/users past the per-user views.
    refused(ep, "SELECT query FROM processes", who, 497, {"database": "system"})
    refused(ep, "USE system", who, 497, {"session_id": f"use-system-{who[0]}"})
    refused(ep, "SELECT 1", who, 497, {"database": "INFORMATION_SCHEMA"})


def test_a_streamed_query_stops_when_its_client_leaves(ep) -> None:
    sql = "SELECT 'left-behind', number FROM numbers(1e12) WHERE sleepEachRow(0.001) = 0"
    params = {"query_id": "client-leaves-1", "max_block_size": "10"}
    token = base64.b64encode(b"analyst:look").decode()
    request = (
        f"POST /?{urlencode(params)} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n"
        f"Content-Length: {len(sql)}\r\n\r\n{sql}"
    )
    with socket.create_connection((ep.host, ep.port), timeout=60) as sock:
        sock.sendall(request.encode())
        assert b"200 OK" in sock.recv(4096)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen = query(ep, "SELECT query_id FROM system.processes", ANALYST)[2]
        if "client-leaves-1" not in seen:
            return
        time.sleep(0.2)
    raise AssertionError(f"the query ran on after its client left: {seen}")


@pytest.mark.parametrize(
    "table",
    ["user_processes", "query_cache", "session_query_ids", "stack_trace", "users", "disks"],
)
def test_tables_with_other_users_queries_or_secrets_are_refused_to_everyone(ep, table) -> None:
    outcome = _slow_query_in_background(ep, ANALYST, f"hidden-{table}", "Suspect Hidden")
    try:
        body = refused(ep, f"SELECT * FROM system.{table}", RW, 497)
        assert "Suspect Hidden" not in body
    finally:
        query(ep, f"KILL QUERY WHERE query_id = 'hidden-{table}'", ANALYST)
        outcome["thread"].join(60)


def test_show_processlist_is_the_per_user_view(ep) -> None:
    outcome = _slow_query_in_background(ep, ANALYST, "show-processlist-1", "Suspect Shown")
    try:
        assert "Suspect Shown" in query(ep, "SHOW PROCESSLIST", ANALYST)[2]
        for who in (RW, ANALYST2):
            status, _, body = query(ep, "SHOW FULL PROCESSLIST", who)
            assert status == 200 and "Suspect Shown" not in body, body
    finally:
        query(ep, "KILL QUERY WHERE query_id = 'show-processlist-1'", ANALYST)
        outcome["thread"].join(60)


@pytest.mark.parametrize(
    "sql", ["SHOW USERS", "SHOW GRANTS", "SHOW CREATE USER default", "SHOW ACCESS", "SHOW QUOTAS"]
)
def test_show_of_users_and_grants_is_refused(ep, sql) -> None:
    refused(ep, sql, RW, 497)
    status, _, body = query(ep, sql, ANALYST)
    assert status != 200 and "password" not in body.lower()


def test_kill_query_stops_a_non_streamed_query_mid_aggregation(ep) -> None:
    """One piece reply (wait_end_of_query=1, FORMAT JSON): KILL interrupts the computation."""
    outcome: dict[str, object] = {}

    def run() -> None:
        params = {"query_id": "analyst-agg-1", "wait_end_of_query": "1"}
        sql = "SELECT sum(number) FROM numbers(1e13) FORMAT JSON"
        outcome["reply"] = query(ep, sql, ANALYST, params=params)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        for _ in range(300):
            if "analyst-agg-1" in query(ep, "SELECT query_id FROM system.processes", ANALYST)[2]:
                break
            time.sleep(0.1)
        status, _, body = query(ep, "KILL QUERY WHERE query_id = 'analyst-agg-1'", ANALYST2)
        assert (status, body) == (200, "")
        status, _, body = query(ep, "KILL QUERY WHERE query_id = 'analyst-agg-1'", ANALYST)
        assert status == 200 and "analyst-agg-1" in body, body
        thread.join(120)
        assert not thread.is_alive(), "the killed query kept running"
        status, _, body = outcome["reply"]  # type: ignore[misc]
        assert "Code: 394" in body and "QUERY_WAS_CANCELLED" in body, (status, body[-300:])
    finally:
        thread.join(120)
