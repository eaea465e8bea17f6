"""The query policy's pure rules: what is refused, what passes, and the grants file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.clickhouse_endpoint import policy, sql
from services.clickhouse_endpoint.errors import ClickHouseError
from services.clickhouse_endpoint.processes import Registry, RunningQuery

pytestmark = pytest.mark.unit

TABLE_FUNCTIONS = {"file", "numbers", "url", "python", "somenewio", "merge", "loop", "format"}


def scan(text: str, restricted: bool = False) -> policy.Scan:
    return policy.scan_statement(
        "u", sql.significant_tokens(text), text, TABLE_FUNCTIONS, restricted=restricted
    )


@pytest.mark.parametrize(
    "text",
    [
        "SELECT file('/etc/passwd')",
        "select File ('/etc/passwd')",
        "SELECT `file`('/etc/passwd')",
        "SELECT \"file\"('/etc/passwd')",
        "SELECT file/* c */('/etc/passwd')",
        "SELECT * FROM somenewio('x')",  # unknown to the allow-list: closed by default
        "SELECT * FROM url('http://x/', CSV)",
        "SELECT dictGetString('d', 'a', 1)",
        "SELECT catboostEvaluate('/m.bin', 1)",
        "SELECT 1 INTO OUTFILE 'x'",
        "INSERT INTO t FROM INFILE '/etc/passwd' FORMAT TSV",
        "BACKUP TABLE t TO Disk('backups', 'x')",
        "RESTORE TABLE t FROM Disk('backups', 'x')",
        "CREATE DICTIONARY d (k UInt64) PRIMARY KEY k SOURCE(FILE(path '/x')) LAYOUT(FLAT())",
        "CREATE NAMED COLLECTION c AS url = 'http://x/'",
        "CREATE TABLE t (s String) ENGINE = File(TSV, '/etc/passwd')",
        "CREATE TABLE t (s String) ENGINE=Executable('id', TSV)",
        "CREATE DATABASE d ENGINE = Filesystem('/')",
        "ATTACH TABLE t FROM '/var/lib/x' (a UInt8) ENGINE = MergeTree ORDER BY a",
        "ALTER TABLE t FETCH PARTITION 1 FROM '/clickhouse/tables/x'",
        "SELECT 1 FORMAT Protobuf",
        "SELECT formatRow('CapnProto', 1)",
        "SELECT * FROM format(Template, '1')",
        "KILL QUERY WHERE 1",
        "KILL MUTATION WHERE 1",
        "CREATE TABLE t (s String DEFAULT file('/etc/passwd')) ENGINE = Memory",
    ],
)
def test_reaching_outside_the_engine_is_refused(text: str) -> None:
    with pytest.raises(ClickHouseError) as excinfo:
        scan(text)
    assert excinfo.value.code == 497
    assert "Not enough privileges" in excinfo.value.message


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 'file(\\'/etc/passwd\\')' AS s",  # inside a literal
        "SELECT file_name FROM cases",  # a column, not a call
        "SELECT * FROM numbers(10)",
        "SELECT * FROM format(JSONEachRow, '{\"a\": 1}')",
        "SELECT * FROM merge('platform', '^t')",
        "CREATE TABLE t (a UInt8) ENGINE = ReplacingMergeTree ORDER BY a",
        "CREATE TABLE t (a UInt8) ENGINE = Memory",
        "SELECT count() FROM t FORMAT JSONEachRow",
        "SELECT x FROM t -- file('/etc/passwd')",
    ],
)
def test_ordinary_queries_pass(text: str) -> None:
    scan(text)


def test_merge_and_loop_are_refused_to_users_with_database_grants() -> None:
    for text in ("SELECT * FROM merge('secret', '.*')", "SELECT * FROM loop(secret, keys)"):
        scan(text)
        with pytest.raises(ClickHouseError):
            scan(text, restricted=True)


def test_settings_clauses_and_qualified_names_are_collected() -> None:
    found = scan(
        "SELECT a.x FROM secret.keys AS a, `db2`.`t` "
        "SETTINGS max_threads = 2, output_format_schema = '/x' FORMAT TSV"
    )
    assert found.settings == [("max_threads", "2"), ("output_format_schema", "'/x'")]
    assert [(d, t) for d, t, *_ in found.qualified] == [
        ("a", "x"),
        ("secret", "keys"),
        ("db2", "t"),
    ]
    assert scan("SHOW COLUMNS FROM t FROM secret").show_names == ["t", "secret"]


@pytest.mark.parametrize(
    "name",
    [
        "format_schema",
        "output_format_schema",
        "format_template_resultset",
        "format_template_row",
        "schema_inference_hints",
        "input_format_record_errors_file_path",
        "format_avro_schema_registry_url",
        "some_future_path",
        "some_future_file",
        "allow_introspection_functions",
    ],
)
def test_file_naming_settings_are_refused_to_everyone(name: str) -> None:
    for readonly in (False, True):
        with pytest.raises(ClickHouseError) as excinfo:
            policy.check_setting("u", readonly, policy.Limits(), name, "/etc/passwd")
        assert excinfo.value.code == 497 and name in excinfo.value.message


def test_readonly_users_change_only_allow_listed_settings() -> None:
    limits = policy.default_limits(readonly=True)
    policy.check_setting("u", True, limits, "max_block_size", "100")
    policy.check_setting("u", True, limits, "output_format_json_quote_64bit_integers", "1")
    for name in ("readonly", "allow_ddl", "output_format_json_named_tuples_as_objects"):
        with pytest.raises(ClickHouseError) as excinfo:
            policy.check_setting("u", True, limits, name, "1")
        assert excinfo.value.code == 164
    policy.check_setting("u", False, limits, "allow_experimental_analyzer", "0")


@pytest.mark.parametrize("value", ["0", "61", "1e9", "DEFAULT", "'0'"])
def test_limits_can_only_be_lowered(value: str) -> None:
    limits = policy.Limits(max_execution_time=60)
    with pytest.raises(ClickHouseError) as excinfo:
        policy.check_setting("u", False, limits, "max_execution_time", value)
    assert excinfo.value.code == 452 and "max_execution_time" in excinfo.value.message
    policy.check_setting("u", False, limits, "max_execution_time", "'30'")
    policy.check_setting("u", False, policy.Limits(), "max_execution_time", "0")  # no cap set


def test_default_limits_are_bounded() -> None:
    analyst = policy.default_limits(readonly=True)
    assert analyst.max_execution_time == 60
    assert 256 << 20 <= analyst.max_memory_usage <= 4 << 30
    assert analyst.max_result_rows and analyst.max_result_bytes
    writer = policy.default_limits(readonly=False)
    assert writer.max_execution_time and writer.max_memory_usage
    assert set(analyst.settings()) == set(policy.LIMIT_SETTINGS)


def test_grants_from_the_users_file(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    path.write_text(
        json.dumps(
            {
                "users": {
                    "rw": {"password": "p", "readonly": False},
                    "analyst": {
                        "password": "a",
                        "readonly": True,
                        "databases": ["casestream"],
                        "limits": {"max_execution_time": 30},
                    },
                }
            }
        )
    )
    grants = policy.grants_from_users_file(str(path))
    assert grants["rw"].databases is None and grants["rw"].may_use("anything")
    assert grants["analyst"].databases == frozenset({"casestream"})
    assert grants["analyst"].default_database == "casestream"
    assert not grants["analyst"].may_use("secret")
    assert grants["analyst"].limits.max_execution_time == 30
    assert grants["analyst"].limits.max_result_rows == 10_000_000
    assert policy.grants_from_users_file(None) == {}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"databases": "casestream"}, "'databases' must be a list"),
        ({"limits": {"max_threads": 1}}, "unknown limit 'max_threads'"),
        ({"limits": {"max_execution_time": -1}}, "'max_execution_time' must be a number >= 0"),
    ],
)
def test_bad_grants_are_named(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        policy.grants_from_spec(True, spec, "users file x: user 'a'")


def test_identifier_parameters_are_substituted_outside_literals() -> None:
    text = "SELECT '{db:Identifier}' FROM {db:Identifier}.t, { t : Identifier }"
    assert (
        policy.substitute_identifier_parameters(text, {"db": "secret", "t": "a.b"})
        == "SELECT '{db:Identifier}' FROM `secret`.t, `a`.`b`"
    )


def test_registry_shows_and_kills_only_own_queries() -> None:
    registry = Registry()
    mine = RunningQuery("alice", "q1", "SELECT 'Suspect'", "platform")
    theirs = RunningQuery("bob", "q2", "SELECT 'Other'", "platform")
    with registry.running(mine), registry.running(theirs):
        view = registry.processes_view("alice")
        assert "Suspect" in view and "Other" not in view and "q2" not in view
        assert registry.kill("alice", {"q1", "q2"}) == [mine]
        assert mine.cancelled.is_set() and not theirs.cancelled.is_set()
    assert registry.own("alice") == []
    assert "WHERE 0" in registry.processes_view("alice")
    registry.record_error("bob", "UNKNOWN_IDENTIFIER", 47, "Unknown identifier 'Suspect'")
    assert "Suspect" not in registry.errors_view("alice")
    assert "Suspect" in registry.errors_view("bob")
