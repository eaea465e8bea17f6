"""HTTP sessions (``session_id``), kept per user like ClickHouse does.

For a writable user a session owns a live chDB connection, so ``SET``, ``USE`` and
temporary tables persist between its requests exactly as in ClickHouse. A read-only user's
requests run on a fresh connection locked with ``readonly=1`` (which cannot be undone on that
connection), so its session instead remembers the settings and database it chose and replays
them before locking the next connection; read-only users cannot create temporary tables
anyway, so nothing else needs to persist.

clickhouse-connect gives every client its own random session id, so concurrent clients never
share a session; two requests racing on one session get SESSION_IS_LOCKED, as in ClickHouse.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .auth import User
from .engine import Engine, EngineConnection
from .errors import ClickHouseError

DEFAULT_TIMEOUT_S = 60.0
MAX_TIMEOUT_S = 3600.0


@dataclass
class Session:
    user: str
    session_id: str
    readonly: bool
    timeout_s: float = DEFAULT_TIMEOUT_S
    connection: EngineConnection | None = None
    # Writable users: names of settings changed by SET in this session (others are default).
    set_names: set[str] = field(default_factory=set)
    # Read-only users only: state replayed onto each request's fresh connection.
    settings: dict[str, str] = field(default_factory=dict)
    database: str | None = None
    last_used: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def parse_timeout(value: str | None) -> float:
    if value is None or value == "":
        return DEFAULT_TIMEOUT_S
    try:
        timeout = float(value)
    except ValueError:
        raise ClickHouseError(36, f"Invalid session timeout: '{value}'", "BAD_ARGUMENTS") from None
    if timeout < 0 or timeout > MAX_TIMEOUT_S:
        raise ClickHouseError(
            36,
            f"Session timeout '{value}' is larger than max_session_timeout: {int(MAX_TIMEOUT_S)}. "
            "Maximum session timeout could be modified in configuration file.",
            "BAD_ARGUMENTS",
        )
    return timeout


class SessionManager:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions: dict[tuple[str, str], Session] = {}
        self._lock = threading.Lock()

    @contextmanager
    def acquire(
        self, user: User, session_id: str, timeout_s: float, check: bool
    ) -> Iterator[Session]:
        """Hold the session exclusively for one request, creating it unless ``check`` is set."""
        self.expire_idle()
        key = (user.name, session_id)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                if check:
                    raise ClickHouseError(
                        372, f"Session {session_id} not found", "SESSION_NOT_FOUND"
                    )
                session = Session(user.name, session_id, user.readonly)
                self._sessions[key] = session
            if not session.lock.acquire(blocking=False):
                raise ClickHouseError(
                    373,
                    f"Session {session_id} is locked by a concurrent client",
                    "SESSION_IS_LOCKED",
                )
            session.timeout_s = timeout_s
        try:
            if not session.readonly and session.connection is None:
                session.connection = self._engine.connect()
            yield session
        finally:
            session.last_used = time.monotonic()
            session.lock.release()

    def close_session(self, user: User, session_id: str) -> None:
        with self._lock:
            session = self._sessions.pop((user.name, session_id), None)
        if session is not None:
            with session.lock:
                session.close()

    def expire_idle(self) -> None:
        """Close sessions idle for longer than their timeout (busy ones are left alone)."""
        now = time.monotonic()
        expired: list[Session] = []
        with self._lock:
            for key, session in list(self._sessions.items()):
                if now - session.last_used <= session.timeout_s:
                    continue
                if session.lock.acquire(blocking=False):
                    del self._sessions[key]
                    expired.append(session)
        for session in expired:
            try:
                session.close()
            finally:
                session.lock.release()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def close_all(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            # A request still holding the session after the shutdown grace period loses it.
            acquired = session.lock.acquire(timeout=1.0)
            try:
                session.close()
            finally:
                if acquired:
                    session.lock.release()
