"""The casestream event contract: schema, reference data, validation, Avro codec, registry.

Typical producer path::

    event = parse_event(json_obj)                 # validate + normalize (EventValidationError)
    validate_publisher(event, my_agency_id)
    raw = encode(event, schema_id)                # schema_id from register_agency_subject(...)
    producer.produce(topic_for_agency(my_agency_id), key=kafka_key(event), value=raw)

Typical consumer path::

    lookup = SchemaCache(client)
    event = decode(msg.value(), lookup)           # WireFormatError -> dead letter
    validate_event(event)                         # EventValidationError -> dead letter

Names are imported lazily: importing ``services.contracts.events`` does not pull in the
schema-registry client (confluent_kafka.schema_registry takes ~0.6 s to import).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AvroCodec": "codec",
    "WireFormatError": "codec",
    "EncodeError": "codec",
    "decode": "codec",
    "encode": "codec",
    "EVENT_TYPES": "events",
    "TOPIC_PATTERN": "events",
    "EventValidationError": "events",
    "agency_from_topic": "events",
    "kafka_key": "events",
    "parse_event": "events",
    "parse_json_line": "events",
    "to_json_form": "events",
    "topic_for_agency": "events",
    "validate_event": "events",
    "validate_publisher": "events",
    "agency_type": "reference",
    "current_agency": "reference",
    "current_province": "reference",
    "is_known_agency": "reference",
    "province_of": "reference",
    "provinces_at": "reference",
    "SchemaCache": "registry",
    "check_compatibility": "registry",
    "register_agency_subject": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
