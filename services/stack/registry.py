"""The local schema registry: Apicurio Registry 3 with its Confluent-compatible API.

Schemas are stored with Apicurio's KafkaSQL storage on our own broker (topic
``kafkasql-journal``), so they survive restarts and live with the events they describe.
Apicurio 3.3 needs Java 21+; Kafka itself runs on the machine's default Java.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx

from services.private_files import private_dir
from services.settings import Settings
from services.stack.fetch import apicurio_dir
from services.stack.process import ManagedProcess, child_env

NAME = "registry"


def process(settings: Settings) -> ManagedProcess:
    return ManagedProcess(NAME, settings.home)


def _java_major(java: str) -> int:
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)', out)
    return int(match.group(1)) if match else 0


def find_java(settings: Settings) -> str:
    """A java >= 21: the configured one, JAVA_HOME, PATH, or any JDK under /usr/lib/jvm."""
    candidates = [settings.registry_java] if settings.registry_java else []
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    candidates.append("java")
    candidates += sorted(str(p) for p in Path("/usr/lib/jvm").glob("*/bin/java"))
    for java in candidates:
        try:
            if _java_major(java) >= 21:
                return java
        except OSError:
            continue
    raise RuntimeError(
        "Apicurio Registry 3.3 needs Java 21 or newer; none found. Install one and set "
        "CASESTREAM_REGISTRY_JAVA=/path/to/bin/java"
    )


def start(settings: Settings, log=print) -> None:
    app = apicurio_dir(settings, log)
    host, port = settings.registry_host_port
    work = settings.home / "registry"
    private_dir(work)
    process(settings).start(
        [
            find_java(settings),
            "-Xmx512m",
            f"-Dquarkus.http.host={host}",
            f"-Dquarkus.http.port={port}",
            f"-Dquarkus.management.host={host}",
            f"-Dquarkus.management.port={settings.registry_management_port}",
            "-Dapicurio.storage.kind=kafkasql",
            f"-Dapicurio.kafkasql.bootstrap.servers={settings.kafka_bootstrap}",
            "-Dquarkus.log.console.format=%d{HH:mm:ss} %-5p [%c{2.}] %s%e%n",
            "-jar",
            str(app / "quarkus-run.jar"),
        ],
        env=child_env(),
        cwd=work,
        marker=f"quarkus.http.port={port}",
    )


def is_ready(settings: Settings) -> bool:
    response = httpx.get(f"{settings.registry_url.rstrip('/')}/subjects", timeout=2)
    return response.status_code == 200
