"""The worker's faust app as built (no broker needed): how its case state is stored and restored."""

from __future__ import annotations

import pytest

from services.processor import envelope
from services.processor.worker import CASE_STATE_TABLE, create_app
from services.settings import Settings

pytestmark = pytest.mark.unit


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("CASESTREAM_HOME", str(tmp_path))
    monkeypatch.setenv("CASESTREAM_WORKER_INSTANCE", "w2")
    return create_app(Settings.from_env(), app_id="unit-app")


def test_the_changelog_is_read_back_as_the_raw_bytes_it_was_written_with(app):
    """Recovery decodes the changelog with the table's key/value types; with faust's default
    (JSON), the first case id that is not a JSON literal broke recovery and stalled the worker."""
    topic = app.tables[CASE_STATE_TABLE].changelog_topic
    case_id = "t15d1638b7b:20-INSP/2021/0001"
    assert topic.key_serializer == "raw" and topic.value_serializer == "raw"
    assert topic.prepare_key(case_id.encode(), None)[0] == case_id.encode()
    state = b"\x93\xa1x"  # any bytes, not JSON
    assert topic.prepare_value(state, None)[0] == state


def test_the_state_is_on_disk_in_the_instance_s_own_directory(app, tmp_path):
    assert app.conf.store.scheme == "rocksdb"
    assert str(app.conf.datadir).startswith(str(tmp_path / "worker" / "unit-app" / "w2"))


def test_the_changelog_has_the_facts_topic_s_partition_count(app):
    """Co-partitioning: faust's assignor gives partition p of both to the same worker."""
    table = app.tables[CASE_STATE_TABLE]
    assert table.partitions == Settings.from_env().topic_partitions
    assert envelope.partition_for("C-1", table.partitions) in range(table.partitions)


def test_an_instance_name_that_is_not_a_plain_name_is_refused(tmp_path, monkeypatch):
    from services.settings import SettingsError

    monkeypatch.setenv("CASESTREAM_HOME", str(tmp_path))
    monkeypatch.setenv("CASESTREAM_WORKER_INSTANCE", "../other")
    with pytest.raises(SettingsError, match="CASESTREAM_WORKER_INSTANCE='../other'"):
        create_app(Settings.from_env(), app_id="unit-app")


def test_refetched_messages_are_grouped_like_the_ones_faust_delivered():
    """Facts read again after faust skipped them (refetch.py) carry only ``tp``, ``offset``,
    ``key`` and ``value``: a batch holding them once crashed the derive agent on every retry,
    and the partitions it held stopped (seen with two and three workers)."""
    from types import SimpleNamespace

    from services.processor.facts import Fact
    from services.processor.refetch import Partition, RawMessage, Refetched
    from services.processor.worker import facts_by_partition

    def fact(case_id: str) -> Fact:
        return Fact("e-" + case_id, "case_opened", case_id, "20-INSP", 0, 420, None, {})

    topic = "app-facts-by-case"
    delivered = SimpleNamespace(
        message=SimpleNamespace(
            tp=Partition(topic, 1), offset=4, value=envelope.encode([fact("A")])
        )
    )
    refetched = Refetched(RawMessage(Partition(topic, 2), 3, None, envelope.encode([fact("B")])))
    grouped = facts_by_partition([delivered, refetched])
    assert {p: [f.case_id for f in facts] for p, facts in grouped.items()} == {1: ["A"], 2: ["B"]}
