"""Kafka transport settings and the throwaway CA, without a broker: the client configuration a
component derives from ``CASESTREAM_KAFKA_*`` never silently drops TLS, and the worker's grants
hold no operation that changes or deletes anything beyond its own output."""

from __future__ import annotations

import dataclasses
import ssl
import stat
import subprocess

import pytest
from confluent_kafka.admin import AclOperation, ResourcePatternType, ResourceType

from services.settings import Settings
from services.stack import kafka_security
from services.stack.kafka_tls import make_authority

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def authority(tmp_path_factory):
    return make_authority(tmp_path_factory.mktemp("ca") / "tls", hosts=("127.0.0.1", "kafka-1"))


def _settings(**changes) -> Settings:
    base = dataclasses.replace(
        Settings.from_env(),
        kafka_sasl_username="agency-20-INSP",
        kafka_sasl_password="secret",
    )
    return dataclasses.replace(base, **changes)


def test_authority_files_are_private_and_the_ca_key_is_gone(authority):
    directory = authority.ca_cert.parent
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == ["broker.crt", "broker.pem", "ca.pem"]
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    keystore = authority.broker_keystore.read_text()
    assert keystore.startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8, as Kafka's PEM store wants
    assert keystore.count("-----BEGIN CERTIFICATE-----") == 2  # the broker's, then the CA's


def test_broker_certificate_names_exactly_its_hosts_and_chains_to_the_ca(authority):
    cert = authority.ca_cert.parent / "broker.crt"
    text = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-ext", "subjectAltName,extendedKeyUsage"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "IP Address:127.0.0.1" in text and "DNS:kafka-1" in text
    assert "localhost" not in text and "TLS Web Server Authentication" in text
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(authority.ca_cert), str(cert)],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stderr


def test_sasl_ssl_clients_trust_the_configured_ca_and_check_host_names(authority):
    settings = _settings(
        kafka_security_protocol="SASL_SSL", kafka_ssl_ca_location=str(authority.ca_cert)
    )
    config = settings.kafka_client_config()
    assert config["security.protocol"] == "SASL_SSL"
    assert config["ssl.ca.location"] == str(authority.ca_cert)
    assert "enable.ssl.certificate.verification" not in config  # librdkafka's default: on
    assert "ssl.endpoint.identification.algorithm" not in config  # default https: names checked
    credentials = settings.faust_broker_credentials()
    context = credentials.ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert credentials.protocol.value == "SASL_SSL"


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_a_ca_with_a_clear_text_protocol_is_refused(authority, protocol):
    settings = _settings(
        kafka_security_protocol=protocol, kafka_ssl_ca_location=str(authority.ca_cert)
    )
    with pytest.raises(ValueError, match="CASESTREAM_KAFKA_SSL_CA_LOCATION.*clear text"):
        settings.kafka_client_config()
    with pytest.raises(ValueError, match="clear text"):
        settings.faust_broker_credentials()


def test_a_missing_ca_file_is_named(tmp_path):
    missing = tmp_path / "no-such-ca.pem"
    settings = _settings(kafka_security_protocol="SASL_SSL", kafka_ssl_ca_location=str(missing))
    with pytest.raises(ValueError, match="no readable CA file") as refused:
        settings.kafka_client_config()
    assert str(missing) in str(refused.value)


def test_worker_grants_change_or_delete_nothing_but_its_own_output():
    bindings = kafka_security.worker_acls(app_id="casestream-worker")
    assert {b.restype for b in bindings} <= {ResourceType.TOPIC, ResourceType.GROUP}
    forbidden = {
        AclOperation.ALL,
        AclOperation.DELETE,
        AclOperation.ALTER,
        AclOperation.ALTER_CONFIGS,
        AclOperation.CLUSTER_ACTION,
        AclOperation.IDEMPOTENT_WRITE,
    }
    assert not [b for b in bindings if b.operation in forbidden]
    agency = [b for b in bindings if b.name == kafka_security.AGENCY_TOPIC_PREFIX]
    assert {b.operation for b in agency} == {AclOperation.READ}
    prefixed_internal = [
        b
        for b in bindings
        if b.name == kafka_security.INTERNAL_TOPIC_PREFIX
        and b.resource_pattern_type == ResourcePatternType.PREFIXED
    ]
    assert prefixed_internal == []  # DLQ and probe by literal name: no other casestream.* topic
    assert {b.principal for b in bindings} == {f"User:{kafka_security.WORKER_PRINCIPAL}"}
