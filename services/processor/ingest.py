"""Turn one raw Kafka message from an agency topic into a `Fact`, or say precisely why not.

Everything that can be wrong with a message becomes a `Rejected` with a machine-readable reason
(the dead-letter topic is grouped by it) and a human-readable detail; nothing here raises
anything else for bad input, so the worker never stops on a message.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.contracts.codec import AvroCodec, WireFormatError
from services.contracts.events import (
    EventValidationError,
    agency_from_topic,
    validate_event,
)
from services.contracts.registry import SchemaCache, make_client
from services.processor.facts import Fact
from services.settings import Settings


class Rejected(Exception):
    """A message that cannot become a fact. `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str, field: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.field = field


class RegistryUnavailable(Exception):
    """The schema registry could not be asked: retry later, the message is not at fault."""


def _is_registry_outage(exc: Exception) -> bool:
    """Connection failures and 5xx answers from the registry (not an unknown schema id)."""
    status = getattr(exc, "http_status_code", None)
    if isinstance(status, int):
        return status >= 500 or status < 0
    name = type(exc).__name__
    return any(word in name for word in ("Connect", "Timeout", "Transport", "Network"))


REASONS = (
    "empty_message",  # tombstone or zero bytes
    "bad_wire_format",  # not Confluent wire format / unknown schema id / undecodable Avro
    "invalid_event",  # decoded but breaks the contract (enum, unknown agency, future, ...)
    "spoofed_agency",  # event's agency_id differs from the topic's agency
    "bad_topic",  # topic name does not name an agency
)


class Ingestor:
    def __init__(self, schema_lookup, *, now=None) -> None:
        self._lookup = schema_lookup
        self._codec = AvroCodec()
        self._now = now  # fixed clock for tests; None = wall clock

    @classmethod
    def from_settings(cls, settings: Settings) -> Ingestor:
        return cls(SchemaCache(make_client(settings.registry_url)))

    def accept(self, raw: bytes | None, topic: str) -> Fact:
        if not raw:
            raise Rejected("empty_message", "message has no value")
        try:
            topic_agency = agency_from_topic(topic)
        except ValueError as exc:
            raise Rejected("bad_topic", str(exc)) from None
        try:
            event = self._codec.decode(raw, self._lookup)
        except WireFormatError as exc:
            raise Rejected("bad_wire_format", exc.reason) from None
        except (OSError, ConnectionError, TimeoutError) as exc:
            raise RegistryUnavailable(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - registry errors, corrupt bodies
            if _is_registry_outage(exc):
                raise RegistryUnavailable(f"{type(exc).__name__}: {exc}") from None
            raise Rejected("bad_wire_format", f"{type(exc).__name__}: {exc}") from None
        if event.get("agency_id") != topic_agency:
            raise Rejected(
                "spoofed_agency",
                f"event agency_id {event.get('agency_id')!r} published on topic {topic!r} "
                f"of agency {topic_agency!r}",
                "agency_id",
            )
        try:
            valid: dict[str, Any] = validate_event(event, now=self._current_time())
        except EventValidationError as exc:
            raise Rejected("invalid_event", str(exc), exc.field) from None
        except Exception as exc:  # noqa: BLE001 - never let odd input escape as a crash
            raise Rejected("invalid_event", f"{type(exc).__name__}: {exc}") from None
        return Fact.from_event(valid)

    def _current_time(self) -> datetime | None:
        return self._now() if callable(self._now) else self._now
