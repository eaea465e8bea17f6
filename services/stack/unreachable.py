"""One line instead of a connection traceback when a part of the stack is down.

A command run while ClickHouse, Kafka, the registry or Prefect is not answering used to end in
the client library's traceback (40 lines for ``casestream migrate`` with ClickHouse down). A part
being down is an expected failure: the user needs which part, where we looked, and the command
that starts it. :func:`explain` finds that in an exception, or returns None for anything else
(a real bug keeps its traceback).

How a part is recognised: the exception chain mentions the part's address (clickhouse-connect,
httpx and Prefect all put the URL in their messages), or, for Kafka, whose librdkafka errors
name no address ("Broker transport failure"), the exception comes from a Kafka client. Either
way the part is then probed: only a part whose port does not answer is reported as down, so a
Kafka error on a running broker still shows in full.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

from services.settings import Settings
from services.stack.process import port_open


@dataclass(frozen=True)
class Part:
    name: str  # as `casestream stack up <name>` knows it
    label: str
    address: str  # what the user configured, shown as "where it looked"
    setting: str  # the environment variable that sets the address
    endpoints: tuple[tuple[str, int], ...]


def parts(settings: Settings) -> list[Part]:
    """The stack's parts with the addresses these settings point at."""

    def url_endpoint(url: str, default_port: int) -> tuple[str, int]:
        parsed = urlparse(url)
        return parsed.hostname or "127.0.0.1", parsed.port or default_port

    kafka_endpoints = []
    for server in settings.kafka_bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if host and port.isdigit():
            kafka_endpoints.append((host.strip("[]"), int(port)))
    return [
        Part(
            "clickhouse",
            "ClickHouse",
            settings.clickhouse_url,
            "CASESTREAM_CLICKHOUSE_URL",
            (url_endpoint(settings.clickhouse_url, 8123),),
        ),
        Part(
            "kafka",
            "Kafka",
            settings.kafka_bootstrap,
            "CASESTREAM_KAFKA_BOOTSTRAP",
            tuple(kafka_endpoints),
        ),
        Part(
            "registry",
            "The schema registry",
            settings.registry_url,
            "CASESTREAM_REGISTRY_URL",
            (url_endpoint(settings.registry_url, 8081),),
        ),
        Part(
            "prefect",
            "Prefect",
            settings.prefect_api_url,
            "CASESTREAM_PREFECT_API_URL",
            (url_endpoint(settings.prefect_api_url, 4200),),
        ),
    ]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _mentions(text: str, host: str, port: int) -> bool:
    return (
        re.search(rf"(?<![\w.]){re.escape(host)}['\"]?[:,]\s*(port=)?{port}(?!\d)", text)
        is not None
    )


def _from_kafka_client(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return module.startswith(("cimpl", "confluent_kafka", "aiokafka", "kafka"))


def down_part(exc: BaseException, settings: Settings) -> Part | None:
    """The part this exception says is unreachable, if that part indeed does not answer now."""
    chain = list(_chain(exc))
    text = "\n".join(f"{type(e).__name__}: {e}" for e in chain)
    for part in parts(settings):
        named = any(_mentions(text, host, port) for host, port in part.endpoints)
        if part.name == "kafka":
            named = named or any(_from_kafka_client(e) for e in chain)
        if named and part.endpoints and not any(port_open(h, p) for h, p in part.endpoints):
            return part
    return None


def message(part: Part) -> str:
    """The one line: which part, where we looked, what starts it."""
    return (
        f"{part.label} is not answering at {part.address} ({part.setting}); "
        f"start the local one with `casestream stack up {part.name}` "
        f"(`casestream --debug …` shows the traceback)"
    )


def explain(exc: BaseException, settings: Settings) -> str | None:
    """The one-line message for an exception caused by a part being down, else None."""
    part = down_part(exc, settings)
    return None if part is None else message(part)
