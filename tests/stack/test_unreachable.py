"""Which part an exception says is down: named only when that part's port indeed does not answer."""

from __future__ import annotations

import socket

import pytest
from confluent_kafka import KafkaError, KafkaException

from services.settings import Settings
from services.stack.unreachable import down_part, explain
from tests.conftest import free_ports

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(monkeypatch) -> Settings:
    clickhouse, kafka, registry, prefect = free_ports(4)
    monkeypatch.setenv("CASESTREAM_CLICKHOUSE_URL", f"http://127.0.0.1:{clickhouse}")
    monkeypatch.setenv("CASESTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{kafka}")
    monkeypatch.setenv("CASESTREAM_REGISTRY_URL", f"http://127.0.0.1:{registry}/apis/ccompat/v7")
    monkeypatch.setenv("CASESTREAM_PREFECT_API_URL", f"http://127.0.0.1:{prefect}/api")
    return Settings.from_env()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def test_an_address_in_a_wrapped_error_names_the_part(settings: Settings):
    port = _port(settings.clickhouse_url)
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as inner:
            raise RuntimeError(f"HTTPConnection(host='127.0.0.1', port={port}): failed") from inner
    except RuntimeError as exc:
        part = down_part(exc, settings)
    assert part is not None and part.name == "clickhouse"


def test_prefect_and_the_registry_are_told_apart(settings: Settings):
    prefect = RuntimeError(f"Failed to reach API at {settings.prefect_api_url}/")
    registry = OSError(f"GET {settings.registry_url}/subjects: connection refused")
    assert down_part(prefect, settings).name == "prefect"
    assert down_part(registry, settings).name == "registry"


def test_a_port_that_only_shares_a_prefix_is_not_named(settings: Settings):
    port = _port(settings.clickhouse_url)
    assert down_part(RuntimeError(f"127.0.0.1:{port}9 refused"), settings) is None


def test_a_kafka_client_error_names_kafka_when_its_port_is_closed(settings: Settings):
    error = KafkaException(KafkaError(KafkaError._TRANSPORT, "Broker transport failure"))
    line = explain(error, settings)
    assert line is not None
    assert settings.kafka_bootstrap in line and "casestream stack up kafka" in line


def test_a_kafka_error_on_a_broker_that_answers_keeps_its_traceback(monkeypatch):
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(1)
    try:
        monkeypatch.setenv("CASESTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{listening.getsockname()[1]}")
        error = KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
        assert explain(error, Settings.from_env()) is None
    finally:
        listening.close()


def test_an_unrelated_error_is_left_alone(settings: Settings):
    assert explain(ValueError("case_id: 'x' is not a case id"), settings) is None
