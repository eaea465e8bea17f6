"""The hash chain and its verifier (pure): every kind of finding, on hand-made histories."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime

import pytest

from services.contracts import chain
from services.contracts.chain import ChainHead, Record, chain_event, link_hash, verify_agency
from services.contracts.codec import AvroCodec
from services.contracts.events import parse_event
from services.contracts.schema import schemas_dir

pytestmark = pytest.mark.unit

AGENCY = "20-INSP"
TOPIC = "agency.20-INSP.events"
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def event(n: int, agency: str = AGENCY) -> dict:
    return parse_event(
        {
            "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"chain-test/{agency}/{n}")),
            "event_type": "assets_recovered",
            "case_id": f"{agency}/2024/{n:04d}",
            "agency_id": agency,
            "occurred_at": f"2024-03-{1 + n % 28:02d}T09:30:00+07:00",
            "sequence": n,
            "payload": {"identified_vnd": 1000 * n, "recovered_vnd": 10 * n},
        },
        now=NOW,
    )


def chained(count: int, agency: str = AGENCY) -> list[dict]:
    head = ChainHead()
    out = []
    for n in range(1, count + 1):
        ev = event(n, agency)
        fields, head = chain_event(ev, head)
        out.append({**ev, **fields})
    return out


def records(events: list[dict], partitions: int = 1, topic: str = TOPIC) -> list[Record]:
    """Events in chain order spread round-robin over partitions, offsets counting per partition."""
    next_offset = [0] * partitions
    out = []
    for i, ev in enumerate(events):
        p = i % partitions
        out.append(Record(topic, p, next_offset[p], ev, timestamp_ms=1000 + i))
        next_offset[p] += 1
    return out


def append(recs: list[Record], ev: dict | None, partition: int = 0, error: str | None = None):
    offset = 1 + max((r.offset for r in recs if r.partition == partition), default=-1)
    stamp = 1 + max(r.timestamp_ms for r in recs)
    recs.append(Record(TOPIC, partition, offset, ev, error, stamp))
    return recs[-1]


def kinds(result) -> list[tuple[str, int, int]]:
    return [(f.kind, f.partition, f.offset) for f in result.findings]


def test_an_untouched_chain_is_intact_and_its_head_is_the_last_event():
    evs = chained(10)
    result = verify_agency(AGENCY, records(evs, partitions=3))
    assert result.intact, result.findings
    assert (result.messages, result.chained, result.head_seq) == (10, 10, 10)
    assert result.head_hash == evs[-1]["chain_hash"]
    assert result.notes == []


def test_the_hash_covers_the_previous_hash_and_the_position():
    ev = event(1)
    a = link_hash(chain.GENESIS, ev, 1)
    assert a != link_hash("11" * 32, ev, 1)
    assert a != link_hash(chain.GENESIS, ev, 2)
    assert len(a) == 64 and a == link_hash(chain.GENESIS, dict(ev), 1)


def test_the_canonical_bytes_ignore_the_chain_fields_and_the_form_of_occurred_at():
    ev = event(3)
    stored = {**ev, "occurred_at": round(ev["occurred_at"].timestamp() * 1000)}  # outbox form
    with_fields = {**ev, **chain_event(ev, ChainHead())[0]}
    assert chain.canonical_bytes(ev, 1) == chain.canonical_bytes(stored, 1)
    assert chain.canonical_bytes(ev, 1) == chain.canonical_bytes(with_fields, 1)
    assert b'"occurred_at":"2024-03-04T09:30:00+07:00"' in chain.canonical_bytes(ev, 1)


def test_a_single_byte_changed_in_the_payload_is_found_as_altered():
    evs = chained(5)
    recs = records(evs)
    tampered = copy.deepcopy(dict(recs[2].event))
    tampered["payload"]["recovered_vnd"] = 31  # was 30: one digit
    recs[2] = Record(TOPIC, 0, 2, tampered)
    result = verify_agency(AGENCY, recs)
    assert kinds(result) == [("altered", 0, 2)]
    assert "does not match its chain hash" in result.findings[0].detail
    assert result.findings[0].chain_seq == 3


def test_a_single_byte_changed_in_the_avro_body_is_found():
    """Flip one byte of the encoded message: it no longer decodes, or decodes to other content."""
    codec = AvroCodec()
    ev = chained(2)[1]
    raw = codec.encode(ev, 1)
    schema = (schemas_dir() / "case_event.avsc").read_text()
    flagged = 0
    for i in range(5, len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        try:
            decoded = codec.decode(bytes(bad), {1: schema}.__getitem__)
        except Exception:  # noqa: BLE001 - undecodable: an inserted message
            flagged += 1
            continue
        result = verify_agency(AGENCY, [Record(TOPIC, 0, 1, decoded)])
        flagged += not result.intact
    assert flagged == len(raw) - 5


def test_a_rewritten_copy_with_a_recomputed_hash_is_altered_and_the_original_kept():
    evs = chained(6)
    recs = records(evs)
    forged = copy.deepcopy(evs[3])
    forged["payload"]["recovered_vnd"] = 0
    forged["chain_hash"] = link_hash(forged["chain_prev"], forged, forged["chain_seq"])
    append(recs, forged)
    result = verify_agency(AGENCY, recs)
    assert kinds(result) == [("altered", 0, 6)]
    assert "rewritten copy" in result.findings[0].detail and "@3" in result.findings[0].detail
    assert result.head_seq == 6


def test_a_rewritten_copy_of_the_last_event_is_altered_too():
    evs = chained(4)
    recs = records(evs)
    forged = copy.deepcopy(evs[-1])
    forged["payload"]["identified_vnd"] = 1
    forged["chain_hash"] = link_hash(forged["chain_prev"], forged, forged["chain_seq"])
    append(recs, forged)
    assert kinds(verify_agency(AGENCY, recs)) == [("altered", 0, 4)]


def test_a_deleted_event_is_missing_and_named_by_the_event_after_the_gap():
    evs = chained(8)
    recs = records([e for e in evs if e["chain_seq"] != 5], partitions=2)
    result = verify_agency(AGENCY, recs)
    assert [f.kind for f in result.findings] == ["missing"]
    gap = result.findings[0]
    assert gap.chain_seq == 5 and "position #5 is missing" in gap.detail
    assert gap.event_id is None and f"event {evs[5]['event_id']} (#6)" in gap.detail


def test_several_deleted_events_in_a_row_are_one_missing_range():
    evs = chained(9)
    recs = records([e for e in evs if e["chain_seq"] not in (3, 4, 5)])
    result = verify_agency(AGENCY, recs)
    assert [f.kind for f in result.findings] == ["missing"]
    assert "positions #3..#5 are missing" in result.findings[0].detail


def test_a_forged_event_at_a_taken_position_is_inserted():
    evs = chained(6)
    recs = records(evs)
    forged = {**event(99), **chain_event(event(99), ChainHead(2, evs[1]["chain_hash"]))[0]}
    rec = append(recs, forged)
    result = verify_agency(AGENCY, recs)
    assert kinds(result) == [("inserted", 0, rec.offset)]
    assert "claims #3" in result.findings[0].detail


def test_a_forged_event_replacing_a_deleted_one_breaks_the_link_of_its_successor():
    evs = chained(6)
    recs = [r for r in records(evs) if r.event["chain_seq"] != 4]
    forged = {**event(99), **chain_event(event(99), ChainHead(3, evs[2]["chain_hash"]))[0]}
    rec = append(recs, forged)
    result = verify_agency(AGENCY, recs)
    assert sorted(f.kind for f in result.findings) == ["inserted", "missing"]
    inserted = next(f for f in result.findings if f.kind == "inserted")
    assert inserted.offset == rec.offset


def test_an_unchained_event_after_the_chain_began_is_inserted_before_it_a_note():
    old = [event(n) for n in (101, 102)]  # written before the chain existed
    evs = chained(3)
    recs = records([*old, *evs])
    rec = append(recs, event(50))
    result = verify_agency(AGENCY, recs)
    assert kinds(result) == [("inserted", 0, rec.offset)]
    assert "no chain hash" in result.findings[0].detail
    assert [(n.kind, n.offset) for n in result.notes] == [("before_chain", 0)]
    assert "2 event(s)" in result.notes[0].detail


def test_old_events_only_are_before_the_chain_and_intact():
    result = verify_agency(AGENCY, records([event(n) for n in range(1, 5)], partitions=2))
    assert result.intact and result.chained == 0
    assert [n.kind for n in result.notes] == ["before_chain", "before_chain"]


def test_undecodable_and_foreign_messages_are_inserted():
    recs = records(chained(3))
    junk = append(recs, None, error="bad magic byte 0x7b")
    other = {**event(7, "20-POLICE"), **chain_event(event(7, "20-POLICE"), ChainHead())[0]}
    spoofed = append(recs, other)
    result = verify_agency(AGENCY, recs)
    assert kinds(result) == [("inserted", 0, junk.offset), ("inserted", 0, spoofed.offset)]
    assert "bad magic byte" in result.findings[0].detail
    assert "claims agency '20-POLICE'" in result.findings[1].detail


def test_two_events_swapped_in_a_partition_are_reordered():
    evs = chained(5)
    recs = records([evs[0], evs[2], evs[1], evs[3], evs[4]])
    result = verify_agency(AGENCY, recs)
    assert kinds(result) == [("reordered", 0, 2)]
    assert "(#2) comes after #3" in result.findings[0].detail


def test_events_in_different_partitions_are_not_compared_for_order():
    evs = chained(4)
    recs = [
        Record(TOPIC, 1, 0, evs[0]),
        Record(TOPIC, 0, 0, evs[1]),
        Record(TOPIC, 1, 1, evs[2]),
        Record(TOPIC, 0, 1, evs[3]),
    ]
    assert verify_agency(AGENCY, recs).intact


def test_an_identical_redelivery_is_a_note_not_tampering():
    evs = chained(3)
    recs = records(evs)
    copy_rec = append(recs, evs[1])
    result = verify_agency(AGENCY, recs)
    assert result.intact
    assert [(n.kind, n.offset) for n in result.notes] == [("duplicate", copy_rec.offset)]


def test_a_log_start_offset_above_zero_is_deleted_history():
    evs = chained(10)
    recs = [r for r in records(evs, partitions=2) if r.event["chain_seq"] > 4]
    result = verify_agency(AGENCY, recs, {(TOPIC, 0): 2, (TOPIC, 1): 2})
    assert [f.kind for f in result.findings] == ["deleted_history"] * 3
    assert {(f.partition, f.offset) for f in result.findings if f.chain_seq is None} == {
        (0, 2),
        (1, 2),
    }
    beginning = next(f for f in result.findings if f.chain_seq == 1)
    assert "positions #1..#4 are in the deleted history" in beginning.detail


def test_a_missing_beginning_without_deleted_history_is_missing():
    evs = chained(5)
    result = verify_agency(AGENCY, records(evs[2:]), {(TOPIC, 0): 0})
    assert [(f.kind, f.chain_seq) for f in result.findings] == [("missing", 1)]


def test_the_publishers_head_reveals_a_forged_append_and_shows_a_shorter_topic():
    evs = chained(5)
    recs = records(evs)
    forged = {**event(99), **chain_event(event(99), ChainHead(5, evs[4]["chain_hash"]))[0]}
    rec = append(recs, forged)
    assert verify_agency(AGENCY, recs).intact  # the links alone cannot tell
    head = ChainHead(5, evs[4]["chain_hash"])
    result = verify_agency(AGENCY, recs, expected_head=head)
    assert kinds(result) == [("inserted", 0, rec.offset)]
    assert "beyond the publisher's head #5" in result.findings[0].detail
    cut = verify_agency(AGENCY, records(evs[:3]), expected_head=head)
    assert cut.intact  # may still wait in an outbox: shown as a note
    assert [(n.kind, n.chain_seq) for n in cut.notes] == [("behind_head", 4)]
    assert "positions #4..#5 are not in the topics" in cut.notes[0].detail


def test_a_top_event_that_is_not_the_publishers_head_is_found():
    evs = chained(3)
    forged = copy.deepcopy(evs[2])
    forged["payload"]["recovered_vnd"] = 0
    forged["chain_hash"] = link_hash(forged["chain_prev"], forged, 3)
    recs = records([*evs[:2], forged])
    head = ChainHead(3, evs[2]["chain_hash"])
    result = verify_agency(AGENCY, recs, expected_head=head)
    assert sorted(f.kind for f in result.findings) == ["inserted", "missing"]


def test_a_malformed_chain_field_is_altered():
    evs = chained(2)
    bad = {**evs[1], "chain_prev": "xyz"}
    result = verify_agency(AGENCY, records([evs[0], bad]))
    assert kinds(result) == [("altered", 0, 1)]
    assert "chain_prev 'xyz'" in result.findings[0].detail


def test_findings_print_where_they_are():
    evs = chained(3)
    result = verify_agency(AGENCY, records([evs[0], evs[2]]))
    line = result.findings[0].line()
    assert line.startswith("missing") and f"{TOPIC}[0]@1 #2" in line
    assert result.as_dict()["findings"][0]["offset"] == 1


def _defined_bytes(ev: dict, seq: int) -> bytes:
    """The definition in the module docstring, written out with the standard library."""
    import json

    form = chain.to_json_form(ev)
    form["chain_seq"] = seq
    return json.dumps(form, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_the_canonical_bytes_are_the_documented_json_for_every_kind_of_value():
    """Chains written before the faster encoder must verify after it: same bytes, including
    Vietnamese text, quotes, backslashes, control characters and big integers."""
    texts = ["Thanh tra tỉnh Hà Nội – “vụ án” ‘x’", 'a"b\\c/d', "tab\tnl\ncr\r\x00\x1f\x7f", "😀"]
    # Beyond what validation lets through today: the encoder must agree on any string.
    events = [
        {**event(n), "case_id": text, "payload": {"note": text, "flag": n % 2 == 0, "none": None}}
        for n, text in enumerate(texts, start=1)
    ]
    events += [event(n) for n in (1, 7, 10**6)]
    for ev in events:
        for seq in (1, 2**40):
            assert chain.canonical_bytes(ev, seq) == _defined_bytes(ev, seq)


def test_the_contract_has_no_floating_point_field_the_encoders_would_write_differently():
    import json

    types: set[str] = set()

    def walk(t: object) -> None:
        if isinstance(t, str):
            types.add(t)
        elif isinstance(t, list):
            for x in t:
                walk(x)
        elif isinstance(t, dict):  # a record, enum, array, map or annotated primitive
            for f in t.get("fields", []):
                walk(f["type"])
            for key in ("type", "items", "values"):
                if key in t:
                    walk(t[key])

    walk(json.loads((schemas_dir() / "case_event.avsc").read_text()))
    assert not types & {"float", "double"}, "canonical_bytes: msgspec writes 1e16, json 1e+16"


def test_the_batch_loop_gives_the_links_of_chain_event_one_by_one():
    from services.contracts.events import to_json_form

    events = [event(n, agency) for n in range(1, 8) for agency in (AGENCY, "20-POLICE")]
    heads = {"20-POLICE": ChainHead(41, "ab" * 32)}
    expected, one_by_one = [], dict(heads)
    for ev in events:
        fields, one_by_one[ev["agency_id"]] = chain_event(
            ev, one_by_one.get(ev["agency_id"], ChainHead())
        )
        expected.append(tuple(fields.values()))
    texts = [to_json_form(ev)["occurred_at"] if i % 2 else None for i, ev in enumerate(events)]
    assert chain.chain_links(events, heads, texts) == expected
    assert heads == one_by_one
