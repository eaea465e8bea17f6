"""Kafka principals and ACLs of the platform: who may write and read which topic.

The model (enforced by the broker's ``StandardAuthorizer``, deny by default):

| principal | may | may not |
| --- | --- | --- |
| ``User:agency-<agency_id>`` | WRITE (and so DESCRIBE) its own topic ``agency.<agency_id>.events`` | read anything, write any other topic, create topics, join groups |
| ``User:casestream-worker`` | READ every ``agency.*`` topic; CREATE/WRITE ``casestream.dlq``; CREATE/WRITE/READ ``casestream.probe`` and its own topics (``<app_id>-*``); READ/DESCRIBE its consumer groups (``<app_id>*``) | write agency topics; delete, alter or reconfigure any topic; delete records; other groups' offsets; ACLs, users, broker configs |
| ``User:casestream-gateway`` | WRITE the topics of the agencies it holds tokens for (one literal ACL each) | read anything, write any other agency's topic, create topics, join groups |
| ``User:casestream-import`` | WRITE every agency topic (digitised records of any agency, each import recorded in ``<home>/imports/audit.jsonl``) | read anything, create topics, join groups |
| ``User:admin`` (super user) | everything: creating agency topics, users and ACLs | |

Credentials are SCRAM-SHA-512. The admin's is written into the cluster metadata when the storage
is formatted (:func:`scram_format_argument`, salted here so the password never appears on a
command line); every other user is created with the admin API (:func:`upsert_scram_users`).

Deploy recipe against a running SASL cluster (``services.stack.kafka_cluster.SecureKafka`` is the
loopback version)::

    admin = {"bootstrap.servers": ..., "security.protocol": "SASL_SSL",
             "ssl.ca.location": "/etc/casestream/kafka-ca.pem",
             "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "admin",
             "sasl.password": open("/run/secrets/kafka-admin").read().strip()}
    upsert_scram_users(admin, {agency_principal("20-INSP"): secret_1, WORKER_PRINCIPAL: secret_2})
    apply_acls(admin, agency_acls("20-INSP") + worker_acls())

then give each component its own identity by configuration only:
``CASESTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL``, ``CASESTREAM_KAFKA_SSL_CA_LOCATION=<ca.pem>``,
``CASESTREAM_KAFKA_SASL_USERNAME=agency-20-INSP``,
``CASESTREAM_KAFKA_SASL_PASSWORD_FILE=/run/secrets/kafka``.  Passwords are never logged here.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from services.contracts.events import topic_for_agency

SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192
WORKER_PRINCIPAL = "casestream-worker"
GATEWAY_PRINCIPAL = "casestream-gateway"
IMPORT_PRINCIPAL = "casestream-import"
ADMIN_PRINCIPAL = "admin"
AGENCY_TOPIC_PREFIX = "agency."
INTERNAL_TOPIC_PREFIX = "casestream."  # dlq, probe
DLQ_TOPIC = "casestream.dlq"  # services.ops.topics.DLQ_TOPIC (the stack layer does not import ops)
PROBE_TOPIC = "casestream.probe"  # services.ops.topics.PROBE_TOPIC
DEFAULT_WORKER_APP_ID = "casestream-worker"


def agency_principal(agency_id: str) -> str:
    """The Kafka user of one agency: ``agency-20-INSP`` (ValueError for a malformed id)."""
    topic_for_agency(agency_id)
    return f"agency-{agency_id}"


def scram_format_argument(
    name: str,
    password: str,
    *,
    mechanism: str = SCRAM_MECHANISM,
    iterations: int = SCRAM_ITERATIONS,
    salt: bytes | None = None,
) -> str:
    """``--add-scram`` value for ``kafka.tools.StorageTool format``, already salted and hashed.

    ``SCRAM-SHA-512=[name=admin,iterations=8192,salt="…",saltedpassword="…"]``: the broker
    stores exactly this, and the clear password does not show up in ``ps`` or shell history.
    SaltedPassword = PBKDF2-HMAC(hash, password, salt, iterations) as RFC 5802 defines Hi().
    """
    digest = {"SCRAM-SHA-512": "sha512", "SCRAM-SHA-256": "sha256"}[mechanism]
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac(digest, password.encode("utf-8"), salt, iterations)
    return (
        f"{mechanism}=[name={name},iterations={iterations},"
        f'salt="{base64.b64encode(salt).decode()}",'
        f'saltedpassword="{base64.b64encode(salted).decode()}"]'
    )


def _admin(admin_config: Mapping[str, Any]) -> AdminClient:
    return AdminClient(dict(admin_config))


def upsert_scram_users(
    admin_config: Mapping[str, Any],
    users: Mapping[str, str],
    *,
    iterations: int = SCRAM_ITERATIONS,
    timeout: float = 30.0,
) -> None:
    """Create or change SCRAM-SHA-512 users (name → password) with the admin API."""
    if not users:
        return
    admin = _admin(admin_config)
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, iterations)
    alterations = [
        UserScramCredentialUpsertion(name, info, password.encode("utf-8"), os.urandom(16))
        for name, password in users.items()
    ]
    futures = admin.alter_user_scram_credentials(alterations, request_timeout=timeout)
    for name, future in futures.items():
        try:
            future.result()
        except Exception as exc:  # the error names the user, never the password
            raise RuntimeError(f"cannot create SCRAM user {name!r}: {exc}") from None


def _allow(
    principal: str,
    resource: ResourceType,
    name: str,
    pattern: ResourcePatternType,
    operations: Iterable[AclOperation],
) -> list[AclBinding]:
    return [
        AclBinding(resource, name, pattern, f"User:{principal}", "*", op, AclPermissionType.ALLOW)
        for op in operations
    ]


def agency_acls(agency_id: str, principal: str | None = None) -> list[AclBinding]:
    """An agency may write its own topic and nothing else (WRITE implies DESCRIBE, and since
    Kafka 3.0 also the idempotent producer's IDEMPOTENT_WRITE)."""
    principal = principal or agency_principal(agency_id)
    return _allow(
        principal,
        ResourceType.TOPIC,
        topic_for_agency(agency_id),
        ResourcePatternType.LITERAL,
        [AclOperation.WRITE],
    )


def gateway_acls(agency_ids: Iterable[str], principal: str = GATEWAY_PRINCIPAL) -> list[AclBinding]:
    """The HTTP gateway writes the topics of its token holders' agencies, and nothing else.

    Its own principal, not an agency's nor the admin's: a gateway host that is broken into can
    then write only for the agencies it serves (still checked event by event against the
    token's agency), never read the record or create topics. Grant it one agency at a time, as
    tokens are issued.
    """
    return [binding for agency_id in agency_ids for binding in agency_acls(agency_id, principal)]


def import_acls(principal: str = IMPORT_PRINCIPAL) -> list[AclBinding]:
    """The operator who imports digitised records writes every agency's topic, nothing else.

    A principal of its own, so the broker's log names who wrote, and the import's audit record
    (services/agency/import_audit.py) says which file; its events meet the same validation and
    authority rules as live ones, only the gateway's age limit does not apply.
    """
    return _allow(
        principal,
        ResourceType.TOPIC,
        AGENCY_TOPIC_PREFIX,
        ResourcePatternType.PREFIXED,
        [AclOperation.WRITE],
    )


def worker_acls(
    principal: str = WORKER_PRINCIPAL, app_id: str = DEFAULT_WORKER_APP_ID
) -> list[AclBinding]:
    """The stream worker: the operations it performs, on the resources it touches, nothing more.

    * agency topics (``agency.*``): READ (DESCRIBE is implied); never WRITE, the admin creates them;
    * ``casestream.dlq``: CREATE (``ensure_topics`` at start), WRITE (dead letters); reading and
      replaying the DLQ is the operator's job (``casestream dlq``);
    * ``casestream.probe``: CREATE, WRITE and READ (the worker sends latency probes and its intake
      forwards them);
    * its own topics (``<app_id>-facts-by-case``, faust's ``-__assignor-__leader`` and
      changelogs): CREATE, READ, WRITE;
    * its groups (``<app_id>``, ``<app_id>-intake``, ``<app_id>-refetch``): READ (join, commit,
      fetch offsets) and DESCRIBE (its lag).

    No DELETE, ALTER or ALTER_CONFIGS anywhere and nothing on the cluster: a stolen worker
    password can neither delete or shorten the record (topics, records, retention), nor add
    partitions, nor change ACLs, users or broker configuration, nor read other groups' offsets.
    Literal DLQ and probe names, not the ``casestream.`` prefix: it creates those two and no
    other topic. (The grant was ALL on ``casestream.*`` and ``<app_id>*`` before; the worker ran
    the same with this set in ``test_worker_runs_against_the_secured_broker_by_configuration_only``.)
    """
    prefixed, literal = ResourcePatternType.PREFIXED, ResourcePatternType.LITERAL
    topic, group = ResourceType.TOPIC, ResourceType.GROUP
    op = AclOperation
    return [
        *_allow(principal, topic, AGENCY_TOPIC_PREFIX, prefixed, [op.READ]),
        *_allow(principal, topic, DLQ_TOPIC, literal, [op.CREATE, op.WRITE]),
        *_allow(principal, topic, PROBE_TOPIC, literal, [op.CREATE, op.WRITE, op.READ]),
        *_allow(principal, topic, app_id, prefixed, [op.CREATE, op.WRITE, op.READ]),
        *_allow(principal, group, app_id, prefixed, [op.READ, op.DESCRIBE]),
    ]


def apply_acls(
    admin_config: Mapping[str, Any], bindings: Iterable[AclBinding], timeout: float = 30.0
) -> None:
    """Create ACL bindings (creating an existing binding again is a no-op)."""
    bindings = list(bindings)
    if not bindings:
        return
    admin = _admin(admin_config)  # keep a reference until the futures are done
    futures = admin.create_acls(bindings, request_timeout=timeout)
    for binding, future in futures.items():
        try:
            future.result()
        except Exception as exc:
            raise RuntimeError(f"cannot create ACL {binding}: {exc}") from None


def describe_acls(
    admin_config: Mapping[str, Any], principal: str | None = None, timeout: float = 30.0
) -> list[AclBinding]:
    """Every ACL binding (of one principal), for audits and tests."""
    from confluent_kafka.admin import AclBindingFilter

    flt = AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        f"User:{principal}" if principal else None,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    admin = _admin(admin_config)
    return list(admin.describe_acls(flt, request_timeout=timeout).result())
