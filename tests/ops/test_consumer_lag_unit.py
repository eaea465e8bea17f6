"""Lag while a topic's leader is being elected: asked again, not an error (a fresh worker's
facts topic answered NOT_LEADER_FOR_PARTITION and the process benchmark stopped on it)."""

from __future__ import annotations

from concurrent.futures import Future

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from services.ops import consumer_lag

pytestmark = pytest.mark.unit


class _Offset:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class _FakeAdmin:
    """Answers ListOffsets with ``error`` for partition 1 the first ``failures`` times."""

    def __init__(self, error: int, failures: int) -> None:
        self.error, self.failures, self.asked = error, failures, []

    def list_offsets(self, specs, request_timeout):
        self.asked.append(sorted(tp.partition for tp in specs))
        futures = {}
        for tp in specs:
            future: Future = Future()
            if tp.partition == 1 and self.failures > 0:
                self.failures -= 1
                future.set_exception(KafkaException(KafkaError(self.error)))
            else:
                future.set_result(_Offset(100 + tp.partition))
            futures[tp] = future
        return futures


def test_a_partition_without_a_leader_yet_is_asked_again() -> None:
    admin = _FakeAdmin(KafkaError.NOT_LEADER_FOR_PARTITION, failures=2)
    partitions = [TopicPartition("facts", p) for p in range(3)]
    ends = consumer_lag._high_watermarks(admin, partitions, timeout=5)
    assert [ends[tp] for tp in partitions] == [100, 101, 102]
    assert admin.asked == [[0, 1, 2], [1], [1]]  # only the failed partition again


def test_an_error_that_retrying_cannot_mend_is_raised() -> None:
    admin = _FakeAdmin(KafkaError.TOPIC_AUTHORIZATION_FAILED, failures=1)
    with pytest.raises(KafkaException):
        consumer_lag._high_watermarks(admin, [TopicPartition("facts", 1)], timeout=5)
    assert admin.asked == [[1]]


def test_a_leader_that_never_comes_raises_at_the_timeout() -> None:
    admin = _FakeAdmin(KafkaError.LEADER_NOT_AVAILABLE, failures=10**6)
    with pytest.raises(KafkaException):
        consumer_lag._high_watermarks(admin, [TopicPartition("facts", 1)], timeout=0.5)
    assert 2 <= len(admin.asked) <= 5
