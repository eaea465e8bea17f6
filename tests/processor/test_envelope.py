"""The facts partition of a case is the one Kafka's Java client and librdkafka's
`murmur2_random` give its key: faust's assignor and the changelog rely on it."""

from __future__ import annotations

import pytest

from services.processor import envelope

pytestmark = pytest.mark.unit

#: Kafka's own test vectors (`UtilsTest.testMurmur2`).
JAVA = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize("data", sorted(JAVA))
def test_murmur2_is_java_s(data):
    assert envelope.murmur2(data) == JAVA[data]


def test_the_partition_is_the_positive_hash_modulo_the_count_and_the_cache_keeps_it():
    for case_id in ("21", "foobar", "20-INSP/2024/0001", "Hà Nội/1"):
        want = (envelope.murmur2(case_id.encode()) & 0x7FFFFFFF) % 6
        assert envelope.partition_for(case_id, 6) == want
        assert envelope.partition_for(case_id, 6) == want  # from the cache
        assert (
            envelope.partition_for(case_id, 4)
            == (envelope.murmur2(case_id.encode()) & 0x7FFFFFFF) % 4
        )
