"""Fetch the Java servers from Maven Central once and keep them in the shared cache.

Kafka has no single runnable artifact on Maven Central, so a throwaway pom (infra/kafka/pom.xml)
lets Maven assemble the broker's runtime classpath. Apicurio ships a runnable Quarkus archive.
Both land in ``$CASESTREAM_CACHE`` behind a ``.complete`` marker so an interrupted download is
redone rather than half-used.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

from services.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"


def _run_maven(args: list[str], what: str) -> None:
    if shutil.which("mvn") is None:
        raise RuntimeError(f"{what}: Maven (mvn) is needed to fetch jars from Maven Central")
    proc = subprocess.run(["mvn", "-q", "-B", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what}: mvn failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def kafka_classpath(settings: Settings, log=print) -> Path:
    """Directory of jars for `java -cp 'DIR/*' kafka.Kafka`."""
    target = settings.cache / f"kafka-{settings.kafka_version}"
    if (target / ".complete").exists():
        return target / "lib"
    log(f"fetching Kafka {settings.kafka_version} classpath from Maven Central (once)…")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    _run_maven(
        [
            "-f",
            str(INFRA / "kafka" / "pom.xml"),
            f"-Dkafka.version={settings.kafka_version}",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={target / 'lib'}",
        ],
        "Kafka classpath",
    )
    (target / ".complete").touch()
    return target / "lib"


def apicurio_dir(settings: Settings, log=print) -> Path:
    """Unpacked Apicurio Registry distribution holding quarkus-run.jar."""
    version = settings.apicurio_version
    target = settings.cache / f"apicurio-{version}"
    if (target / ".complete").exists():
        return target
    log(f"fetching Apicurio Registry {version} from Maven Central (once, ~160 MB)…")
    shutil.rmtree(target, ignore_errors=True)
    download = settings.cache / "downloads"
    download.mkdir(parents=True, exist_ok=True)
    archive = download / f"apicurio-registry-app-{version}-all.tar.gz"
    if not archive.exists():
        _run_maven(
            [
                "dependency:copy",
                f"-Dartifact=io.apicurio:apicurio-registry-app:{version}:tar.gz:all",
                f"-DoutputDirectory={download}",
            ],
            "Apicurio Registry",
        )
    target.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    if not (target / "quarkus-run.jar").exists():
        raise RuntimeError(f"Apicurio archive {archive} has no quarkus-run.jar at its root")
    (target / ".complete").touch()
    archive.unlink()
    return target


def fetch_all(settings: Settings, log=print) -> None:
    kafka_classpath(settings, log)
    apicurio_dir(settings, log)
