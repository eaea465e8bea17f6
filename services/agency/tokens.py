"""Per-agency API tokens of the HTTP gateway, stored hashed.

A token belongs to exactly one agency and lets its bearer publish that agency's events (and no
other agency's) through ``POST /v1/events``.  Tokens look like::

    csgw_3f9a1c2b7d_<43 characters of URL-safe base64: 256 random bits>

``csgw_`` makes leaked tokens easy to find with secret scanners; the 10 hex characters after it
are the token *id*, which is not secret: ``casestream tokens list`` shows it and ``casestream
tokens revoke <id>`` takes it.  Only the SHA-256 of the whole token is stored (the secret part has
256 bits of entropy, so a fast hash is safe; slow password hashes exist for low-entropy secrets).
The plain token is shown once, by ``casestream tokens create``, and never written or logged.

The store is one JSON file, by default ``$CASESTREAM_HOME/gateway/tokens.json``; set
``CASESTREAM_GATEWAY_TOKENS_FILE`` to use another (e.g. a file mounted from a secret store in
production; the same variable is read by the ``tokens`` commands and by the gateway)::

    {"version": 1,
     "tokens": [{"id": "3f9a1c2b7d", "agency_id": "20-INSP", "sha256": "<64 hex>",
                 "label": "case system", "created_at": "2024-03-05T02:30:00Z",
                 "revoked_at": null}]}

Writers (the CLI) lock the file and replace it atomically (mode 0600); readers (the gateway)
reload it whenever it changed on disk, so a revocation takes effect on the next request without
restarting the gateway.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.contracts import reference as _ref
from services.settings import Settings

TOKENS_FILE_ENV = "CASESTREAM_GATEWAY_TOKENS_FILE"
TOKEN_PREFIX = "csgw_"
_TOKEN_RE = re.compile(r"^csgw_(?P<id>[0-9a-f]{10})_(?P<secret>[A-Za-z0-9_-]{43})$")
_ID_RE = re.compile(r"^[0-9a-f]{10}$")
FORMAT_VERSION = 1


class TokenStoreError(ValueError):
    """The token file is unreadable or malformed, or a command got a bad argument."""


@dataclass(frozen=True)
class TokenRecord:
    """One stored token (never the token itself)."""

    id: str
    agency_id: str
    sha256: str
    created_at: str
    label: str | None = None
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def hash_token(token: str) -> str:
    """SHA-256 of the token's UTF-8 bytes, as 64 lower-case hex digits."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh random token and its id: ``(token, id)``."""
    token_id = secrets.token_hex(5)
    return f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}", token_id


def token_id_of(token: str) -> str | None:
    """The id part of a well-formed token (None for anything else)."""
    m = _TOKEN_RE.fullmatch(token) if isinstance(token, str) else None
    return m["id"] if m else None


def default_tokens_path(settings: Settings | None = None) -> Path:
    """``$CASESTREAM_GATEWAY_TOKENS_FILE`` or ``<CASESTREAM_HOME>/gateway/tokens.json``."""
    env = os.environ.get(TOKENS_FILE_ENV)
    if env:
        return Path(env).expanduser()
    settings = settings or Settings.from_env()
    return settings.home / "gateway" / "tokens.json"


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class TokenStore:
    """The token file: create, list, revoke, and resolve a presented token to its agency.

    Thread-safe.  ``agency_for`` reloads the file when it changed on disk (one ``stat`` per
    call), so the gateway sees tokens created or revoked by the CLI without a restart.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._records: list[TokenRecord] = []
        self._active: dict[str, TokenRecord] = {}

    @classmethod
    def for_settings(cls, settings: Settings | None = None) -> TokenStore:
        return cls(default_tokens_path(settings))

    # ------------------------------------------------------------------ reading

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self) -> list[TokenRecord]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise TokenStoreError(f"cannot read token file {self.path}: {exc}") from None
        if not text.strip():
            return []
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise TokenStoreError(f"token file {self.path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
            raise TokenStoreError(
                f'token file {self.path} must be a JSON object {{"version": 1, "tokens": [...]}}'
            )
        records = []
        for i, item in enumerate(data["tokens"]):
            try:
                record = TokenRecord(
                    id=str(item["id"]),
                    agency_id=str(item["agency_id"]),
                    sha256=str(item["sha256"]).lower(),
                    created_at=str(item.get("created_at") or ""),
                    label=item.get("label"),
                    revoked_at=item.get("revoked_at"),
                )
            except (KeyError, TypeError) as exc:
                raise TokenStoreError(
                    f"token file {self.path}: entry {i} lacks id, agency_id or sha256 ({exc})"
                ) from None
            if not re.fullmatch(r"[0-9a-f]{64}", record.sha256):
                raise TokenStoreError(
                    f"token file {self.path}: entry {i} ({record.id}): sha256 must be 64 hex digits"
                )
            records.append(record)
        return records

    def _refresh(self) -> None:
        """Reload the file if it changed since the last load (call with the lock held)."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        records = self._read()
        self._records = records
        self._active = {r.sha256: r for r in records if r.active}
        self._stamp = stamp

    def records(self, *, include_revoked: bool = True) -> list[TokenRecord]:
        """Every stored token (oldest first), optionally without the revoked ones."""
        with self._lock:
            self._refresh()
            return [r for r in self._records if include_revoked or r.active]

    def lookup(self, token: str | None) -> TokenRecord | None:
        """The active record of a presented token, or None (unknown, revoked, malformed)."""
        if not token or not isinstance(token, str) or len(token) > 256:
            return None
        digest = hash_token(token)
        with self._lock:
            self._refresh()
            record = self._active.get(digest)
        if record is None or not hmac.compare_digest(record.sha256, digest):
            return None
        return record

    def agency_for(self, token: str | None) -> str | None:
        """The agency a presented token publishes for, or None when unknown or revoked."""
        record = self.lookup(token)
        return record.agency_id if record else None

    def agencies(self) -> list[str]:
        """Agencies with at least one active token, sorted."""
        return sorted({r.agency_id for r in self.records(include_revoked=False)})

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                with self._lock:
                    yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write(self, records: list[TokenRecord]) -> None:
        data: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "tokens": [asdict(r) for r in records],
        }
        fd, tmp = tempfile.mkstemp(prefix=".tokens-", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=2)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._records = records
        self._active = {r.sha256: r for r in records if r.active}
        self._stamp = self._file_stamp()

    def create(self, agency_id: str, label: str | None = None) -> tuple[str, TokenRecord]:
        """Create a token for a known agency; returns ``(token, record)``.

        The plain token exists only in the return value: show it once, then forget it.
        """
        try:
            _ref.parse_agency_id(agency_id)
        except ValueError as exc:
            raise TokenStoreError(str(exc)) from None
        if not _ref.is_known_agency(agency_id):
            raise TokenStoreError(
                f"unknown agency {agency_id!r} (not in the platform's reference data)"
            )
        with self._write_lock():
            records = self._read()
            used = {r.id for r in records}
            token, token_id = new_token()
            while token_id in used:  # 40-bit ids: a collision is astronomically rare
                token, token_id = new_token()
            record = TokenRecord(
                id=token_id,
                agency_id=agency_id,
                sha256=hash_token(token),
                created_at=_now(),
                label=label or None,
            )
            self._write([*records, record])
        return token, record

    def revoke(self, token_or_id: str) -> TokenRecord:
        """Revoke a token given its id (or the token itself); KeyError when there is none.

        Revoking an already revoked token is a no-op that returns the record.
        """
        token_id = token_id_of(token_or_id) or token_or_id.strip().removeprefix(TOKEN_PREFIX)
        if not _ID_RE.fullmatch(token_id):
            raise TokenStoreError(
                f"not a token id: {token_or_id[:16]!r}... (expected 10 hex digits, "
                f"see `casestream tokens list`)"
            )
        with self._write_lock():
            records = self._read()
            for i, r in enumerate(records):
                if r.id == token_id:
                    if r.revoked_at is not None:
                        return r
                    revoked = TokenRecord(**{**asdict(r), "revoked_at": _now()})
                    self._write([*records[:i], revoked, *records[i + 1 :]])
                    return revoked
        raise KeyError(token_id)
