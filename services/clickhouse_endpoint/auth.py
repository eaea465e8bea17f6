"""Users and HTTP authentication, accepted in every form ClickHouse's HTTP interface accepts.

chDB itself has no users (``currentUser()`` is always ``default``), so identity and the
read-only flag are enforced here, before a query reaches the engine.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ClickHouseError


@dataclass(frozen=True)
class User:
    name: str
    password: str = field(repr=False)
    readonly: bool = False


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
        return Credentials(user or "default", password)
    if header_user is not None or header_key is not None:
        return Credentials(header_user or "default", header_key or "")
    if param_user is not None or param_password is not None:
        return Credentials(param_user or "default", param_password or "")
    return Credentials("default", "")


class UserDirectory:
    """The configured users; authentication compares passwords in constant time."""

    def __init__(self, users: Mapping[str, User]) -> None:
        self._users = dict(users)

    @classmethod
    def default(cls) -> UserDirectory:
        return cls({"default": User("default", "", readonly=False)})

    @classmethod
    def from_file(cls, path: str | Path | None) -> UserDirectory:
        """Load ``{"users": {name: {"password": str, "readonly": bool}}}``; None means defaults."""
        if path is None:
            return cls.default()
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read users file {path}: {exc}") from None
        entries = document.get("users") if isinstance(document, dict) else None
        if not isinstance(entries, dict) or not entries:
            raise ValueError(f"users file {path} must contain a non-empty 'users' object")
        users: dict[str, User] = {}
        for name, spec in entries.items():
            if not isinstance(spec, dict):
                raise ValueError(f"users file {path}: user {name!r} must be an object")
            password = spec.get("password", "")
            readonly = spec.get("readonly", False)
            if not isinstance(password, str) or not isinstance(readonly, bool):
                raise ValueError(
                    f"users file {path}: user {name!r} needs a string password and boolean readonly"
                )
            users[name] = User(name, password, readonly)
        return cls(users)

    @property
    def names(self) -> list[str]:
        return sorted(self._users)

    def authenticate(self, credentials: Credentials) -> User:
        user = self._users.get(credentials.user)
        # Compare even for unknown users so response time does not reveal which names exist.
        expected = user.password if user is not None else "\x00unknown-user"
        matches = hmac.compare_digest(
            credentials.password.encode("utf-8"), expected.encode("utf-8")
        )
        if user is None or not matches:
            raise _auth_failed(credentials.user)
        return user
