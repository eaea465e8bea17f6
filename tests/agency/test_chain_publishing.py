"""The publishing side keeps each agency's chain: durable, advanced only for accepted events,
one chain for every publisher of a host, a retry never forks it (no broker needed)."""

from __future__ import annotations

import uuid

import pytest

from services.agency.chain_store import ChainStore
from services.agency.outbox import Outbox
from services.agency.publisher import Publisher
from services.contracts.chain import GENESIS, Record, link_hash, verify_agency
from services.contracts.events import parse_event
from services.contracts.fake_registry import InMemorySchemaRegistry
from services.settings import Settings
from services.stack.process import free_ports

pytestmark = pytest.mark.unit


@pytest.fixture
def offline(tmp_path) -> Settings:
    """Settings whose broker does not exist (nothing listens on the port)."""
    (port,) = free_ports(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CASESTREAM_HOME", str(tmp_path / "home"))
        mp.setenv("CASESTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{port}")
        return Settings.from_env()


def publisher(settings: Settings, agency: str | None = "20-INSP", **kw) -> Publisher:
    return Publisher(
        agency,
        settings,
        registry_client=InMemorySchemaRegistry(),
        producer_config={"log_level": 0, "reconnect.backoff.max.ms": 1000},
        **kw,
    )


def events(count: int, agency: str = "20-INSP", start: int = 0) -> list[dict]:
    return [
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "case_opened",
            "case_id": f"{agency}/2024/{n:04d}",
            "agency_id": agency,
            "occurred_at": "2024-05-01T08:00:00+07:00",
            "payload": {
                "origin": "inspection",
                "field": "land",
                "subject_kind": "official",
                "prominent": False,
            },
        }
        for n in range(start, start + count)
    ]


def stored(path) -> list[dict]:
    outbox = Outbox(path)
    try:
        return [event for _, event in outbox.pending()]
    finally:
        outbox.close()


def as_records(stored_events: list[dict]) -> list[Record]:
    topic = f"agency.{stored_events[0]['agency_id']}.events"
    return [Record(topic, 0, i, e) for i, e in enumerate(stored_events)]


def test_accepted_events_are_chained_in_order_and_verify(offline):
    pub = publisher(offline)
    pub.publish_many(events(5))
    pub.close(timeout=0.1)
    rows = stored(offline.home / "outbox" / "20-INSP.sqlite")
    assert [r["chain_seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["chain_prev"] == GENESIS
    for before, after in zip(rows, rows[1:], strict=False):
        assert after["chain_prev"] == before["chain_hash"]
    for row in rows:
        assert row["chain_hash"] == link_hash(row["chain_prev"], row, row["chain_seq"])
    assert verify_agency("20-INSP", as_records(rows)).intact


def test_the_head_survives_a_restart_and_a_retry_does_not_advance_it(offline):
    first, second = events(3), events(2, start=3)
    pub = publisher(offline)
    pub.publish_many(first)
    pub.close(timeout=0.1)
    pub = publisher(offline)
    assert pub.publish(first[1]).new is False  # the agency retries an event
    pub.publish_many([*second, second[0]])  # a duplicate inside a batch too
    head = pub.chain.head("20-INSP")
    pub.close(timeout=0.1)
    rows = stored(offline.home / "outbox" / "20-INSP.sqlite")
    assert [r["chain_seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert head.seq == 5 and head.hash == rows[-1]["chain_hash"]
    assert verify_agency("20-INSP", as_records(rows), expected_head=head).intact


def test_sdk_bulk_import_and_gateway_outboxes_of_one_host_share_one_chain(offline, tmp_path):
    sdk = publisher(offline)
    operator = publisher(offline, None)  # bulk import: one outbox for many agencies
    gateway = publisher(offline, outbox_path=tmp_path / "gateway" / "20-INSP.sqlite")
    a, b, c = events(2), events(2, start=2), events(2, start=4)
    sdk.publish_many(a)
    operator.publish_many([*b, *events(1, "20-POLICE")])
    gateway.publish_many(c)
    gateway.publish(a[0])  # the same event through another outbox: its first link, no fork
    rows = [
        *stored(offline.home / "outbox" / "20-INSP.sqlite"),
        *[
            r
            for r in stored(offline.home / "outbox" / "operator.sqlite")
            if r["agency_id"] == "20-INSP"
        ],
        *stored(tmp_path / "gateway" / "20-INSP.sqlite"),
    ]
    by_id = {r["event_id"]: r for r in rows}
    assert sorted(r["chain_seq"] for r in by_id.values()) == [1, 2, 3, 4, 5, 6]
    again = [r for r in rows if r["event_id"] == a[0]["event_id"]]
    assert len(again) == 2 and again[0]["chain_hash"] == again[1]["chain_hash"]
    police = stored(offline.home / "outbox" / "operator.sqlite")[-1]
    assert (police["agency_id"], police["chain_seq"]) == ("20-POLICE", 1)
    result = verify_agency("20-INSP", as_records(rows), expected_head=sdk.chain.head("20-INSP"))
    assert result.intact and [n.kind for n in result.notes] == ["duplicate"]
    for pub in (sdk, operator, gateway):
        pub.close(timeout=0.1)


def test_the_head_does_not_advance_when_the_outbox_refuses_the_events(offline, monkeypatch):
    pub = publisher(offline)
    pub.publish_many(events(2))

    def broken(_held, _rows):
        raise OSError("disk full")

    monkeypatch.setattr(pub.outbox, "_insert", broken)  # the insert of the accept transaction
    with pytest.raises(OSError, match="disk full"):
        pub.publish_many(events(3, start=2))
    assert pub.chain.head("20-INSP").seq == 2
    monkeypatch.undo()
    pub.publish_many(events(1, start=9))
    assert pub.chain.head("20-INSP").seq == 3
    pub.close(timeout=0.1)


def test_links_an_interrupted_publisher_left_in_its_outbox_are_adopted(offline):
    pub = publisher(offline)
    pub.publish_many(events(3))
    pub.close(timeout=0.1)
    # Emulate a crash between the outbox's commit and the chain's: the chain file is lost.
    (offline.home / "chain" / "chain.sqlite").unlink()
    for suffix in ("-wal", "-shm"):
        (offline.home / "chain" / f"chain.sqlite{suffix}").unlink(missing_ok=True)
    pub = publisher(offline)
    assert pub.chain.head("20-INSP").seq == 3
    pub.publish_many(events(1, start=3))
    pub.close(timeout=0.1)
    rows = stored(offline.home / "outbox" / "20-INSP.sqlite")
    assert verify_agency("20-INSP", as_records(rows)).intact


def test_the_chain_store_gives_a_known_event_its_link_again(tmp_path):
    store = ChainStore(tmp_path / "chain.sqlite")
    ev = parse_event(events(1)[0])
    with store.assigning([ev]) as first:
        pass
    with store.assigning([ev]) as second:
        pass
    assert first == second and store.head("20-INSP").seq == 1
    assert store.heads()["20-INSP"].hash == first[0]["chain_hash"]
    store.close()
