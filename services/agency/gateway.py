"""HTTP gateway for agencies without a Kafka client: JSON batches in, Avro events on Kafka out.

Endpoints (OpenAPI at ``/openapi.json``, interactive docs at ``/docs``):

``POST /v1/events``  (``Authorization: Bearer <agency token>``, ``Content-Type: application/json``)
    Body ``{"events": [<event in JSON form>, ...]}``.  Every event is validated on its own and
    gets a result (``accepted``, ``duplicate`` or ``rejected`` with the offending field, value and
    reason); the valid events of a batch are accepted even when others are rejected.  A token
    belongs to one agency and can only publish events whose ``agency_id`` is that agency.

    Acknowledgement: by default the answer comes once the accepted events are committed to the
    agency's outbox (SQLite WAL; survives a crash or restart of the gateway): ``accepted`` means
    "will be delivered", also when Kafka or the registry is down at that moment.  With
    ``?wait=true`` the gateway also waits (up to ``timeout`` seconds) for Kafka's
    acknowledgements and reports ``delivered`` per event.
    Re-posting an event_id already accepted gives ``duplicate`` and nothing is stored or sent
    again (the first version of an event_id wins).

    Errors of the whole request have the body ``{"error": {"code", "message", ...}}``:
    401 missing/unknown/revoked token, 400 malformed JSON (with line and column) or a token in
    the URL, 408 body not received within the body timeout, 413 body or batch too large, 415
    not JSON, 422 not ``{"events": [...]}``, 429 rate limit or event quota of the agency
    exhausted (with ``Retry-After``), 503 outbox unavailable.  Never a 5xx for any input, and
    the answer is always strict JSON: values JSON cannot hold (``NaN``, ``Infinity``, numbers
    beyond ±1.8e308, lone surrogate escapes such as ``"\\ud800"``, duplicate keys) reject their
    event with the field named (``services.agency.json_text``).

``GET /healthz``   gateway up; Kafka and registry reachable?  (``?strict=true``: 503 if not)
``GET /metrics``   Prometheus text format; on the public address only with the admin token
                   (``CASESTREAM_GATEWAY_METRICS_TOKEN``), else on the admin address
                   (``casestream gateway --metrics-addr``, 127.0.0.1:9465 by default).

One :class:`~services.agency.publisher.Publisher` per agency (created on the agency's first
request, kept for the app's lifetime, closed on shutdown) with its outbox under
``<CASESTREAM_HOME>/gateway/outbox/<agency_id>.sqlite``; a background thread collects Kafka's
acknowledgements and re-sends what failed, and on start-up the gateway resumes sending whatever
its outboxes still hold.

Configuration (environment, on top of ``services.settings``):

| variable | default | meaning |
| --- | --- | --- |
| CASESTREAM_GATEWAY_TOKENS_FILE | <home>/gateway/tokens.json | token store (``services.agency.tokens``) |
| CASESTREAM_GATEWAY_MAX_BODY_BYTES | 5242880 | larger request bodies get 413 |
| CASESTREAM_GATEWAY_MAX_EVENTS | 10000 | larger batches get 413 |
| CASESTREAM_GATEWAY_MAX_WAIT_SECONDS | 120 | upper bound of ``?timeout=`` with ``?wait=true`` |
| CASESTREAM_GATEWAY_OUTBOX_DIR | <home>/gateway/outbox | the gateway's per-agency outboxes |
| CASESTREAM_GATEWAY_BODY_TIMEOUT_SECONDS | 10 | the whole body must arrive in this time (408) |
| CASESTREAM_GATEWAY_RATE_REQUESTS | 100 | per agency, requests per second (429; 0: off) |
| CASESTREAM_GATEWAY_RATE_REQUESTS_BURST | 500 | per agency, requests in a burst |
| CASESTREAM_GATEWAY_RATE_EVENTS | 5000 | per agency, events per second (429; 0: off) |
| CASESTREAM_GATEWAY_RATE_EVENTS_BURST | 100000 | per agency, events in a burst (>= max events) |
| CASESTREAM_GATEWAY_RATE_AUTH_FAILURES | 5 | per client address, failed authentications per second (429) |
| CASESTREAM_GATEWAY_RATE_AUTH_FAILURES_BURST | 100 | per client address, failed authentications in a burst |
| CASESTREAM_GATEWAY_METRICS_ADDR | 127.0.0.1:9465 | admin listener of /metrics (``off``: none) |
| CASESTREAM_GATEWAY_METRICS_TOKEN | (none) | admin token for /metrics on the public address |

Tokens are never logged, nor accepted in URLs (only in the Authorization header): a query
parameter named like a credential, or holding a gateway token, is refused with 400, and the
access log shows only the values of ``wait``, ``timeout`` and ``strict``
(``services.agency.http_guard``).
"""

import contextlib
import hmac
import json
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
from fastapi import Depends, FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.agency import json_text
from services.agency.http_guard import (
    BodyDeadlineMiddleware,
    BodyTimeout,
    SecretsInUrlMiddleware,
    header_deadline_protocol,
    install_access_log_redaction,
)
from services.agency.json_text import DuplicateKeys, NonFinite
from services.agency.outbox import Outbox
from services.agency.publisher import Publisher
from services.agency.rate_limit import RateLimiter, retry_after
from services.agency.tokens import TokenStore, TokenStoreError
from services.contracts import reference as _ref
from services.contracts.events import (
    EVENT_TYPES,
    JSON_FIELDS,
    EventValidationError,
    parse_event,
    payload_fields,
    required_payload_fields,
    topic_for_agency,
    validate_publisher,
)
from services.contracts.examples import example_event
from services.contracts.registry import ccompat_url, make_client
from services.settings import Settings

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"
DEFAULT_METRICS_ADDR = "127.0.0.1:9465"
MiB = 1024 * 1024


def _env_number(name: str, default: float, cast=int):
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return cast(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None


@dataclass(frozen=True)
class GatewayConfig:
    """Limits and tuning of the gateway (``from_env`` reads the CASESTREAM_GATEWAY_* variables)."""

    max_body_bytes: int = 5 * MiB
    max_events: int = 10_000
    default_wait_seconds: float = 30.0
    max_wait_seconds: float = 120.0
    #: Per-agency outboxes; None: ``<settings.home>/gateway/outbox``.
    outbox_dir: Path | None = None
    #: On shutdown, how long to wait for Kafka's acknowledgements (what is left stays queued).
    shutdown_flush_seconds: float = 10.0
    #: How often the background thread collects acknowledgements and re-sends failures.
    pump_interval: float = 0.5
    #: Timeouts of the Kafka / registry probes of /healthz and of registry calls.
    probe_timeout: float = 2.0
    registry_timeout: float = 10.0
    #: Oldest event time accepted, in days before now. The gateway is the live path of the
    #: agencies' case systems: an event years old arriving here is a back-dated write (a forged
    #: opening dated 1970 went through before this limit). Digitised historical records are
    #: imported with `casestream publish FILE`, which keeps their dates. 0 turns the limit off.
    max_event_age_days: float = 1827.0  # five years
    #: Seconds for the whole request body to arrive, counted from the headers (408 after);
    #: without it a half-sent body held a connection for as long as the client wanted.
    body_timeout_seconds: float = 10.0
    #: Per agency: requests per second (sustained) and burst; beyond, 429 with Retry-After.
    #: Far above what a case system sends (one batch every few seconds); 0 turns it off.
    rate_requests_per_second: float = 100.0
    rate_requests_burst: float = 500.0
    #: Per agency: events per second (sustained) and burst (at least ``max_events``).
    rate_events_per_second: float = 5000.0
    rate_events_burst: float = 100_000.0
    #: Per client address: failed authentications per second and burst; beyond, 429 instead
    #: of 401 (valid tokens are never throttled by this, also behind a shared proxy address).
    rate_auth_failures_per_second: float = 5.0
    rate_auth_failures_burst: float = 100.0
    #: Bearer token for ``/metrics`` on the public address; None: not served there (only on
    #: the admin address of ``casestream gateway --metrics-addr``, 127.0.0.1 by default).
    metrics_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, **overrides: Any) -> "GatewayConfig":
        outbox_dir = os.environ.get("CASESTREAM_GATEWAY_OUTBOX_DIR")
        config = cls(
            max_body_bytes=_env_number("CASESTREAM_GATEWAY_MAX_BODY_BYTES", cls.max_body_bytes),
            max_events=_env_number("CASESTREAM_GATEWAY_MAX_EVENTS", cls.max_events),
            max_wait_seconds=_env_number(
                "CASESTREAM_GATEWAY_MAX_WAIT_SECONDS", cls.max_wait_seconds, float
            ),
            max_event_age_days=_env_number(
                "CASESTREAM_GATEWAY_MAX_EVENT_AGE_DAYS", cls.max_event_age_days, float
            ),
            outbox_dir=Path(outbox_dir) if outbox_dir else None,
            body_timeout_seconds=_env_number(
                "CASESTREAM_GATEWAY_BODY_TIMEOUT_SECONDS", cls.body_timeout_seconds, float
            ),
            rate_requests_per_second=_env_number(
                "CASESTREAM_GATEWAY_RATE_REQUESTS", cls.rate_requests_per_second, float
            ),
            rate_requests_burst=_env_number(
                "CASESTREAM_GATEWAY_RATE_REQUESTS_BURST", cls.rate_requests_burst, float
            ),
            rate_events_per_second=_env_number(
                "CASESTREAM_GATEWAY_RATE_EVENTS", cls.rate_events_per_second, float
            ),
            rate_events_burst=_env_number(
                "CASESTREAM_GATEWAY_RATE_EVENTS_BURST", cls.rate_events_burst, float
            ),
            rate_auth_failures_per_second=_env_number(
                "CASESTREAM_GATEWAY_RATE_AUTH_FAILURES", cls.rate_auth_failures_per_second, float
            ),
            rate_auth_failures_burst=_env_number(
                "CASESTREAM_GATEWAY_RATE_AUTH_FAILURES_BURST", cls.rate_auth_failures_burst, float
            ),
            metrics_token=os.environ.get("CASESTREAM_GATEWAY_METRICS_TOKEN") or None,
        )
        return replace(config, **{k: v for k, v in overrides.items() if v is not None})


# =========================================================================== API models (docs)

EXAMPLE_EVENT = example_event("case_transferred")
_ID_PATTERN = r"^[!-~]{1,128}$"


def _payload_description() -> str:
    lines = [
        "Fields depend on `event_type` (required fields in bold; optional ones may be omitted "
        "or null; no other fields are allowed):",
        "",
    ]
    for event_type in EVENT_TYPES:
        required = set(required_payload_fields(event_type))
        shown = [f"**{f}**" if f in required else f for f in payload_fields(event_type)]
        lines.append(f"- `{event_type}`: {', '.join(shown) or '(none)'}")
    return "\n".join(lines)


class EventIn(BaseModel):
    """One case event in JSON form (the event contract of the platform)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_EVENT]})

    event_id: str = Field(
        description="UUID (8-4-4-4-12 hex); the idempotency key: an event_id accepted before is "
        "reported as `duplicate` and not stored or sent again.",
        json_schema_extra={"format": "uuid"},
    )
    event_type: Literal[tuple(EVENT_TYPES)] = Field(  # type: ignore[valid-type]
        description="What happened to the case."
    )
    case_id: str = Field(
        description="National case key assigned when the case was opened; every agency "
        "handling the case uses the same key (1-128 visible ASCII characters, no spaces).",
        pattern=_ID_PATTERN,
    )
    agency_id: str = Field(
        description="`<2-digit province code>-<TYPE>` of the publishing agency, e.g. `20-INSP`; "
        "must be the agency of the bearer token.",
        pattern=r"^[0-9]{2}-[A-Z]+$",
    )
    occurred_at: str = Field(
        description="Event time, ISO-8601 with a UTC offset (e.g. `2024-03-05T09:30:00+07:00`); "
        "not more than 5 minutes in the future.",
        json_schema_extra={"format": "date-time"},
    )
    sequence: int | None = Field(
        default=None,
        ge=0,
        description="Optional per-agency increasing sequence number (gaps reveal lost events).",
    )
    payload: dict[str, Any] = Field(description=_payload_description())


class EventBatch(BaseModel):
    """A batch of events of the token's agency."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"events": [EXAMPLE_EVENT]}]}
    )

    events: list[EventIn] = Field(
        description="The events, validated one by one (at most the configured batch size, "
        "10,000 by default; the whole body at most 5 MiB by default)."
    )


class EventError(BaseModel):
    """Why an event was rejected."""

    field: str = Field(
        description="Path of the offending field, e.g. `payload.to_agency_id`; `<event>` for "
        "the whole event.",
        examples=["payload.to_agency_id"],
    )
    value: Any = Field(description="The offending value as sent (null when missing).")
    reason: str = Field(description="Human-readable explanation.")


class EventResult(BaseModel):
    """The outcome for the event at `index` of the batch."""

    index: int = Field(description="Position of the event in the request's `events` array.")
    event_id: str | None = Field(
        description="The event's event_id (canonical lower-case form when valid; as sent, or "
        "null, when rejected)."
    )
    status: Literal["accepted", "duplicate", "rejected"] = Field(
        description="`accepted`: stored durably, will be delivered to Kafka; `duplicate`: this "
        "event_id was accepted before (not stored again); `rejected`: see `error`."
    )
    error: EventError | None = Field(default=None, description="Only for rejected events.")
    delivered: bool | None = Field(
        default=None,
        description="Only with `?wait=true`: Kafka acknowledged the event before the answer.",
    )


class BatchResult(BaseModel):
    """Per-event results and totals of a batch."""

    results: list[EventResult]
    accepted: int = Field(description="Events newly accepted.")
    duplicates: int = Field(description="Events whose event_id was accepted before.")
    rejected: int = Field(description="Events that break the contract (see their `error`).")
    delivered: int | None = Field(
        default=None,
        description="Only with `?wait=true`: accepted or duplicate events acknowledged by Kafka.",
    )
    pending: int | None = Field(
        default=None,
        description="Only with `?wait=true`: accepted or duplicate events not yet acknowledged "
        "within the timeout (they stay queued and will be delivered).",
    )


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable error code.", examples=["malformed_json"])
    message: str = Field(description="Human-readable explanation.")

    model_config = ConfigDict(extra="allow")


class ErrorResponse(BaseModel):
    """An error of the whole request (no event of it was accepted)."""

    error: ErrorDetail


class ProbeResult(BaseModel):
    reachable: bool
    error: str | None = None


class Health(BaseModel):
    status: Literal["ok", "degraded"] = Field(
        description="`degraded`: Kafka or the registry is unreachable; events are still "
        "accepted into the outbox and delivered once they are back."
    )
    kafka: ProbeResult
    registry: ProbeResult
    outbox_pending: dict[str, int] = Field(
        description="Per agency: accepted events not yet acknowledged by Kafka."
    )


# =========================================================================== errors


class GatewayError(Exception):
    """An error of the whole request, rendered as ``{"error": {"code", "message", ...}}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.extra = extra

    def response(self) -> JSONResponse:
        return _error_response(self.status, self.code, self.message, self.headers, **self.extra)


def _error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, **extra}}
    return StrictJSONResponse(body, status_code=status, headers=headers)


class StrictJSONResponse(JSONResponse):
    """Always valid JSON as UTF-8 (no NaN, no unencodable surrogate: see ``json_text``)."""

    def render(self, content: Any) -> bytes:
        return json_text.dumps(content)


_UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="casestream"'}

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorResponse,
        "description": "Malformed JSON (the message names line and column; an integer too "
        "long to read is named by `field` and `value`).",
    },
    401: {"model": ErrorResponse, "description": "Missing, unknown or revoked token."},
    408: {
        "model": ErrorResponse,
        "description": "The body did not arrive within the body timeout (10 s by default); "
        "the connection is closed.",
    },
    413: {"model": ErrorResponse, "description": "Body or batch larger than the limits."},
    415: {"model": ErrorResponse, "description": "Content-Type is not application/json."},
    422: {"model": ErrorResponse, "description": 'Body is not {"events": [...]} or bad query.'},
    429: {
        "model": ErrorResponse,
        "description": "The agency's request rate or event quota is exhausted; nothing of the "
        "request was stored. Retry after `Retry-After` seconds.",
        "headers": {
            "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
        },
    },
    503: {"model": ErrorResponse, "description": "Outbox or token store unavailable; retry."},
}


# =========================================================================== metrics


class GatewayMetrics:
    """Prometheus metrics of one app (own registry, so several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.events = Counter(
            "casestream_gateway_events",
            "Events received by the gateway, by agency and status (accepted/duplicate/rejected).",
            ["agency_id", "status"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "casestream_gateway_events_rejected",
            "Rejected events by agency, reason (agency_mismatch/missing_field/unknown_field/"
            "invalid_value) and field.",
            ["agency_id", "reason", "field"],
            registry=self.registry,
        )
        self.delivered = Counter(
            "casestream_gateway_wait_delivered",
            "Events of ?wait=true requests acknowledged by Kafka before the answer.",
            ["agency_id"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "casestream_gateway_auth_failures",
            "Requests refused for a missing, unknown or revoked token.",
            ["reason"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "casestream_gateway_rate_limited",
            "Requests refused with 429, by agency and limit (requests/events).",
            ["agency_id", "limit"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "casestream_gateway_request_duration_seconds",
            "HTTP request latency by method, route and status code.",
            ["method", "route", "status"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.outbox_pending = Gauge(
            "casestream_gateway_outbox_pending",
            "Accepted events not yet acknowledged by Kafka, by agency.",
            ["agency_id"],
            registry=self.registry,
        )


_KNOWN_FIELDS = frozenset(
    {"<event>", *JSON_FIELDS} | {f"payload.{f}" for t in EVENT_TYPES for f in payload_fields(t)}
)


def _rejection_labels(exc: EventValidationError, mismatch: bool) -> tuple[str, str]:
    """(reason, field) labels with bounded cardinality (clients choose unknown field names)."""
    if mismatch:
        return "agency_mismatch", "agency_id"
    if exc.reason.startswith("unknown field"):
        return "unknown_field", "other"
    field_label = exc.field if exc.field in _KNOWN_FIELDS else "other"
    if "is missing" in exc.reason:
        return "missing_field", field_label
    return "invalid_value", field_label


class _MetricsMiddleware:
    """Pure ASGI middleware timing every HTTP request (label: the route template)."""

    def __init__(self, app: Any, metrics: GatewayMetrics, paths: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = paths  # plain routes (docs, openapi.json) that do not set scope["route"]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route is None:
                route = scope["path"] if scope["path"] in self.paths else "unmatched"
            self.metrics.request_latency.labels(scope["method"], route, str(status)).observe(
                time.perf_counter() - start
            )


# =========================================================================== the gateway


@dataclass
class _Channel:
    """One agency's publisher; every call into it is made with ``lock`` held (see Gateway)."""

    agency_id: str
    publisher: Publisher
    lock: threading.Lock = field(default_factory=threading.Lock)
    dirty: bool = True
    pending: int = 0
    last_pump: float = 0.0
    topic_ok: bool = False
    next_topic_try: float = 0.0


def _json_type(value: Any) -> str:
    if isinstance(value, NonFinite):
        return "number"
    for kind, name in ((bool, "boolean"), (dict, "object"), (list, "array"), (str, "string")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else "number"


def _json_value(value: Any, limit: int = 1000) -> Any:
    """The offending value as JSON, shortened when huge (e.g. a whole non-object event)."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        text = None
    if text is not None and len(text) <= limit:
        return value
    shown = repr(value) if text is None else text
    return shown[: limit - 3] + "..." if len(shown) > limit else shown


class _LongInteger(str):
    """An integer literal longer than Python converts (``sys.get_int_max_str_digits``), as sent."""


def _parse_int(text: str, too_long: list[_LongInteger]) -> int | _LongInteger:
    try:
        return int(text)
    except ValueError:  # the digit limit: kept as text, so the error can say where it is
        too_long.append(_LongInteger(text))
        return too_long[-1]


def _find_long_integer(obj: Any) -> tuple[str, _LongInteger]:
    """(path such as ``events[0].payload.damage_vnd``, literal) of the first `_LongInteger`."""
    pending: list[tuple[str, Any]] = [("", obj)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, _LongInteger):
            return path or "<body>", value
        if isinstance(value, dict):
            children = [(f"{path}.{k}" if path else str(k), v) for k, v in value.items()]
        elif isinstance(value, list):
            children = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
        else:
            continue
        pending.extend(reversed(children))  # depth first, in document order
    raise LookupError("no long integer in the parsed body")


class Gateway:
    """State and logic of one app: tokens, per-agency publishers, metrics, probes.

    Publisher calls of one agency are serialized by the channel's lock: the Publisher re-sends
    "pending and not in flight" outbox rows in ``flush``, which must not interleave with
    ``publish_many`` (between its outbox commit and its produce), or events would be sent twice.
    """

    def __init__(
        self, settings: Settings, tokens: TokenStore, config: GatewayConfig | None = None
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.config = config or GatewayConfig.from_env()
        self.outbox_dir = self.config.outbox_dir or settings.home / "gateway" / "outbox"
        self.metrics = GatewayMetrics()
        cfg = self.config
        self.request_rate = RateLimiter(cfg.rate_requests_per_second, cfg.rate_requests_burst)
        self.auth_failure_rate = RateLimiter(
            cfg.rate_auth_failures_per_second, cfg.rate_auth_failures_burst
        )
        self.event_rate = RateLimiter(
            cfg.rate_events_per_second, max(cfg.rate_events_burst, cfg.max_events)
        )
        self._channels: dict[str, _Channel] = {}
        self._channels_lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._pump_thread: threading.Thread | None = None
        self._admin: Any = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the background thread (also started lazily by the first publisher)."""
        with self._channels_lock:
            self._start_pump_locked()

    def _start_pump_locked(self) -> None:
        if self._pump_thread is None and not self._closed:
            self._pump_thread = threading.Thread(
                target=self._pump_loop, name="gateway-pump", daemon=True
            )
            self._pump_thread.start()

    def close(self) -> None:
        """Stop the background thread, flush (bounded) and close every publisher."""
        with self._channels_lock:
            if self._closed:
                return
            self._closed = True
            channels = list(self._channels.values())
        self._stop.set()
        self._admin = None  # its librdkafka client would keep reconnecting to a lost broker
        if self._pump_thread is not None:
            self._pump_thread.join(timeout=30)
        with self._channels_lock:
            self._channels.clear()  # the producers go with their publishers
        deadline = time.monotonic() + self.config.shutdown_flush_seconds
        for ch in channels:
            try:
                with ch.lock:
                    left = ch.publisher.close(max(0.0, deadline - time.monotonic()))
                if left:
                    log.warning(
                        "gateway: %d events of %s not yet acknowledged by Kafka; they stay in "
                        "the outbox and are sent when the gateway starts again",
                        left,
                        ch.agency_id,
                    )
            except Exception:
                log.exception("gateway: closing the publisher of %s failed", ch.agency_id)

    def channel(self, agency_id: str) -> _Channel:
        """The agency's channel, creating its Publisher on first use."""
        with self._channels_lock:
            if self._closed:
                raise GatewayError(503, "shutting_down", "the gateway is shutting down; retry")
            ch = self._channels.get(agency_id)
            if ch is None:
                publisher = Publisher(
                    agency_id,
                    self.settings,
                    outbox_path=self.outbox_dir / f"{agency_id}.sqlite",
                    registry_client=make_client(
                        self.settings.registry_url, timeout=self.config.registry_timeout
                    ),
                )
                ch = _Channel(agency_id, publisher)
                self._channels[agency_id] = ch
                self._start_pump_locked()
            return ch

    def _resume_outboxes(self) -> None:
        """Re-open the publishers of agencies whose outbox still holds undelivered events."""
        if not self.outbox_dir.is_dir():
            return
        for path in sorted(self.outbox_dir.glob("*.sqlite")):
            agency_id = path.stem
            try:
                _ref.parse_agency_id(agency_id)
            except ValueError:
                continue
            with self._channels_lock:
                if agency_id in self._channels:
                    continue
            outbox = Outbox(path)
            try:
                pending = outbox.counts()["pending"]
            finally:
                outbox.close()
            if pending:
                log.info("gateway: resuming %d undelivered events of %s", pending, agency_id)
                with contextlib.suppress(GatewayError):
                    self.channel(agency_id)

    # ------------------------------------------------------------------ background

    def _pump_loop(self) -> None:
        try:
            self._resume_outboxes()
        except Exception:
            log.exception("gateway: resuming the outboxes failed")
        while not self._stop.wait(self.config.pump_interval):
            with self._channels_lock:
                channels = list(self._channels.values())
            for ch in channels:
                if self._stop.is_set():
                    return
                try:
                    self._pump(ch)
                except Exception:
                    log.exception("gateway: background delivery of %s failed", ch.agency_id)

    def _pump(self, ch: _Channel) -> None:
        now = time.monotonic()
        if not ch.topic_ok and now >= ch.next_topic_try:
            self._ensure_topic(ch)
        if ch.dirty or ch.pending or now - ch.last_pump > 10:
            self._poll(ch)

    def _poll(self, ch: _Channel) -> int:
        """Serve delivery reports and re-send failed events; returns the agency's pending count."""
        with ch.lock:
            ch.dirty = False
            pending = ch.publisher.flush(0)
        ch.pending = pending
        ch.last_pump = time.monotonic()
        self.metrics.outbox_pending.labels(ch.agency_id).set(pending)
        return pending

    def _ensure_topic(self, ch: _Channel) -> None:
        from services.ops.topics import ensure_topics

        try:
            ensure_topics(
                self.settings,
                {topic_for_agency(ch.agency_id): self.settings.topic_partitions},
                timeout=5,
            )
            ch.topic_ok = True
        except Exception as exc:  # noqa: BLE001 - Kafka down or no CREATE right: retry later
            if ch.next_topic_try == 0.0:
                log.warning("gateway: cannot ensure topic of %s yet (%s)", ch.agency_id, exc)
            ch.next_topic_try = time.monotonic() + 30

    # ------------------------------------------------------------------ publishing

    def handle_batch(
        self, agency_id: str, body: bytes, wait: bool = False, timeout: float | None = None
    ) -> dict[str, Any]:
        """Parse, validate and accept one request body; returns the BatchResult as a dict."""
        events, suspect = self._parse_body(body)
        wait_s = self.event_rate.acquire(agency_id, len(events))
        if wait_s:
            self.metrics.rate_limited.labels(agency_id, "events").inc()
            raise GatewayError(
                429,
                "rate_limited",
                f"event quota of {agency_id} exhausted ({self.config.rate_events_per_second:g} "
                f"events per second, bursts of {self.event_rate.burst:g}); retry after "
                f"{retry_after(wait_s)} s (nothing of this request was stored)",
                headers={"Retry-After": retry_after(wait_s)},
                retry_after=int(retry_after(wait_s)),
            )
        results: list[dict[str, Any] | None] = [None] * len(events)
        valid: list[tuple[int, Mapping[str, Any]]] = []
        for i, event in enumerate(events):
            error = self._validate(agency_id, event, self.config.max_event_age_days, suspect)
            if error is None:
                valid.append((i, event))
            else:
                results[i] = self._rejected(agency_id, i, event, *error)

        if valid:
            ch = self.channel(agency_id)
            for (i, event), outcome in zip(valid, self._publish(ch, valid), strict=True):
                if isinstance(outcome, EventValidationError):
                    results[i] = self._rejected(agency_id, i, event, outcome, False)
                else:
                    status = "accepted" if outcome.new else "duplicate"
                    self.metrics.events.labels(agency_id, status).inc()
                    results[i] = {"index": i, "event_id": outcome.event_id, "status": status}

        out: dict[str, Any] = {
            "results": results,
            "accepted": sum(r["status"] == "accepted" for r in results),  # type: ignore[index]
            "duplicates": sum(r["status"] == "duplicate" for r in results),  # type: ignore[index]
            "rejected": sum(r["status"] == "rejected" for r in results),  # type: ignore[index]
        }
        if wait:
            self._wait_delivered(agency_id, results, timeout)  # type: ignore[arg-type]
            out["delivered"] = sum(bool(r.get("delivered")) for r in results)  # type: ignore[union-attr]
            out["pending"] = sum(r.get("delivered") is False for r in results)  # type: ignore[union-attr]
        return out

    def _parse_body(self, body: bytes) -> tuple[list[Any], bool]:
        """The events, and whether they may hold text JSON cannot (see ``json_text.loads``)."""
        too_long: list[_LongInteger] = []
        try:
            # Strict UTF-8 (json.loads of bytes lets UTF-8-encoded surrogates through).
            text = body.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
            obj, suspect = json_text.loads(text, parse_int=lambda t: _parse_int(t, too_long))
        except json.JSONDecodeError as exc:
            raise GatewayError(
                400,
                "malformed_json",
                f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column "
                f"{exc.colno} (character {exc.pos})",
                line=exc.lineno,
                column=exc.colno,
            ) from None
        except UnicodeDecodeError as exc:
            raise GatewayError(
                400,
                "malformed_json",
                f"request body is not valid UTF-8 text: {exc.reason} at byte {exc.start}",
            ) from None
        except RecursionError:
            raise GatewayError(400, "malformed_json", "request body is nested too deeply") from None
        except ValueError as exc:  # anything else the parser refuses
            raise GatewayError(
                400, "malformed_json", f"request body is not usable JSON: {exc}"
            ) from None
        if too_long:
            path, literal = _find_long_integer(obj)
            digits = len(literal.lstrip("-"))
            raise GatewayError(
                400,
                "malformed_json",
                f"request body is not usable JSON: the integer at {path} has {digits} digits "
                f"(at most {sys.get_int_max_str_digits()})",
                field=path,
                value=f"{literal[:61]}...",  # the number as sent, shortened
            )
        if isinstance(obj, DuplicateKeys):
            raise GatewayError(
                400,
                "malformed_json",
                f"request body is ambiguous JSON: the field {json_text.escaped(obj.duplicates[0])!r}"
                " appears more than once in the top-level object (send each field once)",
                field=obj.duplicates[0],
            )
        if not isinstance(obj, dict):
            raise GatewayError(
                422,
                "invalid_batch",
                f'request body must be a JSON object {{"events": [...]}}, got {_json_type(obj)}',
            )
        unknown = sorted(k for k in obj if k != "events")
        if unknown:
            raise GatewayError(
                422,
                "invalid_batch",
                f'unknown field {unknown[0]!r} in the request body (expected {{"events": [...]}})',
                field=unknown[0],
            )
        events = obj.get("events")
        if not isinstance(events, list):
            raise GatewayError(
                422,
                "invalid_batch",
                '"events" must be a JSON array of events'
                + (" (missing)" if "events" not in obj else f", got {_json_type(events)}"),
                field="events",
            )
        if len(events) > self.config.max_events:
            raise GatewayError(
                413,
                "too_many_events",
                f"batch has {len(events)} events; at most {self.config.max_events} per request "
                f"(split the batch)",
                limit=self.config.max_events,
                events=len(events),
            )
        return events, suspect

    @staticmethod
    def _validate(
        agency_id: str, event: Any, max_age_days: float = 0.0, suspect: bool = True
    ) -> tuple[EventValidationError, bool] | None:
        """None when valid for this agency, else (error, is-agency-mismatch)."""
        # Text JSON cannot hold (NaN, lone surrogates, duplicate keys) first: nothing below
        # is written to judge it, and its value is echoed in the answer.
        problem = json_text.first_problem(event) if suspect else None
        if problem is not None:
            return EventValidationError(*problem), False
        # Authorization first: another agency's event is refused whatever else it holds.
        if isinstance(event, Mapping) and event.get("agency_id") not in (None, agency_id):
            try:
                validate_publisher(event, agency_id)
            except EventValidationError as exc:
                return exc, True
        try:
            normalized = parse_event(event)
        except EventValidationError as exc:
            return exc, False
        try:
            validate_publisher(normalized, agency_id)
        except EventValidationError as exc:
            return exc, True
        if max_age_days > 0:
            horizon = datetime.now(UTC) - timedelta(days=max_age_days)
            if normalized["occurred_at"] < horizon:
                return EventValidationError(
                    "occurred_at",
                    event.get("occurred_at"),
                    f"is more than {max_age_days:g} days old (before {horizon:%Y-%m-%d}): the "
                    "gateway takes live events; historical records are imported with "
                    "`casestream publish FILE`",
                ), False
        return None

    def _rejected(
        self, agency_id: str, index: int, event: Any, exc: EventValidationError, mismatch: bool
    ) -> dict[str, Any]:
        self.metrics.events.labels(agency_id, "rejected").inc()
        self.metrics.rejections.labels(agency_id, *_rejection_labels(exc, mismatch)).inc()
        event_id = event.get("event_id") if isinstance(event, Mapping) else None
        return {
            "index": index,
            "event_id": event_id[:200] if isinstance(event_id, str) else None,
            "status": "rejected",
            "error": {"field": exc.field, "value": _json_value(exc.value), "reason": exc.reason},
        }

    def _publish(self, ch: _Channel, valid: list[tuple[int, Mapping[str, Any]]]) -> list[Any]:
        """Accept the valid events in one outbox transaction; per-event fallback if needed."""
        events = [event for _, event in valid]
        try:
            with ch.lock:
                ch.dirty = True
                try:
                    return list(ch.publisher.publish_many(events))
                except EventValidationError:
                    # Validated a moment ago; only a clock or reference-data edge gets here.
                    outcomes: list[Any] = []
                    for event in events:
                        try:
                            outcomes.append(ch.publisher.publish(event))
                        except EventValidationError as exc:
                            outcomes.append(exc)
                    return outcomes
        except Exception as exc:
            log.exception("gateway: storing %d events of %s failed", len(events), ch.agency_id)
            raise GatewayError(
                503,
                "outbox_unavailable",
                f"the events could not be stored durably ({type(exc).__name__}); retry the "
                f"request (re-posting is idempotent by event_id)",
            ) from None

    def _wait_delivered(
        self, agency_id: str, results: list[dict[str, Any]], timeout: float | None
    ) -> None:
        """Wait for Kafka's acknowledgements of the batch's accepted and duplicate events."""
        wanted = {r["event_id"] for r in results if r["status"] != "rejected"}
        if not wanted:
            return
        ch = self.channel(agency_id)
        if timeout is None:
            timeout = self.config.default_wait_seconds
        deadline = time.monotonic() + min(timeout, self.config.max_wait_seconds)
        next_check = 0.0
        undelivered = wanted
        while True:
            pending = self._poll(ch)
            now = time.monotonic()
            if pending == 0:
                undelivered = set()
                break
            if now >= next_check or now >= deadline:
                with ch.lock:
                    still = {eid for eid, _ in ch.publisher.outbox.pending(limit=pending + 1000)}
                undelivered = wanted & still
                if not undelivered or now >= deadline:
                    break
                next_check = now + 0.25
            time.sleep(0.05)
        delivered = 0
        for r in results:
            if r["status"] != "rejected":
                r["delivered"] = r["event_id"] not in undelivered
                delivered += r["delivered"]
        self.metrics.delivered.labels(agency_id).inc(delivered)

    # ------------------------------------------------------------------ health

    def health(self) -> dict[str, Any]:
        kafka = self._probe_kafka()
        registry = self._probe_registry()
        with self._channels_lock:
            pending = {a: ch.pending for a, ch in sorted(self._channels.items())}
        ok = kafka["reachable"] and registry["reachable"]
        return {
            "status": "ok" if ok else "degraded",
            "kafka": kafka,
            "registry": registry,
            "outbox_pending": pending,
        }

    def _probe_kafka(self) -> dict[str, Any]:
        try:
            if self._admin is None:
                from confluent_kafka.admin import AdminClient

                self._admin = AdminClient(self.settings.kafka_client_config())  # + SASL/SSL
            metadata = self._admin.list_topics(timeout=self.config.probe_timeout)
            if not metadata.brokers:
                return {"reachable": False, "error": "no broker in the cluster metadata"}
            return {"reachable": True}
        except Exception as exc:  # noqa: BLE001
            return {"reachable": False, "error": str(exc) or type(exc).__name__}

    def _probe_registry(self) -> dict[str, Any]:
        try:
            url = ccompat_url(self.settings.registry_url) + "/subjects"
            r = httpx.get(url, timeout=self.config.probe_timeout)
            if r.status_code != 200:
                return {"reachable": False, "error": f"HTTP {r.status_code} from the registry"}
            return {"reachable": True}
        except Exception as exc:  # noqa: BLE001
            return {"reachable": False, "error": str(exc) or type(exc).__name__}


# =========================================================================== the app


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it is known to exceed ``limit`` bytes."""
    too_large = GatewayError(
        413,
        "body_too_large",
        f"request body exceeds {limit} bytes (split the batch into smaller requests)",
        limit=limit,
    )
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_large
        except ValueError:
            raise GatewayError(400, "bad_request", "invalid Content-Length header") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    settings: Settings,
    tokens: TokenStore | None = None,
    *,
    config: GatewayConfig | None = None,
) -> FastAPI:
    """The gateway's FastAPI app.  ``tokens`` default: the store of ``default_tokens_path``.

    Publishers are created on demand and closed by the app's lifespan (run the app under
    uvicorn, or ``with TestClient(app)``); ``app.state.gateway`` is the :class:`Gateway`.
    """
    gateway = Gateway(settings, tokens or TokenStore.for_settings(settings), config)
    cfg = gateway.config

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        install_access_log_redaction()  # also when run by a plain `uvicorn` command
        try:
            gateway.tokens.records()
        except TokenStoreError as exc:
            log.error("gateway: %s", exc)
        else:
            if not gateway.tokens.agencies():
                log.warning(
                    "gateway: no active token in %s; create one with "
                    "`casestream tokens create <agency_id>`",
                    gateway.tokens.path,
                )
        gateway.start()
        try:
            yield
        finally:
            await run_in_threadpool(gateway.close)

    app = FastAPI(
        title="casestream HTTP gateway",
        version=API_VERSION,
        summary="Publish case events to casestream over HTTPS, without a Kafka client.",
        description=(
            "Agencies post batches of case events in JSON form. Each event is validated against "
            "the event contract and stored durably before the answer; the gateway then produces "
            "it as Avro (Confluent wire format) to the agency's topic `agency.<agency_id>.events`."
            "\n\nAuthenticate with the agency's API token (`Authorization: Bearer <token>`, "
            "issued with `casestream tokens create <agency_id>`); a token can only publish its "
            'own agency\'s events. Errors of a whole request are `{"error": {"code", '
            '"message"}}`; errors of single events are reported per event.'
        ),
        lifespan=lifespan,
        default_response_class=StrictJSONResponse,
    )
    app.state.gateway = gateway

    @app.exception_handler(GatewayError)
    async def _gateway_error(_request: Request, exc: GatewayError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(exc.status_code, code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return _error_response(
            422,
            "invalid_request",
            f"invalid request: {problems}",
            errors=jsonable_encoder(exc.errors()),
        )

    bearer = HTTPBearer(
        auto_error=False,
        description="The agency's API token, from `casestream tokens create <agency_id>`.",
    )

    def throttle_failures(request: Request) -> None:
        """429 instead of 401 once a client address fails authentication too often."""
        client = request.client.host if request.client else "unknown"
        wait_s = gateway.auth_failure_rate.acquire(client)
        if wait_s:
            gateway.metrics.auth_failures.labels("throttled").inc()
            raise GatewayError(
                429,
                "too_many_failed_authentications",
                f"too many requests without a valid token from {client[:64]}; retry after "
                f"{retry_after(wait_s)} s",
                headers={"Retry-After": retry_after(wait_s)},
                retry_after=int(retry_after(wait_s)),
            )

    async def authenticated_agency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> str:
        if credentials is None:
            throttle_failures(request)
            gateway.metrics.auth_failures.labels("missing").inc()
            raise GatewayError(
                401,
                "missing_token",
                "authentication required: send the agency's API token as "
                "'Authorization: Bearer <token>'",
                headers=_UNAUTHORIZED,
            )
        try:
            record = await run_in_threadpool(gateway.tokens.lookup, credentials.credentials)
        except TokenStoreError as exc:
            log.error("gateway: token store unavailable: %s", exc)
            raise GatewayError(
                503, "token_store_unavailable", "the token store cannot be read; retry later"
            ) from None
        if record is None:
            throttle_failures(request)
            gateway.metrics.auth_failures.labels("invalid").inc()
            log.info("gateway: refused a request with an unknown or revoked token")
            raise GatewayError(
                401,
                "invalid_token",
                "unknown or revoked API token (tokens are issued per agency with "
                "`casestream tokens create <agency_id>`)",
                headers=_UNAUTHORIZED,
            )
        wait_s = gateway.request_rate.acquire(record.agency_id)
        if wait_s:
            gateway.metrics.rate_limited.labels(record.agency_id, "requests").inc()
            raise GatewayError(
                429,
                "rate_limited",
                f"too many requests for {record.agency_id} "
                f"({cfg.rate_requests_per_second:g} per second, bursts of "
                f"{gateway.request_rate.burst:g}); retry after {retry_after(wait_s)} s",
                headers={"Retry-After": retry_after(wait_s)},
                retry_after=int(retry_after(wait_s)),
            )
        return record.agency_id

    @app.post(
        "/v1/events",
        response_model=BatchResult,
        response_model_exclude_none=True,
        responses=_ERROR_RESPONSES,
        tags=["events"],
        summary="Publish a batch of the agency's events",
        description=(
            "Validates each event of `events` on its own and answers with one result per "
            "event, in request order. Valid events are accepted even if others are rejected. "
            "By default the answer comes once the accepted events are durably stored "
            "(`accepted` = will be delivered, also if Kafka is down right now); with "
            "`wait=true` the gateway also waits for Kafka's acknowledgements and reports "
            "`delivered`. Re-posting an event_id already accepted gives `duplicate`, so a "
            "request can always be retried safely. "
            f"Limits: {cfg.max_body_bytes} bytes per body, {cfg.max_events} events per batch."
        ),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/EventBatch"},
                        "examples": {
                            "transfer": {
                                "summary": "Lạng Sơn's inspectorate transfers a case to police",
                                "value": {"events": [EXAMPLE_EVENT]},
                            }
                        },
                    }
                },
            }
        },
    )
    async def post_events(
        request: Request,
        agency_id: Annotated[str, Depends(authenticated_agency)],
        wait: Annotated[
            bool,
            Query(description="Also wait for Kafka's acknowledgements and report `delivered`."),
        ] = False,
        timeout: Annotated[
            float | None,
            Query(
                gt=0,
                le=cfg.max_wait_seconds,
                description=f"With wait=true: seconds to wait at most (default "
                f"{cfg.default_wait_seconds:g}).",
            ),
        ] = None,
    ) -> Response:
        if request.headers.get("content-encoding", "identity").lower() != "identity":
            raise GatewayError(
                415,
                "unsupported_content_encoding",
                "Content-Encoding is not supported; send the JSON body uncompressed",
            )
        if not _is_json(request.headers.get("content-type")):
            raise GatewayError(
                415,
                "unsupported_media_type",
                "Content-Type must be application/json (got "
                f"{request.headers.get('content-type') or 'none'})",
            )
        body = await _read_body(request, cfg.max_body_bytes)

        def work() -> bytes:
            result = gateway.handle_batch(agency_id, body, wait, timeout)
            return json_text.dumps(result)

        return Response(await run_in_threadpool(work), media_type="application/json")

    @app.get("/healthz", response_model=Health, tags=["operations"], summary="Health")
    async def healthz(
        strict: Annotated[
            bool, Query(description="Answer 503 unless Kafka and the registry are reachable.")
        ] = False,
    ) -> JSONResponse:
        """The gateway is up; are Kafka and the schema registry reachable?

        Events are accepted into the outbox even when they are not (status `degraded`)."""
        result = await run_in_threadpool(gateway.health)
        status = 503 if strict and result["status"] != "ok" else 200
        return StrictJSONResponse(result, status_code=status)

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def metrics(request: Request) -> Response:
        """Events accepted/duplicate/rejected by agency (and rejection reason), request
        latency by route, outbox backlog by agency, authentication failures.

        Per-agency activity is not public: here only with the admin token
        (`CASESTREAM_GATEWAY_METRICS_TOKEN`, as a Bearer token); otherwise on the admin address
        (`casestream gateway --metrics-addr`, 127.0.0.1:9465 by default)."""
        if cfg.metrics_token is None:
            raise GatewayError(
                404,
                "not_found",
                "metrics are served on the gateway's admin address (casestream gateway "
                "--metrics-addr, 127.0.0.1:9465 by default), or here with an admin token "
                "(CASESTREAM_GATEWAY_METRICS_TOKEN)",
            )
        sent = request.headers.get("authorization", "")
        scheme, _, credentials = sent.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credentials.strip().encode(), cfg.metrics_token.encode()
        ):
            gateway.metrics.auth_failures.labels("metrics").inc()
            raise GatewayError(
                401,
                "invalid_token",
                "the metrics need the admin token: 'Authorization: Bearer <admin token>'",
                headers=_UNAUTHORIZED,
            )
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        batch = EventBatch.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in batch.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components["EventBatch"] = batch
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(BodyTimeout)
    async def _body_timeout(_request: Request, _exc: BodyTimeout) -> JSONResponse:
        return _error_response(
            408,
            "body_timeout",
            f"the request body did not arrive within {cfg.body_timeout_seconds:g} seconds; "
            "the connection is closed (send the whole body at once)",
            headers={"Connection": "close"},
        )

    app.add_middleware(
        _MetricsMiddleware,
        metrics=gateway.metrics,
        paths=frozenset(getattr(r, "path", "") for r in app.routes),
    )
    app.add_middleware(BodyDeadlineMiddleware, timeout=cfg.body_timeout_seconds)
    app.add_middleware(SecretsInUrlMiddleware)  # outermost: before anything reads the request
    return app


def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8088,
    *,
    tokens: TokenStore | None = None,
    config: GatewayConfig | None = None,
    log_level: str = "info",
    metrics_addr: str = DEFAULT_METRICS_ADDR,
) -> None:
    """Run the gateway with uvicorn in the foreground until SIGINT/SIGTERM.

    ``metrics_addr`` (``host:port``, ``off`` to disable): the admin listener of ``/metrics``,
    separate from the public address so that per-agency activity is not served to anyone who
    can reach the API (127.0.0.1 by default)."""
    import uvicorn
    from prometheus_client import start_http_server

    from services.ops.metrics import parse_addr

    app = create_app(settings, tokens, config=config)
    admin = parse_addr(metrics_addr)
    if admin is not None:
        try:
            start_http_server(admin[1], addr=admin[0], registry=app.state.gateway.metrics.registry)
            log.info("gateway metrics on http://%s:%d/metrics", *admin)
        except OSError as exc:
            log.warning("gateway metrics not served on %s:%d (%s)", *admin, exc)
    server_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=30,
        http=header_deadline_protocol(app.state.gateway.config.body_timeout_seconds),
    )
    install_access_log_redaction()  # after uvicorn's logging configuration
    uvicorn.Server(server_config).run()
