"""Schema evolution: `casestream schemas check | register` (unit, with the in-memory registry)
and the evolution rules against the real Apicurio registry of the session's stack (integration).

The integration tests use subjects of dedicated agencies (`11-MARKET`, `11-CUSTOMS`) that no other
test publishes to, so registering a second version there affects nobody else.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from services.contracts import reference
from services.contracts import schemas_command as cmd
from services.contracts.codec import AvroCodec, decode, encode
from services.contracts.events import parse_event, to_json_form
from services.contracts.examples import example_event
from services.contracts.fake_registry import InMemorySchemaRegistry
from services.contracts.registry import (
    SchemaCache,
    check_compatibility,
    make_client,
    register_agency_subject,
    subject_for_agency,
)
from services.contracts.schema import schema_str

EVOLVING_AGENCY = "11-MARKET"
REGISTER_AGENCY = "11-CUSTOMS"


# --------------------------------------------------------------------------- schema variants


def _variant(change) -> str:
    schema = json.loads(schema_str())
    change(schema)
    return json.dumps(schema, indent=2)


def with_optional_field() -> str:
    """v2: a new optional envelope field with a default (the allowed kind of change)."""
    return _variant(
        lambda s: s["fields"].append(
            {
                "name": "source_system",
                "type": ["null", "string"],
                "default": None,
                "doc": "v2: the agency system that emitted the event",
            }
        )
    )


def with_required_field() -> str:
    """A new field without default: data written before it cannot be read (BACKWARD breaks)."""
    return _variant(
        lambda s: s["fields"].append({"name": "region", "type": "string", "doc": "required"})
    )


def without_required_field(name: str = "case_id") -> str:
    """A required field removed: BACKWARD holds, consumers on the older schema break."""
    return _variant(
        lambda s: s.__setitem__("fields", [f for f in s["fields"] if f["name"] != name])
    )


def with_changed_type() -> str:
    """case_id as long: neither direction can read the other."""

    def change(schema):
        for f in schema["fields"]:
            if f["name"] == "case_id":
                f["type"] = "long"

    return _variant(change)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# =========================================================================== unit: the command


@pytest.fixture
def fake(monkeypatch) -> InMemorySchemaRegistry:
    registry = InMemorySchemaRegistry()
    monkeypatch.setattr(cmd, "_client", lambda url: (registry, "fake://registry"))
    return registry


def _flat(result):
    """The command's result with runs of spaces (column padding) collapsed to one."""
    return SimpleNamespace(exit_code=result.exit_code, output=re.sub(r" +", " ", result.output))


def _run(*args: str):
    return _flat(CliRunner().invoke(cmd.schemas, list(args), catch_exceptions=False))


@pytest.mark.unit
def test_check_without_subjects_uses_the_published_history(fake, tmp_path):
    result = _run("check")
    assert result.exit_code == 0, result.output
    assert "no agency subject registered" in result.output
    assert "history" in result.output and " ok " in result.output
    assert "1 checked: 1 compatible, 0 would break" in result.output

    history = tmp_path / "history"
    history.mkdir()
    _write(history, "case_event.v1.avsc", schema_str())
    _write(history, "case_event.v2.avsc", with_optional_field())
    _write(history, "notes.txt", "ignored")
    breaking = _write(tmp_path, "required.avsc", with_required_field())
    result = _run("check", "--local", "--history", str(history), "--schema", str(breaking))
    assert result.exit_code == 1, result.output
    assert "INCOMPATIBLE" in result.output and "(versions 1-2)" in result.output
    for version in (1, 2):
        assert (
            f"version {version}: region: field is missing from the writer schema and has no "
            f"default in the reader schema" in result.output
        )
    # the shipped schema is v1 here: compatible, but a reminder to publish it as v3
    result = _run("check", "--local", "--history", str(history))
    assert result.exit_code == 0, result.output
    assert "add it as case_event.v3.avsc" in result.output


@pytest.mark.unit
def test_check_local_fails_without_history(tmp_path):
    result = _run("check", "--local", "--history", str(tmp_path))
    assert result.exit_code == 1
    assert "no published versions" in result.output


@pytest.mark.unit
def test_check_against_every_agency_subject(fake, tmp_path):
    for agency in ("20-POLICE", "00-AUDIT", "34-INSP"):
        register_agency_subject(fake, agency)
    fake.register_schema("some-other-topic-value", Schema(with_required_field(), "AVRO"))

    result = _run("check")
    assert result.exit_code == 0, result.output
    assert "against 3 agency subjects" in result.output
    assert "some-other-topic" not in result.output
    for agency in ("20-POLICE", "00-AUDIT", "34-INSP"):
        assert f"{subject_for_agency(agency)} ok (version 1)" in result.output

    optional = _write(tmp_path, "optional.avsc", with_optional_field())
    assert _run("check", "--schema", str(optional)).exit_code == 0

    required = _write(tmp_path, "required.avsc", with_required_field())
    result = _run("check", "--schema", str(required))
    assert result.exit_code == 1
    assert result.output.count("INCOMPATIBLE (the registry would refuse it)") == 3
    assert "version 1: region: field is missing" in result.output
    assert "0 compatible, 3 would break" in result.output


@pytest.mark.unit
def test_removing_a_required_field_passes_the_registry_but_fails_the_check(fake, tmp_path):
    """BACKWARD allows dropping a field; `schemas check` also protects consumers not upgraded."""
    register_agency_subject(fake, "20-POLICE")
    subject = subject_for_agency("20-POLICE")
    removed = without_required_field("case_id")
    assert check_compatibility(fake, subject, removed) == (True, [])

    path = _write(tmp_path, "removed.avsc", removed)
    result = _run("check", "--schema", str(path))
    assert result.exit_code == 1, result.output
    assert "BREAKS OLD CONSUMERS (the registry would accept it)" in result.output
    assert "consumers on version 1 cannot read events written with the new schema: case_id:" in (
        result.output
    )
    result = _run("check", "--schema", str(path), "--backward-only")
    assert result.exit_code == 0, result.output


@pytest.mark.unit
def test_check_one_agency_and_invalid_schemas(fake, tmp_path):
    register_agency_subject(fake, "20-POLICE")
    register_agency_subject(fake, "20-INSP")
    result = _run("check", "--agency", "20-INSP")
    assert result.exit_code == 0, result.output
    assert "against 1 agency subjects" in result.output and "20-POLICE" not in result.output

    broken = _write(tmp_path, "broken.avsc", '{"type": "record", "name": ')
    result = _run("check", "--schema", str(broken))
    assert result.exit_code == 1 and "not a valid Avro schema" in result.output


@pytest.mark.unit
def test_check_reports_an_unreachable_registry(monkeypatch):
    class Down:
        def get_subjects(self):
            raise ConnectionError("connection refused")

    monkeypatch.setattr(cmd, "_client", lambda url: (Down(), "http://127.0.0.1:1"))
    result = _run("check")
    assert result.exit_code == 2
    assert "cannot list the subjects" in result.output and "--local" in result.output


@pytest.mark.unit
def test_register_is_idempotent_and_reports_failures(fake):
    result = _run("register", "20-POLICE", "20-FBI", "nonsense")
    assert result.exit_code == 1, result.output
    subject = subject_for_agency("20-POLICE")
    schema_id = fake.lookup_schema(subject, Schema(schema_str(), "AVRO")).schema_id
    assert f"agency.20-POLICE.events-value id {schema_id} registered" in result.output
    assert "agency.20-FBI.events-value" in result.output and "unknown agency" in result.output
    assert "nonsense" in result.output and "not an agency id" in result.output
    assert fake.get_compatibility(subject_for_agency("20-POLICE")) == "BACKWARD_TRANSITIVE"

    result = _run("register", "20-POLICE")
    assert result.exit_code == 0, result.output
    assert f"id {schema_id} already registered (version 1)" in result.output
    assert fake.get_versions(subject_for_agency("20-POLICE")) == [1]


@pytest.mark.unit
def test_register_all_known_agencies(fake):
    result = _run("register", "--all-known")
    assert result.exit_code == 0, result.output
    today = reference.agencies_at()
    assert cmd.agency_subjects(fake) == sorted(subject_for_agency(a) for a in today)
    assert f"{len(today)} agencies at fake://registry: {len(today)} registered" in result.output
    assert "34-POLICE" not in result.output  # merged away in 2025: not valid today

    assert _run("register").exit_code == 2  # usage error: nothing to register


@pytest.mark.unit
def test_register_refused_when_incompatible_with_what_is_registered(fake):
    subject = subject_for_agency("20-POLICE")
    fake.register_schema(subject, Schema(with_changed_type(), "AVRO"))
    result = _run("register", "20-POLICE")
    assert result.exit_code == 1
    assert "FAILED incompatible with the registered versions" in result.output
    assert fake.get_versions(subject) == [1]


# =========================================================================== real Apicurio


@pytest.fixture
def real_client(stack):
    return make_client(stack.registry_url)


def _cli(stack, *args: str):
    return _flat(
        CliRunner().invoke(
            cmd.schemas,
            [args[0], "--registry-url", stack.registry_url, *args[1:]],
            catch_exceptions=False,
        )
    )


@pytest.mark.integration
def test_evolution_rules_against_the_real_registry(stack, real_client, tmp_path):
    client = real_client
    subject = subject_for_agency(EVOLVING_AGENCY)
    v1_id = register_agency_subject(client, EVOLVING_AGENCY)
    assert client.get_compatibility(subject) == "BACKWARD_TRANSITIVE"
    versions_before = client.get_versions(subject)

    # adding a required field: refused by the check and by the registry itself
    ok, messages = check_compatibility(client, subject, with_required_field())
    assert not ok
    assert (
        "version 1: region: field is missing from the writer schema and has no default in the "
        "reader schema" in messages
    )
    with pytest.raises(SchemaRegistryError) as refused:
        register_agency_subject(client, EVOLVING_AGENCY, with_required_field())
    assert refused.value.http_status_code == 409
    # changing a field's type: refused too
    assert not check_compatibility(client, subject, with_changed_type())[0]
    with pytest.raises(SchemaRegistryError):
        register_agency_subject(client, EVOLVING_AGENCY, with_changed_type())
    assert client.get_versions(subject) == versions_before

    required = _write(tmp_path, "required.avsc", with_required_field())
    result = _cli(stack, "check", "--schema", str(required), "--agency", EVOLVING_AGENCY)
    assert result.exit_code == 1, result.output
    assert "INCOMPATIBLE" in result.output and "region" in result.output

    # removing a required field: BACKWARD (the registry's level) allows it, `schemas check` not
    removed = _write(tmp_path, "removed.avsc", without_required_field("case_id"))
    assert check_compatibility(client, subject, removed.read_text())[0]
    result = _cli(stack, "check", "--schema", str(removed), "--agency", EVOLVING_AGENCY)
    assert result.exit_code == 1, result.output
    assert "BREAKS OLD CONSUMERS" in result.output and "case_id" in result.output

    # adding an optional field: the check passes, and the registry takes it as a new version
    optional = _write(tmp_path, "optional.avsc", with_optional_field())
    assert check_compatibility(client, subject, optional.read_text()) == (True, [])
    result = _cli(stack, "check", "--schema", str(optional), "--agency", EVOLVING_AGENCY)
    assert result.exit_code == 0, result.output
    v2_id = register_agency_subject(client, EVOLVING_AGENCY, optional.read_text())
    assert v2_id != v1_id
    versions = client.get_versions(subject)
    assert len(versions) == 2
    assert client.get_version(subject, versions[-1]).schema_id == v2_id
    assert client.get_compatibility(subject) == "BACKWARD_TRANSITIVE"
    # the same schema again: same id, no new version (idempotent)
    assert register_agency_subject(client, EVOLVING_AGENCY, optional.read_text()) == v2_id
    assert register_agency_subject(client, EVOLVING_AGENCY) == v1_id
    assert client.get_versions(subject) == versions

    # after the evolution, both v2 and the shipped schema still pass `schemas check` everywhere
    result = _cli(stack, "check", "--schema", str(optional))
    assert result.exit_code == 0, result.output
    result = _cli(stack, "check")
    assert result.exit_code == 0, result.output
    assert f"{subject} ok (versions 1-2)" in result.output


@pytest.mark.integration
def test_old_events_stay_readable_after_an_evolution(stack, real_client):
    client = real_client
    subject = subject_for_agency(EVOLVING_AGENCY)
    v1_id = register_agency_subject(client, EVOLVING_AGENCY)
    v2_id = register_agency_subject(client, EVOLVING_AGENCY, with_optional_field())
    assert client.get_version(subject, "latest").schema_id == v2_id

    event_json = example_event(
        "case_opened", agency_id=EVOLVING_AGENCY, case_id=f"{EVOLVING_AGENCY}/2024/0001"
    )
    event = parse_event(event_json)
    written_v1 = encode(event, v1_id)

    # consumers upgraded to v2 (reader = newer schema) read events written with v1
    upgraded = AvroCodec(reader_schema=with_optional_field())
    decoded = upgraded.decode(written_v1, SchemaCache(make_client(stack.registry_url)))
    assert decoded == {**event, "source_system": None}

    # producers upgraded to v2: consumers still on v1 read their events (the field is skipped)
    written_v2 = upgraded.encode(
        {**event, "source_system": "e-office 3.1"}, v2_id, writer_schema=with_optional_field()
    )
    fresh_cache = SchemaCache(make_client(stack.registry_url))
    assert decode(written_v2, fresh_cache) == event
    assert to_json_form(decode(written_v1, fresh_cache)) == event_json
    assert upgraded.decode(written_v2, fresh_cache)["source_system"] == "e-office 3.1"


@pytest.mark.integration
def test_register_command_against_the_real_registry(stack, real_client):
    result = _cli(stack, "register", REGISTER_AGENCY, "20-FBI")
    assert result.exit_code == 1, result.output
    subject = subject_for_agency(REGISTER_AGENCY)
    schema_id = real_client.lookup_schema(subject, Schema(schema_str(), "AVRO")).schema_id
    assert f"{subject} id {schema_id} " in result.output
    assert "20-FBI" in result.output and "unknown agency" in result.output
    assert real_client.get_compatibility(subject) == "BACKWARD_TRANSITIVE"

    again = _cli(stack, "register", REGISTER_AGENCY)
    assert again.exit_code == 0, again.output
    assert f"{subject} id {schema_id} already registered (version 1)" in again.output
    assert real_client.get_versions(subject) == [1]

    check = _cli(stack, "check", "--agency", REGISTER_AGENCY)
    assert check.exit_code == 0, check.output
    assert f"{subject} ok (version 1)" in check.output
