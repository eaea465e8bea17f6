"""The local Kafka broker: single-node KRaft, formatted once, data under $CASESTREAM_HOME/kafka."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path
from string import Template

from services.settings import Settings
from services.stack.fetch import INFRA, kafka_classpath
from services.stack.process import ManagedProcess, port_open

NAME = "kafka"


def process(settings: Settings) -> ManagedProcess:
    return ManagedProcess(NAME, settings.home)


def java() -> str:
    found = shutil.which("java")
    if found is None:
        raise RuntimeError("Kafka needs Java 17+ on PATH (`java` not found)")
    return found


def render_config(settings: Settings) -> Path:
    host, port = settings.kafka_host_port
    data_dir = settings.home / "kafka" / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    template = Template((INFRA / "kafka" / "server.properties.template").read_text())
    config = settings.home / "kafka" / "server.properties"
    config.write_text(
        template.substitute(
            host=host,
            port=port,
            controller_port=settings.kafka_controller_port,
            data_dir=data_dir,
        )
    )
    return config


def _format_single_node(settings: Settings, classpath: Path, config: Path) -> None:
    """Format the KRaft log dir once; the cluster id is kept so restarts reuse the same data."""
    id_file = settings.home / "kafka" / "cluster.id"
    if not id_file.exists():
        # Kafka cluster ids are 16 random bytes, base64url without padding (22 chars).
        import base64

        id_file.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
    format_storage(classpath, id_file.read_text().strip(), config)


def format_storage(
    classpath: Path, cluster_id: str, config: Path, extra: Sequence[str] = (), what: str = "kafka"
) -> None:
    """`StorageTool format -g`: formats a node's log dirs, and leaves formatted ones alone."""
    proc = subprocess.run(
        [
            java(),
            "-cp",
            f"{classpath}/*",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(config),
            "-g",
            *extra,
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{what} storage format failed:\n{proc.stdout}\n{proc.stderr}")


def start(settings: Settings, log=print) -> None:
    classpath = kafka_classpath(settings, log)
    config = render_config(settings)
    _format_single_node(settings, classpath, config)
    logs_dir = settings.home / "logs" / "kafka"
    logs_dir.mkdir(parents=True, exist_ok=True)
    process(settings).start(
        [
            java(),
            "-Xmx512m",
            "-Xms256m",
            f"-Dkafka.logs.dir={logs_dir}",
            f"-Dlog4j2.configurationFile={INFRA / 'kafka' / 'log4j2.properties'}",
            "-cp",
            f"{classpath}/*",
            "kafka.Kafka",
            str(config),
        ],
        marker=str(config),
    )


def is_ready(settings: Settings) -> bool:
    """The broker answers a metadata request (an open port alone is not enough in KRaft start-up)."""
    host, port = settings.kafka_host_port
    if not port_open(host, port):
        return False
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    metadata = admin.list_topics(timeout=3)
    return bool(metadata.brokers)
