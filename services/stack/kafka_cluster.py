"""Multi-broker and secured Kafka on one machine: for the reliability tests and as a deploy recipe.

Two shapes, both KRaft with combined broker+controller nodes, from the same classpath as the
local stack (``fetch.kafka_classpath``) and templates under ``infra/kafka/cluster/``:

* :class:`KafkaCluster` — N nodes (default 3), every node a controller voter, replication
  factor 3 and ``min.insync.replicas=2``: an ``acks=all`` write is on two brokers before it is
  acknowledged, and one broker may die without losing acknowledged data or stopping writes.
* :class:`SecureKafka` — one node whose client listener requires SASL/SCRAM-SHA-512 and whose
  ``StandardAuthorizer`` denies everything not granted by an ACL (``kafka_security``); with
  ``tls=kafka_tls.make_authority(...)`` its listeners are SASL_SSL (production's transport).

Every node is a :class:`~services.stack.process.ManagedProcess` under ``home``, so a test can
SIGKILL one (:meth:`KafkaCluster.kill`) and start it again (:meth:`KafkaCluster.start_node`).

Deploy recipe (production): render ``node.properties.template`` once per machine with that
machine's host name and ``voters`` listing all three (``1@kafka-1:9093,2@kafka-2:9093,...``),
format every node's storage with the same cluster id (``kafka.tools.StorageTool format -t <id>
-c server.properties``), start ``kafka.Kafka server.properties`` on each, and point
``CASESTREAM_KAFKA_BOOTSTRAP`` at all of them. For SASL add the listener, authorizer and super
user lines of ``sasl.properties.template`` and create users and ACLs with ``kafka_security``.

    with KafkaCluster(settings, home).start() as cluster:
        producer = Producer(cluster.client_config(acks="all", **{"enable.idempotence": True}))
        cluster.kill(2)            # SIGKILL one broker
        cluster.start_node(2)      # and bring it back
"""

from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from services.private_files import private_dir, private_file
from services.settings import Settings
from services.stack import kafka_security
from services.stack.cluster_id import new_cluster_id
from services.stack.fetch import INFRA, kafka_classpath
from services.stack.kafka import format_storage, java
from services.stack.kafka_tls import TlsFiles
from services.stack.process import ManagedProcess, child_env, free_ports, port_open, wait_until

TEMPLATES = INFRA / "kafka" / "cluster"
LOG4J = INFRA / "kafka" / "log4j2.properties"


@dataclass(frozen=True)
class Node:
    node_id: int
    host: str
    port: int
    controller_port: int
    directory: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def config(self) -> Path:
        return self.directory / "server.properties"

    def process(self, home: Path) -> ManagedProcess:
        return ManagedProcess(f"kafka-node{self.node_id}", home)


class _Nodes:
    """What both shapes share: render, format and run nodes as managed processes."""

    heap = "384m"

    def __init__(self, settings: Settings, home: Path, nodes: list[Node]) -> None:
        self.settings = settings
        self.home = Path(home)
        self.nodes = {n.node_id: n for n in nodes}
        self.cluster_id = new_cluster_id()

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.nodes.values())

    def process(self, node_id: int) -> ManagedProcess:
        return self.nodes[node_id].process(self.home)

    def _format(self, node: Node, extra: list[str] = ()) -> None:
        format_storage(
            kafka_classpath(self.settings),
            self.cluster_id,
            node.config,
            extra,
            what=f"kafka node {node.node_id}",
            log_file=node.process(self.home).log_file,
        )

    def start_node(self, node_id: int, *, wait: bool = True, timeout: float = 120.0) -> None:
        """Start one node (again) and, with ``wait``, until it serves as an unfenced broker."""
        node = self.nodes[node_id]
        logs = self.home / "logs" / f"kafka-node{node_id}"
        private_dir(logs)
        node.process(self.home).start(
            [
                java(),
                f"-Xmx{self.heap}",
                "-Xms128m",
                "-XX:+UseSerialGC",
                f"-Dkafka.logs.dir={logs}",
                f"-Dlog4j2.configurationFile={LOG4J}",
                "-cp",
                f"{kafka_classpath(self.settings)}/*",
                "kafka.Kafka",
                str(node.config),
            ],
            env=child_env(),
            marker=str(node.config),
        )
        if wait:
            self.wait_node(node_id, timeout)

    def wait_node(self, node_id: int, timeout: float = 120.0) -> None:
        node = self.nodes[node_id]
        wait_until(
            lambda: self._serves(node),
            timeout=timeout,
            what=f"kafka node {node_id} at {node.address}",
            proc=self.process(node_id),
        )

    def _serves(self, node: Node) -> bool:
        if not port_open(node.host, node.port):
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self.client_config(**{"bootstrap.servers": node.address}))
        return node.node_id in admin.list_topics(timeout=3).brokers

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (no controlled shutdown, no flush): a crash or power loss."""
        self.process(node_id).kill()

    def stop(self) -> None:
        """Stop every node (together: a controlled shutdown of each takes seconds)."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda n: self.process(n).stop(timeout=20), self.nodes))

    def alive(self, node_id: int) -> bool:
        return self.process(node_id).pid() is not None

    def log_tail(self, node_id: int, lines: int = 40) -> str:
        return self.process(node_id).log_tail(lines)

    def client_config(self, **overrides: Any) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, **overrides}

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class KafkaCluster(_Nodes):
    """A KRaft cluster of ``size`` combined broker+controller nodes on one host."""

    def __init__(
        self,
        settings: Settings,
        home: Path,
        *,
        size: int = 3,
        host: str = "127.0.0.1",
        replication_factor: int = 3,
        min_insync_replicas: int = 2,
        partitions: int = 6,
        session_timeout_ms: int = 6000,
        replica_lag_ms: int = 10000,
    ) -> None:
        ports = free_ports(2 * size, host)
        nodes = [
            Node(i + 1, host, ports[2 * i], ports[2 * i + 1], Path(home) / f"node{i + 1}")
            for i in range(size)
        ]
        super().__init__(settings, home, nodes)
        self.replication_factor = replication_factor
        self.min_insync_replicas = min_insync_replicas
        self.partitions = partitions
        self.session_timeout_ms = session_timeout_ms
        self.replica_lag_ms = replica_lag_ms

    @property
    def voters(self) -> str:
        return ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in self.nodes.values())

    def render(self, node: Node) -> Path:
        template = Template((TEMPLATES / "node.properties.template").read_text())
        private_dir(node.directory)
        private_dir(node.directory / "data")
        private_file(node.config)
        node.config.write_text(
            template.substitute(
                node_id=node.node_id,
                voters=self.voters,
                host=node.host,
                port=node.port,
                controller_port=node.controller_port,
                data_dir=node.directory / "data",
                partitions=self.partitions,
                replication_factor=self.replication_factor,
                min_insync_replicas=self.min_insync_replicas,
                session_timeout_ms=self.session_timeout_ms,
                replica_lag_ms=self.replica_lag_ms,
            )
        )
        return node.config

    def start(self, timeout: float = 180.0) -> KafkaCluster:
        """Render and format every node, start them together, wait until all are brokers."""
        for node in self.nodes.values():
            self.render(node)
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(self._format, self.nodes.values()))
        try:
            for node_id in self.nodes:
                self.start_node(node_id, wait=False)
            deadline = time.monotonic() + timeout
            for node_id in self.nodes:
                self.wait_node(node_id, max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self


class SecureKafka(_Nodes):
    """One KRaft node with SASL/SCRAM-SHA-512 clients and deny-by-default ACLs.

    The admin (super user) is created at format time; :meth:`add_users` and :meth:`allow` manage
    the others. Passwords are generated unless given and live only in memory and in the node's
    ``server.properties`` (mode 0600).
    """

    def __init__(
        self,
        settings: Settings,
        home: Path,
        *,
        host: str = "127.0.0.1",
        admin_user: str = kafka_security.ADMIN_PRINCIPAL,
        admin_password: str | None = None,
        controller_password: str | None = None,
        partitions: int = 4,
        tls: TlsFiles | None = None,
    ) -> None:
        port, controller_port = free_ports(2, host)
        super().__init__(settings, home, [Node(1, host, port, controller_port, Path(home))])
        self.admin_user = admin_user
        self.admin_password = admin_password or secrets.token_urlsafe(24)
        self.controller_password = controller_password or secrets.token_urlsafe(24)
        self.partitions = partitions
        self.tls = tls

    @property
    def protocol(self) -> str:
        """``SASL_SSL`` with ``tls``, else ``SASL_PLAINTEXT`` (loopback tests only)."""
        return "SASL_SSL" if self.tls else "SASL_PLAINTEXT"

    def _tls_settings(self) -> str:
        """Keystore and truststore lines: PEM files, TLS 1.2+ only, host names verified."""
        if self.tls is None:
            return ""
        return "\n".join(
            [
                "ssl.keystore.type=PEM",
                f"ssl.keystore.location={self.tls.broker_keystore}",
                "ssl.truststore.type=PEM",
                f"ssl.truststore.location={self.tls.ca_cert}",
                "ssl.enabled.protocols=TLSv1.3,TLSv1.2",
                "ssl.endpoint.identification.algorithm=https",
                "ssl.client.auth=none",
            ]
        )

    @property
    def node(self) -> Node:
        return self.nodes[1]

    def render(self) -> Path:
        template = Template((TEMPLATES / "sasl.properties.template").read_text())
        node = self.node
        private_dir(node.directory)
        private_dir(node.directory / "data")
        private_file(node.config)  # holds the admin's and the controller's passwords
        node.config.write_text(
            template.substitute(
                host=node.host,
                port=node.port,
                controller_port=node.controller_port,
                protocol=self.protocol,
                listener=self.protocol.lower(),
                tls_settings=self._tls_settings(),
                data_dir=node.directory / "data",
                partitions=self.partitions,
                admin_user=self.admin_user,
                admin_password=self.admin_password,
                controller_user="controller",
                controller_password=self.controller_password,
            )
        )
        return node.config

    def start(self, timeout: float = 120.0) -> SecureKafka:
        self.render()
        self._format(
            self.node,
            [
                "--add-scram",
                kafka_security.scram_format_argument(self.admin_user, self.admin_password),
            ],
        )
        try:
            self.start_node(1, timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def client_config(
        self, username: str | None = None, password: str | None = None, **overrides: Any
    ) -> dict[str, Any]:
        """librdkafka config for ``username`` (default: the admin), trusting ``tls``'s CA."""
        if username is None:
            username, password = self.admin_user, self.admin_password
        tls = {"ssl.ca.location": str(self.tls.ca_cert)} if self.tls else {}
        return {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": self.protocol,
            "sasl.mechanism": kafka_security.SCRAM_MECHANISM,
            "sasl.username": username,
            "sasl.password": password,
            **tls,
            **overrides,
        }

    def client_env(self, username: str, password_file: Path) -> dict[str, str]:
        """CASESTREAM_* variables that make a component connect as ``username``."""
        tls = {"CASESTREAM_KAFKA_SSL_CA_LOCATION": str(self.tls.ca_cert)} if self.tls else {}
        return {
            "CASESTREAM_KAFKA_BOOTSTRAP": self.bootstrap,
            "CASESTREAM_KAFKA_SECURITY_PROTOCOL": self.protocol,
            "CASESTREAM_KAFKA_SASL_MECHANISM": kafka_security.SCRAM_MECHANISM,
            "CASESTREAM_KAFKA_SASL_USERNAME": username,
            "CASESTREAM_KAFKA_SASL_PASSWORD_FILE": str(password_file),
            **tls,
        }

    def add_users(self, users: dict[str, str]) -> None:
        kafka_security.upsert_scram_users(self.client_config(), users)

    def allow(self, bindings) -> None:
        kafka_security.apply_acls(self.client_config(), bindings)

    def create_topics(self, partitions: dict[str, int], timeout: float = 30.0) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient(self.client_config())
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=p, replication_factor=1) for t, p in partitions.items()],
            request_timeout=timeout,
        )
        for future in futures.values():
            try:
                future.result()
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
