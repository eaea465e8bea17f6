"""validate_event's common path (no JSON round trip) gives exactly what the exact path gives."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.agency.generator import GeneratorOptions, write_jsonl
from services.contracts import events as ev
from services.contracts.codec import AvroCodec
from services.contracts.schema import schema_str

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def exact(event: dict) -> dict | str:
    """The JSON-form path alone (all validate_event did before the common path)."""
    try:
        return ev._validate_exact(event, NOW, None)
    except ev.EventValidationError as exc:
        return f"error: {exc}"


def validated(event: dict) -> dict | str:
    try:
        return ev.validate_event(event, now=NOW)
    except ev.EventValidationError as exc:
        return f"error: {exc}"


@pytest.fixture(scope="module")
def decoded(tmp_path_factory) -> list[dict]:
    """Generated events as the worker sees them: through the Avro codec."""
    path: Path = tmp_path_factory.mktemp("common") / "h.jsonl"
    write_jsonl(GeneratorOptions(seed=41, events=3000, duplicates=0.0), path)
    codec = AvroCodec()
    out = []
    for line in path.read_text().splitlines():
        normalized = ev.parse_event(json.loads(line), now=NOW)
        out.append(codec.decode(codec.encode(normalized, 1), lambda _id: schema_str()))
    return out


def test_every_generated_event_gives_the_exact_path_s_result(decoded):
    assert len(decoded) > 2000
    for event in decoded:
        assert ev._validate_common(event, NOW, None) is not None
        assert validated(event) == exact(event)


MUTATIONS = {
    "microseconds": lambda e: {**e, "occurred_at": e["occurred_at"].replace(microsecond=123456)},
    "offset across midnight": lambda e: {
        **e,
        "occurred_at": e["occurred_at"].replace(hour=23, minute=30),
        "utc_offset_minutes": 420,
    },
    "negative offset": lambda e: {**e, "utc_offset_minutes": -570},
    "offset too large": lambda e: {**e, "utc_offset_minutes": 18 * 60 + 1},
    "offset as bool": lambda e: {**e, "utc_offset_minutes": True},
    "naive time": lambda e: {**e, "occurred_at": e["occurred_at"].replace(tzinfo=None)},
    "time as int": lambda e: {**e, "occurred_at": 1_700_000_000_000},
    "in the future": lambda e: {**e, "occurred_at": NOW + timedelta(hours=1)},
    "within the skew": lambda e: {**e, "occurred_at": NOW + timedelta(minutes=4)},
    "before 1970": lambda e: {**e, "occurred_at": datetime(1969, 12, 31, 23, tzinfo=UTC)},
    "upper-case id": lambda e: {**e, "event_id": e["event_id"].upper()},
    "bad id": lambda e: {**e, "event_id": "not-a-uuid"},
    "unknown type": lambda e: {**e, "event_type": "case_closed"},
    "bad case id": lambda e: {**e, "case_id": "has space"},
    "unknown agency": lambda e: {**e, "agency_id": "99-NOPE"},
    "null agency": lambda e: {**e, "agency_id": None},
    "missing agency": lambda e: {k: v for k, v in e.items() if k != "agency_id"},
    "negative sequence": lambda e: {**e, "sequence": -1},
    "sequence": lambda e: {**e, "sequence": 7},
    "payload not a map": lambda e: {**e, "payload": []},
    "payload unknown field": lambda e: {**e, "payload": {**e["payload"], "x": 1}},
    "payload emptied": lambda e: {**e, "payload": {}},
    "payload nulls": lambda e: {**e, "payload": {k: None for k in e["payload"]}},
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_unusual_and_invalid_events_get_the_exact_path_s_answer(decoded, name):
    mutate = MUTATIONS[name]
    for event in decoded[:300]:
        changed = mutate(dict(event))
        assert validated(changed) == exact(changed), name
