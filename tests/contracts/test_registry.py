"""Registry adapter against an in-memory fake of SchemaRegistryClient."""

from __future__ import annotations

import base64
import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from confluent_kafka.schema_registry.error import SchemaRegistryError

from services.contracts.codec import WireFormatError, decode, encode
from services.contracts.events import parse_event
from services.contracts.examples import example_event
from services.contracts.fake_registry import InMemorySchemaRegistry
from services.contracts.registry import (
    SchemaCache,
    ccompat_url,
    check_compatibility,
    make_client,
    register_agency_subject,
    subject_for_agency,
)
from services.contracts.schema import schema_str

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def with_optional_field() -> str:
    schema = json.loads(schema_str())
    schema["fields"].append(
        {"name": "source_system", "type": ["null", "string"], "default": None, "doc": "v2"}
    )
    return json.dumps(schema)


def with_required_field() -> str:
    schema = json.loads(schema_str())
    schema["fields"].append({"name": "region", "type": "string", "doc": "v2, required"})
    return json.dumps(schema)


def test_subject_naming():
    assert subject_for_agency("20-POLICE") == "agency.20-POLICE.events-value"


@pytest.mark.parametrize("config_requires_subject", [False, True])
def test_register_agency_subject_sets_backward_transitive(config_requires_subject):
    client = InMemorySchemaRegistry(config_requires_subject=config_requires_subject)
    schema_id = register_agency_subject(client, "20-POLICE")
    subject = "agency.20-POLICE.events-value"
    assert client.get_subjects() == [subject]
    assert client.get_compatibility(subject) == "BACKWARD_TRANSITIVE"
    assert client.get_schema(schema_id).schema_str == schema_str()


def test_register_is_idempotent_and_ids_are_shared_between_agencies():
    client = InMemorySchemaRegistry()
    first = register_agency_subject(client, "20-POLICE")
    assert register_agency_subject(client, "20-POLICE") == first
    assert client.get_versions("agency.20-POLICE.events-value") == [1]
    assert register_agency_subject(client, "00-AUDIT") == first  # same schema -> same global id


def test_register_refuses_unknown_agencies():
    with pytest.raises(ValueError, match="unknown agency"):
        register_agency_subject(InMemorySchemaRegistry(), "20-FBI")
    # merged-away agencies keep their subject (their old events must stay importable)
    client = InMemorySchemaRegistry()
    schema_id = register_agency_subject(client, "34-POLICE")
    assert client.get_subjects() == ["agency.34-POLICE.events-value"]
    assert client.get_schema(schema_id).schema_str == schema_str()


def test_evolution_through_the_registry():
    client = InMemorySchemaRegistry()
    v1 = register_agency_subject(client, "20-POLICE")
    v2 = register_agency_subject(client, "20-POLICE", with_optional_field())
    assert v2 != v1
    assert client.get_versions("agency.20-POLICE.events-value") == [1, 2]
    with pytest.raises(SchemaRegistryError) as info:
        register_agency_subject(client, "20-POLICE", with_required_field())
    assert info.value.http_status_code == 409


def test_check_compatibility():
    client = InMemorySchemaRegistry()
    subject = subject_for_agency("20-POLICE")
    ok, messages = check_compatibility(client, subject, schema_str())
    assert ok and "no registered versions" in messages[0]
    register_agency_subject(client, "20-POLICE")
    assert check_compatibility(client, subject, schema_str()) == (True, [])
    assert check_compatibility(client, subject, with_optional_field()) == (True, [])
    ok, messages = check_compatibility(client, subject, with_required_field())
    assert not ok
    assert messages == [
        "version 1: region: field is missing from the writer schema and has no default in the reader schema"
    ]
    ok, messages = check_compatibility(client, subject, "{broken")
    assert not ok and messages[0].startswith("invalid Avro schema")


def test_check_compatibility_reports_registry_refusals_without_local_messages():
    class Strict(InMemorySchemaRegistry):
        def test_compatibility(self, *args, **kwargs):
            return False

    client = Strict()
    register_agency_subject(client, "20-POLICE")
    ok, messages = check_compatibility(client, subject_for_agency("20-POLICE"), schema_str())
    assert not ok and "registry reports" in messages[0]


def test_schema_cache_fetches_each_id_once_and_feeds_decode():
    client = InMemorySchemaRegistry()
    schema_id = register_agency_subject(client, "20-INSP")
    cache = SchemaCache(client)
    event = parse_event(example_event("case_transferred"), now=NOW)
    raw = encode(event, schema_id)
    for _ in range(20):
        assert decode(raw, cache) == event
    assert [c for c in client.calls if c[0] == "get_schema"] == [("get_schema", str(schema_id))]
    assert schema_id in cache and len(cache) == 1
    assert cache.schema_text(schema_id) == schema_str()
    assert cache.get(schema_id) is cache(schema_id)


def test_schema_cache_unknown_id_and_outage():
    client = InMemorySchemaRegistry()
    cache = SchemaCache(client)
    with pytest.raises(KeyError):
        cache(42)
    raw = encode(parse_event(example_event("case_resolved"), now=NOW), 42)
    with pytest.raises(WireFormatError, match="unknown schema id 42"):
        decode(raw, cache)

    class Down(InMemorySchemaRegistry):
        def get_schema(self, schema_id, *args, **kwargs):
            raise SchemaRegistryError(503, -1, "unavailable")

    with pytest.raises(SchemaRegistryError):
        decode(raw, SchemaCache(Down()))


def test_schema_cache_preload():
    cache = SchemaCache(InMemorySchemaRegistry(), preload={3: schema_str()})
    assert cache(3)["name"] == "casestream.CaseEvent"


def test_decode_old_version_via_registry_after_evolution():
    """Events written with v1 stay readable by consumers whose reader schema is v2."""
    from services.contracts.codec import AvroCodec

    client = InMemorySchemaRegistry()
    v1 = register_agency_subject(client, "20-INSP")
    register_agency_subject(client, "20-INSP", with_optional_field())
    consumer = AvroCodec(reader_schema=with_optional_field())
    event = parse_event(example_event("case_opened"), now=NOW)
    decoded = consumer.decode(encode(event, v1), SchemaCache(client))
    assert decoded == {**event, "source_system": None}


def test_fake_is_compatible_with_confluent_avro_serializer():
    """A foreign producer using Confluent's own AvroSerializer writes bytes we decode."""
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    client = InMemorySchemaRegistry()
    schema_id = register_agency_subject(client, "20-INSP")
    serializer = AvroSerializer(
        client,
        schema_str(),
        conf={"auto.register.schemas": False, "use.latest.version": False},
    )
    event = parse_event(example_event("transfer_returned"), now=NOW)
    foreign = dict(event)  # plain dicts: fastavro picks the union branch by best field match
    raw = serializer(foreign, SerializationContext("agency.20-INSP.events", MessageField.VALUE))
    assert raw[1:5] == schema_id.to_bytes(4, "big")
    assert decode(raw, SchemaCache(client)) == event


def test_client_url_helpers():
    assert ccompat_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080/apis/ccompat/v7"
    assert (
        ccompat_url("http://127.0.0.1:8080/apis/ccompat/v7/")
        == "http://127.0.0.1:8080/apis/ccompat/v7"
    )


@pytest.fixture
def stub_registry():
    """A stand-in registry over HTTP that knows schema id 42 under the ccompat path; yields its
    base URL and the (path, Authorization header) of every request it got."""
    requests: list[tuple[str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            requests.append((self.path, self.headers.get("Authorization")))
            if urlsplit(self.path).path == "/apis/ccompat/v7/schemas/ids/42":
                status, body = 200, {"schema": schema_str()}
            else:
                status, body = 404, {"error_code": 40403, "message": "Schema not found"}
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_make_client_reaches_the_ccompat_api_under_the_base_url(stub_registry):
    base_url, requests = stub_registry
    client = make_client(base_url, **{"basic.auth.user.info": "reader:pw"})
    registered = client.get_schema(42)
    assert (registered.schema_str, registered.schema_type) == (schema_str(), "AVRO")
    assert [urlsplit(path).path for path, _auth in requests] == ["/apis/ccompat/v7/schemas/ids/42"]
    assert requests[0][1] == "Basic " + base64.b64encode(b"reader:pw").decode()

    # The schema fetched over HTTP decodes what was written with its id; an id the registry
    # does not know is an unknown schema id, not a registry outage.
    event = parse_event(example_event("appraisal_completed"), now=NOW)
    cache = SchemaCache(make_client(base_url))
    assert decode(encode(event, 42), cache) == event
    with pytest.raises(WireFormatError, match="unknown schema id 43"):
        decode(encode(event, 43), cache)


def test_confluent_avro_deserializer_reads_our_bytes():
    """Analysts or agencies using confluent-kafka's own deserializer can read the topics."""
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    client = InMemorySchemaRegistry()
    schema_id = register_agency_subject(client, "20-INSP")
    event = parse_event(example_event("case_opened"), now=NOW)
    decoded = AvroDeserializer(client)(
        encode(event, schema_id), SerializationContext("agency.20-INSP.events", MessageField.VALUE)
    )
    chain = {"chain_seq": None, "chain_prev": None, "chain_hash": None}  # an unchained event
    assert {**decoded, "event_id": str(decoded["event_id"])} == {**event, **chain}
