"""docs/analysts.md: every example runs, as written, against the real endpoint; every column of
every table it documents is named in it.

The examples read their connection from CH_URL, CH_USER and CH_PASSWORD, as the guide says: here
a national analyst created with `casestream analysts add --national` on a database of sample rows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest
from click.testing import CliRunner

from services.cli import main
from services.settings import Settings
from tests.helpers import REPO
from tests.serving.sample_rows import private_platform_database

pytestmark = pytest.mark.integration

GUIDE = REPO / "docs" / "analysts.md"
EXAMPLE = re.compile(r"```(sh|python) example\n(.*?)```", re.S)
DOCUMENTED = (
    "cases",
    "transfers",
    "appraisals",
    "events",
    "rollup_national",
    "rollup_province",
    "integrity_violations",
    "agency_freshness",
    "sequence_gaps",
)


@pytest.fixture(scope="module")
def reader(stack: Settings, tmp_path_factory) -> dict[str, str]:
    with private_platform_database("guide") as settings:
        password = f"guide-{uuid.uuid4().hex}"
        path = tmp_path_factory.mktemp("guide") / "password"
        path.write_text(password)
        runner = CliRunner()
        done = runner.invoke(
            main, ["analysts", "add", "guide_reader", "--national", "--password-file", str(path)]
        )
        assert done.exit_code == 0, done.output
        yield {
            "CH_URL": settings.clickhouse_url,
            "CH_USER": "guide_reader",
            "CH_PASSWORD": password,
            "database": settings.clickhouse_database,
        }
        runner.invoke(main, ["analysts", "remove", "guide_reader"])


def _examples() -> list[tuple[str, str]]:
    return EXAMPLE.findall(GUIDE.read_text(encoding="utf-8"))


def test_the_guide_has_curl_clickhouse_connect_and_pandas_examples():
    examples = _examples()
    text = "\n".join(code for _, code in examples)
    assert "curl " in text and "clickhouse_connect" in text and "query_df" in text
    assert len(examples) >= 4


@pytest.mark.parametrize("index", range(len(_examples())))
def test_each_example_runs_as_written(reader, index):
    language, code = _examples()[index]
    env = {**os.environ, **{k: v for k, v in reader.items() if k.startswith("CH_")}}
    command = (
        ["bash", "-euo", "pipefail", "-c", code]
        if language == "sh"
        else [
            sys.executable,
            "-c",
            code,
        ]
    )
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.stdout.strip(), f"the example printed nothing:\n{code}"
    assert "Exception" not in done.stdout


def test_every_column_of_the_documented_tables_is_named(stack, reader):
    text = GUIDE.read_text(encoding="utf-8")
    client = stack.clickhouse_client(database=reader["database"])
    missing = []
    for table in DOCUMENTED:
        for name, *_ in client.query(f"DESCRIBE TABLE {table}").result_rows:
            if f"`{name}`" not in text:
                missing.append(f"{table}.{name}")
    assert not missing, f"columns the guide does not name: {missing}"
