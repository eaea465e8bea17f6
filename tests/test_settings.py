"""The settings object: environment variables in, one documented place (services/settings.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services import settings as settings_module
from services.settings import Settings

pytestmark = pytest.mark.unit


def test_passwords_come_from_files_when_the_variable_is_unset(monkeypatch, tmp_path: Path):
    ch, kafka = tmp_path / "ch", tmp_path / "kafka"
    ch.write_text("ch-secret\n")
    kafka.write_text("kafka-secret")
    monkeypatch.delenv("CASESTREAM_CLICKHOUSE_PASSWORD", raising=False)
    monkeypatch.delenv("CASESTREAM_KAFKA_SASL_PASSWORD", raising=False)
    monkeypatch.setenv("CASESTREAM_CLICKHOUSE_PASSWORD_FILE", str(ch))
    monkeypatch.setenv("CASESTREAM_KAFKA_SASL_PASSWORD_FILE", str(kafka))
    s = Settings.from_env()
    assert (s.clickhouse_password, s.kafka_sasl_password) == ("ch-secret", "kafka-secret")
    assert "ch-secret" not in repr(s) and "kafka-secret" not in repr(s)


def test_the_variable_wins_over_the_file_and_the_default_stays(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("CASESTREAM_CLICKHOUSE_PASSWORD_FILE", str(tmp_path / "missing"))
    monkeypatch.setenv("CASESTREAM_CLICKHOUSE_PASSWORD", "from-env")
    assert Settings.from_env().clickhouse_password == "from-env"
    monkeypatch.delenv("CASESTREAM_CLICKHOUSE_PASSWORD")
    monkeypatch.delenv("CASESTREAM_CLICKHOUSE_PASSWORD_FILE")
    assert Settings.from_env().clickhouse_password == "casestream"


def test_an_unreadable_password_file_is_named_in_the_error(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("CASESTREAM_CLICKHOUSE_PASSWORD", raising=False)
    monkeypatch.setenv("CASESTREAM_CLICKHOUSE_PASSWORD_FILE", str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="CASESTREAM_CLICKHOUSE_PASSWORD_FILE: cannot read"):
        Settings.from_env()


def test_replication_factor_is_configurable(monkeypatch):
    monkeypatch.setenv("CASESTREAM_TOPIC_REPLICATION_FACTOR", "3")
    assert Settings.from_env().topic_replication_factor == 3


def documented(doc: str) -> set[str]:
    """Variable names of the docstring's table; "A_USER / _PASSWORD" names A_USER and A_PASSWORD."""
    names = set()
    for cell in re.findall(r"^\| (CASESTREAM_[^|]+?) \|", doc, re.M):
        first, *others = (part.strip().split(" ")[0] for part in cell.split("/"))
        names.add(first)
        names.update(first.rsplit("_", 1)[0] + other for other in others)
    return names


def test_every_variable_read_is_documented_in_the_module_docstring():
    source = Path(settings_module.__file__).read_text()
    read = set(re.findall(r'_(?:env|secret)\("(CASESTREAM_[A-Z0-9_]+)"', source))
    assert len(read) > 20
    assert read - documented(settings_module.__doc__ or "") == set()
    assert "CASESTREAM_NOT_A_SETTING" not in documented(settings_module.__doc__ or "")
