"""Throttling of failed logins, per client address and per user name.

Passwords are checked in microseconds, so without a throttle a local attacker tried 1,000
guesses in 0.7 s. Each key (an address, a user name) may fail ``free_failures`` times; every
further failure locks the key for twice as long as the previous one (1 s, 2 s, 4 s ... up to
``max_lock_s``), and a key forgets its failures only after ``quiet_s`` without one. While a
key is locked, logins on it are refused before the password is looked at, so a locked key
tells the attacker nothing and a steady guesser gets about two tries a minute per key.

Successful logins are never delayed and do not clear a key: otherwise an attacker holding any
valid account could reset its address's count between guesses. The price, as with every
lockout, is that someone who can reach the endpoint can keep a user name (or an address)
locked while they keep failing; the lock is short and announced with ``Retry-After``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .errors import ClickHouseError


class LoginThrottled(ClickHouseError):
    """Too many failed logins: answered with 429 and ``Retry-After``."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            201,
            "Too many failed authentication attempts from this address or for this user; "
            f"retry in {retry_after_s} s",
            "QUOTA_EXCEEDED",
        )
        self.retry_after_s = retry_after_s


@dataclass
class _Key:
    failures: int = 0
    last_failure: float = 0.0
    locked_until: float = 0.0


class LoginThrottle:
    def __init__(
        self,
        free_failures: int = 10,
        quiet_s: float = 60.0,
        first_lock_s: float = 1.0,
        max_lock_s: float = 30.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.quiet_s = quiet_s
        self.first_lock_s = first_lock_s
        self.max_lock_s = max_lock_s
        self.max_keys = max_keys
        self._clock = clock
        self._keys: OrderedDict[tuple[str, str], _Key] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _keys_for(address: str, user: str) -> tuple[tuple[str, str], ...]:
        return (("address", address), ("user", user))

    def check(self, address: str, user: str) -> None:
        """Raise ``LoginThrottled`` if the address or the user name is locked right now."""
        now = self._clock()
        with self._lock:
            until = max(
                (
                    state.locked_until
                    for key in self._keys_for(address, user)
                    if (state := self._keys.get(key)) is not None
                ),
                default=0.0,
            )
        if until > now:
            raise LoginThrottled(max(1, math.ceil(until - now)))

    def failed(self, address: str, user: str) -> None:
        now = self._clock()
        with self._lock:
            for key in self._keys_for(address, user):
                state = self._keys.pop(key, None) or _Key()
                if now - state.last_failure > self.quiet_s:
                    state.failures = 0
                state.failures += 1
                state.last_failure = now
                excess = state.failures - self.free_failures
                if excess > 0:
                    lock = min(self.first_lock_s * 2 ** min(excess - 1, 30), self.max_lock_s)
                    state.locked_until = now + lock
                self._keys[key] = state  # most recently failed last
            while len(self._keys) > self.max_keys:
                # Bounded memory against a flood of made-up user names: forget the oldest.
                self._keys.popitem(last=False)
