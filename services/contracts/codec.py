"""Avro codec for case events in the Confluent wire format.

Wire format: ``0x00`` magic byte, 4-byte big-endian schema id, then the Avro binary encoding of
the value (no container, no schema).  Encoding writes the normalized event (see
``services.contracts.events``) with the current contract schema; decoding reads with the
*writer* schema the id points to and resolves it into the current (*reader*) schema, so events
written with any older registered version stay readable after the schema evolved.

Speed: schemas are parsed once and cached; the per-message path is a header check, one
``schema_lookup`` call, a dict hit and ``fastavro.schemaless_reader``.  ``schema_lookup`` should
return the *same object* for the same id (``registry.SchemaCache`` does; so does a dict's
``__getitem__``) - parsed fastavro schemas, plain schema dicts and schema JSON strings are
accepted.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Mapping
from typing import Any

import fastavro

from services.contracts.schema import PAYLOAD_RECORD_BY_EVENT_TYPE, parsed_schema

MAGIC_BYTE = 0
HEADER = struct.Struct(">bI")
HEADER_SIZE = HEADER.size  # 5

#: Envelope fields left out of a decoded event when null (the hash chain, schema version 2):
#: an unchained event keeps the normalized form it had before they existed.
OMITTED_WHEN_NULL = ("chain_seq", "chain_prev", "chain_hash")

SchemaLike = Mapping[str, Any] | str
SchemaLookup = Callable[[int], SchemaLike | None]


class WireFormatError(ValueError):
    """Raw bytes that are not a decodable case event (bad header, unknown id, bad Avro body)."""

    def __init__(self, reason: str, schema_id: int | None = None) -> None:
        self.reason = reason
        self.schema_id = schema_id
        super().__init__(reason)

    def __reduce__(self):
        return (type(self), (self.reason, self.schema_id))


class EncodeError(ValueError):
    """The event cannot be written with the schema (it was not validated first?)."""


def parse_schema(schema: SchemaLike) -> dict[str, Any]:
    """JSON text / schema dict / already parsed schema -> parsed fastavro schema."""
    if isinstance(schema, (str, bytes)):
        schema = json.loads(schema)
    return fastavro.parse_schema(dict(schema) if not isinstance(schema, dict) else schema)


def _null_defaults(schema: dict[str, Any]) -> tuple[str, ...]:
    """Envelope fields whose default is null: a normalized event may leave them out.

    fastavro's ``strict`` refuses a missing field even when its default is null, and its
    ``strict_allow_default`` does not count a null default; ``strict`` stays on so that an unknown
    or misspelt key still fails.
    """
    found = _NULL_DEFAULTS.get(id(schema))
    if found is None or found[0] is not schema:
        names = tuple(
            f["name"] for f in schema.get("fields", ()) if "default" in f and f["default"] is None
        )
        found = _NULL_DEFAULTS[id(schema)] = (schema, names)
    return found[1]


_NULL_DEFAULTS: dict[int, tuple[dict[str, Any], tuple[str, ...]]] = {}


class _Writer:
    __slots__ = ("source", "parsed", "reader")

    def __init__(self, source: Any, parsed: dict[str, Any], reader: dict[str, Any] | None) -> None:
        self.source = source  # strong ref: keeps id(source) unique while cached
        self.parsed = parsed
        self.reader = reader  # None when writer == reader (no resolution needed)


class AvroCodec:
    """Encoder/decoder bound to one reader schema (default: the shipped contract schema)."""

    def __init__(self, reader_schema: SchemaLike | None = None, *, max_cached_schemas: int = 1024):
        self.reader_schema = (
            parsed_schema() if reader_schema is None else parse_schema(reader_schema)
        )
        self._max_cached = max_cached_schemas
        self._writers: dict[Any, _Writer] = {}

    # ------------------------------------------------------------------ encode

    def encode(
        self,
        event: Mapping[str, Any],
        schema_id: int,
        *,
        writer_schema: SchemaLike | None = None,
    ) -> bytes:
        """Normalized event -> Confluent wire-format bytes.

        ``schema_id`` must be the registry id of the schema used to write (by default the
        current contract schema, i.e. the id returned by ``register_agency_subject``).
        """
        if not isinstance(schema_id, int) or not 0 <= schema_id <= 0xFFFFFFFF:
            raise EncodeError(f"schema id must be an unsigned 32-bit integer, got {schema_id!r}")
        schema = self.reader_schema if writer_schema is None else parse_schema(writer_schema)
        try:
            record_name = PAYLOAD_RECORD_BY_EVENT_TYPE[event["event_type"]]
            record = dict(event)
            record["payload"] = (record_name, event["payload"])
            for name in _null_defaults(schema):  # e.g. an event never chained: no chain fields
                record.setdefault(name, None)
        except (KeyError, TypeError) as exc:
            raise EncodeError(f"not a normalized event: {exc!r}") from None
        buf = io.BytesIO()
        buf.write(HEADER.pack(MAGIC_BYTE, schema_id))
        try:
            fastavro.schemaless_writer(buf, schema, record, strict=True)
        except Exception as exc:  # fastavro raises ValueError/TypeError/KeyError/...
            raise EncodeError(f"cannot encode event {event.get('event_id')!r}: {exc}") from exc
        return buf.getvalue()

    # ------------------------------------------------------------------ decode

    def _writer_for(self, schema_id: int, schema_lookup: SchemaLookup) -> _Writer:
        try:
            source = schema_lookup(schema_id)
        except LookupError:
            source = None
        if source is None:
            raise WireFormatError(f"unknown schema id {schema_id}", schema_id)
        key = source if isinstance(source, str) else id(source)
        writer = self._writers.get(key)
        if writer is not None and writer.source is source:
            return writer
        if isinstance(source, str) and writer is not None:
            return writer
        try:
            parsed = parse_schema(source)
        except Exception as exc:
            raise WireFormatError(
                f"schema id {schema_id} is not a valid Avro schema: {exc}", schema_id
            ) from exc
        reader = None if parsed == self.reader_schema else self.reader_schema
        writer = _Writer(source, parsed, reader)
        if len(self._writers) >= self._max_cached:
            self._writers.clear()
        self._writers[key] = writer
        return writer

    def decode(self, raw: bytes, schema_lookup: SchemaLookup) -> dict[str, Any]:
        """Confluent wire-format bytes -> normalized event (reader = current schema).

        ``schema_lookup(schema_id)`` returns the writer schema registered under the id; it may
        raise ``KeyError``/``LookupError`` or return None for an unknown id (any other exception,
        e.g. a registry outage, propagates unchanged so the caller can retry).  Raises
        :class:`WireFormatError` for bytes that are not one well-formed value of the writer
        schema.  Bytes that are decode into what they say, a complete record of the reader
        schema: Avro carries no checksum, so a corruption that keeps them well-formed gives
        another record (Kafka's CRC32C per record batch guards the bytes, and
        ``events.validate_event`` judges the record).
        """
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise WireFormatError(f"message value must be bytes, got {type(raw).__name__}")
        size = len(raw)
        if size <= HEADER_SIZE:
            raise WireFormatError(
                f"message too short: {size} bytes (need a {HEADER_SIZE}-byte header and an Avro body)"
            )
        magic, schema_id = HEADER.unpack_from(raw, 0)
        if magic != MAGIC_BYTE:
            raise WireFormatError(
                f"bad magic byte {raw[0]:#04x} (expected 0x00: Confluent wire format)"
            )
        writer = self._writer_for(schema_id, schema_lookup)
        buf = io.BytesIO(raw)
        buf.seek(HEADER_SIZE)
        try:
            event = fastavro.schemaless_reader(buf, writer.parsed, writer.reader)
        except Exception as exc:  # truncated/corrupt body or unresolvable data
            raise WireFormatError(
                f"bad Avro body for schema id {schema_id}: {type(exc).__name__}: {exc}", schema_id
            ) from exc
        if buf.tell() != size:
            raise WireFormatError(
                f"bad Avro body for schema id {schema_id}: {size - buf.tell()} trailing bytes",
                schema_id,
            )
        if not isinstance(event, dict):
            raise WireFormatError(f"schema id {schema_id} does not describe a record", schema_id)
        for name in OMITTED_WHEN_NULL:  # an event never chained decodes as it always did
            if name in event and event[name] is None:
                del event[name]
        event_id = event.get("event_id")
        if event_id is not None and not isinstance(event_id, str):
            event["event_id"] = str(event_id)  # fastavro returns uuid.UUID for logicalType uuid
        return event


_default: AvroCodec | None = None


def default_codec() -> AvroCodec:
    """Process-wide codec with the shipped schema as reader."""
    global _default
    if _default is None:
        _default = AvroCodec()
    return _default


def encode(event_dict: Mapping[str, Any], schema_id: int) -> bytes:
    """Normalized event -> Confluent wire format, written with the current contract schema."""
    return default_codec().encode(event_dict, schema_id)


def decode(raw: bytes, schema_lookup: SchemaLookup) -> dict[str, Any]:
    """Confluent wire format -> normalized event, resolved into the current contract schema."""
    return default_codec().decode(raw, schema_lookup)


def schema_id_of(raw: bytes) -> int:
    """Schema id in the header of a wire-format message (WireFormatError when malformed)."""
    if len(raw) < HEADER_SIZE or raw[0] != MAGIC_BYTE:
        raise WireFormatError("not a Confluent wire-format message")
    return HEADER.unpack_from(raw, 0)[1]
