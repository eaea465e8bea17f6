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

from services.contracts.schema import PAYLOAD_RECORD_BY_EVENT_TYPE, parsed_schema, schema_dict

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


class _Unsupported(Exception):
    """A value the compiled body writer does not handle itself: fastavro decides instead."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_ZIGZAG_SMALL = [_varint((n << 1) ^ (n >> 63)) for n in range(-64, 4096)]


def _zigzag(n: int) -> bytes:
    """Avro's long/int encoding (zig-zag, then base-128 varint)."""
    if -64 <= n < 4096:
        return _ZIGZAG_SMALL[n + 64]
    return _varint(((n << 1) ^ (n >> 63)) & 0xFFFFFFFFFFFFFFFF)


class BodyWriter:
    """The Avro body (no header) of a normalized event, compiled once from the schema.

    Why: ``fastavro.schemaless_writer`` walks the generic schema for every record (7.6 us per
    event measured in the publish benchmark); this writer generates, once, one straight-line
    Python function per record of the contract schema and writes the same bytes in a fraction
    of that. It only handles the plain types a validated event has (str, int, bool, None, an
    ``occurred_at`` given as epoch milliseconds); anything else (a datetime, a uuid.UUID, a
    misspelt or missing key, an out-of-range number) raises ``_Unsupported`` and
    :meth:`AvroCodec.encode_body` hands the record to fastavro, which encodes or refuses it
    exactly as before. ``tests/contracts/test_codec.py`` checks the bytes against fastavro's.
    """

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._named: dict[str, Any] = {}
        self._sources: list[str] = []
        self._globals: dict[str, Any] = {
            "U": _Unsupported,
            "ZZ": _ZIGZAG_SMALL,
            "zz": _zigzag,
            "LMIN": _LONG_MIN,
            "LMAX": _LONG_MAX,
            "IMIN": _INT_MIN,
            "IMAX": _INT_MAX,
            "RECORDS": PAYLOAD_RECORD_BY_EVENT_TYPE,
        }
        self._counter = 0
        namespace = schema.get("namespace", "casestream")
        self._named[self._full(schema["name"], namespace)] = schema
        body, names = self._record_body(schema, namespace, envelope=True)
        self._globals["ENVELOPE"] = frozenset(names)
        self._globals["REQUIRED"] = frozenset(
            f["name"] for f in schema["fields"] if not ("default" in f and f["default"] is None)
        )
        self._sources.append(
            "def encode(v):\n"
            "    if type(v) is not dict or not v.keys() <= ENVELOPE or not REQUIRED <= v.keys():\n"
            "        raise U\n"
            "    out = bytearray()\n" + body + "    return bytes(out)\n"
        )
        source = "\n".join(self._sources)
        exec(compile(source, "<casestream BodyWriter>", "exec"), self._globals)  # noqa: S102
        self._globals["BRANCHES"] = {
            full: (index, self._globals[function])
            for full, (index, function) in self._globals.pop("BRANCHES_SPEC").items()
        }
        self.encode: Callable[[Mapping[str, Any]], bytes] = self._globals["encode"]

    @staticmethod
    def _full(name: str, namespace: str) -> str:
        return name if "." in name else f"{namespace}.{name}"

    def _name(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def _record_body(
        self, schema: Mapping[str, Any], namespace: str, envelope: bool = False
    ) -> tuple[str, list[str]]:
        namespace = schema.get("namespace", namespace)
        lines = []
        names = []
        for field in schema["fields"]:
            name = field["name"]
            names.append(name)
            nullable_default = "default" in field and field["default"] is None
            value = f"v.get({name!r})" if envelope and nullable_default else f"v[{name!r}]"
            lines.append(f"    x = {value}\n")
            lines.append(self._write(field["type"], namespace, name, "x", envelope))
        return "".join(lines), names

    def _write(self, avro_type: Any, namespace: str, field: str, x: str, envelope: bool) -> str:
        """Statements (4-space indent) appending the encoding of variable ``x`` to ``out``."""
        if isinstance(avro_type, list):
            return self._write_union(avro_type, namespace, field, x, envelope)
        if isinstance(avro_type, str) and avro_type not in _PRIMITIVE_TYPES:
            named = self._named.get(self._full(avro_type, namespace))
            if named is None:
                raise NotImplementedError(f"{field}: unknown type {avro_type!r}")
            avro_type = named
        if isinstance(avro_type, str):
            avro_type = {"type": avro_type}
        kind = avro_type["type"]
        logical = avro_type.get("logicalType")
        if kind in ("record", "enum"):
            ns = avro_type.get("namespace", namespace)
            self._named[self._full(avro_type["name"], ns)] = avro_type
            function = self._function(avro_type, ns)
            return f"    out += {function}({x})\n"
        if kind == "string" and logical in (None, "uuid"):
            return (
                f"    if type({x}) is not str: raise U\n"
                f"    b = {x}.encode()\n"
                "    n = len(b)\n"
                "    out += ZZ[n + 64] if n < 4096 else zz(n)\n"
                "    out += b\n"
            )
        if kind in ("long", "int") and (logical is None or logical == "timestamp-millis"):
            lo, hi = ("LMIN", "LMAX") if kind == "long" else ("IMIN", "IMAX")
            return (
                f"    if type({x}) is not int or not {lo} <= {x} <= {hi}: raise U\n"
                f"    out += ZZ[{x} + 64] if -64 <= {x} < 4096 else zz({x})\n"
            )
        if kind == "boolean" and logical is None:
            return (
                f"    if type({x}) is not bool: raise U\n    out += b'\\x01' if {x} else b'\\x00'\n"
            )
        raise NotImplementedError(f"{field}: type {avro_type!r} is not compiled")

    def _function(self, schema: Mapping[str, Any], namespace: str) -> str:
        """A generated function encoding a record or enum value; returns its name."""
        name = self._name("enum" if schema["type"] == "enum" else "record")
        if schema["type"] == "enum":
            self._globals[f"{name}_index"] = {
                symbol: _zigzag(i) for i, symbol in enumerate(schema["symbols"])
            }
            self._sources.append(
                f"def {name}(x):\n"
                f"    found = {name}_index.get(x) if type(x) is str else None\n"
                "    if found is None: raise U\n"
                "    return found\n"
            )
            return name
        body, names = self._record_body(schema, namespace)
        self._globals[f"{name}_names"] = frozenset(names)
        self._sources.append(
            f"def {name}(v):\n"
            f"    if type(v) is not dict or not v.keys() <= {name}_names: raise U\n"
            "    out = bytearray()\n"
            "    try:\n"
            + "".join("    " + line if line.strip() else line for line in body.splitlines(True))
            + "    except KeyError:\n"  # fastavro's strict mode refuses a missing field
            "        raise U from None\n"
            "    return out\n"
        )
        return name

    def _write_union(
        self, branches: list[Any], namespace: str, field: str, x: str, envelope: bool
    ) -> str:
        if len(branches) == 2 and "null" in branches:
            null = branches.index("null")
            other = branches[1 - null]
            inner = self._write(other, namespace, field, x, envelope)
            return (
                f"    if {x} is None:\n"
                f"        out += {_zigzag(null)!r}\n"
                "    else:\n"
                f"        out += {_zigzag(1 - null)!r}\n"
                + "".join("    " + line for line in inner.splitlines(True))
            )
        if not envelope or field != "payload":
            raise NotImplementedError(f"{field}: only [null, T] unions and the payload compiled")
        # The payload's record is chosen by event_type (the normalized form's payload is the
        # bare record; AvroCodec.encode passes (record name, value) to fastavro).
        table = {}
        for i, branch in enumerate(branches):
            if not isinstance(branch, dict) or branch.get("type") != "record":
                raise NotImplementedError(f"{field}: only unions of records compiled")
            ns = branch.get("namespace", namespace)
            full = self._full(branch["name"], ns)
            self._named[full] = branch
            table[full] = (_zigzag(i), self._function(branch, ns))
        name = self._name("payload")
        self._sources.append(
            f"def {name}(event_type, x):\n"
            "    found = BRANCHES.get(RECORDS.get(event_type)) if type(event_type) is str else None\n"
            "    if found is None: raise U\n"
            "    return found[0] + found[1](x)\n"
        )
        self._globals["BRANCHES_SPEC"] = table
        return f"    out += {name}(v['event_type'], {x})\n"


_PRIMITIVE_TYPES = frozenset(
    {"string", "long", "int", "boolean", "null", "bytes", "float", "double"}
)
_BODY_WRITER: list[BodyWriter | None] = []


def _body_writer() -> BodyWriter | None:
    """The contract schema's compiled writer (built once per process); None when the schema
    uses a type it does not compile (then fastavro writes every event)."""
    if not _BODY_WRITER:
        try:
            _BODY_WRITER.append(BodyWriter(schema_dict()))
        except NotImplementedError:
            _BODY_WRITER.append(None)
    return _BODY_WRITER[0]


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
        # The compiled writer serves the shipped contract schema only; a custom one is fastavro's.
        self._body = _body_writer() if reader_schema is None else None

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
        return HEADER.pack(MAGIC_BYTE, schema_id) + self.encode_body(
            event, writer_schema=writer_schema
        )

    def encode_body(
        self, event: Mapping[str, Any], *, writer_schema: SchemaLike | None = None
    ) -> bytes:
        """Normalized event -> its Avro body alone (the wire format without the 5-byte header).

        The body does not depend on the schema's registry id, so the SDK's outbox can keep it
        while the registry is unreachable and prepend the header when it sends.
        """
        if writer_schema is None and self._body is not None:
            try:
                return self._body.encode(event)  # type: ignore[arg-type]
            except _Unsupported:
                pass  # fastavro encodes it or says why not
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
