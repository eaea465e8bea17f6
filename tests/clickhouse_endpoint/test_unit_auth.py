"""Users file, credentials, the failed-login throttle and body lexing cost: no engine needed."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import stat

import pytest

from services.clickhouse_endpoint import request as request_module
from services.clickhouse_endpoint.auth import Credentials, UserDirectory, extract_credentials
from services.clickhouse_endpoint.errors import ClickHouseError
from services.clickhouse_endpoint.login_throttle import LoginThrottle, LoginThrottled
from services.clickhouse_endpoint.request import (
    DEFAULT_MAX_QUERY_SIZE,
    MAX_QUERY_SIZE_CEILING,
    RequestBody,
    check_fields,
    parse_query_string,
    printable,
    query_size_limit,
    read_input,
)

pytestmark = pytest.mark.unit


def sha(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def write(tmp_path, users: dict) -> str:
    path = tmp_path / "users.json"
    path.write_text(json.dumps({"users": users}))
    return str(path)


# -- users file -----------------------------------------------------------------------------


def test_users_file_holds_sha256_and_authenticates(tmp_path) -> None:
    path = write(
        tmp_path,
        {
            "w": {"password_sha256_hex": sha("pw"), "readonly": False},
            "r": {"password_sha256_hex": sha("x").upper(), "readonly": True},
        },
    )
    users = UserDirectory.from_file(path)
    assert users.authenticate(Credentials("w", "pw")).readonly is False
    assert users.authenticate(Credentials("r", "x")).readonly is True
    for bad in (Credentials("w", sha("pw")), Credentials("w", ""), Credentials("default", "")):
        with pytest.raises(ClickHouseError) as excinfo:  # the digest itself is no password
            users.authenticate(bad)
        assert excinfo.value.code == 516
    assert sha("pw") not in repr(users.authenticate(Credentials("w", "pw")))


def test_clear_text_users_file_still_works_with_one_warning(tmp_path, caplog) -> None:
    path = write(
        tmp_path, {"a": {"password": "pass-A-77"}, "b": {"password": "pass-B-88", "readonly": True}}
    )
    with caplog.at_level(logging.WARNING):
        users = UserDirectory.from_file(path)
    assert users.authenticate(Credentials("b", "pass-B-88")).readonly is True
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "clear-text passwords (users: a, b)" in warnings[0].getMessage()
    assert "pass-A-77" not in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"password_sha256_hex": "abc"}, "64 hex digits"),
        ({"password_sha256_hex": sha("x"), "password": "x"}, "exactly one of"),
        ({"readonly": True}, "exactly one of"),
        ({"no_password": False}, "no_password must be true"),
        ({"password": 5}, "string password"),
        ({"password_sha256_hex": sha("x"), "readonly": "yes"}, "'readonly' must be"),
    ],
)
def test_bad_users_file_entries_are_named(tmp_path, spec, message) -> None:
    with pytest.raises(ValueError, match=message) as excinfo:
        UserDirectory.from_file(write(tmp_path, {"someone": spec}))
    assert "'someone'" in str(excinfo.value)


def test_user_names_with_control_characters_are_refused_in_the_file(tmp_path) -> None:
    with pytest.raises(ValueError, match="without control characters"):
        UserDirectory.from_file(write(tmp_path, {"a\nb": {"no_password": True}}))


def test_passwordless_user_only_when_configured(tmp_path) -> None:
    users = UserDirectory.from_file(
        write(tmp_path, {"default": {"no_password": True, "readonly": True}})
    )
    assert users.authenticate(Credentials("default", "")).readonly is True
    with pytest.raises(ClickHouseError):
        users.authenticate(Credentials("default", "anything"))


# -- credentials ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({"Authorization": "Basic " + __import__("base64").b64encode(b"a\nb:pw").decode()}, {}),
        ({"X-ClickHouse-User": "a\x00b"}, {}),
        ({}, {"user": "a\rb"}),
    ],
)
def test_user_names_with_control_characters_are_refused(headers, params) -> None:
    with pytest.raises(ClickHouseError) as excinfo:
        extract_credentials(headers, params)
    assert excinfo.value.http_status == 400
    assert "user name contains control character" in excinfo.value.message


# -- URL parameters -------------------------------------------------------------------------


def test_parse_query_string_refuses_control_characters_but_not_in_sql() -> None:
    assert parse_query_string("query=SELECT%0A1&param_s=a%09b")["query"] == "SELECT\n1"
    with pytest.raises(ClickHouseError, match="URL parameter 'query_id' contains control"):
        parse_query_string("query_id=a%0D%0AX:1")
    with pytest.raises(ClickHouseError, match="URL parameter 'query_id' contains control"):
        parse_query_string("query_id=ok&query_id=a%0Ab")  # repeated names: each is checked
    check_fields([("max_threads", "2\t")], "form field")  # tab is fine in a value
    assert printable("a\r\nb\tc") == "a\\x0d\\x0ab\\x09c"


def test_query_size_limit() -> None:
    assert query_size_limit({}, readonly=False) == DEFAULT_MAX_QUERY_SIZE == 262144
    assert query_size_limit({"max_query_size": "1000000"}, readonly=True) == 262144
    assert query_size_limit({"max_query_size": "1000"}, readonly=False) == 1000
    assert query_size_limit({"max_query_size": "99999999999"}, readonly=False) == (
        MAX_QUERY_SIZE_CEILING
    )
    for bad in ("x", "-1", "0"):
        with pytest.raises(ClickHouseError, match="max_query_size"):
            query_size_limit({"max_query_size": bad}, readonly=False)


# -- body lexing cost -----------------------------------------------------------------------


def _chunked_body(payload: bytes, size: int = 4096) -> RequestBody:
    framed = b"".join(
        b"%x\r\n%s\r\n" % (len(payload[i : i + size]), payload[i : i + size])
        for i in range(0, len(payload), size)
    )
    return RequestBody(io.BytesIO(framed + b"0\r\n\r\n"), {"Transfer-Encoding": "chunked"})


def test_finding_the_insert_data_lexes_a_linear_amount_of_text(monkeypatch) -> None:
    """An INSERT whose column list grows chunk after chunk used to be re-lexed per 4 KB chunk."""
    lexed: list[int] = []
    real = request_module.sql.split_insert

    def counting(text: str, eof: bool):
        lexed.append(len(text))
        return real(text, eof)

    monkeypatch.setattr(request_module.sql, "split_insert", counting)
    columns = b"INSERT INTO t (" + b",".join(b"c%d" % i for i in range(40_000)) + b")"
    payload = columns + b" FORMAT TSV\n" + b"1\n" * 1000
    assert 256 * 1024 < len(columns) < MAX_QUERY_SIZE_CEILING
    source = read_input(None, _chunked_body(payload), MAX_QUERY_SIZE_CEILING)
    assert source.insert is not None and b"".join(source.data) == b"1\n" * 1000
    assert sum(lexed) <= 4 * len(payload), (len(lexed), sum(lexed), len(payload))


def test_a_statement_not_ending_within_max_query_size_is_refused(monkeypatch) -> None:
    lexed: list[int] = []
    real = request_module.sql.split_insert
    monkeypatch.setattr(
        request_module.sql,
        "split_insert",
        lambda text, eof: lexed.append(len(text)) or real(text, eof),
    )
    payload = b"INSERT INTO t (" + b"a," * (512 * 1024)
    with pytest.raises(ClickHouseError, match=r"Max query size exceeded \(limit 262144"):
        read_input(None, _chunked_body(payload))
    assert max(lexed) <= DEFAULT_MAX_QUERY_SIZE  # never more than the limit at once


def test_a_long_select_is_refused_without_being_lexed(monkeypatch) -> None:
    parsed: list[int] = []
    monkeypatch.setattr(
        request_module.sql, "parse_statement", lambda text: parsed.append(len(text))
    )
    with pytest.raises(ClickHouseError, match="Max query size exceeded"):
        read_input(None, _chunked_body(b"SELECT " + b"1+" * 200_000 + b"1"))
    assert parsed == []


# -- the throttle ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_locks_after_free_failures_with_doubling_locks() -> None:
    clock = Clock()
    throttle = LoginThrottle(free_failures=3, quiet_s=60, first_lock_s=1, max_lock_s=8, clock=clock)
    for _ in range(3):
        throttle.check("10.0.0.1", "casestream")
        throttle.failed("10.0.0.1", "casestream")
    throttle.check("10.0.0.1", "casestream")  # three failures are free
    locks = []
    for _ in range(5):
        throttle.failed("10.0.0.1", "casestream")
        with pytest.raises(LoginThrottled) as excinfo:
            throttle.check("10.0.0.1", "casestream")
        assert excinfo.value.http_status == 429 and excinfo.value.code == 201
        locks.append(excinfo.value.retry_after_s)
        clock.now += excinfo.value.retry_after_s
        throttle.check("10.0.0.1", "casestream")  # the lock has run out
    assert locks == [1, 2, 4, 8, 8]


def test_throttle_keys_are_the_address_and_the_user_name_separately() -> None:
    clock = Clock()
    throttle = LoginThrottle(free_failures=2, clock=clock)
    for _ in range(3):
        throttle.failed("10.0.0.1", "casestream")
    with pytest.raises(LoginThrottled):  # same user from elsewhere
        throttle.check("10.0.0.2", "casestream")
    with pytest.raises(LoginThrottled):  # another user from the same address
        throttle.check("10.0.0.1", "analyst")
    throttle.check("10.0.0.2", "analyst")  # neither: not slowed at all


def test_throttle_forgets_after_a_quiet_period_only() -> None:
    clock = Clock()
    throttle = LoginThrottle(
        free_failures=2, quiet_s=60, first_lock_s=1, max_lock_s=30, clock=clock
    )
    for _ in range(2):
        throttle.failed("a", "u")
        clock.now += 59  # a slow guesser never gets a quiet minute
    throttle.failed("a", "u")
    with pytest.raises(LoginThrottled):
        throttle.check("a", "u")
    clock.now += 61
    throttle.check("a", "u")
    throttle.failed("a", "u")  # after a quiet minute: free failures again
    throttle.check("a", "u")


def test_throttle_memory_is_bounded_and_keeps_the_busy_address() -> None:
    throttle = LoginThrottle(free_failures=1, max_keys=100, clock=Clock())
    for i in range(1000):
        throttle.failed("10.0.0.9", f"made-up-{i}")
    assert len(throttle._keys) <= 100
    with pytest.raises(LoginThrottled):
        throttle.check("10.0.0.9", "someone-else")


# -- the users file the stack writes --------------------------------------------------------


def test_stack_writes_digests_only_0600_and_no_anonymous_default(tmp_path) -> None:
    from services.settings import Settings
    from services.stack import clickhouse as stack_clickhouse

    settings = dataclasses.replace(
        Settings.from_env(),
        home=tmp_path,
        clickhouse_password="rw-secret-1",
        analyst_password="ro-secret-2",
    )
    path = tmp_path / "clickhouse" / "users.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"users": {"casestream": {"password": "rw-secret-1"}}}')
    path.chmod(0o644)  # an old, clear-text, world-readable file is replaced
    old_umask = os.umask(0)
    try:
        written = stack_clickhouse.write_users_file(settings)
    finally:
        os.umask(old_umask)
    assert written == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "rw-secret-1" not in text and "ro-secret-2" not in text
    users = UserDirectory.from_file(path)
    assert users.names == sorted([settings.clickhouse_user, settings.analyst_user])
    assert users.authenticate(Credentials(settings.analyst_user, "ro-secret-2")).readonly
    assert not list(path.parent.glob(".*tmp"))

    opted_in = dataclasses.replace(settings, clickhouse_anonymous_default=True)
    stack_clickhouse.write_users_file(opted_in)
    users = UserDirectory.from_file(path)
    assert users.authenticate(Credentials("default", "")).readonly is True


def test_anonymous_default_setting_is_off_unless_set(monkeypatch) -> None:
    from services.settings import Settings

    monkeypatch.delenv("CASESTREAM_CLICKHOUSE_ANONYMOUS_DEFAULT", raising=False)
    assert Settings.from_env().clickhouse_anonymous_default is False
    monkeypatch.setenv("CASESTREAM_CLICKHOUSE_ANONYMOUS_DEFAULT", "1")
    assert Settings.from_env().clickhouse_anonymous_default is True
