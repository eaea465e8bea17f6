"""Process and deployment hardening: what a local attacker reads from a running stack.

* ``/proc/<pid>/environ`` of every server: a child gets an allow-listed environment, so a secret
  in the operator's shell (a cloud key, a token, the platform's own passwords) is not there.
* Listening sockets of every server (read from ``/proc/net/tcp*``, the kernel's own table): on
  loopback only, unless configured otherwise.
* Production mode refuses default, empty and weak passwords with one line naming the setting.
* The systemd units: private umask, no privilege gain, read-only file system but the state dir.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.ops.rebuild import drop_worker_topics
from services.settings import Settings, SettingsError
from services.stack import clickhouse, kafka, manager, prefect, registry, worker
from services.stack.process import BASE_ENV, PYTHON_ENV, child_env, free_ports, wait_until
from tests.conftest import stack_env

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted((REPO / "infra" / "deploy" / "systemd").glob("*.service"))
ENV_EXAMPLE = REPO / "infra" / "deploy" / "casestream.env.example"

#: Secrets an operator's shell may well hold; no stack child needs any of them.
PLANTED = {
    "AWS_SECRET_ACCESS_KEY": "planted-aws-secret",
    "GITHUB_TOKEN": "planted-github-token",
    "PREFECT_API_KEY": "planted-prefect-cloud-key",
    "KAFKA_OPTS": "-Dplanted.kafka.opts=1",  # read by Kafka's scripts
    # Read by every JVM itself: a leak lets whoever sets them load an agent into Kafka/Apicurio.
    "JAVA_TOOL_OPTIONS": "-Dplanted.tool.options=1",
    "_JAVA_OPTIONS": "-Dplanted.java.options=1",
    "LD_PRELOAD": "",  # (empty: harmless if it leaked, but it must not)
}
#: The platform's own secrets: only the worker (which connects with them) may have them.
PLATFORM_SECRETS = {
    "CASESTREAM_CLICKHOUSE_PASSWORD": "planted-clickhouse-password",
    "CASESTREAM_ANALYST_PASSWORD": "planted-analyst-password",
    "CASESTREAM_KAFKA_SASL_PASSWORD": "planted-kafka-password",
}


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if b"=" in item)


# =========================================================================== environment


@pytest.mark.unit
def test_child_env_keeps_what_a_process_needs_and_nothing_else():
    source = {
        "PATH": "/usr/bin",
        "HOME": "/home/op",
        "LANG": "C.UTF-8",
        "JAVA_HOME": "/usr/lib/jvm/21",
        **PLANTED,
        **PLATFORM_SECRETS,
        "CASESTREAM_HOME": "/var/lib/casestream",
    }
    env = child_env(source=source)
    assert env == {k: source[k] for k in ("PATH", "HOME", "LANG", "JAVA_HOME")}
    worker_like = child_env(PYTHON_ENV, prefixes=("CASESTREAM_",), source=source)
    assert not set(PLANTED) & set(worker_like)
    assert worker_like["CASESTREAM_HOME"] == "/var/lib/casestream"


@pytest.fixture
def planted_home(tmp_path, monkeypatch) -> Iterator[Settings]:
    """Settings of a throwaway home on free ports, with secrets planted in our environment."""
    for key, value in {
        **stack_env(),
        **PLANTED,
        **PLATFORM_SECRETS,
        "CASESTREAM_HOME": str(tmp_path / "home"),
        "CASESTREAM_WORKER_METRICS_ADDR": "off",
    }.items():
        monkeypatch.setenv(key, value)
    yield Settings.from_env()


@pytest.mark.integration
@pytest.mark.parametrize(
    "part", [kafka, registry, clickhouse, prefect, worker], ids=lambda m: m.NAME
)
def test_a_stack_child_does_not_inherit_secrets_from_our_environment(planted_home, part):
    """Start the real server from a shell holding secrets; read what its /proc/<pid>/environ shows."""
    part.start(planted_home, log=lambda m: None)
    proc = part.process(planted_home)
    try:
        pid = proc.pid()
        assert pid, proc.log_tail()
        env = _environ(pid)
    finally:
        proc.stop(timeout=20)
    leaked = sorted(set(PLANTED) & set(env))
    assert leaked == [], f"{part.NAME} inherited {leaked}"
    allowed = set(BASE_ENV) | set(PYTHON_ENV)
    if part is worker:  # it connects to Kafka and ClickHouse with its own settings
        allowed |= {k for k in env if k.startswith("CASESTREAM_")}
    if part is prefect:
        allowed |= set(prefect.prefect_env(planted_home))
    assert sorted(set(env) - allowed) == []
    if part is not worker:
        assert not set(PLATFORM_SECRETS) & set(env)


@pytest.mark.integration
def test_running_stack_children_have_only_allow_listed_variables(stack: Settings):
    """The session's stack (started by the same code as `stack up`): nothing else of pytest's."""
    assert "PYTEST_CURRENT_TEST" in os.environ  # a variable of ours no child may have
    for part, _ in manager.COMPONENTS:
        pid = part.process(stack).pid()
        assert pid, f"{part.NAME} is not running"
        extra = set(prefect.prefect_env(stack)) if part is prefect else set()
        unexpected = set(_environ(pid)) - set(BASE_ENV) - set(PYTHON_ENV) - extra
        assert sorted(unexpected) == [], f"{part.NAME} inherited {sorted(unexpected)}"


# =========================================================================== listeners


def _hex_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address of /proc/net/tcp{,6}: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def listening_sockets() -> dict[int, tuple[str, int]]:
    """inode -> (address, port) of every TCP socket in LISTEN state, from the kernel's table."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state == "0A":  # TCP_LISTEN
                address, port = local.split(":")
                found[inode] = (str(_hex_address(address)), int(port, 16))
    return found


def _group_pids(leader: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == leader:
                pids.append(int(stat.parent.name))
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return pids or [leader]


def listeners_of(leader: int) -> list[tuple[str, int]]:
    """Every (address, port) a process group listens on."""
    table = listening_sockets()
    found = set()
    for pid in _group_pids(leader):
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in table:
                    found.add(table[inode])
    return sorted(found)


def _not_loopback(listeners: list[tuple[str, int]]) -> list[tuple[str, int]]:
    bad = []
    for address, port in listeners:
        ip = ipaddress.ip_address(address)
        mapped = getattr(ip, "ipv4_mapped", None)
        if not (ip.is_loopback or (mapped is not None and mapped.is_loopback)):
            bad.append((address, port))
    return bad


@pytest.mark.unit
def test_the_proc_net_parser_reads_loopback_and_wildcard_addresses():
    assert str(_hex_address("0100007F")) == "127.0.0.1"
    assert str(_hex_address("00000000")) == "0.0.0.0"
    assert str(_hex_address("00000000000000000000000001000000")) == "::1"
    assert _not_loopback([("0.0.0.0", 1), ("::", 2), ("127.0.0.1", 3), ("::1", 4)]) == [
        ("0.0.0.0", 1),
        ("::", 2),
    ]


@pytest.mark.integration
def test_every_stack_server_listens_on_loopback_only(stack: Settings):
    """Kafka (client and controller), Apicurio (API and management), the endpoint, Prefect."""
    seen: dict[str, list[tuple[str, int]]] = {}
    for part, _ in manager.COMPONENTS:
        pid = part.process(stack).pid()
        assert pid, f"{part.NAME} is not running"
        seen[part.NAME] = listeners_of(pid)
    ports = {port for listeners in seen.values() for _, port in listeners}
    expected = {
        stack.kafka_host_port[1],
        stack.kafka_controller_port,
        stack.registry_host_port[1],
        stack.registry_management_port,
        stack.clickhouse_host_port[1],
        stack.prefect_host_port[1],
    }
    assert expected <= ports, f"not all servers found: {seen}"  # the check saw every server
    assert {name: _not_loopback(ls) for name, ls in seen.items()} == {n: [] for n in seen}


@pytest.mark.integration
def test_the_worker_metrics_listen_on_loopback_by_default(stack: Settings, monkeypatch):
    """A real worker started like `casestream worker start`, metrics port given, host not."""
    tag = uuid.uuid4().hex[:8]
    (port,) = free_ports(1)
    monkeypatch.setenv("CASESTREAM_WORKER_METRICS_ADDR", f":{port}")
    monkeypatch.setenv("CASESTREAM_WORKER_APP_ID", f"hardening-{tag}")
    monkeypatch.setenv("CASESTREAM_CLICKHOUSE_DATABASE", f"hardening_{tag}")
    settings = Settings.from_env()
    worker.start(settings)
    proc = worker.process(settings)
    try:
        pid = proc.pid()
        wait_until(
            lambda: port in {p for _, p in listeners_of(pid)},
            timeout=180,
            what="worker metrics",
            proc=proc,
        )
        listeners = listeners_of(pid)
    finally:
        proc.stop(timeout=30)
        stack.clickhouse_client(database="default").command(
            f"DROP DATABASE IF EXISTS hardening_{tag}"
        )
        drop_worker_topics(settings, f"hardening-{tag}")
    assert listeners and _not_loopback(listeners) == [], listeners


@pytest.mark.integration
def test_the_gateway_listens_on_loopback_by_default(stack: Settings, tmp_path):
    (port,) = free_ports(1)
    env = {**os.environ, "CASESTREAM_GATEWAY_TOKENS_FILE": str(tmp_path / "tokens.json")}
    gateway = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "gateway", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: port in {p for _, p in listeners_of(gateway.pid)},
            timeout=120,
            what="gateway",
        )
        listeners = listeners_of(gateway.pid)
    finally:
        gateway.terminate()
        gateway.wait(30)
    assert listeners and _not_loopback(listeners) == [], listeners


# =========================================================================== production mode


STRONG = "correct-horse-battery-staple"
PASSWORD_VARIABLES = (
    "CASESTREAM_CLICKHOUSE_PASSWORD",
    "CASESTREAM_CLICKHOUSE_PASSWORD_FILE",
    "CASESTREAM_ANALYST_PASSWORD",
    "CASESTREAM_ANALYST_PASSWORD_FILE",
    "CASESTREAM_KAFKA_SASL_PASSWORD",
    "CASESTREAM_KAFKA_SASL_PASSWORD_FILE",
    "CASESTREAM_KAFKA_SECURITY_PROTOCOL",
    "CASESTREAM_WORKER_METRICS_ADDR",
)


@pytest.fixture
def production(monkeypatch) -> pytest.MonkeyPatch:
    for name in PASSWORD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CASESTREAM_ENVIRONMENT", "production")
    monkeypatch.setenv("CASESTREAM_CLICKHOUSE_PASSWORD", STRONG)
    monkeypatch.setenv("CASESTREAM_ANALYST_PASSWORD", STRONG + "-analyst")
    return monkeypatch


@pytest.mark.unit
@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("CASESTREAM_CLICKHOUSE_PASSWORD", None, "is empty or not set"),
        ("CASESTREAM_CLICKHOUSE_PASSWORD", "", "is empty or not set"),
        ("CASESTREAM_CLICKHOUSE_PASSWORD", "casestream", "is the development default"),
        ("CASESTREAM_CLICKHOUSE_PASSWORD", "            ", "is blank"),
        ("CASESTREAM_CLICKHOUSE_PASSWORD", "short-pw", "is shorter than 12 characters"),
        ("CASESTREAM_ANALYST_PASSWORD", None, "is empty or not set"),
        ("CASESTREAM_ANALYST_PASSWORD", "analyst", "is the development default"),
    ],
)
def test_production_refuses_a_default_empty_or_weak_password(production, variable, value, reason):
    if value is None:
        production.delenv(variable)
    else:
        production.setenv(variable, value)
    with pytest.raises(SettingsError) as refused:
        Settings.from_env()
    message = str(refused.value)
    assert message.startswith(f"{variable} {reason}") and "\n" not in message
    assert "CASESTREAM_ENVIRONMENT=production" in message
    if value and value.strip():
        assert value not in message.replace(variable, "")  # the password itself is never shown


@pytest.mark.unit
def test_production_refuses_a_password_equal_to_the_user_name(production):
    production.setenv("CASESTREAM_CLICKHOUSE_USER", "casestream-platform")
    production.setenv("CASESTREAM_CLICKHOUSE_PASSWORD", "casestream-platform")
    with pytest.raises(SettingsError, match="CASESTREAM_CLICKHOUSE_PASSWORD equals the user name"):
        Settings.from_env()


@pytest.mark.unit
def test_production_refuses_an_empty_password_file(production, tmp_path):
    (tmp_path / "pw").write_text("\n")
    production.delenv("CASESTREAM_CLICKHOUSE_PASSWORD")
    production.setenv("CASESTREAM_CLICKHOUSE_PASSWORD_FILE", str(tmp_path / "pw"))
    with pytest.raises(SettingsError, match="^CASESTREAM_CLICKHOUSE_PASSWORD is empty or not set"):
        Settings.from_env()


@pytest.mark.unit
def test_production_refuses_sasl_without_a_password(production):
    production.setenv("CASESTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    production.setenv("CASESTREAM_KAFKA_SASL_USERNAME", "casestream-worker")
    with pytest.raises(SettingsError, match="^CASESTREAM_KAFKA_SASL_PASSWORD is empty or not set"):
        Settings.from_env()


@pytest.mark.unit
@pytest.mark.parametrize("addr", ["0.0.0.0:9464", "[::]:9464", ":::9464"])
def test_production_refuses_worker_metrics_on_every_interface(production, addr):
    production.setenv("CASESTREAM_WORKER_METRICS_ADDR", addr)
    with pytest.raises(SettingsError, match="^CASESTREAM_WORKER_METRICS_ADDR="):
        Settings.from_env()


@pytest.mark.unit
def test_an_unknown_environment_is_refused_not_taken_for_development(monkeypatch):
    monkeypatch.setenv("CASESTREAM_ENVIRONMENT", "prod")
    with pytest.raises(SettingsError, match="^CASESTREAM_ENVIRONMENT must be one of"):
        Settings.from_env()


@pytest.mark.unit
def test_production_with_strong_passwords_starts_and_development_needs_none(production):
    settings = Settings.from_env()
    assert settings.production and settings.clickhouse_password == STRONG
    production.setenv("CASESTREAM_ENVIRONMENT", "development")
    production.delenv("CASESTREAM_CLICKHOUSE_PASSWORD")
    production.delenv("CASESTREAM_ANALYST_PASSWORD")
    dev = Settings.from_env()
    assert (dev.clickhouse_password, dev.analyst_password) == ("casestream", "analyst")


@pytest.mark.unit
def test_the_cli_refuses_production_defaults_in_one_line(tmp_path):
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in PASSWORD_VARIABLES and not key.startswith("CASESTREAM_")
    }
    env.update({"CASESTREAM_ENVIRONMENT": "production", "CASESTREAM_HOME": str(tmp_path)})
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "settings"],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: CASESTREAM_CLICKHOUSE_PASSWORD is empty or not set (the development default "
        "would be used); CASESTREAM_ENVIRONMENT=production refuses it (set "
        "CASESTREAM_CLICKHOUSE_PASSWORD or CASESTREAM_CLICKHOUSE_PASSWORD_FILE)"
    ]


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


@pytest.mark.unit
def test_the_deploy_env_example_is_production_and_starts_with_its_secret_files(
    tmp_path, monkeypatch
):
    example = _env_example()
    assert example["CASESTREAM_ENVIRONMENT"] == "production"
    for key in list(os.environ):
        if key.startswith("CASESTREAM_"):
            monkeypatch.delenv(key)
    for key, value in example.items():
        if key.endswith("_FILE"):  # the secret files the operator provides
            secret = tmp_path / Path(value).name
            secret.write_text(f"{uuid.uuid4()}\n")
            value = str(secret)
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    assert settings.production
    assert settings.worker_metrics_addr.startswith("127.0.0.1:")


# =========================================================================== systemd units


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{path.name}: {line!r} outside a section"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


REQUIRED = {
    "UMask": "0077",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "CapabilityBoundingSet": "",
}


@pytest.mark.unit
def test_every_unit_is_sandboxed_and_writes_only_its_state_dir():
    assert len(UNITS) >= 4
    home = _env_example()["CASESTREAM_HOME"]
    for unit in UNITS:
        service = parse_unit(unit)["Service"]
        wrong = {
            key: service.get(key)
            for key, value in REQUIRED.items()
            if service.get(key, [None])[-1] != value
        }
        assert wrong == {}, f"{unit.name}: {wrong}"
        assert service["User"][-1] not in ("", "root"), unit.name
        writable = " ".join(service.get("ReadWritePaths", [])).split()
        assert home in writable, f"{unit.name}: CASESTREAM_HOME {home} is not writable"
        assert all(Path(p).is_relative_to("/var/lib/casestream") for p in writable), unit.name


@pytest.mark.unit
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_accepts_every_unit():
    """`systemd-analyze verify`: unknown keys or bad values are reported (and ignored by systemd)."""
    for unit in UNITS:
        result = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(unit)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        complaints = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            # the deployment's binary is not installed on a development machine
            if line.strip() and "/opt/casestream/.venv/bin/casestream is not executable" not in line
        ]
        assert complaints == [], f"{unit.name}: {complaints}"


@pytest.mark.unit
@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_production_refuses_clear_text_kafka_to_another_host(production, protocol):
    production.setenv("CASESTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092,kafka-2.internal:9094")
    production.setenv("CASESTREAM_KAFKA_SECURITY_PROTOCOL", protocol)
    production.setenv("CASESTREAM_KAFKA_SASL_USERNAME", "casestream-worker")
    production.setenv("CASESTREAM_KAFKA_SASL_PASSWORD", STRONG)
    with pytest.raises(SettingsError, match=f"^CASESTREAM_KAFKA_SECURITY_PROTOCOL={protocol} .* "
                       "kafka-2.internal"):  # fmt: skip
        Settings.from_env()


@pytest.mark.unit
def test_production_refuses_plain_http_clickhouse_to_another_host(production):
    production.setenv("CASESTREAM_CLICKHOUSE_URL", "http://clickhouse.internal:8123")
    with pytest.raises(SettingsError, match="^CASESTREAM_CLICKHOUSE_URL=http://clickhouse"):
        Settings.from_env()
    production.setenv("CASESTREAM_CLICKHOUSE_URL", "https://clickhouse.internal:8443")
    assert Settings.from_env().production


@pytest.mark.unit
def test_the_worker_unit_is_a_template_that_gives_each_instance_its_own_state():
    """N workers per app id on one host need N state directories (RocksDB locks one per process)
    and N metrics ports: the instance name sets the first, an optional per-instance file the
    second."""
    (unit,) = [u for u in UNITS if u.name.startswith("casestream-worker")]
    assert unit.name == "casestream-worker@.service"
    service = parse_unit(unit)["Service"]
    assert "CASESTREAM_WORKER_INSTANCE=%i" in service["Environment"]
    assert "-/etc/casestream/casestream-worker-%i.env" in service["EnvironmentFile"]
