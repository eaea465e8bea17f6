"""The local Kafka broker: single-node KRaft, formatted once, data under $CASESTREAM_HOME/kafka."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from string import Template

from services.private_files import UMASK, private_dir, private_file
from services.settings import Settings
from services.stack.cluster_id import problem, settle_cluster_id
from services.stack.fetch import INFRA, kafka_classpath
from services.stack.process import ManagedProcess, child_env, port_open

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
    private_dir(data_dir.parent)
    private_dir(data_dir)
    template = Template((INFRA / "kafka" / "server.properties.template").read_text())
    config = private_file(settings.home / "kafka" / "server.properties")
    config.write_text(
        template.substitute(
            host=host,
            port=port,
            controller_port=settings.kafka_controller_port,
            data_dir=data_dir,
        )
    )
    return config


def _format_single_node(settings: Settings, classpath: Path, config: Path, log) -> None:
    """Format the KRaft log dir once; the cluster id is kept so restarts reuse the same data."""
    cluster_id = settle_cluster_id(
        settings.home / "kafka" / "cluster.id", settings.home / "kafka" / "data", log
    )
    format_storage(classpath, cluster_id, config, log_file=process(settings).log_file)


def format_storage(
    classpath: Path,
    cluster_id: str,
    config: Path,
    extra: Sequence[str] = (),
    what: str = "kafka",
    log_file: Path | None = None,
) -> None:
    """`StorageTool format -g`: formats a node's log dirs, and leaves formatted ones alone.

    The tool's output goes to the node's log (``log_file``), so a failure names the file to read.
    """
    reason = problem(cluster_id)
    if reason is not None:
        raise RuntimeError(f"{what}: cluster id {cluster_id!r} cannot be used: {reason}")
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
        env=child_env(),
        umask=UMASK,  # meta.properties and the first log segments are private too
    )
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("a") as out:
            out.write(
                f"==== storage format -t {cluster_id} -c {config}\n{proc.stdout}{proc.stderr}"
            )
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise RuntimeError(f"{what}: storage format failed: {last}")


def start(settings: Settings, log=print) -> None:
    classpath = kafka_classpath(settings, log)
    config = render_config(settings)
    _format_single_node(settings, classpath, config, log)
    logs_dir = settings.home / "logs" / "kafka"
    private_dir(logs_dir)
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
        env=child_env(),
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
