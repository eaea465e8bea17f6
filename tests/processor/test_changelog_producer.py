"""The changelog producer connects in advance, once, and never fails a start for it."""

from __future__ import annotations

import threading
import time

import pytest

from services.processor.changelog_producer import ChangelogProducer
from services.settings import Settings

pytestmark = pytest.mark.unit


class _Producer:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.asked: list[tuple[str, float]] = []

    def list_topics(self, topic: str, timeout: float) -> None:
        self.asked.append((topic, timeout))
        if self.fail:
            raise RuntimeError('KafkaError{code=_TRANSPORT,val=-195,str="Failed to get metadata"}')


class _Changelog(ChangelogProducer):
    def __init__(self, fail: bool = False, slow: threading.Event | None = None) -> None:
        super().__init__(Settings.from_env())
        self.made: list[_Producer] = []
        self._fail = fail
        self._slow = slow

    def _new_producer(self, settings, overrides):  # noqa: ANN001, ANN202
        if self._slow is not None:
            self._slow.wait(5)
        producer = _Producer(self._fail)
        self.made.append(producer)
        return producer


def test_connect_creates_the_producer_and_asks_for_the_changelog_s_metadata():
    changelog = _Changelog()
    assert changelog.connect("app-case-state-changelog", timeout=3.0) is True
    assert [p.asked for p in changelog.made] == [[("app-case-state-changelog", 3.0)]]
    assert changelog._producer is changelog.made[0]  # the first batch uses the same producer


def test_a_broker_that_does_not_answer_is_logged_not_raised(caplog):
    changelog = _Changelog(fail=True)
    assert changelog.connect("app-case-state-changelog") is False
    assert "not connected in advance" in caplog.text and "Failed to get metadata" in caplog.text


def test_connect_and_a_first_batch_at_once_create_one_producer():
    """Both run on executor threads: a second producer would send records the first's delivery
    reports never account for."""
    release = threading.Event()
    changelog = _Changelog(slow=release)
    got: list[object] = []
    threads = [
        threading.Thread(target=changelog.connect, args=("t",)),
        threading.Thread(target=lambda: got.append(changelog._producer)),
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.2)  # both threads are past their check of the producer by now
    release.set()
    for thread in threads:
        thread.join(5)
    assert len(changelog.made) == 1 and got == changelog.made
