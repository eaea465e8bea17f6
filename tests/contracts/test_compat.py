"""Local Avro compatibility checks, cross-checked against fastavro's schema resolution."""

from __future__ import annotations

import io
import json

import fastavro
import pytest

from services.contracts import compat
from services.contracts.schema import schema_str, schemas_dir

pytestmark = pytest.mark.unit


def record(*fields, name="R", **extra):
    return {"type": "record", "name": name, "namespace": "t", "fields": list(fields), **extra}


def field(name, type_, **extra):
    return {"name": name, "type": type_, **extra}


def fastavro_can_read(reader, writer, datum) -> bool:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(writer), datum)
    buf.seek(0)
    try:
        fastavro.schemaless_reader(
            buf, fastavro.parse_schema(writer), fastavro.parse_schema(reader)
        )
    except Exception:
        return False
    return True


OLD = record(field("id", "string"), field("n", "int"))
CASES = [
    # (description, reader, writer, datum written, compatible?)
    ("identical", OLD, OLD, {"id": "a", "n": 1}, True),
    (
        "reader adds optional field",
        record(
            field("id", "string"), field("n", "int"), field("x", ["null", "string"], default=None)
        ),
        OLD,
        {"id": "a", "n": 1},
        True,
    ),
    (
        "reader adds required field without default",
        record(field("id", "string"), field("n", "int"), field("x", "string")),
        OLD,
        {"id": "a", "n": 1},
        False,
    ),
    ("reader drops a field", record(field("id", "string")), OLD, {"id": "a", "n": 1}, True),
    (
        "writer dropped a field the reader requires",
        OLD,
        record(field("id", "string")),
        {"id": "a"},
        False,
    ),
    (
        "int promoted to long",
        record(field("id", "string"), field("n", "long")),
        OLD,
        {"id": "a", "n": 1},
        True,
    ),
    (
        "long narrowed to int",
        OLD,
        record(field("id", "string"), field("n", "long")),
        {"id": "a", "n": 1},
        False,
    ),
    (
        "type changed",
        record(field("id", "int"), field("n", "int")),
        OLD,
        {"id": "a", "n": 1},
        False,
    ),
    (
        "enum symbol added by writer, reader has default",
        record(
            field("e", {"type": "enum", "name": "E", "symbols": ["a", "other"], "default": "other"})
        ),
        record(field("e", {"type": "enum", "name": "E", "symbols": ["a", "other", "b"]})),
        {"e": "b"},
        True,
    ),
    (
        "enum symbol added by writer, reader without default",
        record(field("e", {"type": "enum", "name": "E", "symbols": ["a"]})),
        record(field("e", {"type": "enum", "name": "E", "symbols": ["a", "b"]})),
        {"e": "b"},
        False,
    ),
    (
        "union branch appended by reader",
        record(field("u", ["null", "string", "long"])),
        record(field("u", ["null", "string"])),
        {"u": "x"},
        True,
    ),
    (
        "union branch missing in reader",
        record(field("u", ["null", "string"])),
        record(field("u", ["null", "string", "long"])),
        {"u": 3},
        False,
    ),
    (
        "nullable reader reads non-null writer",
        record(field("v", ["null", "long"], default=None)),
        record(field("v", "long")),
        {"v": 3},
        True,
    ),
    (
        "record renamed",
        record(field("id", "string"), name="S"),
        record(field("id", "string")),
        {"id": "a"},
        False,
    ),
    (
        "record renamed with alias",
        record(field("id", "string"), name="S", aliases=["R"]),
        record(field("id", "string")),
        {"id": "a"},
        True,
    ),
]


@pytest.mark.parametrize("description, reader, writer, datum, ok", CASES, ids=[c[0] for c in CASES])
def test_local_check_agrees_with_fastavro_resolution(description, reader, writer, datum, ok):
    problems = compat.check_can_read(reader, writer)
    assert (problems == []) is ok, problems
    assert fastavro_can_read(reader, writer, datum) is ok


def test_messages_name_the_field_path():
    (message,) = compat.check_can_read(CASES[2][1], OLD)
    assert message.startswith("x: ") and "no default" in message
    (message,) = compat.check_forward(record(field("id", "string")), OLD)
    assert message.startswith("n: ")


def test_removing_a_required_field_is_forward_incompatible_only():
    """BACKWARD (new reads old) allows dropping a field; old readers (FORWARD) break on it."""
    new = record(field("id", "string"))
    assert compat.check_backward(new, OLD) == []
    assert compat.check_forward(new, OLD) != []
    assert compat.check_full_transitive(new, [OLD]) != []


def test_transitive_checks_every_previous_version():
    v1 = record(field("id", "string"))
    v2 = record(field("id", "string"), field("n", "int", default=0))
    v3 = record(field("id", "string"), field("n", "int"))  # drops the default: v1 data unreadable
    assert compat.check_backward(v3, v2) == []
    problems = compat.check_backward_transitive(v3, [v1, v2])
    assert problems and problems[0].startswith("version 1: n:")


def test_contract_schema_is_compatible_with_every_published_version():
    """Guard for schema changes: add each released schema to schemas/history/ (never edit them)."""
    history = sorted(
        (schemas_dir() / "history").glob("case_event.v*.avsc"),
        key=lambda p: int(p.stem.rsplit("v", 1)[1]),
    )
    assert history, "schemas/history must hold the published versions"
    previous = [p.read_text(encoding="utf-8") for p in history]
    assert compat.check_backward_transitive(schema_str(), previous) == []
    assert json.loads(previous[-1]) == json.loads(schema_str()), (
        "the current schema differs from the newest file in schemas/history: add it as the next version"
    )


def test_contract_evolution_examples():
    current = json.loads(schema_str())
    extended = json.loads(schema_str())
    extended["fields"].append(
        {"name": "x", "type": ["null", "string"], "default": None, "doc": "new"}
    )
    assert compat.check_backward(extended, current) == []
    assert compat.check_forward(extended, current) == []
    required = json.loads(schema_str())
    required["fields"].append({"name": "x", "type": "string", "doc": "new, required"})
    assert compat.check_backward(required, current) == [
        "x: field is missing from the writer schema and has no default in the reader schema"
    ]
