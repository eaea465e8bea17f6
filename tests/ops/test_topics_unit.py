"""Which topics hold the record and the configs they are created with."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.ops.topics import (
    DLQ_TOPIC,
    PROBE_TOPIC,
    Retention,
    facts_topic,
    holds_the_record,
    topic_config,
)
from services.settings import Settings

pytestmark = pytest.mark.unit


def test_agency_topics_and_the_dlq_hold_the_record_and_nothing_else():
    assert holds_the_record("agency.20-INSP.events") and holds_the_record(DLQ_TOPIC)
    for derived in (PROBE_TOPIC, facts_topic("casestream-worker"), "agency.20-INSP.events-x"):
        assert not holds_the_record(derived), derived


def test_record_topics_are_kept_forever_and_need_two_replicas_on_a_cluster():
    one = replace(Settings.from_env(), topic_replication_factor=1)
    three = replace(one, topic_replication_factor=3)
    assert topic_config(one, "agency.20-INSP.events") == {
        "retention.ms": "-1",
        "retention.bytes": "-1",
    }
    assert topic_config(three, DLQ_TOPIC)["min.insync.replicas"] == "2"
    assert topic_config(three, facts_topic("w")) == {}, "derived topics keep the broker default"


@pytest.mark.parametrize(
    ("ms", "size", "finite", "text"),
    [
        (-1, -1, False, "t: kept forever"),
        (604_800_000, -1, True, "t: retention.ms=604800000 (7 days)"),
        (1000, -1, True, "t: retention.ms=1000 (1 seconds)"),
        (-1, 1_073_741_824, True, "t: retention.bytes=1073741824"),
    ],
)
def test_retention_says_whether_it_deletes(ms: int, size: int, finite: bool, text: str):
    r = Retention("t", ms, size)
    assert r.finite is finite and r.describe() == text
