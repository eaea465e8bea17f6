"""Thin adapter on ``confluent_kafka.schema_registry.SchemaRegistryClient``.

The local registry is Apicurio Registry 3 through its Confluent-compatible API
(``<base>/apis/ccompat/v7``); any Confluent-compatible registry works.  One subject per agency
topic (TopicNameStrategy): ``agency.<agency_id>.events-value``, all holding the same
``casestream.CaseEvent`` schema, compatibility BACKWARD_TRANSITIVE.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Protocol

from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from services.contracts import compat
from services.contracts import reference as _ref
from services.contracts.codec import parse_schema
from services.contracts.events import topic_for_agency
from services.contracts.schema import schema_str as _contract_schema_str

COMPATIBILITY_LEVEL = "BACKWARD_TRANSITIVE"
CCOMPAT_PATH = "/apis/ccompat/v7"


class RegistryClient(Protocol):
    """The subset of SchemaRegistryClient this module uses (the unit-test fake implements it)."""

    def register_schema(
        self, subject_name: str, schema: Schema, normalize_schemas: bool = False
    ) -> int: ...
    def lookup_schema(
        self, subject_name: str, schema: Schema, *args: Any, **kwargs: Any
    ) -> Any: ...
    def set_compatibility(
        self, subject_name: str | None = None, level: str | None = None
    ) -> Any: ...
    def test_compatibility(
        self, subject_name: str, schema: Schema, version: Any = "latest", **kw: Any
    ) -> bool: ...
    def get_versions(self, subject_name: str, *args: Any, **kwargs: Any) -> list[int]: ...
    def get_version(
        self, subject_name: str, version: Any = "latest", *args: Any, **kwargs: Any
    ) -> Any: ...
    def get_schema(self, schema_id: int, *args: Any, **kwargs: Any) -> Schema: ...


def ccompat_url(base_url: str) -> str:
    """Apicurio base URL -> its Confluent-compatible API URL (idempotent)."""
    base = base_url.rstrip("/")
    return base if base.endswith(CCOMPAT_PATH) else base + CCOMPAT_PATH


def make_client(base_url: str, **conf: Any):
    """A SchemaRegistryClient for an Apicurio base URL (or an already ccompat URL)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient({"url": ccompat_url(base_url), **conf})


def subject_for_agency(agency_id: str) -> str:
    """``"20-POLICE"`` -> ``"agency.20-POLICE.events-value"`` (TopicNameStrategy)."""
    return f"{topic_for_agency(agency_id)}-value"


def _is_not_found(exc: SchemaRegistryError) -> bool:
    return exc.http_status_code == 404


def register_agency_subject(
    client: RegistryClient,
    agency_id: str,
    schema_str: str | None = None,
    *,
    level: str = COMPATIBILITY_LEVEL,
) -> int:
    """Register the contract schema for an agency's topic; returns the schema id.

    Idempotent: an already registered identical schema returns its existing id, and the
    subject's compatibility is (re)set to BACKWARD_TRANSITIVE *before* a new version is
    registered, so an incompatible schema is refused by the registry (SchemaRegistryError 409).
    Raises ValueError for an agency that is not in the reference data.
    """
    if not _ref.is_known_agency(agency_id):
        raise ValueError(f"unknown agency {agency_id!r}: not in the reference data")
    subject = subject_for_agency(agency_id)
    schema = Schema(schema_str if schema_str is not None else _contract_schema_str(), "AVRO")

    try:
        registered = client.lookup_schema(subject, schema)
    except SchemaRegistryError as exc:
        if not _is_not_found(exc):
            raise
        registered = None
    if registered is not None:
        client.set_compatibility(subject, level)
        return int(registered.schema_id)

    try:  # the subject may already exist with older versions: enforce the level first
        client.set_compatibility(subject, level)
        compat_set = True
    except SchemaRegistryError as exc:
        if not _is_not_found(exc):  # some registries refuse config for an unknown subject
            raise
        compat_set = False
    schema_id = client.register_schema(subject, schema)
    if not compat_set:
        client.set_compatibility(subject, level)
    return int(schema_id)


def check_compatibility(
    client: RegistryClient, subject: str, schema_str: str
) -> tuple[bool, list[str]]:
    """Would ``schema_str`` be accepted as the next version of ``subject``?

    Checks locally against every registered version (BACKWARD_TRANSITIVE rules, with readable
    messages) and asks the registry (``POST /compatibility/subjects/<s>/versions/latest``).
    Returns ``(ok, messages)``; a subject without versions accepts any valid schema.
    """
    try:
        parse_schema(schema_str)
    except Exception as exc:
        return False, [f"invalid Avro schema: {exc}"]
    try:
        versions = sorted(client.get_versions(subject))
    except SchemaRegistryError as exc:
        if _is_not_found(exc):
            return True, [f"subject {subject} has no registered versions"]
        raise
    messages: list[str] = []
    for version in versions:
        old = client.get_version(subject, version).schema.schema_str
        messages += [f"version {version}: {m}" for m in compat.check_backward(schema_str, old)]
    registry_ok = bool(
        client.test_compatibility(subject, Schema(schema_str, "AVRO"), "latest", verbose=True)
    )
    if not registry_ok and not messages:
        messages.append(
            f"the registry reports the schema incompatible with the latest version of {subject}"
        )
    return registry_ok and not messages, messages


class SchemaCache:
    """Schema id -> parsed fastavro schema, fetched once from the registry.

    Callable, so an instance is the ``schema_lookup`` of ``codec.decode``.  Unknown ids raise
    ``KeyError`` (decode turns that into WireFormatError); other registry errors propagate so a
    consumer can retry instead of dead-lettering.  Thread-safe; the returned object is the same
    for the same id (the codec caches per object).
    """

    def __init__(self, client: RegistryClient, preload: dict[int, Any] | None = None) -> None:
        self._client = client
        self._schemas: dict[int, dict[str, Any]] = {}
        self._texts: dict[int, str] = {}
        self._lock = threading.Lock()
        for schema_id, schema in (preload or {}).items():
            self._store(schema_id, schema if isinstance(schema, str) else json.dumps(schema))

    def _store(self, schema_id: int, text: str) -> dict[str, Any]:
        parsed = parse_schema(text)
        self._texts[schema_id] = text
        self._schemas[schema_id] = parsed
        return parsed

    def __call__(self, schema_id: int) -> dict[str, Any]:
        found = self._schemas.get(schema_id)
        if found is not None:
            return found
        with self._lock:
            found = self._schemas.get(schema_id)
            if found is not None:
                return found
            try:
                schema = self._client.get_schema(schema_id)
            except SchemaRegistryError as exc:
                if _is_not_found(exc):
                    raise KeyError(schema_id) from exc
                raise
            if (schema.schema_type or "AVRO").upper() != "AVRO":
                raise KeyError(schema_id)
            return self._store(schema_id, schema.schema_str)

    get = __call__

    def schema_text(self, schema_id: int) -> str:
        self(schema_id)
        return self._texts[schema_id]

    def __contains__(self, schema_id: object) -> bool:
        return schema_id in self._schemas

    def __len__(self) -> int:
        return len(self._schemas)
