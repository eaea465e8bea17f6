"""Detached server processes tracked by pid files, so `stack up` and `stack down` are idempotent.

Each server runs in its own session (process group) with stdout/stderr going to a log file under
``$CASESTREAM_HOME/logs``. The pid file also records a marker that must appear in the process's
command line: a stale pid file whose pid was reused by an unrelated process is never killed.

A child gets only the environment it needs (:func:`child_env`): the parent's environment may
hold any secret (a cloud key, the operator's tokens, the platform's passwords), and
``/proc/<pid>/environ`` of a server is readable by anyone who can ptrace it. Children run with
umask 077 so every file they create (Kafka logs, chDB parts, Prefect's SQLite) is private.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.private_files import UMASK, private_dir, private_file, private_umask

#: Variables every child may inherit: what a process needs to run, never a credential.
BASE_ENV: tuple[str, ...] = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "JAVA_HOME",
)
#: What a Python child (endpoint, Prefect, worker) needs on top: where its interpreter and
#: packages are. ``PYTHONPATH`` matters when the platform runs from a checkout.
PYTHON_ENV: tuple[str, ...] = (
    "VIRTUAL_ENV",
    "PYTHONPATH",
    "PYTHONHASHSEED",
    "PYTHONUTF8",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)


def child_env(
    allow: tuple[str, ...] = (),
    *,
    prefixes: tuple[str, ...] = (),
    extra: dict[str, str] | None = None,
    source: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a child: :data:`BASE_ENV`, the names in ``allow``, the variables
    starting with one of ``prefixes``, then ``extra``; nothing else of ``source`` (os.environ)."""
    source = dict(os.environ if source is None else source)
    names = set(BASE_ENV) | set(allow)
    env = {
        key: value
        for key, value in source.items()
        if key in names or any(key.startswith(prefix) for prefix in prefixes)
    }
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class ManagedProcess:
    name: str
    home: Path

    @property
    def pid_file(self) -> Path:
        return self.home / "run" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        """The live pid of this server, or None (cleaning up a stale pid file)."""
        try:
            pid_text, marker = self.pid_file.read_text().split("\n", 1)
            pid = int(pid_text)
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            self.pid_file.unlink(missing_ok=True)
            return None
        if state == "Z" or marker.strip() not in cmdline:
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    def start(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        marker: str,
    ) -> int:
        """Start the server unless it already runs; returns its pid.

        ``env`` is the child's whole environment (build it with :func:`child_env`); None gives
        it :data:`BASE_ENV` only. Nothing else of ours is inherited.
        """
        existing = self.pid()
        if existing:
            return existing
        private_dir(self.pid_file.parent)
        private_dir(self.log_file.parent)
        private_file(self.log_file)
        with private_umask(), open(self.log_file, "ab") as log:
            log.write(
                f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}\n".encode()
            )
            log.flush()
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_env() if env is None else env,
                cwd=cwd,
                start_new_session=True,
                umask=UMASK,
            )
        # Until exec completes, /proc/<pid>/cmdline is still ours (python), and pid() would take
        # the child for a stale pid: wait for the exec before recording it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except FileNotFoundError:
                break
            if marker.encode() in cmdline:
                break
            time.sleep(0.01)
        with private_umask():
            self.pid_file.write_text(f"{proc.pid}\n{marker}\n")
        return proc.pid

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM the whole process group, SIGKILL after `timeout`; True if something was stopped."""
        pid = self.pid()
        if pid is None:
            return False
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(pid):
            time.sleep(0.2)
        if _group_alive(pid):
            _signal_group(pid, signal.SIGKILL)
            while _group_alive(pid):
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL without grace: used by fault-injection tests."""
        pid = self.pid()
        if pid is not None:
            _signal_group(pid, signal.SIGKILL)
            while _group_alive(pid):
                time.sleep(0.05)
            self.pid_file.unlink(missing_ok=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def _group_alive(pgid: int) -> bool:
    """True while any non-zombie process of the group is left."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        # fields: state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free on ``host`` now, below the kernel's ephemeral range.

    Asking the kernel for port 0 hands out ephemeral ports, the same pool every outgoing
    connection draws from: between our closing the probe socket and a server binding the port,
    a client connection (the test's own Kafka clients, for one) could take it. Ports below the
    ephemeral range are never given to outgoing connections, so only another process choosing
    ports the same way could collide, and a random pick among ~12,000 makes that unlikely.
    """
    import random

    low, _ = _ephemeral_range()
    first = 20000 if low > 21000 else 1024
    rng = random.SystemRandom()
    chosen: list[int] = []
    for _ in range(200 * count):
        if len(chosen) == count:
            break
        port = rng.randrange(first, low)
        if port in chosen:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        chosen.append(port)
    if len(chosen) < count:
        raise RuntimeError(f"could not find {count} free ports on {host} below {low}")
    return chosen


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    proc: ManagedProcess | None = None,
    interval: float = 0.5,
    tail: bool = True,
) -> None:
    """Poll `check` until true; on timeout raise (with the server's log tail unless ``tail=False``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - a server still starting answers in many wrong ways
            pass
        if proc is not None and proc.pid() is None:
            shown = f"\n{proc.log_tail()}" if tail else ""
            raise RuntimeError(f"{what}: process exited during start-up{shown}")
        time.sleep(interval)
    shown = f"\n{proc.log_tail()}" if proc and tail else ""
    raise TimeoutError(f"{what}: not ready after {timeout:.0f}s{shown}")
