"""Security: who can write and read what, and secrets stay secret. Each test shows a refusal.

* Kafka: a broker with SASL/SCRAM-SHA-512 and deny-by-default ACLs (``SecureKafka``,
  ``kafka_security``): an agency principal writes its own topic only and reads nothing; the
  worker principal reads every agency topic and holds the least grants it runs with: it cannot
  delete, reconfigure, enlarge or empty any topic, create topics beyond its own, read or move
  other groups' offsets, or change ACLs, users or broker configs; a wrong password or an unknown
  user is refused. SASL_SSL (a CA made by the test) is in ``test_kafka_tls.py``.
  The SDK and the worker run against it by configuration only (``CASESTREAM_KAFKA_*``).
* Gateway tokens: a token of another agency is refused — covered by
  ``tests/agency/test_gateway.py::test_token_of_another_agency_cannot_publish_its_events`` (and
  missing/unknown/revoked tokens by ``test_missing_unknown_and_revoked_tokens_get_401``).
* ClickHouse: the analyst user is read-only (INSERT/CREATE/DROP answer code 164, READONLY).
* Secrets come from the environment or files and never show up in logs or `casestream settings`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError
from confluent_kafka import (
    OFFSET_END,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from services.agency.publisher import Publisher
from services.settings import Settings
from services.stack import clickhouse as clickhouse_stack
from services.stack import kafka_security
from services.stack.kafka_cluster import SecureKafka
from services.stack.process import free_ports, wait_until
from tests.helpers import REPO, make_event, new_tag, publish_and_derive

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AGENCY = "20-INSP"
OTHER_AGENCY = "20-POLICE"
WORKER_APP_ID = "secured-worker"

# librdkafka logs every refused connection at error level; the assertions look at the errors.
_QUIET = logging.getLogger("tests.reliability.rdkafka")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


@dataclasses.dataclass
class Principal:
    name: str
    password: str
    password_file: Path


@pytest.fixture(scope="module")
def secure(tmp_path_factory) -> SecureKafka:
    kafka = SecureKafka(Settings.from_env(), tmp_path_factory.mktemp("secure-kafka")).start()
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="module")
def principals(secure: SecureKafka, tmp_path_factory) -> dict[str, Principal]:
    """Users and ACLs as an operator sets them up, and agency topics created by the admin."""
    secret_dir = tmp_path_factory.mktemp("secrets")
    found = {}
    for key, name in [
        ("agency", kafka_security.agency_principal(AGENCY)),
        ("other", kafka_security.agency_principal(OTHER_AGENCY)),
        ("worker", kafka_security.WORKER_PRINCIPAL),
        ("gateway", kafka_security.GATEWAY_PRINCIPAL),
        ("import", kafka_security.IMPORT_PRINCIPAL),
    ]:
        password = secrets.token_urlsafe(18)
        path = secret_dir / name
        path.write_text(password + "\n")
        path.chmod(0o600)
        found[key] = Principal(name, password, path)
    secure.add_users({p.name: p.password for p in found.values()})
    secure.allow(
        kafka_security.agency_acls(AGENCY)
        + kafka_security.agency_acls(OTHER_AGENCY)
        + kafka_security.worker_acls(app_id=WORKER_APP_ID)
        + kafka_security.gateway_acls([AGENCY])  # it holds tokens for AGENCY only
        + kafka_security.import_acls()
    )
    secure.create_topics({f"agency.{a}.events": 4 for a in (AGENCY, OTHER_AGENCY, "00-SC")})
    return found


def _config(secure: SecureKafka, who: Principal, **extra) -> dict:
    return secure.client_config(who.name, who.password, logger=_QUIET, **extra)


def _produce(config: dict, topic: str, value: bytes, key: bytes = b"k") -> KafkaError | None:
    """Produce one message and return its delivery error (None = acknowledged)."""
    outcome: list = []
    producer = Producer({**config, "message.timeout.ms": 15000})
    producer.produce(topic, key=key, value=value, on_delivery=lambda err, _m: outcome.append(err))
    producer.flush(30)
    assert outcome, "no delivery report"
    return outcome[0]


def _read(config: dict, topics: list[str], *, seconds: float, want: int = 1, until=None):
    """Assign every partition of `topics` from the start; (values, error names) seen.

    Stops after `seconds`, after `want` values, or as soon as `until(values)` holds."""
    consumer = Consumer({**config, "enable.auto.commit": False})
    consumer.assign([TopicPartition(t, p, 0) for t in topics for p in range(4)])
    values, errors = [], set()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and len(values) < want:
            if until is not None and until(values):
                break
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                errors.add(msg.error().name())
            else:
                values.append(msg.value())
    finally:
        consumer.close()
    return values, errors


def _assert_reads_refused(secure: SecureKafka, who: Principal, topics: list[str], group: str):
    values, errors = _read(_config(secure, who, **{"group.id": group}), topics, seconds=8)
    assert values == [], topics
    assert errors and errors <= {"TOPIC_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED"}


def _assert_topic_creation_refused(secure: SecureKafka, who: Principal) -> None:
    admin = AdminClient(_config(secure, who))  # referenced until the future is done
    future = admin.create_topics([NewTopic("agency.20-COURT.events", 1, 1)])[
        "agency.20-COURT.events"
    ]
    with pytest.raises(Exception) as refused_create:
        future.result()
    assert refused_create.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def _secured_env(secure: SecureKafka, who: Principal) -> dict[str, str]:
    return secure.client_env(who.name, who.password_file)


# ------------------------------------------------------------------------ Kafka: SASL + ACLs


def test_agency_publishes_to_its_own_topic_by_configuration_only(
    stack, secure, principals, monkeypatch, tmp_path
):
    for key, value in _secured_env(secure, principals["agency"]).items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    assert settings.kafka_sasl_password == principals["agency"].password  # read from the file
    case = f"{new_tag()}:{AGENCY}/2024/1"
    event = make_event(
        "case_opened",
        AGENCY,
        case,
        "2024-03-05T09:30:00+07:00",
        {"origin": "inspection", "field": "land", "subject_kind": "official", "prominent": False},
    )
    publisher = Publisher(AGENCY, settings, outbox_path=tmp_path / "outbox.sqlite")
    publisher.publish(event)
    assert publisher.close(60) == 0, "the agency's own topic refused its event"

    admin = secure.client_config(logger=_QUIET, **{"group.id": "admin-check"})
    values, errors = _read(
        admin,
        [f"agency.{AGENCY}.events"],
        seconds=30,
        want=10_000,
        until=lambda vs: any(case.encode() in v for v in vs),
    )
    assert not errors
    assert any(case.encode() in v for v in values)


def test_agency_cannot_write_other_topics_read_anything_or_create_topics(secure, principals):
    agency = principals["agency"]
    own, other = f"agency.{AGENCY}.events", f"agency.{OTHER_AGENCY}.events"

    assert _produce(_config(secure, agency), own, b"allowed") is None
    refused = _produce(_config(secure, agency), other, b"spoof attempt")
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED

    # Its metadata shows its own topic only: the others are not even visible.
    visible = AdminClient(_config(secure, agency)).list_topics(timeout=15).topics
    assert set(visible) == {own}

    # Reading is refused everywhere, its own topic included.
    for topics in ([own], [other], ["agency.00-SC.events"]):
        _assert_reads_refused(secure, agency, topics, "agency-reader")
    _assert_topic_creation_refused(secure, agency)


def test_worker_principal_reads_every_agency_topic_but_writes_none(secure, principals):
    tag = new_tag().encode()
    admin = secure.client_config(logger=_QUIET)
    for agency in (AGENCY, OTHER_AGENCY):
        assert _produce(admin, f"agency.{agency}.events", tag + agency.encode()) is None

    worker = principals["worker"]
    topics = [f"agency.{a}.events" for a in (AGENCY, OTHER_AGENCY)]
    values, errors = _read(
        _config(secure, worker, **{"group.id": f"{WORKER_APP_ID}-check"}),
        topics,
        seconds=30,
        want=10_000,
        until=lambda vs: {tag + AGENCY.encode(), tag + OTHER_AGENCY.encode()} <= set(vs),
    )
    assert not errors
    assert {tag + AGENCY.encode(), tag + OTHER_AGENCY.encode()} <= set(values)

    refused = _produce(_config(secure, worker), topics[0], b"worker must not write here")
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def _refusal_code(futures) -> int | str:
    """The broker's error code of a refused admin request (one future or a dict of them, all
    refused alike), else what happened instead."""
    codes: set[int | str] = set()
    for future in futures.values() if isinstance(futures, dict) else [futures]:
        try:
            future.result(timeout=30)
            codes.add("allowed")
        except KafkaException as exc:
            codes.add(exc.args[0].code())
        except TimeoutError:
            codes.add("no answer")
    return codes.pop() if len(codes) == 1 else str(codes)


def _commit(config: dict, group: str, topic: str) -> None:
    """Commit offset 0 for ``group`` (retrying while the new offsets topic finds its leader)."""
    consumer = Consumer({**config, "group.id": group, "enable.auto.commit": False})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                consumer.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
                return
            except KafkaException as exc:
                transient = exc.args[0].retriable() or exc.args[0].code() in (
                    KafkaError.NOT_COORDINATOR,
                    KafkaError.COORDINATOR_NOT_AVAILABLE,
                    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                )
                if not transient or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        consumer.close()


def test_worker_principal_cannot_delete_alter_or_administer(secure, principals):
    """A stolen worker password can read the record and feed the facts, nothing else: no topic
    (agency, DLQ, its own) deleted, reconfigured, enlarged or emptied, no topic created beyond
    its own, no other group's offsets, no ACL, user or broker change."""
    agency_topic, facts = f"agency.{AGENCY}.events", f"{WORKER_APP_ID}-facts-by-case"
    dlq = kafka_security.DLQ_TOPIC
    secure.create_topics({dlq: 1, facts: 4})
    admin_config = secure.client_config(logger=_QUIET)
    _commit(admin_config, "casestream-ops-dlq-reader", agency_topic)  # someone else's group
    worker_config = _config(secure, principals["worker"])
    # A group under its own prefix (not the live worker's: a worker of another test in this
    # module may still be a member of `<app_id>-intake`, and a commit from outside the group
    # then gets UNKNOWN_MEMBER_ID).
    own_group = f"{WORKER_APP_ID}-acl-check"
    _commit(worker_config, own_group, agency_topic)  # its own: allowed
    worker = AdminClient(worker_config)  # referenced until its futures are done
    own = worker.list_consumer_group_offsets([ConsumerGroupTopicPartitions(own_group)])
    assert next(iter(own.values())).result(timeout=30).group_id == own_group

    topic_denied = KafkaError.TOPIC_AUTHORIZATION_FAILED
    group_denied = KafkaError.GROUP_AUTHORIZATION_FAILED
    cluster_denied = KafkaError.CLUSTER_AUTHORIZATION_FAILED
    retention = [ConfigEntry("retention.ms", "1", incremental_operation=AlterConfigOpType.SET)]
    attempts = {
        **{
            f"delete topic {t}": (
                lambda worker, t=t: worker.delete_topics([t], operation_timeout=10),
                topic_denied,
            )
            for t in (agency_topic, dlq, facts)
        },
        **{
            f"retention.ms=1 on {t}": (
                lambda worker, t=t: worker.incremental_alter_configs(
                    [ConfigResource(ConfigResource.Type.TOPIC, t, incremental_configs=retention)]
                ),
                topic_denied,
            )
            for t in (agency_topic, dlq, facts)
        },
        **{
            f"add partitions to {t}": (
                lambda worker, t=t: worker.create_partitions([NewPartitions(t, 8)]),
                topic_denied,
            )
            for t in (agency_topic, dlq)
        },
        **{
            f"delete records of {t}": (
                lambda worker, t=t: worker.delete_records([TopicPartition(t, 0, OFFSET_END)]),
                topic_denied,
            )
            for t in (agency_topic, dlq)
        },
        "create casestream.exfil": (
            lambda worker: worker.create_topics([NewTopic("casestream.exfil", 1, 1)]),
            topic_denied,
        ),
        "read another group's offsets": (
            lambda worker: worker.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions("casestream-ops-dlq-reader")]
            ),
            group_denied,
        ),
        "move another group's offsets": (
            lambda worker: worker.alter_consumer_group_offsets(
                [
                    ConsumerGroupTopicPartitions(
                        "casestream-ops-dlq-reader", [TopicPartition(agency_topic, 0, 0)]
                    )
                ]
            ),
            group_denied,
        ),
        "delete its own group": (
            lambda worker: worker.delete_consumer_groups([own_group]),
            group_denied,
        ),
        "grant itself WRITE on agency topics": (
            lambda worker: worker.create_acls(
                kafka_security.import_acls(kafka_security.WORKER_PRINCIPAL)
            ),
            cluster_denied,
        ),
        "change a user's password": (
            lambda worker: worker.alter_user_scram_credentials(
                [
                    UserScramCredentialUpsertion(
                        principals["agency"].name,
                        ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                        b"taken-over",
                        b"0123456789abcdef",
                    )
                ]
            ),
            cluster_denied,
        ),
        "change a broker config": (
            lambda worker: worker.incremental_alter_configs(
                [
                    ConfigResource(
                        ConfigResource.Type.BROKER,
                        "1",
                        incremental_configs=[
                            ConfigEntry(
                                "log.retention.ms", "1", incremental_operation=AlterConfigOpType.SET
                            )
                        ],
                    )
                ]
            ),
            cluster_denied,
        ),
    }
    codes = {what: _refusal_code(attempt(worker)) for what, (attempt, _) in attempts.items()}
    wanted = {what: code for what, (_, code) in attempts.items()}
    assert codes == wanted

    # ACLs: what the worker may list is at most its own grants, never another principal's.
    every_acl = AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        None,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    try:
        listed = worker.describe_acls(every_acl).result(timeout=30)
    except KafkaException as exc:
        assert exc.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    else:
        shown = {b.principal for b in listed}
        assert shown <= {f"User:{kafka_security.WORKER_PRINCIPAL}"}, shown

    # Nothing changed: the topics are there with their partitions, retention still forever.
    metadata = AdminClient(admin_config).list_topics(timeout=15).topics
    assert len(metadata[agency_topic].partitions) == 4 and len(metadata[dlq].partitions) == 1
    assert "casestream.exfil" not in metadata
    assert kafka_security.describe_acls(admin_config, kafka_security.WORKER_PRINCIPAL)


def test_gateway_principal_writes_only_its_token_holders_topics(secure, principals):
    gateway = principals["gateway"]
    own, other = f"agency.{AGENCY}.events", f"agency.{OTHER_AGENCY}.events"
    assert _produce(_config(secure, gateway), own, b"for a token holder") is None
    refused = _produce(_config(secure, gateway), other, b"no token for this agency")
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    _assert_reads_refused(secure, gateway, [own], "gateway-reader")
    _assert_topic_creation_refused(secure, gateway)


def test_import_principal_writes_every_agency_topic_and_reads_none(secure, principals):
    importer = principals["import"]
    for agency in (AGENCY, OTHER_AGENCY, "00-SC"):
        assert _produce(_config(secure, importer), f"agency.{agency}.events", b"digitised") is None
    refused = _produce(_config(secure, importer), "casestream.dlq", b"not an agency topic")
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    _assert_reads_refused(secure, importer, [f"agency.{AGENCY}.events"], "import-reader")


def test_gateway_publishes_for_its_token_holders_with_its_own_principal(
    stack, secure, principals, monkeypatch, tmp_path
):
    from fastapi.testclient import TestClient

    from services.agency.gateway import GatewayConfig, create_app
    from services.agency.tokens import TokenStore

    for key, value in _secured_env(secure, principals["gateway"]).items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    assert settings.kafka_sasl_username == kafka_security.GATEWAY_PRINCIPAL
    store = TokenStore(tmp_path / "tokens.json")
    token = store.create(AGENCY)[0]
    case = f"{new_tag()}:{AGENCY}/2024/9"
    event = make_event(
        "case_opened",
        AGENCY,
        case,
        "2024-03-05T09:30:00+07:00",
        {"origin": "inspection", "field": "land", "subject_kind": "official", "prominent": False},
    )
    config = GatewayConfig(outbox_dir=tmp_path / "outbox", shutdown_flush_seconds=1.0)
    with TestClient(create_app(settings, store, config=config)) as client:
        r = client.post(
            "/v1/events?wait=true&timeout=60",
            json={"events": [event]},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert r.status_code == 200 and r.json()["delivered"] == 1, r.text
    values, errors = _read(
        secure.client_config(logger=_QUIET, **{"group.id": "admin-gateway-check"}),
        [f"agency.{AGENCY}.events"],
        seconds=30,
        want=10_000,
        until=lambda vs: any(case.encode() in v for v in vs),
    )
    assert not errors and any(case.encode() in v for v in values)


@pytest.mark.parametrize("who", ["wrong password", "unknown user"])
def test_wrong_password_and_unknown_user_are_refused(secure, principals, who):
    name = principals["agency"].name if who == "wrong password" else "agency-99-NOBODY"
    errors: list[KafkaError] = []
    producer = Producer(
        secure.client_config(
            name,
            "not-" + principals["agency"].password,
            logger=_QUIET,
            error_cb=errors.append,
            **{"message.timeout.ms": 5000},
        )
    )
    delivered: list = []
    producer.produce(f"agency.{AGENCY}.events", b"x", on_delivery=lambda e, _m: delivered.append(e))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (errors and delivered):
        producer.poll(0.5)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    assert delivered and delivered[0] is not None  # never acknowledged


def test_worker_runs_against_the_secured_broker_by_configuration_only(
    stack, secure, principals, tmp_path
):
    """The real worker, as the worker principal, turns an agency's SASL-published events into
    rows; its log shows none of the secrets it was given."""
    tag = new_tag()
    database = f"secured_{tag}"
    agency_env = _secured_env(secure, principals["agency"])
    settings = dataclasses.replace(
        stack,
        kafka_bootstrap=agency_env["CASESTREAM_KAFKA_BOOTSTRAP"],
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username=principals["agency"].name,
        kafka_sasl_password=principals["agency"].password,
    )
    log_text = publish_and_derive(
        stack,
        AGENCY,
        settings,
        {**_secured_env(secure, principals["worker"]), "CASESTREAM_WORKER_APP_ID": WORKER_APP_ID},
        database,
        tmp_path,
    )
    for principal in principals.values():
        assert principal.password not in log_text
    assert secure.admin_password not in log_text


# ------------------------------------------------------------------------ ClickHouse analyst


def test_analyst_user_is_read_only(stack):
    scratch = f"readonly_{new_tag()}"
    database = stack.clickhouse_database
    platform = stack.clickhouse_client(database="default")
    platform.command(f"CREATE DATABASE {scratch}")
    platform.command(f"CREATE TABLE {scratch}.t (x UInt8) ENGINE = MergeTree ORDER BY x")
    platform.insert(f"{scratch}.t", [[1]], column_names=["x"])
    platform.command(f"CREATE TABLE {database}.{scratch} (x UInt8) ENGINE = MergeTree ORDER BY x")
    platform.insert(f"{database}.{scratch}", [[1]], column_names=["x"])
    # The analyst reads the platform's database (its default) and no other.
    analyst = stack.clickhouse_client(analyst=True)
    assert analyst.command(f"SELECT count() FROM {scratch}") == 1  # reading is fine
    with pytest.raises(DatabaseError) as refused:
        analyst.command(f"SELECT count() FROM {scratch}.t")
    assert "Code: 497" in str(refused.value), str(refused.value)[:300]

    attempts = {
        "insert": lambda: analyst.insert(scratch, [[2]], column_names=["x"]),
        "insert sql": lambda: analyst.command(f"INSERT INTO {scratch} VALUES (3)"),
        "create": lambda: analyst.command(
            f"CREATE TABLE {scratch}_u (x UInt8) ENGINE = MergeTree ORDER BY x"
        ),
        "drop": lambda: analyst.command(f"DROP TABLE {scratch}"),
        "truncate": lambda: analyst.command(f"TRUNCATE TABLE {scratch}"),
        "drop database": lambda: analyst.command(f"DROP DATABASE {scratch}"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(DatabaseError) as refused:
            attempt()
        assert "Code: 164" in str(refused.value), (what, str(refused.value)[:300])

    assert platform.query(f"SELECT x FROM {database}.{scratch}").result_rows == [(1,)]
    assert not platform.command(f"EXISTS TABLE {database}.{scratch}_u")
    platform.command(f"DROP TABLE {database}.{scratch}")
    platform.command(f"DROP DATABASE {scratch}")


# ------------------------------------------------------------------------ secrets


def test_secrets_come_from_files_and_never_show_in_settings_output(tmp_path):
    kafka_secret = "kafka-" + secrets.token_hex(12)
    clickhouse_secret = "ch-" + secrets.token_hex(12)
    secret_file = tmp_path / "kafka-password"
    secret_file.write_text(kafka_secret + "\n")
    env = {
        **os.environ,
        "CASESTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "CASESTREAM_KAFKA_SASL_USERNAME": "agency-20-INSP",
        "CASESTREAM_KAFKA_SASL_PASSWORD_FILE": str(secret_file),
        "CASESTREAM_CLICKHOUSE_PASSWORD": clickhouse_secret,
    }
    env.pop("CASESTREAM_KAFKA_SASL_PASSWORD", None)
    shown = subprocess.run(
        [sys.executable, "-m", "services.cli", "settings"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "agency-20-INSP" in shown.stdout and "SASL_SSL" in shown.stdout
    assert kafka_secret not in shown.stdout + shown.stderr
    assert clickhouse_secret not in shown.stdout + shown.stderr

    missing = subprocess.run(
        [sys.executable, "-c", "from services.settings import Settings; Settings.from_env()"],
        cwd=REPO,
        env={**env, "CASESTREAM_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "nope")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1, missing.stderr  # the settings refuse to load
    assert "CASESTREAM_KAFKA_SASL_PASSWORD_FILE" in missing.stderr


def test_secrets_never_appear_in_kafka_or_clickhouse_logs(secure, principals, tmp_path):
    # Kafka: the broker has by now seen every principal log in (and wrong passwords fail).
    _produce(_config(secure, principals["agency"]), f"agency.{AGENCY}.events", b"log check")
    kafka_logs = [p for p in (secure.home / "logs").rglob("*") if p.is_file()]
    assert kafka_logs
    kafka_secrets = [
        secure.admin_password,
        secure.controller_password,
        *(p.password for p in principals.values()),
    ]
    for path in kafka_logs:
        text = path.read_text(errors="replace")
        for secret in kafka_secrets:
            assert secret not in text, f"a Kafka password is in {path}"

    # ClickHouse endpoint: a platform password used in headers, in the URL and wrongly.
    secret = "ch-" + secrets.token_hex(12)
    (port,) = free_ports(1)
    settings = dataclasses.replace(
        Settings.from_env(),
        home=tmp_path / "home",
        clickhouse_url=f"http://127.0.0.1:{port}",
        clickhouse_password=secret,
        analyst_password="an-" + secrets.token_hex(12),
    )
    clickhouse_stack.start(settings)
    proc = clickhouse_stack.process(settings)
    try:
        wait_until(
            lambda: clickhouse_stack.is_ready(settings),
            timeout=90,
            what="ClickHouse endpoint",
            proc=proc,
        )
        assert settings.clickhouse_client(database="default").command("SELECT 1") == 1
        import httpx

        url = settings.clickhouse_url
        ok = httpx.post(
            url,
            params={"user": settings.clickhouse_user, "password": secret},
            content=b"SELECT 2",
            timeout=30,
        )
        assert ok.text.strip() == "2"
        wrong = httpx.post(
            url,
            params={"user": settings.clickhouse_user, "password": secret + "x"},
            content=b"SELECT 3",
            timeout=30,
        )
        # AUTHENTICATION_FAILED, with ClickHouse's status; the wrong password is not echoed.
        assert (wrong.status_code, wrong.headers["X-ClickHouse-Exception-Code"]) == (403, "516")
        assert wrong.text.startswith("Code: 516. DB::Exception: ") and secret not in wrong.text
        bad_sql = httpx.post(
            url,
            auth=(settings.clickhouse_user, secret),
            content=f"SELECT '{uuid.uuid4()}' FROM no_such_table".encode(),
            timeout=30,
        )
        assert (bad_sql.status_code, bad_sql.headers["X-ClickHouse-Exception-Code"]) == (
            404,
            "60",
        ), bad_sql.text  # UNKNOWN_TABLE
    finally:
        proc.stop()
    logs = [p for p in (settings.home / "logs").rglob("*") if p.is_file()]
    assert logs
    for path in logs:
        text = path.read_text(errors="replace")
        assert secret not in text, f"the ClickHouse password is in {path}"
        assert settings.analyst_password not in text
