"""A worker started over the case state of the layout before envelopes carries it over.

Without the upgrade the new worker would start with no state and derive the next fact of every
old case from that fact alone (a receipt with no transfer, a case with one event).
"""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from services.agency.publisher import Publisher
from services.contracts.events import parse_event
from services.processor import envelope
from services.processor.facts import Fact
from tests.helpers import (
    WorkerProcess,
    case_sent_to_police,
    new_tag,
    start_at_the_end,
    wait_for,
)

pytestmark = pytest.mark.integration


def _old_layout_state(fact_events: list[dict]) -> bytes:
    """A case's state as the `case-facts` table kept it: JSON lists, one per fact."""
    facts = [Fact.from_event(parse_event(e)) for e in fact_events]
    return envelope.json_body(facts)  # the same JSON lists


def test_the_state_of_the_old_changelog_is_carried_over_before_the_worker_derives(stack):
    tag = new_tag()
    app_id = f"upgrade-{tag}"
    case = f"{tag}:20-INSP/2021/00001"
    opened, transferred, received = case_sent_to_police(
        case, "2021-03-01T08:00:00+07:00", "2021-03-02T08:00:00+07:00", "2021-03-09T08:00:00+07:00"
    )
    old = f"{app_id}-case-facts-changelog"
    admin = AdminClient(stack.kafka_client_config())
    admin.create_topics([NewTopic(old, 4, 1, config={"cleanup.policy": "compact"})])[old].result()
    producer = Producer(stack.kafka_client_config())
    # Two records of the case, as the old worker wrote them (the last one wins); JSON-encoded key.
    producer.produce(old, _old_layout_state([opened]), json.dumps(case).encode(), partition=1)
    producer.produce(
        old, _old_layout_state([opened, transferred]), json.dumps(case).encode(), partition=1
    )
    assert producer.flush(30) == 0

    start_at_the_end(stack, app_id)  # the worker reads only the receipt published below
    database = f"upgrade_{tag}"
    worker = WorkerProcess(
        stack,
        env={
            "CASESTREAM_WORKER_APP_ID": app_id,
            "CASESTREAM_CLICKHOUSE_DATABASE": database,
            "CASESTREAM_WORKER_METRICS_ADDR": "off",
        },
    ).start()
    try:
        with Publisher(None, stack) as publisher:
            publisher.publish_many([received])
        ch = stack.clickhouse_client(database="default")  # the worker creates `database`

        def case_row():
            if not ch.command(f"EXISTS TABLE {database}.cases"):
                return None
            rows = ch.query(
                f"SELECT event_count, transfers_sent FROM {database}.cases WHERE case_id = {{c:String}}",
                parameters={"c": case},
            ).result_rows
            return rows[0] if rows else None

        assert wait_for(case_row, timeout=180, what="the case's row") == (3, 1)
        transfer = ch.query(
            f"SELECT status, from_agency_id, to_agency_id FROM {database}.transfers WHERE case_id = {{c:String}}",
            parameters={"c": case},
        ).result_rows
        assert transfer == [("received", "20-INSP", "20-POLICE")]
        assert "carried 1 case states over" in worker.log.read_text(errors="replace")
    finally:
        worker.stop()
