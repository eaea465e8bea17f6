"""Kafka over SASL_SSL: a broker whose certificate comes from a CA this module makes (openssl,
``kafka_tls.make_authority``), its client and controller listeners TLS + SCRAM-SHA-512, and the
platform's own clients configured by ``CASESTREAM_KAFKA_*`` only.

Refused: a client that does not trust the CA, a client that trusts another CA, a client that
dials a name the certificate does not carry, clear-text clients on the TLS port, and a broker
impostor with a certificate from another CA. Works: a publish + consume round trip with the CA
(librdkafka, as the publisher and the worker's intake use it, and aiokafka, as the worker's faust
app uses it), and the real publisher and worker end to end (the worker with its reduced ACLs).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from services.settings import Settings
from services.stack import kafka_security
from services.stack.kafka_cluster import SecureKafka
from services.stack.kafka_tls import TlsFiles, make_authority
from services.stack.process import free_ports
from tests.helpers import new_tag, publish_and_derive

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AGENCY = "20-INSP"
TOPIC = f"agency.{AGENCY}.events"
WORKER_APP_ID = "tls-worker"

# librdkafka logs every refused handshake at error level; the assertions look at the errors.
_QUIET = logging.getLogger("tests.reliability.rdkafka.tls")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


@dataclasses.dataclass
class Principal:
    name: str
    password: str
    password_file: Path


@pytest.fixture(scope="module")
def authority(tmp_path_factory) -> TlsFiles:
    return make_authority(tmp_path_factory.mktemp("ca") / "tls", hosts=("127.0.0.1",))


@pytest.fixture(scope="module")
def other_authority(tmp_path_factory) -> TlsFiles:
    """Another CA with a certificate for the same address: what an impostor would hold."""
    return make_authority(tmp_path_factory.mktemp("ca") / "other", hosts=("127.0.0.1",))


@pytest.fixture(scope="module")
def tls_kafka(authority, tmp_path_factory) -> Iterator[SecureKafka]:
    kafka = SecureKafka(Settings.from_env(), tmp_path_factory.mktemp("tls-kafka"), tls=authority)
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="module")
def principals(tls_kafka: SecureKafka, tmp_path_factory) -> dict[str, Principal]:
    secret_dir = tmp_path_factory.mktemp("secrets")
    found = {}
    for key, name in [
        ("agency", kafka_security.agency_principal(AGENCY)),
        ("worker", kafka_security.WORKER_PRINCIPAL),
    ]:
        password = secrets.token_urlsafe(18)
        path = secret_dir / name
        path.write_text(password + "\n")
        path.chmod(0o600)
        found[key] = Principal(name, password, path)
    tls_kafka.add_users({p.name: p.password for p in found.values()})
    tls_kafka.allow(
        kafka_security.agency_acls(AGENCY) + kafka_security.worker_acls(app_id=WORKER_APP_ID)
    )
    tls_kafka.create_topics({TOPIC: 4})
    return found


def _settings(kafka: SecureKafka, who: Principal, monkeypatch, **env: str) -> Settings:
    """The platform's settings as a component gets them: CASESTREAM_* variables only."""
    for key, value in {**kafka.client_env(who.name, who.password_file), **env}.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env()


def _refusal(config: dict, seconds: float = 30) -> list[KafkaError]:
    """Try to produce one message; the client errors seen. Asserts it was never acknowledged."""
    errors: list[KafkaError] = []
    delivered: list = []
    producer = Producer(
        {**config, "logger": _QUIET, "error_cb": errors.append, "message.timeout.ms": 8000}
    )
    producer.produce(TOPIC, b"must not arrive", on_delivery=lambda e, _m: delivered.append(e))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (errors and delivered):
        producer.poll(0.5)
    producer.flush(10)
    assert delivered and delivered[0] is not None, "a refused client's message was acknowledged"
    assert errors, "no client error reported"
    return errors


def _texts(errors: list[KafkaError]) -> str:
    return " | ".join(e.str() for e in errors)


def _consume(config: dict, until, seconds: float = 60) -> list[bytes]:
    consumer = Consumer({**config, "logger": _QUIET, "enable.auto.commit": False})
    consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(4)])
    values: list[bytes] = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and not until(values):
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                values.append(msg.value())
    finally:
        consumer.close()
    return values


# ------------------------------------------------------------------------ what works


def test_round_trip_over_sasl_ssl_with_the_ca(tls_kafka, principals, monkeypatch):
    """Agency → broker → worker principal, both clients built by ``Settings`` from env."""
    agency = _settings(tls_kafka, principals["agency"], monkeypatch)
    config = agency.kafka_client_config()
    assert config["security.protocol"] == "SASL_SSL"
    assert config["ssl.ca.location"] == str(tls_kafka.tls.ca_cert)
    value = b"over tls " + new_tag().encode()
    delivered: list = []
    producer = Producer({**config, "logger": _QUIET, "enable.idempotence": True})
    producer.produce(TOPIC, value, key=b"k", on_delivery=lambda e, _m: delivered.append(e))
    producer.flush(60)
    assert delivered == [None], delivered

    worker = _settings(tls_kafka, principals["worker"], monkeypatch)
    seen = _consume(
        worker.kafka_client_config(**{"group.id": f"{WORKER_APP_ID}-tls-check"}),
        until=lambda vs: value in vs,
    )
    assert value in seen


def test_worker_faust_client_aiokafka_reads_over_sasl_ssl(tls_kafka, principals, monkeypatch):
    """The worker's faust app connects with ``faust_broker_credentials()``: the same CA."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka import TopicPartition as AioPartition
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    admin_value = b"for aiokafka " + new_tag().encode()
    delivered: list = []
    producer = Producer(tls_kafka.client_config(logger=_QUIET))
    producer.produce(TOPIC, admin_value, on_delivery=lambda e, _m: delivered.append(e))
    producer.flush(60)
    assert delivered == [None]

    settings = _settings(tls_kafka, principals["worker"], monkeypatch)
    auth = credentials_to_aiokafka_auth(settings.faust_broker_credentials())
    assert auth["security_protocol"] == "SASL_SSL"

    async def read() -> list[bytes]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, **auth
        )
        await consumer.start()
        try:
            partitions = [AioPartition(TOPIC, p) for p in range(4)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            values: list[bytes] = []
            deadline = time.monotonic() + 60
            while admin_value not in values and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500)
                values += [m.value for batch in batches.values() for m in batch]
            return values
        finally:
            await consumer.stop()

    assert admin_value in asyncio.run(read())

    async def write_agency_topic() -> None:  # TLS does not widen the worker's ACLs
        aio = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, **auth)
        await aio.start()
        try:
            await aio.send_and_wait(TOPIC, b"worker must not write here")
        finally:
            await aio.stop()

    from aiokafka.errors import TopicAuthorizationFailedError

    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(write_agency_topic())


def test_a_dead_predecessors_members_are_removed_over_sasl_ssl_in_its_own_groups_only(
    tls_kafka, principals, monkeypatch, tmp_path
):
    """The worker removes the members its dead predecessor noted (predecessor.py) with its own
    credentials: its groups answer (the member is unknown here, so "already gone"), another
    application's group refuses it, so a worker's password cannot empty other groups."""
    from services.processor import predecessor

    settings = _settings(tls_kafka, principals["worker"], monkeypatch)
    predecessor.note(tmp_path, "derive", WORKER_APP_ID, "faust-0.15.3-dead")
    predecessor.note(tmp_path, "intake", "another-app-intake", "rdkafka-dead")
    outcomes = predecessor.remove_noted(settings, tmp_path)
    assert outcomes["derive"] == "already gone", outcomes
    assert outcomes["intake"].startswith("not removed"), outcomes
    assert predecessor.noted(tmp_path) == {}


# ------------------------------------------------------------------------ what is refused


def test_client_without_the_ca_is_refused(tls_kafka, principals):
    agency = principals["agency"]
    config = tls_kafka.client_config(agency.name, agency.password)
    del config["ssl.ca.location"]  # the system's CAs only: they never signed this broker
    errors = _refusal(config)
    assert "certificate verify failed" in _texts(errors), _texts(errors)


def test_client_trusting_another_ca_is_refused(tls_kafka, principals, other_authority):
    agency = principals["agency"]
    config = tls_kafka.client_config(
        agency.name, agency.password, **{"ssl.ca.location": str(other_authority.ca_cert)}
    )
    errors = _refusal(config)
    assert "certificate verify failed" in _texts(errors), _texts(errors)


def test_client_dialing_a_name_the_certificate_does_not_carry_is_refused(tls_kafka, principals):
    """The certificate is for 127.0.0.1 only; ``localhost`` is the same socket, another name."""
    agency = principals["agency"]
    config = tls_kafka.client_config(
        agency.name, agency.password, **{"bootstrap.servers": f"localhost:{tls_kafka.node.port}"}
    )
    errors = _refusal(config)
    # The right CA, the right socket: only the name differs (librdkafka does not say which check
    # failed; the same config with 127.0.0.1 is the round trip above).
    assert "certificate verify failed" in _texts(errors), _texts(errors)
    assert tls_kafka.tls.hosts == ("127.0.0.1",)


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_clear_text_clients_on_the_tls_port_fail(tls_kafka, principals, protocol):
    agency = principals["agency"]
    config = tls_kafka.client_config(
        agency.name, agency.password, **{"security.protocol": protocol}
    )
    del config["ssl.ca.location"]
    if protocol == "PLAINTEXT":
        for key in ("sasl.mechanism", "sasl.username", "sasl.password"):
            del config[key]
    errors = _refusal(config)
    assert {e.code() for e in errors} & {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN}, (
        _texts(errors)
    )


def test_wrong_password_over_tls_is_refused(tls_kafka, principals):
    agency = principals["agency"]
    errors = _refusal(tls_kafka.client_config(agency.name, "not-" + agency.password))
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), _texts(errors)


def test_impostor_broker_with_another_cas_certificate_gets_no_credentials(
    tls_kafka, principals, other_authority
):
    """A process on the host that answers on a port the platform dials, with a certificate of
    another CA for the right address: the platform's client aborts the handshake, so not even
    the SCRAM exchange (let alone a PLAIN password) reaches it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(other_authority.broker_keystore)
    (port,) = free_ports(1)
    server = socket.create_server(("127.0.0.1", port))
    server.settimeout(1.0)
    received: list[bytes] = []
    handshake_errors: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = server.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(raw, server_side=True) as tls:
                    tls.settimeout(2.0)
                    received.append(tls.recv(4096))
            except (ssl.SSLError, OSError) as exc:
                handshake_errors.append(str(exc))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        agency = principals["agency"]
        config = tls_kafka.client_config(
            agency.name, agency.password, **{"bootstrap.servers": f"127.0.0.1:{port}"}
        )
        errors = _refusal(config)
        assert "certificate verify failed" in _texts(errors), _texts(errors)
    finally:
        stop.set()
        thread.join(10)
        server.close()
    assert handshake_errors, "the impostor saw no handshake attempt"
    assert not any(received), "the impostor received application data"


# ------------------------------------------------------------------------ end to end


def test_publisher_and_worker_over_sasl_ssl_by_configuration_only(
    stack, tls_kafka, principals, monkeypatch, tmp_path
):
    """The real publisher (agency principal) and the real worker (worker principal, its reduced
    ACLs) over SASL_SSL: the agency's events become rows in ClickHouse."""

    tag = new_tag()
    database = f"tls_{tag}"
    agency_settings = dataclasses.replace(
        stack,
        kafka_bootstrap=tls_kafka.bootstrap,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username=principals["agency"].name,
        kafka_sasl_password=principals["agency"].password,
        kafka_ssl_ca_location=str(tls_kafka.tls.ca_cert),
    )
    log_text = publish_and_derive(
        stack,
        AGENCY,
        agency_settings,
        {
            **tls_kafka.client_env(principals["worker"].name, principals["worker"].password_file),
            "CASESTREAM_WORKER_APP_ID": WORKER_APP_ID,
        },
        database,
        tmp_path,
    )
    assert principals["worker"].password not in log_text
