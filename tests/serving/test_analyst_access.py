"""Access by province, attacked through the real endpoint of the session's stack.

`casestream analysts add` gives Ho Chi Minh City's committee (province 79, which took in 74 and
77 in 2025) and Hanoi's (01) their own analysts, and the ministry a national one. Each provincial
analyst must see its province's rows in every table and rollup it can name, and no other
province's row by any query the endpoint accepts: other databases by name, USE, the database
parameter, table functions, identifier parameters, system tables, joins and subqueries.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import clickhouse_connect
import httpx
import pytest
from click.testing import CliRunner

from services.cli import main
from services.settings import Settings
from tests.serving.sample_rows import PROVINCES, private_platform_database

pytestmark = pytest.mark.integration

HCMC = {"74", "77", "79"}


@pytest.fixture(scope="module")
def scoped(stack: Settings, tmp_path_factory) -> dict:
    """A platform database of its own with rows of four provinces, and three analysts."""
    with private_platform_database("access") as settings:
        work = tmp_path_factory.mktemp("analysts")
        passwords = {}
        runner = CliRunner()
        for name, scope in (
            ("hcmc", ["--province", "79"]),
            ("hanoi", ["--province", "01"]),
            ("ministry", ["--national"]),
        ):
            password = f"{name}-{uuid.uuid4().hex}"
            path = Path(work / name)
            path.write_text(password)
            done = runner.invoke(
                main, ["analysts", "add", name, *scope, "--password-file", str(path)]
            )
            assert done.exit_code == 0, done.output
            passwords[name] = password
        again = runner.invoke(main, ["analysts", "add", "hcmc", "--province", "79"])
        assert again.exit_code == 0 and "updated" in again.output  # idempotent, password kept
        moved = runner.invoke(main, ["analysts", "add", "hcmc", "--province", "01"])
        assert moved.exit_code != 0 and "already sees 79" in moved.output
        database = settings.clickhouse_database
        yield {"settings": settings, "database": database, "passwords": passwords}
        for name in passwords:
            runner.invoke(main, ["analysts", "remove", name])


def _client(scoped: dict, name: str, database: str | None = None):
    settings = scoped["settings"]
    host, port = settings.clickhouse_host_port
    return clickhouse_connect.get_client(
        host=host,
        port=port,
        username=name,
        password=scoped["passwords"][name],
        database=database or f"{scoped['database']}_p{'79' if name == 'hcmc' else '01'}",
    )


def test_a_provincial_analyst_sees_its_province_in_every_table_and_rollup(scoped):
    hcmc = _client(scoped, "hcmc")
    seen = {
        table: {r[0] for r in hcmc.query(f"SELECT {column} FROM {table}").result_rows}
        for table, column in (
            ("events", "province_code"),
            ("cases", "province_code"),
            ("appraisals", "substring(agency_id, 1, 2)"),
            ("rollup_province", "province_code"),
        )
    }
    assert seen == {
        "events": {"74", "79"},  # its own and what Binh Duong (74) recorded before the merger
        "cases": {"74", "79"},
        "appraisals": {"74", "79"},
        "rollup_province": {"74", "79"},
    }
    sent = hcmc.query("SELECT from_province_code, to_province_code FROM transfers").result_rows
    assert sorted(sent) == [("74", "01"), ("79", "01")]
    # Hanoi receives those transfers, so it sees them too, and its own
    hanoi = _client(scoped, "hanoi")
    hanoi_transfers = {r[0] for r in hanoi.query("SELECT transfer_id FROM transfers").result_rows}
    assert hanoi_transfers == {"t-00", "t-01", "t-74", "t-79"}  # sent from or received in 01
    assert {r[0] for r in hanoi.query("SELECT province_code FROM cases").result_rows} == {"01"}
    # the national analyst sees every row, the national rollup included
    ministry = _client(scoped, "ministry", scoped["database"])
    assert ministry.command("SELECT count() FROM cases") == len(PROVINCES)
    assert ministry.command("SELECT count() FROM rollup_national") == 1


def test_a_provincial_analyst_reaches_no_other_province_by_any_query(scoped):
    base = scoped["database"]
    hcmc = _client(scoped, "hcmc")
    attacks = [
        f"SELECT province_code FROM {base}.cases",
        f"SELECT province_code FROM {base}.cases_state",
        f"SELECT province_code FROM {base}_p01.cases",
        f"SELECT count() FROM {base}.rollup_national",
        "SELECT count() FROM rollup_national",
        f"SELECT province_code FROM cases WHERE case_id IN (SELECT case_id FROM {base}.cases)",
        f"SELECT c.province_code FROM cases AS c FULL JOIN {base}.cases AS o ON 1",
        f"SELECT * FROM merge('{base}', 'cases')",
        f"SELECT * FROM merge(REGEXP('{base}'), '.*')",
        f"SELECT * FROM view(SELECT province_code FROM {base}.cases)",
        f"SELECT * FROM remote('127.0.0.1', {base}.cases)",
        f"SELECT * FROM cluster('default', {base}.cases)",
        f"SELECT * FROM `{base}`.`cases`",
        f'SELECT * FROM "{base}".cases',
        f"USE {base}",
        f"SHOW TABLES FROM {base}",
        f"SHOW CREATE TABLE {base}.cases_state",
        f"SELECT name FROM system.tables WHERE database = '{base}'",
        f"INSERT INTO cases SELECT * FROM {base}.cases",
        f"CREATE VIEW mine AS SELECT * FROM {base}.cases",
        f"SELECT joinGet('{base}.cases_state', 'province_code', '01-INSP/2025/0000')",
    ]
    leaks = []
    for query in attacks:
        try:
            result = hcmc.query(query)
        except Exception:  # noqa: BLE001 - refused: what we want
            continue
        rows = [tuple(map(str, r)) for r in result.result_rows]
        foreign = [r for r in rows if any(v in ("01", "00") for v in r) or base in str(r)]
        if foreign or (rows and "system.tables" in query):
            leaks.append(f"{query!r} -> {rows[:5]}")
    # the database parameter and identifier parameters of the HTTP interface
    settings = scoped["settings"]
    auth = ("hcmc", scoped["passwords"]["hcmc"])
    for params in (
        {"query": "SELECT province_code FROM cases", "database": base},
        {"query": "SELECT province_code FROM {t:Identifier}", "param_t": f"{base}.cases"},
        {"query": "SELECT province_code FROM cases", "database": f"{base}_p01"},
    ):
        response = httpx.get(settings.clickhouse_url, params=params, auth=auth, timeout=30)
        if response.status_code == 200 and response.text.strip():
            leaks.append(f"{params} -> {response.text[:200]!r}")
    assert not leaks, "\n".join(leaks)


def test_an_unknown_or_removed_analyst_cannot_log_in(scoped, tmp_path):
    runner = CliRunner()
    password = f"temp-{uuid.uuid4().hex}"
    (tmp_path / "password").write_text(password)
    added = runner.invoke(
        main,
        [
            "analysts",
            "add",
            "temp_analyst",
            "--province",
            "01",
            "--password-file",
            str(tmp_path / "password"),
        ],
    )
    assert added.exit_code == 0, added.output
    listed = runner.invoke(main, ["analysts", "list"])
    assert "temp_analyst" in listed.output and "province 01" in listed.output
    settings = scoped["settings"]

    def login() -> httpx.Response:
        return httpx.get(
            settings.clickhouse_url,
            params={"query": "SELECT count() FROM cases"},
            auth=("temp_analyst", password),
            timeout=30,
        )

    assert login().status_code == 200  # in at once: the running endpoint reloaded its users
    removed = runner.invoke(main, ["analysts", "remove", "temp_analyst"])
    assert removed.exit_code == 0
    response = login()
    assert response.status_code != 200 and "AUTHENTICATION_FAILED" in response.text
