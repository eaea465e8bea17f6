"""Users and HTTP authentication, accepted in every form ClickHouse's HTTP interface accepts.

chDB itself has no users (``currentUser()`` is always ``default``), so identity and the
read-only flag are enforced here, before a query reaches the engine.

The users file stores SHA-256 digests like ClickHouse's ``password_sha256_hex``, so reading
the file (a backup, a stray permission) does not give away a password; the check compares
digests in constant time, for unknown users too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ClickHouseError

log = logging.getLogger(__name__)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# A user name is echoed into logs and error messages; none of ClickHouse's own tools make one
# with control characters, so a name holding one is refused before anything looks it up.
_NAME_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def sha256_hex(password: str) -> str:
    """The digest ClickHouse keeps in ``password_sha256_hex`` (of the UTF-8 password)."""
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


# Compared against when the user does not exist, so the work done does not depend on it.
_UNKNOWN_USER_DIGEST = sha256_hex("\x00unknown-user")


@dataclass(frozen=True)
class User:
    name: str
    password_sha256_hex: str = field(repr=False)
    readonly: bool = False

    @classmethod
    def with_password(cls, name: str, password: str, readonly: bool = False) -> User:
        return cls(name, sha256_hex(password), readonly)


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)


def _auth_failed(user: str, detail: str | None = None) -> ClickHouseError:
    message = detail or (
        f"{user}: Authentication failed: password is incorrect, or there is no user with such name"
    )
    return ClickHouseError(516, message, "AUTHENTICATION_FAILED")


def extract_credentials(headers: Mapping[str, str], params: Mapping[str, str]) -> Credentials:
    """Credentials from basic auth, ``X-ClickHouse-User``/``-Key`` headers or URL params.

    As in ClickHouse, using more than one method at once is an error rather than a guess, and
    no credentials at all means user ``default`` with an empty password.
    """
    authorization = headers.get("Authorization")
    header_user = headers.get("X-ClickHouse-User")
    header_key = headers.get("X-ClickHouse-Key")
    param_user = params.get("user")
    param_password = params.get("password")

    methods = [
        authorization is not None,
        header_user is not None or header_key is not None,
        param_user is not None or param_password is not None,
    ]
    if sum(methods) > 1:
        raise _auth_failed(
            "",
            "Invalid authentication: it is not allowed to use Authorization HTTP header and "
            "authentication via parameters simultaneously",
        )
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "basic":
            raise _auth_failed(
                "", f"Invalid authentication: '{scheme}' HTTP Authorization scheme is not supported"
            )
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise _auth_failed("", "Invalid authentication: malformed Basic credentials") from None
        user, _, password = decoded.partition(":")
        return _checked(Credentials(user or "default", password))
    if header_user is not None or header_key is not None:
        return _checked(Credentials(header_user or "default", header_key or ""))
    if param_user is not None or param_password is not None:
        return _checked(Credentials(param_user or "default", param_password or ""))
    return Credentials("default", "")


def _checked(credentials: Credentials) -> Credentials:
    """Refuse a user name with control characters: a newline in it would forge a log line."""
    if match := _NAME_CONTROL.search(credentials.user):
        raise ClickHouseError(
            36,
            f"Invalid authentication: the user name contains control character "
            f"0x{ord(match.group()):02x} at position {match.start()}",
            "BAD_ARGUMENTS",
        )
    return credentials


class UserDirectory:
    """The configured users; authentication compares password digests in constant time."""

    def __init__(self, users: Mapping[str, User]) -> None:
        self._users = dict(users)

    @classmethod
    def anonymous_default(cls) -> UserDirectory:
        """Only a writable ``default`` user without password, as a bare ClickHouse server has.

        Development only, and only when asked for explicitly (``--anonymous-default``).
        """
        return cls({"default": User.with_password("default", "", readonly=False)})

    @classmethod
    def from_file(cls, path: str | Path) -> UserDirectory:
        """Load ``{"users": {name: {"password_sha256_hex": hex, "readonly": bool}}}``.

        ``"no_password": true`` configures a user without password (an anonymous ``default``
        is opt-in). A clear-text ``"password"`` (the old format) is still read, with one
        warning naming the users, so an old stack home keeps working until it is rewritten.
        """
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read users file {path}: {exc}") from None
        entries = document.get("users") if isinstance(document, dict) else None
        if not isinstance(entries, dict) or not entries:
            raise ValueError(f"users file {path} must contain a non-empty 'users' object")
        users: dict[str, User] = {}
        clear_text: list[str] = []
        for name, spec in entries.items():
            where = f"users file {path}: user {name!r}"
            if not isinstance(spec, dict):
                raise ValueError(f"{where} must be an object")
            if _NAME_CONTROL.search(name) or not name:
                raise ValueError(
                    f"{where}: a user name must be non-empty, without control characters"
                )
            readonly = spec.get("readonly", False)
            if not isinstance(readonly, bool):
                raise ValueError(f"{where}: 'readonly' must be true or false")
            given = [
                key for key in ("password_sha256_hex", "password", "no_password") if key in spec
            ]
            if len(given) != 1:
                raise ValueError(
                    f"{where} needs exactly one of password_sha256_hex, password, no_password "
                    f"(got {', '.join(given) or 'none'})"
                )
            if given[0] == "password_sha256_hex":
                digest = spec["password_sha256_hex"]
                if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest.lower()):
                    raise ValueError(f"{where}: password_sha256_hex must be 64 hex digits")
                users[name] = User(name, digest.lower(), readonly)
            elif given[0] == "no_password":
                if spec["no_password"] is not True:
                    raise ValueError(f"{where}: no_password must be true")
                users[name] = User.with_password(name, "", readonly)
            else:
                password = spec["password"]
                if not isinstance(password, str):
                    raise ValueError(f"{where} needs a string password")
                users[name] = User.with_password(name, password, readonly)
                clear_text.append(name)
        if clear_text:
            log.warning(
                "users file %s stores clear-text passwords (users: %s); store password_sha256_hex "
                "instead (casestream's stack rewrites the file on its next start)",
                path,
                ", ".join(sorted(clear_text)),
            )
        return cls(users)

    @property
    def names(self) -> list[str]:
        return sorted(self._users)

    def authenticate(self, credentials: Credentials) -> User:
        user = self._users.get(credentials.user)
        # Compare even for unknown users so response time does not reveal which names exist.
        expected = user.password_sha256_hex if user is not None else _UNKNOWN_USER_DIGEST
        matches = hmac.compare_digest(
            sha256_hex(credentials.password).encode("ascii"), expected.encode("ascii")
        )
        if user is None or not matches:
            raise _auth_failed(credentials.user)
        return user
