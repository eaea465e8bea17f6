"""The Avro contract itself: shape, documentation, closed value sets from the brief."""

from __future__ import annotations

import json
import re

import pytest

from services.contracts.schema import (
    PAYLOAD_RECORD_BY_EVENT_TYPE,
    named_types,
    schema_dict,
    schemas_dir,
)

pytestmark = pytest.mark.unit

BRIEF_ENUMS = {
    "Origin": [
        "inspection",
        "audit",
        "supervision",
        "denunciation",
        "press",
        "investigation",
        "other",
    ],
    "Field": [
        "land",
        "construction",
        "minerals",
        "finance",
        "banking",
        "health",
        "education",
        "transport",
        "other",
    ],
    "SubjectKind": ["party_member", "party_organization", "official", "enterprise", "unknown"],
    "Reason": [
        "signs_of_crime",
        "party_discipline",
        "prosecution",
        "trial",
        "enforcement",
        "jurisdiction",
        "other",
    ],
    "Stage": [
        "investigation_opened",
        "suspects_charged",
        "indicted",
        "first_instance_verdict",
        "appeal_verdict",
        "enforcement_started",
        "enforcement_completed",
    ],
    "AppraisalKind": ["valuation", "forensic_accounting", "technical"],
    "MonitoringLevel": ["central", "provincial"],
    "DisciplineTarget": ["party_member", "party_organization"],
    "DisciplineForm": ["reprimand", "warning", "dismissal", "expulsion"],
    "Outcome": [
        "convicted",
        "disciplined",
        "administrative",
        "no_violation",
        "dismissed",
        "merged",
        "other",
    ],
}

BRIEF_PAYLOADS = {
    "CaseOpened": ["origin", "field", "subject_kind", "prominent", "damage_vnd"],
    "CaseTransferred": ["transfer_id", "to_agency_id", "reason"],
    "TransferReceived": ["transfer_id"],
    "TransferReturned": ["transfer_id", "reason"],
    "StageChanged": ["stage", "count"],
    "Appraisal": ["appraisal_id", "kind"],
    "MonitoringAssigned": ["level"],
    "DisciplineImposed": ["target", "count", "form"],
    "AssetsRecovered": ["identified_vnd", "recovered_vnd"],
    "CaseResolved": ["outcome"],
    "CaseReopened": ["reason"],
}


def test_envelope_shape():
    schema = schema_dict()
    assert (schema["namespace"], schema["name"]) == ("casestream", "CaseEvent")
    fields = {f["name"]: f for f in schema["fields"]}
    assert list(fields) == [
        "event_id",
        "event_type",
        "case_id",
        "agency_id",
        "occurred_at",
        "utc_offset_minutes",
        "sequence",
        "payload",
        "chain_seq",
        "chain_prev",
        "chain_hash",
    ]
    assert fields["event_id"]["type"] == {"type": "string", "logicalType": "uuid"}
    assert fields["occurred_at"]["type"] == {"type": "long", "logicalType": "timestamp-millis"}
    assert fields["utc_offset_minutes"]["type"] == "int"
    assert fields["sequence"]["type"] == ["null", "long"] and fields["sequence"]["default"] is None
    for name, kind in (("chain_seq", "long"), ("chain_prev", "string"), ("chain_hash", "string")):
        assert fields[name]["type"] == ["null", kind] and fields[name]["default"] is None
    branches = [b["name"] for b in fields["payload"]["type"]]
    assert branches == list(BRIEF_PAYLOADS)


def test_payload_records_and_event_type_mapping():
    types = named_types()
    for record, fields in BRIEF_PAYLOADS.items():
        assert [f["name"] for f in types[f"casestream.{record}"]["fields"]] == fields
    assert set(PAYLOAD_RECORD_BY_EVENT_TYPE.values()) == {f"casestream.{r}" for r in BRIEF_PAYLOADS}
    assert types["casestream.EventType"]["symbols"] == list(PAYLOAD_RECORD_BY_EVENT_TYPE)


def test_closed_value_sets_match_the_brief():
    types = named_types()
    for name, symbols in BRIEF_ENUMS.items():
        assert types[f"casestream.{name}"]["symbols"] == symbols, name
    for name in ("Origin", "Field", "Reason", "Outcome"):
        assert types[f"casestream.{name}"]["default"] == "other"
    assert types["casestream.SubjectKind"]["default"] == "unknown"
    assert "default" not in types["casestream.EventType"]


def test_optional_fields_are_nullable_with_null_default_and_money_is_long():
    for full, node in named_types().items():
        for f in node.get("fields", ()):
            if isinstance(f["type"], list) and "null" in f["type"]:
                assert f["type"][0] == "null" and f.get("default", "missing") is None, (
                    full,
                    f["name"],
                )
            if f["name"].endswith("_vnd"):
                assert f["type"] in ("long", ["null", "long"]), (full, f["name"])


def test_every_type_and_field_is_documented():
    def walk(node):
        if isinstance(node, list):
            for item in node:
                yield from walk(item)
        elif isinstance(node, dict):
            if node.get("type") in ("record", "enum"):
                yield node["name"], node.get("doc")
            for f in node.get("fields", ()):
                yield f"{node['name']}.{f['name']}", f.get("doc")
                yield from walk(f["type"])

    docs = list(walk(schema_dict()))
    assert len(docs) > 40
    for name, doc in docs:
        assert isinstance(doc, str) and len(doc) >= 10, name


def test_readme_documents_every_field():
    readme = (schemas_dir() / "README.md").read_text(encoding="utf-8")
    for full, node in named_types().items():
        assert node["name"] in readme, full
        for f in node.get("fields", ()):
            assert re.search(rf"`{f['name']}`", readme), f"{node['name']}.{f['name']}"
    for symbols in BRIEF_ENUMS.values():
        for s in symbols:
            assert s in readme


def test_schema_file_is_valid_json_utf8():
    text = (schemas_dir() / "case_event.avsc").read_text(encoding="utf-8")
    assert json.loads(text)["name"] == "CaseEvent"
