"""The one settings object: every knob casestream has, read from environment variables.

Production differs from the local stack only by URLs and credentials: point
``CASESTREAM_KAFKA_BOOTSTRAP``, ``CASESTREAM_REGISTRY_URL`` and ``CASESTREAM_CLICKHOUSE_URL``
at the real cluster and nothing else changes. The local stack (``casestream stack up``) derives
the ports it listens on from the same URLs, so tests can run a private stack on other ports by
setting these variables.

Production mode (``CASESTREAM_ENVIRONMENT=production``) refuses to start, with one line naming
the setting, when a password is empty, shorter than 12 characters, equal to its user name or
left at the development default (``casestream`` / ``analyst``): without this a forgotten
password setting silently became the default, production included. Development, demos and the
tests keep working without any password setting.

| variable | default | meaning |
| --- | --- | --- |
| CASESTREAM_ENVIRONMENT | development | `production` refuses default, empty or weak passwords (see above) |
| CASESTREAM_HOME | ./.casestream | data, logs and pid files of the local stack |
| CASESTREAM_CACHE | ~/.cache/casestream | downloaded jars (Kafka classpath, Apicurio), shared by clones |
| CASESTREAM_KAFKA_BOOTSTRAP | 127.0.0.1:9092 | Kafka bootstrap servers |
| CASESTREAM_KAFKA_CONTROLLER_PORT | 9093 | local KRaft controller port |
| CASESTREAM_KAFKA_VERSION | 4.1.1 | Kafka release fetched from Maven Central |
| CASESTREAM_REGISTRY_URL | http://127.0.0.1:8081/apis/ccompat/v7 | Confluent-compatible registry |
| CASESTREAM_REGISTRY_MANAGEMENT_PORT | 9001 | Apicurio management (health) port |
| CASESTREAM_APICURIO_VERSION | 3.3.3 | Apicurio release fetched from Maven Central |
| CASESTREAM_REGISTRY_JAVA | (a JDK >= 21 found on the machine) | java binary for Apicurio 3.3 |
| CASESTREAM_CLICKHOUSE_URL | http://127.0.0.1:8123 | ClickHouse HTTP endpoint |
| CASESTREAM_CLICKHOUSE_USER / _PASSWORD (_PASSWORD_FILE) | casestream / casestream | read-write user of the platform; the password may come from a file |
| CASESTREAM_CLICKHOUSE_DATABASE | casestream | database holding every table |
| CASESTREAM_CLICKHOUSE_CLUSTER | (none) | cluster name (`remote_servers`) of a replicated ClickHouse: DDL runs `ON CLUSTER` with `Replicated*` engines (services/clickhouse_topology.py, docs/clickhouse-cluster.md) |
| CASESTREAM_CLICKHOUSE_DEPLOYMENT | single, or replicated when a cluster is named | `single`, `replicated`, `sharded` (local tables behind `Distributed` ones) or `cloud` (ClickHouse Cloud replicates by itself: plain engines) |
| CASESTREAM_ANALYST_USER / _PASSWORD (_PASSWORD_FILE) | analyst / analyst | read-only analyst user (local endpoint) |
| CASESTREAM_PREFECT_API_URL | http://127.0.0.1:4200/api | Prefect server API |
| CASESTREAM_TOPIC_PARTITIONS | 4 | partitions for topics the platform creates |
| CASESTREAM_TOPIC_REPLICATION_FACTOR | 1 | replicas of the topics the platform creates: changelog, facts, DLQ, agency topics (3 on a real cluster; 1 leaves the latter to the broker's default) |
| CASESTREAM_WORKER_APP_ID | casestream-worker | faust app id and derive group; the intake's group is `<id>-intake` (a rebuild uses another id) |
| CASESTREAM_WORKER_INSTANCE | 0 | this worker process's name among those of one app id on one host (its RocksDB state lives in `<home>/worker/<app_id>/<instance>`; `casestream-worker@<instance>`) |
| CASESTREAM_WORKER_STANDBY_REPLICAS | 1 | standby copies of each partition's case state kept by the other workers of the app id (fast fail-over; 0 = none) |
| CASESTREAM_WORKER_METRICS_ADDR | 127.0.0.1:9464 | worker Prometheus `/metrics` (host:port; `off` disables) |
| CASESTREAM_PROBE_INTERVAL_SECONDS | 10 | the worker sends a latency probe this often (0 disables) |
| CASESTREAM_HEALTH_MAX_LAG | 5000 | `health`: max messages behind, per consumer group |
| CASESTREAM_HEALTH_MAX_SILENCE_SECONDS | 172800 | `health`: an agency with no ingest for longer is silent |
| CASESTREAM_HEALTH_EXPECTED_AGENCIES | (none) | `health`: comma-separated agencies that must be publishing |
| CASESTREAM_HEALTH_MAX_P99_LATENCY_SECONDS | 30 | `health`: max p99 of probe latency (produced → visible in ClickHouse) |
| CASESTREAM_HEALTH_MAX_PROBE_AGE_SECONDS | 120 | `health`: the newest visible probe must be younger than this |
| CASESTREAM_HEALTH_MAX_DLQ_PER_MINUTE | 5 | `health`: max dead letters per minute over the window |
| CASESTREAM_HEALTH_MAX_SEQUENCE_GAPS | 0 | `health`: max missing sequence numbers per agency |
| CASESTREAM_HEALTH_MAX_ROLLUP_AGE_SECONDS | 7200 | `health`: the newest rollup run must be younger than this |
| CASESTREAM_HEALTH_MAX_VERIFICATION_AGE_SECONDS | 604800 | `health`: warn when the last full `casestream verify` is older than this |
| CASESTREAM_HEALTH_MAX_INTEGRITY_VIOLATIONS | 0 | `health`: fail when more facts than this break an authority rule |
| CASESTREAM_HEALTH_WINDOW_SECONDS | 900 | `health`: window of "recent" throughput, DLQ rate and latency |
| CASESTREAM_KAFKA_SECURITY_PROTOCOL | PLAINTEXT | PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (Kafka clients) |
| CASESTREAM_KAFKA_SASL_MECHANISM | SCRAM-SHA-512 | SASL mechanism (SCRAM-SHA-512, SCRAM-SHA-256, PLAIN) |
| CASESTREAM_KAFKA_SASL_USERNAME | (none) | this component's Kafka principal |
| CASESTREAM_KAFKA_SASL_PASSWORD / _PASSWORD_FILE | (none) | its password, or a file holding it (never logged) |
| CASESTREAM_KAFKA_SSL_CA_LOCATION | (system CAs) | CA bundle (PEM) for SSL / SASL_SSL; host names are always verified |
| CASESTREAM_CLICKHOUSE_ANONYMOUS_DEFAULT | 0 | `1`: the local endpoint also lets anyone in, without password, as the read-only user `default` |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlsplit

from services.clickhouse_topology import Topology, TopologyError

ENVIRONMENTS = ("development", "production")
#: Development defaults: convenient locally, refused in production.
DEV_CLICKHOUSE_PASSWORD = "casestream"
DEV_ANALYST_PASSWORD = "analyst"
MIN_PRODUCTION_PASSWORD_LENGTH = 12


class SettingsError(ValueError):
    """A setting that cannot be used: the message is one line naming the variable."""


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _secret(name: str) -> str | None:
    """A secret from ``NAME`` or from the file named by ``NAME_FILE``.

    The file form suits secrets mounted by an orchestrator; one trailing newline is dropped.
    Errors name the variable and the file, never the secret's text.
    """
    value = os.environ.get(name)
    if value not in (None, ""):
        return value
    path = os.environ.get(f"{name}_FILE")
    if not path:
        return None
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SettingsError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
    return text[:-1] if text.endswith("\n") else text


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


@dataclass(frozen=True)
class Settings:
    home: Path
    cache: Path
    kafka_bootstrap: str
    kafka_controller_port: int
    kafka_version: str
    registry_url: str
    registry_management_port: int
    apicurio_version: str
    registry_java: str | None
    clickhouse_url: str
    clickhouse_user: str
    clickhouse_password: str = field(repr=False)
    clickhouse_database: str
    analyst_user: str
    analyst_password: str = field(repr=False)
    prefect_api_url: str
    topic_partitions: int
    worker_app_id: str
    topic_replication_factor: int = 1
    # Operations (services/ops/health.py): worker metrics, latency probes, health thresholds.
    worker_metrics_addr: str = "127.0.0.1:9464"
    worker_instance: str = "0"
    worker_standby_replicas: int = 1
    probe_interval_seconds: float = 10.0
    health_max_lag: int = 5000
    health_max_silence_seconds: float = 172800.0
    health_expected_agencies: tuple[str, ...] = ()
    health_max_p99_latency_seconds: float = 30.0
    health_max_probe_age_seconds: float = 120.0
    health_max_dlq_per_minute: float = 5.0
    health_max_sequence_gaps: int = 0
    health_max_rollup_age_seconds: float = 7200.0
    health_max_verification_age_seconds: float = 604800.0
    health_max_integrity_violations: int = 0
    health_window_seconds: float = 900.0
    # Kafka client security. Defaults are the local stack's PLAINTEXT; production SASL
    # is configuration only. The password is never shown by repr() (`casestream settings`).
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = field(default=None, repr=False)
    kafka_ssl_ca_location: str | None = None
    environment: str = "development"
    # The local endpoint's passwordless read-only "default" user exists only when asked for.
    clickhouse_anonymous_default: bool = False
    # ClickHouse beyond one node (services/clickhouse_topology.py).
    clickhouse_cluster: str = ""
    clickhouse_deployment: str = ""
    # Which passwords were given explicitly (a production check needs to know "unset").
    clickhouse_password_set: bool = field(default=True, repr=False)
    analyst_password_set: bool = field(default=True, repr=False)

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @property
    def clickhouse_topology(self) -> Topology:
        """How the ClickHouse tables are laid out (one server, a cluster, Cloud)."""
        try:
            return Topology.of(self.clickhouse_deployment, self.clickhouse_cluster)
        except TopologyError as exc:
            raise SettingsError(str(exc)) from None

    def _check_transport(self) -> None:
        """Production refuses clear text to another host: events, passwords and figures would
        cross the network readable (loopback stays allowed, e.g. a sidecar proxy)."""
        hosts = [h.strip().rpartition(":")[0].strip("[]") for h in self.kafka_bootstrap.split(",")]
        remote = [h for h in hosts if h and not _loopback(h)]
        if remote and self.kafka_security_protocol in ("PLAINTEXT", "SASL_PLAINTEXT"):
            raise SettingsError(
                f"CASESTREAM_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} sends events "
                f"in clear text to {remote[0]}; CASESTREAM_ENVIRONMENT=production refuses it "
                "(use SASL_SSL)"
            )
        url = urlsplit(self.clickhouse_url)
        if url.scheme == "http" and url.hostname and not _loopback(url.hostname):
            raise SettingsError(
                f"CASESTREAM_CLICKHOUSE_URL={self.clickhouse_url} sends passwords and figures in "
                "clear text; CASESTREAM_ENVIRONMENT=production refuses it (use https://)"
            )

    def check(self) -> Settings:
        """Raise :class:`SettingsError` for settings this environment must refuse; returns self."""
        if self.environment not in ENVIRONMENTS:
            raise SettingsError(
                f"CASESTREAM_ENVIRONMENT must be one of {', '.join(ENVIRONMENTS)}, "
                f"got {self.environment!r}"
            )
        self.clickhouse_topology  # noqa: B018 - SettingsError naming the variable and value
        if not self.production:
            return self
        self._check_transport()
        checks = [
            (
                "CASESTREAM_CLICKHOUSE_PASSWORD",
                self.clickhouse_password,
                self.clickhouse_password_set,
                self.clickhouse_user,
                DEV_CLICKHOUSE_PASSWORD,
            ),
            (
                "CASESTREAM_ANALYST_PASSWORD",
                self.analyst_password,
                self.analyst_password_set,
                self.analyst_user,
                DEV_ANALYST_PASSWORD,
            ),
        ]
        if self.kafka_security_protocol.startswith("SASL"):
            checks.append(
                (
                    "CASESTREAM_KAFKA_SASL_PASSWORD",
                    self.kafka_sasl_password or "",
                    bool(self.kafka_sasl_password),
                    self.kafka_sasl_username or "",
                    "",
                )
            )
        metrics_host = self.worker_metrics_addr.strip().rpartition(":")[0].strip("[]")
        if metrics_host in ("0.0.0.0", "::", "*"):
            raise SettingsError(
                f"CASESTREAM_WORKER_METRICS_ADDR={self.worker_metrics_addr} listens on every "
                "interface; CASESTREAM_ENVIRONMENT=production refuses it (give the address of "
                "the interface Prometheus scrapes, or 127.0.0.1)"
            )
        for name, password, given, user, default in checks:
            problem = _weak_password(password, given, user, default)
            if problem:
                raise SettingsError(
                    f"{name} {problem}; CASESTREAM_ENVIRONMENT=production refuses it "
                    f"(set {name} or {name}_FILE)"
                )
        return self

    @classmethod
    def from_env(cls) -> Settings:
        clickhouse_password = _secret("CASESTREAM_CLICKHOUSE_PASSWORD")
        analyst_password = _secret("CASESTREAM_ANALYST_PASSWORD")
        return cls(
            environment=_env("CASESTREAM_ENVIRONMENT", "development").strip().lower(),
            clickhouse_password_set=bool(clickhouse_password),
            analyst_password_set=bool(analyst_password),
            home=Path(_env("CASESTREAM_HOME", ".casestream")).resolve(),
            cache=Path(_env("CASESTREAM_CACHE", str(Path.home() / ".cache" / "casestream"))),
            kafka_bootstrap=_env("CASESTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            kafka_controller_port=int(_env("CASESTREAM_KAFKA_CONTROLLER_PORT", "9093")),
            kafka_version=_env("CASESTREAM_KAFKA_VERSION", "4.1.1"),
            registry_url=_env("CASESTREAM_REGISTRY_URL", "http://127.0.0.1:8081/apis/ccompat/v7"),
            registry_management_port=int(_env("CASESTREAM_REGISTRY_MANAGEMENT_PORT", "9001")),
            apicurio_version=_env("CASESTREAM_APICURIO_VERSION", "3.3.3"),
            registry_java=os.environ.get("CASESTREAM_REGISTRY_JAVA") or None,
            clickhouse_url=_env("CASESTREAM_CLICKHOUSE_URL", "http://127.0.0.1:8123"),
            clickhouse_user=_env("CASESTREAM_CLICKHOUSE_USER", "casestream"),
            clickhouse_password=clickhouse_password or DEV_CLICKHOUSE_PASSWORD,
            clickhouse_database=_env("CASESTREAM_CLICKHOUSE_DATABASE", "casestream"),
            clickhouse_cluster=_env("CASESTREAM_CLICKHOUSE_CLUSTER", "").strip(),
            clickhouse_deployment=_env("CASESTREAM_CLICKHOUSE_DEPLOYMENT", "").strip().lower(),
            analyst_user=_env("CASESTREAM_ANALYST_USER", "analyst"),
            analyst_password=analyst_password or DEV_ANALYST_PASSWORD,
            prefect_api_url=_env("CASESTREAM_PREFECT_API_URL", "http://127.0.0.1:4200/api"),
            topic_partitions=int(_env("CASESTREAM_TOPIC_PARTITIONS", "4")),
            worker_app_id=_env("CASESTREAM_WORKER_APP_ID", "casestream-worker"),
            topic_replication_factor=int(_env("CASESTREAM_TOPIC_REPLICATION_FACTOR", "1")),
            worker_metrics_addr=_env("CASESTREAM_WORKER_METRICS_ADDR", "127.0.0.1:9464"),
            worker_instance=_env("CASESTREAM_WORKER_INSTANCE", "0"),
            worker_standby_replicas=int(_env("CASESTREAM_WORKER_STANDBY_REPLICAS", "1")),
            probe_interval_seconds=float(_env("CASESTREAM_PROBE_INTERVAL_SECONDS", "10")),
            health_max_lag=int(_env("CASESTREAM_HEALTH_MAX_LAG", "5000")),
            health_max_silence_seconds=float(
                _env("CASESTREAM_HEALTH_MAX_SILENCE_SECONDS", "172800")
            ),
            health_expected_agencies=tuple(
                a.strip()
                for a in _env("CASESTREAM_HEALTH_EXPECTED_AGENCIES", "").split(",")
                if a.strip()
            ),
            health_max_p99_latency_seconds=float(
                _env("CASESTREAM_HEALTH_MAX_P99_LATENCY_SECONDS", "30")
            ),
            health_max_probe_age_seconds=float(
                _env("CASESTREAM_HEALTH_MAX_PROBE_AGE_SECONDS", "120")
            ),
            health_max_dlq_per_minute=float(_env("CASESTREAM_HEALTH_MAX_DLQ_PER_MINUTE", "5")),
            health_max_sequence_gaps=int(_env("CASESTREAM_HEALTH_MAX_SEQUENCE_GAPS", "0")),
            health_max_rollup_age_seconds=float(
                _env("CASESTREAM_HEALTH_MAX_ROLLUP_AGE_SECONDS", "7200")
            ),
            health_max_verification_age_seconds=float(
                _env("CASESTREAM_HEALTH_MAX_VERIFICATION_AGE_SECONDS", "604800")
            ),
            health_max_integrity_violations=int(
                _env("CASESTREAM_HEALTH_MAX_INTEGRITY_VIOLATIONS", "0")
            ),
            health_window_seconds=float(_env("CASESTREAM_HEALTH_WINDOW_SECONDS", "900")),
            # Kafka client security
            kafka_security_protocol=_env("CASESTREAM_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper(),
            kafka_sasl_mechanism=_env("CASESTREAM_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512").upper(),
            kafka_sasl_username=os.environ.get("CASESTREAM_KAFKA_SASL_USERNAME") or None,
            kafka_sasl_password=_secret("CASESTREAM_KAFKA_SASL_PASSWORD"),
            kafka_ssl_ca_location=os.environ.get("CASESTREAM_KAFKA_SSL_CA_LOCATION") or None,
            clickhouse_anonymous_default=_env("CASESTREAM_CLICKHOUSE_ANONYMOUS_DEFAULT", "0")
            .strip()
            .lower()
            in ("1", "true", "yes", "on"),
        ).check()

    # Where the local stack listens, derived from the URLs so there is one source of truth.
    @property
    def kafka_host_port(self) -> tuple[str, int]:
        first = self.kafka_bootstrap.split(",")[0]
        host, _, port = first.rpartition(":")
        return host or "127.0.0.1", int(port)

    @property
    def registry_host_port(self) -> tuple[str, int]:
        return _host_port(self.registry_url, 8081)

    @property
    def clickhouse_host_port(self) -> tuple[str, int]:
        return _host_port(self.clickhouse_url, 8123)

    @property
    def prefect_host_port(self) -> tuple[str, int]:
        return _host_port(self.prefect_api_url, 4200)

    # every Kafka client of the platform is built from these two, so a secured cluster
    # needs configuration only (CASESTREAM_KAFKA_SECURITY_PROTOCOL and the SASL variables).
    def kafka_client_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka (confluent-kafka) configuration: bootstrap servers plus security settings."""
        protocol = self.kafka_security_protocol
        if protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise ValueError(
                f"CASESTREAM_KAFKA_SECURITY_PROTOCOL must be PLAINTEXT, SSL, SASL_PLAINTEXT or "
                f"SASL_SSL, got {protocol!r}"
            )
        config: dict[str, Any] = {"bootstrap.servers": self.kafka_bootstrap}
        if protocol != "PLAINTEXT":
            config["security.protocol"] = protocol
        if protocol.startswith("SASL"):
            if not self.kafka_sasl_username or self.kafka_sasl_password is None:
                raise ValueError(
                    f"{protocol} needs CASESTREAM_KAFKA_SASL_USERNAME and "
                    "CASESTREAM_KAFKA_SASL_PASSWORD (or CASESTREAM_KAFKA_SASL_PASSWORD_FILE)"
                )
            config["sasl.mechanism"] = self.kafka_sasl_mechanism
            config["sasl.username"] = self.kafka_sasl_username
            config["sasl.password"] = self.kafka_sasl_password
        if self.kafka_ssl_ca_location:
            # A CA with a clear-text protocol means the operator believes traffic is encrypted.
            if not protocol.endswith("SSL"):
                raise ValueError(
                    "CASESTREAM_KAFKA_SSL_CA_LOCATION is set but "
                    f"CASESTREAM_KAFKA_SECURITY_PROTOCOL={protocol} sends in clear text: "
                    "use SSL or SASL_SSL"
                )
            if not os.access(self.kafka_ssl_ca_location, os.R_OK):
                raise ValueError(
                    f"CASESTREAM_KAFKA_SSL_CA_LOCATION={self.kafka_ssl_ca_location!r}: "
                    "no readable CA file there"
                )
            config["ssl.ca.location"] = self.kafka_ssl_ca_location
        # librdkafka verifies the broker's host name by default (ssl.endpoint.identification.
        # algorithm=https); no setting here turns that off.
        config.update(overrides)
        return config

    def faust_broker_credentials(self) -> Any:
        """The same security settings for faust/aiokafka (``broker_credentials``); None = PLAINTEXT."""
        self.kafka_client_config()  # validates protocol and credentials with the same messages
        protocol = self.kafka_security_protocol
        if protocol == "PLAINTEXT":
            return None
        import ssl

        import faust

        context = (
            ssl.create_default_context(cafile=self.kafka_ssl_ca_location)
            if protocol.endswith("SSL")
            else None
        )
        if protocol == "SSL":
            return faust.SSLCredentials(context)
        return faust.SASLCredentials(
            username=self.kafka_sasl_username,
            password=self.kafka_sasl_password,
            mechanism=self.kafka_sasl_mechanism,
            ssl_context=context,
        )

    def clickhouse_client(self, *, analyst: bool = False, database: str | None = None, **kwargs):
        """A clickhouse-connect client for the platform user (or the read-only analyst)."""
        import clickhouse_connect

        url = urlparse(self.clickhouse_url)
        return clickhouse_connect.get_client(
            host=url.hostname,
            port=url.port or (8443 if url.scheme == "https" else 8123),
            secure=url.scheme == "https",
            username=self.analyst_user if analyst else self.clickhouse_user,
            password=self.analyst_password if analyst else self.clickhouse_password,
            database=database or self.clickhouse_database,
            **_with_settings(kwargs, self.clickhouse_topology.client_settings()),
        )


def _with_settings(kwargs: dict[str, Any], needed: dict[str, str]) -> dict[str, Any]:
    """The client's keyword arguments with the deployment's query settings added (the caller's
    own win); unchanged when the deployment needs none."""
    if not needed:
        return kwargs
    return {**kwargs, "settings": {**needed, **(kwargs.get("settings") or {})}}


def _weak_password(password: str, given: bool, user: str, default: str) -> str | None:
    """Why ``password`` must not be used in production, or None. Never shows the password."""
    if not given:
        return "is empty or not set (the development default would be used)"
    if not password.strip():
        return "is blank"
    if default and password == default:
        return "is the development default"
    if password == user:
        return "equals the user name"
    if len(password) < MIN_PRODUCTION_PASSWORD_LENGTH:
        return f"is shorter than {MIN_PRODUCTION_PASSWORD_LENGTH} characters"
    return None


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or default_port
