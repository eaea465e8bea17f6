"""`casestream stack up | down | status`: the local stack as one idempotent unit.

Start order follows dependencies (the registry stores its schemas in Kafka); the servers that do
not depend on each other start together so `up` on a cold machine waits for the slowest one, not
for the sum. `down` stops in reverse order and leaves no process behind.

`up` keeps the home private: the home is 0700, modes of a home made before that rule are
repaired (group and other access taken away, idempotent), and everything `up` and its servers
create is made under umask 077 (``services/private_files.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

from services.private_files import private_dir, private_umask, repair
from services.settings import Settings
from services.stack import clickhouse, kafka, prefect, registry, worker
from services.stack.process import wait_until

#: What the platform keeps under CASESTREAM_HOME: `up` makes these private. Only these, not
#: the whole home: it may be a directory holding other things too.
HOME_ENTRIES = (
    "kafka",
    "clickhouse",
    "registry",
    "prefect",
    "logs",
    "run",
    "outbox",
    "chain",
    "gateway",
    "worker",
    "imports",
    "demo",
)

# (module, start-up timeout in seconds). A fresh Prefect database takes ~20 s to migrate and
# Apicurio replays its KafkaSQL journal on start, hence the generous limits.
COMPONENTS: list[tuple[ModuleType, float]] = [
    (kafka, 120),
    (registry, 240),
    (clickhouse, 60),
    (prefect, 180),
]


class PartFailed(RuntimeError):
    """A part of the stack did not start: which one, why (one line) and the log that tells more."""

    def __init__(self, part: str, reason: str, log_file: str, tail: str = "") -> None:
        self.part, self.reason, self.log_file, self.tail = part, reason, log_file, tail
        message = f"{part} failed to start: {reason}\n  log: {log_file}"
        if tail.strip():
            message += "\n  from the log:\n" + "\n".join(
                f"    {line}" for line in tail.splitlines()
            )
        super().__init__(message)


@dataclass
class PartStatus:
    name: str
    pid: int | None
    ready: bool
    address: str
    log: str

    @property
    def state(self) -> str:
        if self.pid and self.ready:
            return "running"
        if self.pid:
            return "starting"
        if self.ready:
            return "running (not managed here)"
        return "stopped"


def _address(settings: Settings, module: ModuleType) -> str:
    return {
        kafka: settings.kafka_bootstrap,
        registry: settings.registry_url,
        clickhouse: settings.clickhouse_url,
        prefect: settings.prefect_api_url,
    }[module]


def _ready(settings: Settings, module: ModuleType) -> bool:
    try:
        return bool(module.is_ready(settings))
    except Exception:  # noqa: BLE001 - any failure to answer means "not ready"
        return False


def up(settings: Settings, log=print, parts: list[str] | None = None) -> None:
    """Start the wanted parts and wait until each answers; :class:`PartFailed` names the one that did not."""
    private_dir(settings.home)
    repaired = repair(settings.home, HOME_ENTRIES)
    if repaired:
        log(f"made {len(repaired)} files and directories under {settings.home} private (0600/0700)")
    with private_umask():
        _up(settings, log, parts)


def _up(settings: Settings, log, parts: list[str] | None) -> None:
    wanted = [(m, t) for m, t in COMPONENTS if parts is None or m.NAME in parts]
    started = time.monotonic()
    # Kafka first: the registry keeps its storage there.
    for module, timeout in wanted:
        if module is kafka:
            with _naming_failures(settings, module):
                _start_and_wait(settings, module, timeout, log)
    others = [(m, t) for m, t in wanted if m is not kafka]
    for module, _ in others:
        if _ready(settings, module):
            continue
        log(f"starting {module.NAME} …")
        with _naming_failures(settings, module):
            module.start(settings, log)
    for module, timeout in others:
        with _naming_failures(settings, module):
            wait_until(
                lambda m=module: _ready(settings, m),
                timeout=timeout,
                what=f"not answering at {_address(settings, module)}",
                proc=module.process(settings),
                tail=False,
            )
        log(f"  {module.NAME:<10} ready  {_address(settings, module)}")
    log(f"stack up in {time.monotonic() - started:.1f}s (data under {settings.home})")


@contextmanager
def _naming_failures(settings: Settings, module: ModuleType) -> Iterator[None]:
    """Turn any failure while starting ``module`` into a :class:`PartFailed` naming it."""
    proc = module.process(settings)
    try:
        yield
    except PartFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, say which part and where to look
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PartFailed(module.NAME, reason, str(proc.log_file), _first_errors(proc)) from exc


def _first_errors(proc, limit: int = 4) -> str:
    """The first error lines of the part's latest start: the cause, not the stack trace after it.

    Java servers log a fatal error followed by 30 lines of frames; the tail showed only frames.
    """
    try:
        text = proc.log_file.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    latest = text.rsplit("\n==== ", 1)[-1].splitlines()
    errors = [
        line.strip()
        for line in latest
        if (" ERROR " in line or "Exception:" in line or "error:" in line.lower())
        and not line.lstrip().startswith("at ")
    ]
    return "\n".join(errors[:limit]) if errors else "\n".join(latest[-limit:])


def _start_and_wait(settings: Settings, module: ModuleType, timeout: float, log) -> None:
    if not _ready(settings, module):
        log(f"starting {module.NAME} …")
        module.start(settings, log)
        wait_until(
            lambda: _ready(settings, module),
            timeout=timeout,
            what=f"not answering at {_address(settings, module)}",
            proc=module.process(settings),
            tail=False,
        )
    log(f"  {module.NAME:<10} ready  {_address(settings, module)}")


def down(settings: Settings, log=print, parts: list[str] | None = None) -> None:
    if parts is None and worker.process(settings).stop():
        log(f"  {'worker':<10} stopped")
    for module, _ in reversed(COMPONENTS):
        if parts is not None and module.NAME not in parts:
            continue
        if module.process(settings).stop():
            log(f"  {module.NAME:<10} stopped")
        else:
            log(f"  {module.NAME:<10} was not running")


def status(settings: Settings) -> list[PartStatus]:
    result = []
    for module, _ in COMPONENTS:
        proc = module.process(settings)
        result.append(
            PartStatus(
                name=module.NAME,
                pid=proc.pid(),
                ready=_ready(settings, module),
                address=_address(settings, module),
                log=str(proc.log_file),
            )
        )
    return result
